//! Attaching the programs to a cgroup as pinned links, or adopting the links an earlier
//! agent pinned: the new program is swapped into the existing link atomically
//! (BPF_LINK_UPDATE), so traffic never runs without a program and nothing is attached twice.

use std::{
    ffi::CString,
    fs::File,
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, ProgramError,
        SockOps, links::FdLink,
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

/// Runs when a socket is released: removes the reverse-NAT entries it created.
pub const SOCK_RELEASE: &str = "weft_sock_release";

/// Count the datagrams of translated UDP sockets, out and in (cgroup skb).
pub const UDP_ACCOUNTING: [&str; 2] = ["weft_udp_egress", "weft_udp_ingress"];

/// Every program weft attaches to the cgroup.
pub fn all_programs() -> impl Iterator<Item = &'static str> {
    PROGRAMS
        .into_iter()
        .chain([SOCK_OPS, SOCK_RELEASE])
        .chain(UDP_ACCOUNTING)
}

pub fn attach_all(
    ebpf: &mut Ebpf,
    cgroup: &Path,
    links_dir: &Path,
) -> Result<Vec<Attachment>, DatapathError> {
    let cgroup_fd = File::open(cgroup).map_err(|error| DatapathError::Io {
        what: "opening cgroup",
        path: cgroup.to_path_buf(),
        error,
    })?;
    let mut attachments = Vec::with_capacity(PROGRAMS.len() + 4);
    // The release program first: a socket translated from the moment connect4/sendmsg
    // attach must find it at its release.
    attachments.push(attach_one::<CgroupSock>(
        ebpf,
        SOCK_RELEASE,
        &cgroup_fd,
        links_dir,
    )?);
    for name in PROGRAMS {
        attachments.push(attach_one::<CgroupSockAddr>(
            ebpf, name, &cgroup_fd, links_dir,
        )?);
    }
    attachments.push(attach_one::<SockOps>(
        ebpf, SOCK_OPS, &cgroup_fd, links_dir,
    )?);
    for name in UDP_ACCOUNTING {
        attachments.push(attach_one::<CgroupSkb>(ebpf, name, &cgroup_fd, links_dir)?);
    }
    Ok(attachments)
}

/// The cgroup program types weft attaches; aya gives them the same methods but no trait.
trait CgroupProgram {
    fn load_program(&mut self) -> Result<(), ProgramError>;
    fn raw_fd(&self) -> Result<i32, ProgramError>;
    /// Attaches to the cgroup and hands over the link, for pinning.
    fn attach_link(&mut self, cgroup: &File) -> Result<FdLink, ProgramError>;
}

macro_rules! cgroup_program {
    ($type:ty) => {
        impl CgroupProgram for $type {
            fn load_program(&mut self) -> Result<(), ProgramError> {
                self.load()
            }

            fn raw_fd(&self) -> Result<i32, ProgramError> {
                Ok(self.fd()?.as_fd().as_raw_fd())
            }

            fn attach_link(&mut self, cgroup: &File) -> Result<FdLink, ProgramError> {
                let id = self.attach(cgroup, CgroupAttachMode::Single)?;
                Ok(FdLink::try_from(self.take_link(id)?)?)
            }
        }
    };
}

cgroup_program!(CgroupSock);

/// A cgroup skb program attaches the way its section names (`cgroup_skb/egress`).
impl CgroupProgram for CgroupSkb {
    fn load_program(&mut self) -> Result<(), ProgramError> {
        self.load()
    }

    fn raw_fd(&self) -> Result<i32, ProgramError> {
        Ok(self.fd()?.as_fd().as_raw_fd())
    }

    fn attach_link(&mut self, cgroup: &File) -> Result<FdLink, ProgramError> {
        let direction = self
            .expected_attach_type()
            .unwrap_or(CgroupSkbAttachType::Egress);
        let id = self.attach(cgroup, direction, CgroupAttachMode::Single)?;
        Ok(FdLink::try_from(self.take_link(id)?)?)
    }
}
cgroup_program!(CgroupSockAddr);
cgroup_program!(SockOps);

/// Loads a program, then swaps it into the link pinned under `links_dir` or attaches it anew
/// and pins the link (the pin keeps it attached after the agent exits).
fn attach_one<P>(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
    links_dir: &Path,
) -> Result<Attachment, DatapathError>
where
    P: CgroupProgram,
    for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program: &mut P = program_mut(ebpf, name)?;
    program.load_program().map_err(program_error(name))?;
    let pin = links_dir.join(name);
    let adopted = pin.exists();
    if adopted {
        let fd = program.raw_fd().map_err(program_error(name))?;
        update_pinned_link(&pin, fd).map_err(|error| DatapathError::Link {
            path: pin.clone(),
            error: Box::new(error),
        })?;
    } else {
        let link = program.attach_link(cgroup).map_err(program_error(name))?;
        link.pin(&pin).map_err(|e| DatapathError::Link {
            path: pin.clone(),
            error: Box::new(e),
        })?;
    }
    Ok(Attachment {
        program: name,
        adopted,
    })
}

pub(super) fn program_mut<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut P, DatapathError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DatapathError::Program {
            program: name,
            error: Box::new(ProgramError::UnexpectedProgramType),
        })?
        .try_into()
        .map_err(program_error(name))
}

pub(super) fn program_error(program: &'static str) -> impl Fn(ProgramError) -> DatapathError {
    move |source| DatapathError::Program {
        program,
        error: Box::new(source),
    }
}

/// BPF_LINK_UPDATE on a pinned link: the kernel swaps the program atomically. The error is
/// the kernel's (ENOLINK: the link's target, such as an interface, is gone).
pub(super) fn update_pinned_link(pin: &Path, program_fd: i32) -> std::io::Result<()> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_UPDATE: libc::c_long = 29;
    let path = CString::new(pin.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
    let fd = bpf(BPF_OBJ_GET, [path.as_ptr() as u64, 0, 0, 0, 0, 0, 0, 0])?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns; dropping closes it, and
    // the pin keeps the link.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // bpf_attr for BPF_LINK_UPDATE: link_fd (u32), new_prog_fd (u32), flags, old_prog_fd.
    let fds = (link.as_raw_fd() as u64 & 0xffff_ffff) | ((program_fd as u64) << 32);
    bpf(BPF_LINK_UPDATE, [fds, 0, 0, 0, 0, 0, 0, 0])?;
    Ok(())
}

/// bpf(2) with an attribute block larger than any union member used here.
fn bpf(cmd: libc::c_long, mut attr: [u64; 8]) -> std::io::Result<libc::c_long> {
    // SAFETY: attr lives across the call; the kernel reads at most size_of_val(&attr) bytes
    // and requires the unused tail to be zero, which it is.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}
