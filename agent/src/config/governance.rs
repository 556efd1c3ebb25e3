//! Per-service governance, enforced in the kernel at connect time: circuit breaking
//! (`limits`), a ramp for endpoints that become usable (`slow_start`), fault injection
//! (`fault`) and L4 authorization (`allow`). This module holds their validated form and
//! turns the raw YAML into it, every error with its field path.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use super::{
    raw::{RawAllow, RawFault, RawLimits, RawSlowStart},
    validate::Errors,
};

/// Everything a service may set beyond where its connections go. The default governs
/// nothing: no limit, no ramp, no fault, open to everyone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Governance {
    pub limits: Limits,
    pub slow_start: Option<SlowStart>,
    pub fault: Option<Fault>,
    /// Who may connect; empty means everyone.
    pub allow: Vec<AllowRule>,
}

/// Circuit breaking: open translated connections at most, per endpoint and per service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Limits {
    pub max_connections_per_endpoint: Option<u32>,
    pub max_connections: Option<u32>,
}

/// Envoy's slow_start_config: an endpoint that becomes usable ramps up over `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlowStart {
    pub window: Duration,
}

/// Refuses `abort_percent` % of new connections with `errno`, only for clients in
/// `cgroup` when one is named.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fault {
    pub abort_percent: u8,
    pub errno: FaultErrno,
    pub cgroup: Option<CgroupPath>,
}

/// The errors a refused connect may report: those a real network or server gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultErrno {
    ConnectionRefused,
    ConnectionReset,
    TimedOut,
    HostUnreachable,
}

impl FaultErrno {
    const ALL: [(&'static str, FaultErrno); 4] = [
        ("ECONNREFUSED", FaultErrno::ConnectionRefused),
        ("ECONNRESET", FaultErrno::ConnectionReset),
        ("ETIMEDOUT", FaultErrno::TimedOut),
        ("EHOSTUNREACH", FaultErrno::HostUnreachable),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, e)| *e == self)
            .map_or("ECONNREFUSED", |(name, _)| name)
    }

    pub fn errno(self) -> i32 {
        match self {
            FaultErrno::ConnectionRefused => libc::ECONNREFUSED,
            FaultErrno::ConnectionReset => libc::ECONNRESET,
            FaultErrno::TimedOut => libc::ETIMEDOUT,
            FaultErrno::HostUnreachable => libc::EHOSTUNREACH,
        }
    }
}

/// A cgroup as the config names it: a path under the cgroup2 mount, absolute and without
/// `.` or `..`, and the kernel's id for it once the source resolved it (a file naming a
/// cgroup that does not exist is rejected at reload).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CgroupPath {
    pub path: PathBuf,
    pub id: Option<CgroupId>,
}

/// The kernel's id of a cgroup and its depth below the cgroup2 root (the root is level 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CgroupId {
    pub id: u64,
    pub level: u32,
}

impl CgroupPath {
    pub fn new(path: impl Into<PathBuf>) -> CgroupPath {
        CgroupPath {
            path: path.into(),
            id: None,
        }
    }

    /// The kernel's id of this cgroup under `cgroup2_root`: on cgroup2 it is the inode
    /// number of the cgroup's directory, the value `bpf_get_current_cgroup_id` returns for
    /// a task in it. Fails if there is no such directory.
    pub fn resolve(&self, cgroup2_root: &std::path::Path) -> std::io::Result<CgroupId> {
        use std::os::unix::fs::MetadataExt as _;
        let relative = self.path.strip_prefix("/").unwrap_or(&self.path);
        let dir = cgroup2_root.join(relative);
        let metadata = std::fs::metadata(&dir)?;
        if !metadata.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a cgroup directory", dir.display()),
            ));
        }
        Ok(CgroupId {
            id: metadata.ino(),
            level: relative.components().count() as u32,
        })
    }
}

