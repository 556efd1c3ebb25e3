//! Attaching the programs to a cgroup as pinned links, or adopting the links an earlier
//! agent pinned: the new program is swapped into the existing link atomically
//! (BPF_LINK_UPDATE), so traffic never runs without a program and nothing is attached twice.

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
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, SockOps, links::FdLink},
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
    let mut attachments = Vec::with_capacity(PROGRAMS.len() + 1);
    for name in PROGRAMS {
        let program: &mut CgroupSockAddr = program_mut(ebpf, name)?;
        program.load().map_err(program_error(name))?;
        let adopted = attach_or_adopt(
            name,
            raw_fd(program.fd(), name)?,
            &links_dir.join(name),
            || {
                let id = program.attach(&cgroup_fd, CgroupAttachMode::Single)?;
                FdLink::try_from(program.take_link(id)?).map_err(ProgramError::from)
            },
        )?;
        attachments.push(Attachment {
            program: name,
            adopted,
        });
    }
    let program: &mut SockOps = program_mut(ebpf, SOCK_OPS)?;
    program.load().map_err(program_error(SOCK_OPS))?;
    let adopted = attach_or_adopt(
        SOCK_OPS,
        raw_fd(program.fd(), SOCK_OPS)?,
        &links_dir.join(SOCK_OPS),
        || {
            let id = program.attach(&cgroup_fd, CgroupAttachMode::Single)?;
            FdLink::try_from(program.take_link(id)?).map_err(ProgramError::from)
        },
    )?;
    attachments.push(Attachment {
        program: SOCK_OPS,
        adopted,
    });
    Ok(attachments)
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, DatapathError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DatapathError::Program {
            program: name,
            source: Box::new(ProgramError::UnexpectedProgramType),
        })?
        .try_into()
        .map_err(program_error(name))
}

/// The program's fd as a plain number: it stays open while the program is loaded, and the
/// number does not borrow the program we are about to attach.
fn raw_fd(
    fd: Result<&aya::programs::ProgramFd, ProgramError>,
    name: &'static str,
) -> Result<i32, DatapathError> {
    Ok(fd.map_err(program_error(name))?.as_fd().as_raw_fd())
}

fn program_error(program: &'static str) -> impl Fn(ProgramError) -> DatapathError {
    move |source| DatapathError::Program {
        program,
        source: Box::new(source),
    }
}

/// Swaps the loaded program into the link pinned at `pin`, or attaches anew and pins the
/// link (the pin keeps it attached after the agent exits). True if adopted.
fn attach_or_adopt(
    name: &'static str,
    program_fd: i32,
    pin: &Path,
    attach: impl FnOnce() -> Result<FdLink, ProgramError>,
) -> Result<bool, DatapathError> {
    if pin.exists() {
        update_pinned_link(pin, program_fd)?;
        return Ok(true);
    }
    let link = attach().map_err(program_error(name))?;
    link.pin(pin).map_err(|e| DatapathError::Link {
        path: pin.to_path_buf(),
        source: Box::new(e),
    })?;
    Ok(false)
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
