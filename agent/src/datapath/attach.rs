//! Attaching the socket programs to a cgroup as pinned links, or adopting the links an
//! earlier agent pinned: the new program is swapped into the existing link atomically, so
//! traffic never runs without a program and nothing is attached twice.

use std::{
    ffi::CString,
    fs::File,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSockAddr, SockOps,
        cgroup_sock_addr::CgroupSockAddrLink,
        links::{FdLink, PinnedLink},
    },
};

use super::DatapathError;

/// The socket programs, by function name in the kernel object.
pub const PROGRAMS: [&str; 8] = [
    "weft_connect4",
    "weft_connect6",
    "weft_sendmsg4",
    "weft_sendmsg6",
    "weft_recvmsg4",
    "weft_recvmsg6",
    "weft_getpeer4",
    "weft_getpeer6",
];

#[derive(Debug, Clone)]
pub struct Attachment {
    pub program: &'static str,
    /// True when an earlier agent's pinned link was reused.
    pub adopted: bool,
}

/// The connection-lifecycle program.
pub const SOCK_OPS: &str = "weft_sock_ops";

pub fn attach_all(
    ebpf: &mut Ebpf,
    cgroup: &Path,
    links_dir: &Path,
) -> Result<Vec<Attachment>, DatapathError> {
    let cgroup_fd = File::open(cgroup).map_err(|source| DatapathError::Io {
        what: "opening cgroup",
        path: cgroup.to_path_buf(),
        source,
    })?;
    let mut attachments = attach_sock_addr(ebpf, &cgroup_fd, links_dir)?;
    attachments.push(attach_sock_ops(ebpf, &cgroup_fd, links_dir)?);
    Ok(attachments)
}

fn attach_sock_ops(
    ebpf: &mut Ebpf,
    cgroup_fd: &File,
    links_dir: &Path,
) -> Result<Attachment, DatapathError> {
    let program_error = |source| DatapathError::Program {
        program: SOCK_OPS,
        source: Box::new(source),
    };
    let program: &mut SockOps = ebpf
        .program_mut(SOCK_OPS)
        .ok_or(DatapathError::Program {
            program: SOCK_OPS,
            source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
        })?
        .try_into()
        .map_err(program_error)?;
    program.load().map_err(program_error)?;
    let pin = links_dir.join(SOCK_OPS);
    let adopted = pin.exists();
    if adopted {
        // aya cannot rebuild a SockOpsLink from a pin, so swap the program in directly.
        let program_fd = program.fd().map_err(program_error)?;
        update_pinned_link(&pin, program_fd.as_fd().as_raw_fd())?;
    } else {
        let link_id = program
            .attach(cgroup_fd, CgroupAttachMode::Single)
            .map_err(program_error)?;
        let link =
            FdLink::try_from(program.take_link(link_id).map_err(program_error)?).map_err(|e| {
                DatapathError::Link {
                    path: pin.clone(),
                    source: Box::new(e),
                }
            })?;
        link.pin(&pin).map_err(|e| DatapathError::Link {
            path: pin.clone(),
            source: Box::new(e),
        })?;
    }
    Ok(Attachment {
        program: SOCK_OPS,
        adopted,
    })
}

/// BPF_LINK_UPDATE on a pinned link: the kernel swaps the program atomically.
fn update_pinned_link(pin: &Path, program_fd: i32) -> Result<(), DatapathError> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_UPDATE: libc::c_long = 29;
    let link_error = |source: std::io::Error| DatapathError::Link {
        path: pin.to_path_buf(),
        source: Box::new(source),
    };
    let path = CString::new(pin.as_os_str().as_bytes())
        .map_err(|e| link_error(std::io::Error::other(e)))?;
    // bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut attr = [0u64; 8];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: attr outlives the call and is larger than the union member the kernel reads.
    let link_fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if link_fd < 0 {
        return Err(link_error(std::io::Error::last_os_error()));
    }
    // bpf_attr for BPF_LINK_UPDATE: link_fd (u32), new_prog_fd (u32), flags, old_prog_fd.
    let mut attr = [0u64; 8];
    attr[0] = (link_fd as u64 & 0xffff_ffff) | ((program_fd as u64) << 32);
    // SAFETY: as above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_UPDATE,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    let error = std::io::Error::last_os_error();
    // SAFETY: closing the fd BPF_OBJ_GET gave us; the pin keeps the link.
    unsafe { libc::close(link_fd as i32) };
    if rc < 0 {
        return Err(link_error(error));
    }
    Ok(())
}

fn attach_sock_addr(
    ebpf: &mut Ebpf,
    cgroup_fd: &File,
    links_dir: &Path,
) -> Result<Vec<Attachment>, DatapathError> {
    PROGRAMS
        .iter()
        .map(|&name| {
            let program_error = |source| DatapathError::Program {
                program: name,
                source: Box::new(source),
            };
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(DatapathError::Program {
                    program: name,
                    source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
                })?
                .try_into()
                .map_err(program_error)?;
            program.load().map_err(program_error)?;
            let pin = links_dir.join(name);
            let adopted = pin.exists();
            if adopted {
                let link_error =
                    |source: Box<dyn std::error::Error + Send + Sync>| DatapathError::Link {
                        path: pin.clone(),
                        source,
                    };
                let pinned = PinnedLink::from_pin(&pin).map_err(|e| link_error(Box::new(e)))?;
                let link = CgroupSockAddrLink::try_from(FdLink::from(pinned))
                    .map_err(|e| link_error(Box::new(e)))?;
                program.attach_to_link(link).map_err(program_error)?;
            } else {
                let link_id = program
                    .attach(cgroup_fd, CgroupAttachMode::Single)
                    .map_err(program_error)?;
                let link = FdLink::try_from(program.take_link(link_id).map_err(program_error)?)
                    .map_err(|e| DatapathError::Link {
                        path: pin.clone(),
                        source: Box::new(e),
                    })?;
                // The pin keeps the link (and so the program) attached after we exit.
                link.pin(&pin).map_err(|e| DatapathError::Link {
                    path: pin.clone(),
                    source: Box::new(e),
                })?;
            }
            Ok(Attachment {
                program: name,
                adopted,
            })
        })
        .collect()
}