impl Governance {
    /// Resolves every cgroup the service names to the kernel's id, under `cgroup2_root`;
    /// each one that does not exist is an error at its field path (`path` is the service's).
    pub(super) fn resolve_cgroups(
        &mut self,
        path: &str,
        cgroup2_root: &std::path::Path,
        errors: &mut Errors,
    ) {
        let mut resolve =
            |field: String, cgroup: &mut CgroupPath| match cgroup.resolve(cgroup2_root) {
                Ok(id) => cgroup.id = Some(id),
                Err(e) => errors.add(
                    field,
                    format!(
                        "{}: no such cgroup under {} ({e})",
                        cgroup.path.display(),
                        cgroup2_root.display()
                    ),
                ),
            };
        if let Some(Fault {
            cgroup: Some(cgroup),
            ..
        }) = &mut self.fault
        {
            resolve(format!("{path}.fault.cgroup"), cgroup);
        }
        for (index, rule) in self.allow.iter_mut().enumerate() {
            if let AllowRule::Cgroup(cgroup) = rule {
                resolve(format!("{path}.allow[{index}].cgroup"), cgroup);
            }
        }
    }
}

/// One `allow` rule: a connection from a matching client is let through.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AllowRule {
    Cgroup(CgroupPath),
    Uid(u32),
    Gid(u32),
    /// The TC path (forwarded traffic): the client's source address.
    Cidr {
        network: IpAddr,
        prefix: u8,
    },
}

pub(super) fn limits(path: &str, raw: Option<RawLimits>, errors: &mut Errors) -> Limits {
    let Some(raw) = raw else {
        return Limits::default();
    };
    let count = |field: &str, value: Option<i64>, errors: &mut Errors| match value {
        None => None,
        Some(v @ 1..=0xffff_ffff) => Some(v as u32),
        Some(v) => {
            errors.add(
                format!("{path}.{field}"),
                format!("{v} is out of range 1..=4294967295 (open connections)"),
            );
            None
        }
    };
    let limits = Limits {
        max_connections_per_endpoint: count(
            "max_connections_per_endpoint",
            raw.max_connections_per_endpoint,
            errors,
        ),
        max_connections: count("max_connections", raw.max_connections, errors),
    };
    if raw.max_connections_per_endpoint.is_none() && raw.max_connections.is_none() {
        errors.add(
            path,
            "sets no limit: give max_connections_per_endpoint, max_connections or both",
        );
    }
    limits
}

pub(super) fn slow_start(
    path: &str,
    raw: Option<RawSlowStart>,
    errors: &mut Errors,
) -> Option<SlowStart> {
    let raw = raw?;
    let Some(text) = raw.window else {
        errors.add(format!("{path}.window"), "is required (e.g. 30s)");
        return None;
    };
    let window = super::validate::duration(
        &format!("{path}.window"),
        Some(&text),
        Duration::ZERO,
        errors,
    );
    (!window.is_zero()).then_some(SlowStart { window })
}

pub(super) fn fault(path: &str, raw: Option<RawFault>, errors: &mut Errors) -> Option<Fault> {
    let raw = raw?;
    let abort_percent = match raw.abort_percent {
        Some(p @ 0..=100) => p as u8,
        Some(p) => {
            errors.add(
                format!("{path}.abort_percent"),
                format!("{p} is out of range 0..=100 (percent of new connections)"),
            );
            0
        }
        None => {
            errors.add(format!("{path}.abort_percent"), "is required");
            0
        }
    };
    let errno = match raw.errno.as_deref() {
        None => FaultErrno::ConnectionRefused,
        Some(name) => match FaultErrno::ALL
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
        {
            Some((_, errno)) => *errno,
            None => {
                let known: Vec<&str> = FaultErrno::ALL.iter().map(|(n, _)| *n).collect();
                errors.add(
                    format!("{path}.errno"),
                    format!(
                        "unknown errno {name:?}: expected one of {}",
                        known.join(", ")
                    ),
                );
                FaultErrno::ConnectionRefused
            }
        },
    };
    let cgroup = raw
        .cgroup
        .and_then(|text| cgroup(&format!("{path}.cgroup"), &text, errors));
    Some(Fault {
        abort_percent,
        errno,
        cgroup,
    })
}

