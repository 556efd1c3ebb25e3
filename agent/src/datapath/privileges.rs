//! Names the capability a refused load, attach or pin lacked. The kernel answers a missing
//! capability with a bare EPERM, and aya passes it on as "Operation not permitted" at best
//! (for map creation and link attach the errno is only in the error's source, not its
//! message). When an error is such a refusal, this module reads the process's effective
//! capability set (`CapEff` in /proc/self/status) and names what weft needs but lacks.
//!
//! The set is the one `tests/tests/privileges.rs` establishes on a real kernel: the agent
//! serves traffic with exactly these capabilities, and fails without any one of them.

use std::{error::Error, fmt, io};

/// A capability the datapath needs, and what the kernel checks it for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needed {
    /// As the kernel and `capsh` name it, e.g. `CAP_BPF`.
    pub name: &'static str,
    /// Bit number in the capability sets (linux/capability.h).
    pub bit: u32,
    pub used_for: &'static str,
}

impl Needed {
    /// The name Kubernetes' `securityContext.capabilities.add` expects (no `CAP_` prefix).
    pub fn kubernetes_name(&self) -> &'static str {
        self.name.strip_prefix("CAP_").unwrap_or(self.name)
    }
}

/// Every capability the agent needs (kernel ≥ 5.8, where CAP_BPF and CAP_PERFMON split from
/// CAP_SYS_ADMIN).
pub const NEEDED: [Needed; 3] = [
    Needed {
        name: "CAP_BPF",
        bit: 39,
        used_for: "creating BPF maps, loading BTF and programs",
    },
    Needed {
        name: "CAP_NET_ADMIN",
        bit: 12,
        used_for: "loading and attaching cgroup socket, sock_ops and TC programs (TCX links, clsact filters)",
    },
    // The verifier refuses pointer arithmetic with a value that differs between paths
    // (Spectre v1 hardening) unless the loader has it; the compiler's memset loop for
    // RevNatKey's 5 padding bytes in weft_sock_release is such arithmetic on the stack.
    Needed {
        name: "CAP_PERFMON",
        bit: 38,
        used_for: "the verifier's pointer arithmetic rules for trusted loaders",
    },
];

/// The kernel still accepts CAP_SYS_ADMIN wherever it asks for CAP_BPF, CAP_NET_ADMIN or
/// CAP_PERFMON (`bpf_capable`, `perfmon_capable`, `bpf_token_capable`), so a process holding
/// it lacks none of them.
const CAP_SYS_ADMIN: u32 = 21;

/// A process's capability set, as the bit mask /proc shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    /// The effective set of this process: what the kernel checks at each bpf(2) call.
    pub fn effective() -> io::Result<CapSet> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        CapSet::from_status(&status)
            .ok_or_else(|| io::Error::other("no CapEff line in /proc/self/status"))
    }

    /// Parses the `CapEff:` line of a /proc/PID/status text.
    pub fn from_status(status: &str) -> Option<CapSet> {
        let hex = status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))?
            .trim();
        u64::from_str_radix(hex, 16).ok().map(CapSet)
    }

    pub fn has(self, bit: u32) -> bool {
        bit < 64 && self.0 & (1 << bit) != 0
    }

    /// The needed capabilities this set grants neither directly nor through CAP_SYS_ADMIN.
    pub fn missing(self) -> Vec<Needed> {
        if self.has(CAP_SYS_ADMIN) {
            return Vec::new();
        }
        NEEDED
            .into_iter()
            .filter(|cap| !self.has(cap.bit))
            .collect()
    }
}

/// The capabilities a refused operation lacked, and the set the process had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub capabilities: Vec<Needed>,
    pub effective: CapSet,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.capabilities.len() == 1 {
            "y"
        } else {
            "ies"
        };
        write!(f, "missing capabilit{plural} ")?;
        for (i, cap) in self.capabilities.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{} ({})", cap.name, cap.used_for)?;
        }
        let add: Vec<&str> = NEEDED.iter().map(Needed::kubernetes_name).collect();
        write!(
            f,
            ": the kernel refused with \"permission denied\" and this process's effective \
             capabilities (CapEff {:016x}) lack it; weft needs {} (in Kubernetes: \
             securityContext.capabilities.add: [{}])",
            self.effective.0,
            NEEDED.map(|cap| cap.name).join(", "),
            add.join(", ")
        )
    }
}

/// An error, with the capabilities it lacked named when that is why the kernel refused.
#[derive(Debug, thiserror::Error)]
pub enum Explained<E: Error + 'static> {
    #[error(transparent)]
    Other(E),
    #[error("{missing}")]
    MissingCapability {
        missing: Missing,
        #[source]
        error: E,
    },
}

/// Call on an error from loading, attaching or pinning: if the kernel refused it for lack of
/// permission and this process lacks a capability weft needs, the result names it.
pub fn explain<E: Error + 'static>(error: E) -> Explained<E> {
    match CapSet::effective() {
        Ok(effective) => explain_with(error, effective),
        // Without /proc there is nothing to add; the original error still stands.
        Err(_) => Explained::Other(error),
    }
}

