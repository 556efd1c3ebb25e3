//! The clsact qdisc once weft's filters are gone: removed when no filter is left on it, so
//! `weft reset` leaves an interface as it found it on kernels without TCX, and kept while
//! another tool's filters use it. aya adds the qdisc but neither lists filters nor deletes
//! qdiscs, so this speaks rtnetlink itself: one filter dump per direction, one delete.

use std::{io, mem::size_of};

/// `TC_H_CLSACT` (the same major as the ingress qdisc) and its two filter parents.
const QDISC_PARENT: u32 = 0xffff_fff1;
const QDISC_HANDLE: u32 = 0xffff_0000;
const INGRESS_FILTERS: u32 = 0xffff_fff2;
const EGRESS_FILTERS: u32 = 0xffff_fff3;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct TcMsg {
    family: u8,
    _pad1: u8,
    _pad2: u16,
    ifindex: i32,
    handle: u32,
    parent: u32,
    info: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    header: NlMsgHdr,
    tc: TcMsg,
}

/// Removes the clsact qdisc of `ifindex` if neither direction holds a filter. Returns
/// whether it removed it.
pub fn remove_if_unused(ifindex: u32) -> io::Result<bool> {
    let socket = Socket::open()?;
    for parent in [INGRESS_FILTERS, EGRESS_FILTERS] {
        if socket.filters(ifindex, parent)? > 0 {
            return Ok(false);
        }
    }
    match socket.delete_qdisc(ifindex) {
        Ok(()) => Ok(true),
        // No clsact qdisc there (anymore): nothing to remove.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => Ok(false),
        Err(e) => Err(e),
    }
}

struct Socket(std::os::fd::OwnedFd);

impl Socket {
    fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2); the fd is owned from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nothing else owns.
        Ok(Socket(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }

    fn send(&self, kind: u16, flags: u16, tc: TcMsg) -> io::Result<()> {
        let request = Request {
            header: NlMsgHdr {
                len: size_of::<Request>() as u32,
                kind,
                flags: libc::NLM_F_REQUEST as u16 | flags,
                seq: 1,
                pid: 0,
            },
            tc,
        };
        // SAFETY: `request` is a plain repr(C) value read for its size; the kernel's
        // address is the zeroed sockaddr_nl.
        let sent = unsafe {
            let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
            kernel.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                (&raw const request).cast(),
                size_of::<Request>(),
                0,
                (&raw const kernel).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads replies until the dump is done or the acknowledgement came, calling `each`
    /// with the type of every other message.
    fn replies(&self, mut each: impl FnMut(u16)) -> io::Result<()> {
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: the buffer is writable for its length.
            let read = unsafe {
                libc::recv(
                    std::os::fd::AsRawFd::as_raw_fd(&self.0),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if read < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut at = 0usize;
            let read = read as usize;
            while at + size_of::<NlMsgHdr>() <= read {
                // SAFETY: at least a header's bytes are left; read unaligned.
                let header: NlMsgHdr =
                    unsafe { std::ptr::read_unaligned(buffer[at..].as_ptr().cast()) };
                let len = header.len as usize;
                if len < size_of::<NlMsgHdr>() || at + len > read {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bad netlink reply",
                    ));
                }
                match i32::from(header.kind) {
                    libc::NLMSG_DONE => return Ok(()),
                    libc::NLMSG_ERROR => {
                        // An error message: its code (0 acknowledges), then the request.
                        let code_at = at + size_of::<NlMsgHdr>();
                        let code = buffer
                            .get(code_at..code_at + 4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        return if code == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    _ => each(header.kind),
                }
                // Messages are 4-byte aligned.
                at += (len + 3) & !3;
            }
        }
    }

    /// Filters under `parent` on `ifindex` (a clsact direction).
    fn filters(&self, ifindex: u32, parent: u32) -> io::Result<usize> {
        self.send(
            libc::RTM_GETTFILTER,
            libc::NLM_F_DUMP as u16,
            TcMsg {
                family: libc::AF_UNSPEC as u8,
                ifindex: ifindex as i32,
                parent,
                ..TcMsg::default()
            },
        )?;
        let mut count = 0;
        self.replies(|kind| count += usize::from(kind == libc::RTM_NEWTFILTER))?;
        Ok(count)
    }

    fn delete_qdisc(&self, ifindex: u32) -> io::Result<()> {
        self.send(
            libc::RTM_DELQDISC,
            libc::NLM_F_ACK as u16,
            TcMsg {
                family: libc::AF_UNSPEC as u8,
                ifindex: ifindex as i32,
                handle: QDISC_HANDLE,
                parent: QDISC_PARENT,
                ..TcMsg::default()
            },
        )?;
        self.replies(|_| {})
    }
}
