//! What the kernel must have before weft loads anything, found by asking it: each feature is
//! probed with the smallest program or map that needs it (a kernel version says little on
//! distributions that backport BPF features, like RHEL 9's 5.14). A kernel without one is
//! refused with the feature's name and the Linux version that brought it, instead of a
//! verifier log. Features with a fallback (TCX → clsact, batch map operations → single
//! ones) are detected where they are used and are not checked here.

use std::ffi::CStr;

/// One kernel feature the programs need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    /// The first Linux release that has it.
    pub since: &'static str,
    probe: Probe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// A program of this type and expected attach type: `r0 = 1; exit`.
    Hook { program_type: u32, attach_type: u32 },
    /// A connect4 program that calls `bpf_set_retval`.
    SetRetval,
    /// A program with a 64-bit atomic add that fetches the old value (BPF ISA v3).
    AtomicFetch,
    /// A BPF ring buffer map.
    RingBuffer,
}

// uapi/linux/bpf.h numbers.
const BPF_MAP_CREATE: i64 = 0;
const BPF_PROG_LOAD: i64 = 5;
const PROG_TYPE_CGROUP_SKB: u32 = 8;
const PROG_TYPE_CGROUP_SOCK: u32 = 9;
const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const ATTACH_INET_EGRESS: u32 = 1;
const ATTACH_INET4_CONNECT: u32 = 10;
const ATTACH_INET4_GETPEERNAME: u32 = 29;
const ATTACH_INET_SOCK_RELEASE: u32 = 34;
const MAP_TYPE_RINGBUF: u32 = 27;
const HELPER_SET_RETVAL: i32 = 187;

/// What weft's programs need (the README's kernel table lists the same).
pub const REQUIRED: [Feature; 5] = [
    Feature {
        name: "BPF atomic operations that fetch (BPF ISA v3)",
        since: "5.12",
        probe: Probe::AtomicFetch,
    },
    Feature {
        name: "BPF ring buffers",
        since: "5.8",
        probe: Probe::RingBuffer,
    },
    Feature {
        name: "cgroup getpeername hooks",
        since: "5.8",
        probe: Probe::Hook {
            program_type: PROG_TYPE_CGROUP_SOCK_ADDR,
            attach_type: ATTACH_INET4_GETPEERNAME,
        },
    },
    Feature {
        name: "the cgroup sock_release hook",
        since: "5.9",
        probe: Probe::Hook {
            program_type: PROG_TYPE_CGROUP_SOCK,
            attach_type: ATTACH_INET_SOCK_RELEASE,
        },
    },
    Feature {
        name: "bpf_set_retval in cgroup connect hooks",
        since: "5.18",
        probe: Probe::SetRetval,
    },
];

/// The required features this kernel lacks (none: weft can load).
pub fn missing() -> Vec<Feature> {
    REQUIRED
        .into_iter()
        .filter(|feature| !present(feature.probe))
        .collect()
}

/// The refusal for a kernel that lacks `missing`, naming each feature once.
pub fn refusal(missing: &[Feature]) -> String {
    let release = kernel_release();
    let needs: Vec<String> = missing
        .iter()
        .map(|f| format!("{} (Linux {})", f.name, f.since))
        .collect();
    let newest = missing.iter().map(|f| f.since).max_by(|a, b| {
        let parts = |v: &str| -> Vec<u32> { v.split('.').filter_map(|p| p.parse().ok()).collect() };
        parts(a).cmp(&parts(b))
    });
    format!(
        "this kernel ({release}) lacks what weft's programs need: {}; run weft on Linux {} or later",
        needs.join(", "),
        newest.unwrap_or("5.18")
    )
}