/// `explain` against a given capability set.
pub fn explain_with<E: Error + 'static>(error: E, effective: CapSet) -> Explained<E> {
    if !is_permission_error(&error) {
        return Explained::Other(error);
    }
    let capabilities = effective.missing();
    if capabilities.is_empty() {
        // Refused although every needed capability is there (an LSM, file permissions, a
        // seccomp filter): naming a capability would mislead.
        return Explained::Other(error);
    }
    Explained::MissingCapability {
        missing: Missing {
            capabilities,
            effective,
        },
        error,
    }
}

/// Whether the kernel refused with EPERM or EACCES somewhere in this error.
pub fn is_permission_error(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(current) = next {
        if current
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::PermissionDenied)
        {
            return true;
        }
        next = current.source();
    }
    // Wrappers that hold aya's error as a plain field (not `#[source]`) cut the chain above;
    // the Debug rendering still shows the io::Error inside (`kind: PermissionDenied`).
    format!("{error:?}").contains("kind: PermissionDenied")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_NEEDED: CapSet = CapSet((1 << 39) | (1 << 38) | (1 << 12));

    /// Shaped like aya's errors: the errno only in the source.
    #[derive(Debug, thiserror::Error)]
    #[error("failed to create map `WEFT_SERVICE_V1`")]
    struct CreateError {
        #[source]
        io_error: io::Error,
    }

    /// Shaped like a wrapper that keeps the inner error as a plain field, cutting the chain.
    #[derive(Debug, thiserror::Error)]
    #[error("loading the kernel object: {0}")]
    struct Opaque(Box<CreateError>);

    fn eperm() -> io::Error {
        io::Error::from_raw_os_error(1)
    }

    #[test]
    fn parses_cap_eff_from_proc_status() {
        let status = "Name:\tweft\nCapInh:\t0000000000000000\nCapPrm:\t000000c000001000\n\
                      CapEff:\t000000c000001000\nCapBnd:\t000000c000001000\n";
        assert_eq!(CapSet::from_status(status), Some(ALL_NEEDED));
        assert_eq!(CapSet::from_status("Name:\tweft\n"), None);
        assert!(
            CapSet::effective().is_ok(),
            "this process has a CapEff line"
        );
    }

    #[test]
    fn names_each_missing_capability() {
        assert_eq!(ALL_NEEDED.missing(), vec![]);
        let names = |set: CapSet| set.missing().iter().map(|c| c.name).collect::<Vec<_>>();
        assert_eq!(names(CapSet((1 << 12) | (1 << 38))), ["CAP_BPF"]);
        assert_eq!(names(CapSet((1 << 39) | (1 << 38))), ["CAP_NET_ADMIN"]);
        assert_eq!(names(CapSet((1 << 39) | (1 << 12))), ["CAP_PERFMON"]);
        assert_eq!(
            names(CapSet(0)),
            ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]
        );
        // CAP_SYS_ADMIN alone still passes every check the kernel makes here.
        assert_eq!(names(CapSet(1 << CAP_SYS_ADMIN)), Vec::<&str>::new());
    }

    #[test]
    fn finds_the_refusal_through_the_source_chain_and_through_opaque_wrappers() {
        let chained = CreateError { io_error: eperm() };
        assert!(is_permission_error(&chained));
        let opaque = Opaque(Box::new(CreateError { io_error: eperm() }));
        assert!(is_permission_error(&opaque));
        let eacces = CreateError {
            io_error: io::Error::from_raw_os_error(13),
        };
        assert!(is_permission_error(&eacces));
        let einval = CreateError {
            io_error: io::Error::from_raw_os_error(22),
        };
        assert!(!is_permission_error(&einval));
    }

    #[test]
    fn a_refusal_without_the_capability_names_it_and_keeps_the_original() {
        let error = Opaque(Box::new(CreateError { io_error: eperm() }));
        let explained = explain_with(error, CapSet((1 << 39) | (1 << 38)));
        let message = explained.to_string();
        assert!(
            message.contains("missing capability CAP_NET_ADMIN"),
            "{message}"
        );
        assert!(message.contains("CapEff 000000c000000000"), "{message}");
        assert!(
            message.contains("add: [BPF, NET_ADMIN, PERFMON]"),
            "{message}"
        );
        assert!(!message.contains("CAP_BPF ("), "{message}");
        let source = explained.source().map(ToString::to_string);
        assert_eq!(
            source.as_deref(),
            Some("loading the kernel object: failed to create map `WEFT_SERVICE_V1`")
        );
    }

    #[test]
    fn other_errors_and_refusals_with_every_capability_pass_through_unchanged() {
        let einval = CreateError {
            io_error: io::Error::from_raw_os_error(22),
        };
        assert!(matches!(
            explain_with(einval, CapSet(0)),
            Explained::Other(_)
        ));
        let refused = CreateError { io_error: eperm() };
        let explained = explain_with(refused, ALL_NEEDED);
        assert!(matches!(explained, Explained::Other(_)));
        assert_eq!(
            explained.to_string(),
            "failed to create map `WEFT_SERVICE_V1`"
        );
    }
}
