//! Attaching the socket programs to a cgroup as pinned links, or adopting the links an
//! earlier agent pinned: the new program is swapped into the existing link atomically, so
//! traffic never runs without a program and nothing is attached twice.

use std::{fs::File, path::Path};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSockAddr,
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
                    .attach(&cgroup_fd, CgroupAttachMode::Single)
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