fn kernel_release() -> String {
    // SAFETY: uname fills the zeroed struct; its fields are NUL-terminated.
    unsafe {
        let mut name: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut name) != 0 {
            return "unknown release".into();
        }
        CStr::from_ptr(name.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// One BPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

const MOV64_IMM: u8 = 0xb7;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const STORE_DW_IMM: u8 = 0x7a;
const ATOMIC_DW: u8 = 0xdb;
const ATOMIC_ADD_FETCH: i32 = 0x01;

fn present(probe: Probe) -> bool {
    let allow = [insn(MOV64_IMM, 0, 0, 0, 1), insn(EXIT, 0, 0, 0, 0)];
    match probe {
        Probe::Hook {
            program_type,
            attach_type,
        } => loads(program_type, attach_type, &allow),
        Probe::SetRetval => loads(
            PROG_TYPE_CGROUP_SOCK_ADDR,
            ATTACH_INET4_CONNECT,
            &[
                insn(MOV64_IMM, 1, 0, 0, 0),
                insn(CALL, 0, 0, 0, HELPER_SET_RETVAL),
                insn(MOV64_IMM, 0, 0, 0, 1),
                insn(EXIT, 0, 0, 0, 0),
            ],
        ),
        Probe::AtomicFetch => loads(
            PROG_TYPE_CGROUP_SKB,
            ATTACH_INET_EGRESS,
            &[
                insn(STORE_DW_IMM, 10, 0, -8, 0),
                insn(MOV64_IMM, 1, 0, 0, 1),
                insn(ATOMIC_DW, 10, 1, -8, ATOMIC_ADD_FETCH),
                insn(MOV64_IMM, 0, 0, 0, 1),
                insn(EXIT, 0, 0, 0, 0),
            ],
        ),
        Probe::RingBuffer => {
            let mut attr = [0u32; 32];
            // bpf_attr.map_create: map_type, key_size, value_size, max_entries.
            attr[0] = MAP_TYPE_RINGBUF;
            attr[3] = 4096;
            closes(bpf(BPF_MAP_CREATE, &mut attr))
        }
    }
}

/// Whether the kernel accepts a program of `program_type` for `attach_type` made of `insns`.
fn loads(program_type: u32, attach_type: u32, insns: &[Insn]) -> bool {
    let license = c"GPL";
    let mut attr = [0u32; 32];
    // bpf_attr.prog_load: prog_type, insn_cnt, insns (u64), license (u64), log_level,
    // log_size, log_buf (u64), kern_version, prog_flags, prog_name[16], prog_ifindex,
    // expected_attach_type (at byte 68).
    attr[0] = program_type;
    attr[1] = insns.len() as u32;
    let insns_ptr = insns.as_ptr() as u64;
    attr[2] = insns_ptr as u32;
    attr[3] = (insns_ptr >> 32) as u32;
    let license_ptr = license.as_ptr() as u64;
    attr[4] = license_ptr as u32;
    attr[5] = (license_ptr >> 32) as u32;
    attr[17] = attach_type;
    closes(bpf(BPF_PROG_LOAD, &mut attr))
}

fn bpf(cmd: i64, attr: &mut [u32; 32]) -> i64 {
    // SAFETY: attr is a zeroed buffer larger than the bpf_attr members these commands read;
    // the pointers in it outlive the call.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    }
}

/// True if `fd` is a descriptor (the kernel made the object), which is closed again. A
/// refusal for want of privileges says nothing about the kernel: it counts as present, and
/// loading the programs then reports the missing capability.
fn closes(fd: i64) -> bool {
    if fd < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error();
        return matches!(errno, Some(libc::EPERM | libc::EACCES));
    }
    // SAFETY: the descriptor the kernel just returned, closed once.
    unsafe { libc::close(fd as i32) };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_has_every_feature_weft_needs() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "probing the kernel needs root (CI=true, so this is a failure)"
            );
            eprintln!("SKIPPED: probing the kernel's BPF features needs root");
            return;
        }
        assert_eq!(missing(), Vec::<Feature>::new());
        // And a probe can fail: no kernel has helper 9999.
        let unknown_helper = [
            insn(CALL, 0, 0, 0, 9999),
            insn(MOV64_IMM, 0, 0, 0, 1),
            insn(EXIT, 0, 0, 0, 0),
        ];
        assert!(!loads(
            PROG_TYPE_CGROUP_SOCK_ADDR,
            ATTACH_INET4_CONNECT,
            &unknown_helper
        ));
    }

    #[test]
    fn a_refusal_names_each_missing_feature_and_the_release_that_has_them_all() {
        let message = refusal(&[REQUIRED[2], REQUIRED[4]]);
        assert!(
            message.contains("cgroup getpeername hooks (Linux 5.8)"),
            "{message}"
        );
        assert!(
            message.contains("bpf_set_retval in cgroup connect hooks (Linux 5.18)"),
            "{message}"
        );
        assert!(
            message.ends_with("run weft on Linux 5.18 or later"),
            "{message}"
        );
    }
}