pub(super) fn allow(path: &str, raw: Option<Vec<RawAllow>>, errors: &mut Errors) -> Vec<AllowRule> {
    let Some(raw) = raw else {
        return Vec::new();
    };
    if raw.is_empty() {
        errors.add(
            path,
            "is empty, which would refuse everyone: remove it to leave the service open",
        );
    }
    if raw.len() > weft_common::MAX_ALLOW_RULES {
        errors.add(
            path,
            format!(
                "has {} rules; at most {} are checked at connect",
                raw.len(),
                weft_common::MAX_ALLOW_RULES
            ),
        );
    }
    let mut rules = Vec::with_capacity(raw.len());
    for (index, rule) in raw.into_iter().enumerate() {
        let path = format!("{path}[{index}]");
        let given = [
            rule.cgroup.is_some(),
            rule.uid.is_some(),
            rule.gid.is_some(),
            rule.cidr.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            errors.add(&path, "needs exactly one of cgroup, uid, gid, cidr");
            continue;
        }
        let id = |field: &str, value: i64, errors: &mut Errors| match u32::try_from(value) {
            Ok(id) => Some(id),
            Err(_) => {
                errors.add(
                    format!("{path}.{field}"),
                    format!("{value} is out of range 0..=4294967295"),
                );
                None
            }
        };
        let parsed = if let Some(text) = rule.cgroup {
            cgroup(&format!("{path}.cgroup"), &text, errors).map(AllowRule::Cgroup)
        } else if let Some(uid) = rule.uid {
            id("uid", uid, errors).map(AllowRule::Uid)
        } else if let Some(gid) = rule.gid {
            id("gid", gid, errors).map(AllowRule::Gid)
        } else {
            rule.cidr
                .and_then(|text| cidr(&format!("{path}.cidr"), &text, errors))
        };
        rules.extend(parsed);
    }
    rules
}

fn cgroup(path: &str, text: &str, errors: &mut Errors) -> Option<CgroupPath> {
    let candidate = std::path::Path::new(text);
    let plain = candidate.components().all(|c| {
        matches!(
            c,
            std::path::Component::RootDir | std::path::Component::Normal(_)
        )
    });
    if !text.starts_with('/') || !plain {
        errors.add(
            path,
            format!(
                "{text:?} is not an absolute cgroup path without . or .. (e.g. /apps/frontend)"
            ),
        );
        return None;
    }
    Some(CgroupPath::new(candidate))
}

fn cidr(path: &str, text: &str, errors: &mut Errors) -> Option<AllowRule> {
    let parsed = text.split_once('/').and_then(|(address, prefix)| {
        let network: IpAddr = address.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some((network, prefix))
    });
    if let Some((network, prefix)) = parsed
        && host_bits(network, prefix)
    {
        errors.add(
            path,
            format!("{text:?} has address bits set past its /{prefix} prefix"),
        );
        return None;
    }
    match parsed {
        Some((network, prefix)) => Some(AllowRule::Cidr { network, prefix }),
        None => {
            errors.add(
                path,
                format!("{text:?} is not a CIDR like 10.0.0.0/8 or fd00::/8"),
            );
            None
        }
    }
}

/// Whether `network` has bits set past its first `prefix` bits.
fn host_bits(network: IpAddr, prefix: u8) -> bool {
    let (bits, width) = match network {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32u32),
        IpAddr::V6(v6) => (u128::from(v6), 128u32),
    };
    let host = width - u32::from(prefix);
    host > 0 && bits & ((1u128 << host) - 1) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn service(extra: &str) -> String {
        format!(
            "services:\n  - name: web\n    address: 10.96.0.10\n    port: 80\n    endpoints: [{{ address: 10.1.0.5, port: 8080 }}]\n{extra}"
        )
    }

    fn governance(extra: &str) -> Governance {
        let config = Config::parse(&service(extra)).unwrap_or_else(|e| panic!("{e}"));
        config.services[0].governance.clone()
    }

    fn error(extra: &str) -> String {
        Config::parse(&service(extra)).unwrap_err().to_string()
    }

    #[test]
    fn a_service_without_governance_governs_nothing() {
        assert_eq!(governance(""), Governance::default());
    }

    #[test]
    fn every_block_of_the_contract_parses() {
        let g = governance(
            "    limits: { max_connections_per_endpoint: 5, max_connections: 100 }
    slow_start: { window: 30s }
    fault: { abort_percent: 20, cgroup: /experiments/a }
    allow:
      - { cgroup: /apps/frontend }
      - { uid: 1000 }
      - { gid: 50 }
      - { cidr: 10.0.0.0/8 }
      - { cidr: 'fd00::/8' }
",
        );
        assert_eq!(
            g.limits,
            Limits {
                max_connections_per_endpoint: Some(5),
                max_connections: Some(100)
            }
        );
        assert_eq!(
            g.slow_start,
            Some(SlowStart {
                window: Duration::from_secs(30)
            })
        );
        assert_eq!(
            g.fault,
            Some(Fault {
                abort_percent: 20,
                errno: FaultErrno::ConnectionRefused,
                cgroup: Some(CgroupPath::new("/experiments/a")),
            })
        );
        assert_eq!(
            g.allow,
            vec![
                AllowRule::Cgroup(CgroupPath::new("/apps/frontend")),
                AllowRule::Uid(1000),
                AllowRule::Gid(50),
                AllowRule::Cidr {
                    network: "10.0.0.0".parse().unwrap(),
                    prefix: 8
                },
                AllowRule::Cidr {
                    network: "fd00::".parse().unwrap(),
                    prefix: 8
                },
            ]
        );
    }

    #[test]
    fn bad_values_are_named_by_their_path_once() {
        for (extra, path, says) in [
            (
                "    limits: { max_connections_per_endpoint: -1 }\n",
                "services[0].limits.max_connections_per_endpoint",
                "-1 is out of range",
            ),
            (
                "    limits: { max_connections: 0 }\n",
                "services[0].limits.max_connections",
                "0 is out of range",
            ),
            ("    limits: {}\n", "services[0].limits", "sets no limit"),
            (
                "    slow_start: { window: soon }\n",
                "services[0].slow_start.window",
                "not a duration",
            ),
            (
                "    slow_start: {}\n",
                "services[0].slow_start.window",
                "is required",
            ),
            (
                "    fault: { abort_percent: 101 }\n",
                "services[0].fault.abort_percent",
                "101 is out of range 0..=100",
            ),
            (
                "    fault: { abort_percent: 5, errno: EBOGUS }\n",
                "services[0].fault.errno",
                "unknown errno",
            ),
            (
                "    fault: { abort_percent: 5, cgroup: experiments }\n",
                "services[0].fault.cgroup",
                "not an absolute cgroup path",
            ),
            (
                "    allow: [{ cgroup: /a/../b }]\n",
                "services[0].allow[0].cgroup",
                "without . or ..",
            ),
            (
                "    allow: [{ uid: -5 }]\n",
                "services[0].allow[0].uid",
                "-5 is out of range",
            ),
            (
                "    allow: [{ cidr: 10.0.0.0/33 }]\n",
                "services[0].allow[0].cidr",
                "not a CIDR",
            ),
            (
                "    allow: [{ cidr: 10.0.0.1/8 }]\n",
                "services[0].allow[0].cidr",
                "bits set past its /8",
            ),
            (
                "    allow: [{ uid: 1, gid: 2 }]\n",
                "services[0].allow[0]",
                "exactly one of",
            ),
            (
                "    allow: []\n",
                "services[0].allow",
                "would refuse everyone",
            ),
        ] {
            let error = error(extra);
            assert_eq!(error.matches(path).count(), 1, "{extra}: {error}");
            assert!(error.contains(says), "{extra}: {error}");
        }
        let unknown = error("    fault: { percent: 5 }\n");
        assert!(unknown.contains("unknown field `percent`"), "{unknown}");
    }

    #[test]
    fn a_cgroup_path_resolves_to_its_directory_inode_under_the_root() {
        use std::os::unix::fs::MetadataExt as _;
        let root = std::env::temp_dir().join(format!("weft-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(root.join("apps/frontend")).unwrap();
        std::fs::write(root.join("apps/file"), b"").unwrap();
        let want = std::fs::metadata(root.join("apps/frontend")).unwrap().ino();
        let path = CgroupPath::new;
        assert_eq!(
            path("/apps/frontend").resolve(&root).unwrap(),
            CgroupId { id: want, level: 2 }
        );
        let missing = path("/apps/backend").resolve(&root).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        let file = path("/apps/file").resolve(&root).unwrap_err();
        assert_eq!(file.kind(), std::io::ErrorKind::NotADirectory);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn fault_errnos_are_the_documented_ones() {
        let g = governance("    fault: { abort_percent: 100, errno: etimedout }\n");
        let fault = g.fault.expect("fault");
        assert_eq!(fault.errno, FaultErrno::TimedOut);
        assert_eq!(fault.errno.errno(), libc::ETIMEDOUT);
        assert_eq!(fault.errno.as_str(), "ETIMEDOUT");
    }
}
