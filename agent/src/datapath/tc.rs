//! The TC programs on the interfaces the operator names: translation for packets the socket
//! hooks never see (forwarded from other namespaces, VMs or hosts).
//!
//! Two ways to attach, chosen once per agent by what the kernel has:
//! - TCX (6.6+): a link per interface and direction, pinned as `links/tc-in@IFACE` and
//!   `links/tc-out@IFACE` like the socket programs' links. A restarted agent swaps its new
//!   program into the pinned link (BPF_LINK_UPDATE); a link whose interface went away
//!   (ENOLINK) is replaced by a fresh one.
//! - clsact (older kernels): a direct-action cls_bpf filter at a fixed priority and handle,
//!   which a restarted agent replaces in place, so no packet ever runs without a program.
//!   A netlink filter has no fd to pin: the kernel's filter keeps the program, and
//!   `weft reset` finds weft's filters by program name.
//!
//! Ingress runs first among TCX programs (the service address is translated before anyone
//! else looks, as kube-proxy's PREROUTING DNAT is), egress last.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        links::FdLink,
        tc::{self, NlOptions, SchedClassifierLink, TcAttach, TcError, TcHandle},
    },
};
use tracing::{info, warn};

use super::{
    DatapathError,
    attach::{program_error, program_mut, update_pinned_link},
};

/// The kernel object's TC programs.
pub const INGRESS: &str = "weft_tc_ingress";
pub const EGRESS: &str = "weft_tc_egress";

/// Where weft's clsact filters sit: a fixed place, so a restart replaces its own filter
/// instead of adding a second one. Chosen away from 1 and the kernel's automatic 49152, the
/// places other tools (and a bare `tc filter add`) take.
const CLSACT_PRIORITY: u16 = 0x5746;
const CLSACT_HANDLE: u32 = 0x5746;

/// How the kernel lets TC programs attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMode {
    Tcx,
    Clsact,
}

impl TcMode {
    /// TCX if the kernel answers a TCX query on the loopback interface (every namespace has
    /// one, index 1); clsact otherwise. `WEFT_TC_MODE=clsact` forces clsact, so the path
    /// older kernels take can be exercised on a new one.
    pub fn detect() -> TcMode {
        if std::env::var("WEFT_TC_MODE").is_ok_and(|m| m == "clsact") {
            return TcMode::Clsact;
        }
        match SchedClassifier::query_tcx(1u32, TcAttachType::Ingress) {
            Ok(_) => TcMode::Tcx,
            Err(_) => TcMode::Clsact,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TcMode::Tcx => "tcx",
            TcMode::Clsact => "clsact",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    fn program(self) -> &'static str {
        match self {
            Direction::Ingress => INGRESS,
            Direction::Egress => EGRESS,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        }
    }

    fn pin_prefix(self) -> &'static str {
        match self {
            Direction::Ingress => "tc-in@",
            Direction::Egress => "tc-out@",
        }
    }

    fn order(self) -> LinkOrder {
        match self {
            Direction::Ingress => LinkOrder::first(),
            Direction::Egress => LinkOrder::last(),
        }
    }
}

/// One program on one interface, as the admin API shows it.
#[derive(Clone, Debug)]
pub struct TcAttachment {
    /// `weft_tc_ingress@eth0`.
    pub name: String,
    pub adopted: bool,
    /// The pinned link (TCX only).
    pub pin: Option<PathBuf>,
}

/// Whether `name` is a pin this module makes.
pub fn is_tc_pin(name: &str) -> bool {
    name.starts_with("tc-in@") || name.starts_with("tc-out@")
}

/// Loads the TC programs and attaches them to every interface in `interfaces`, adopting
/// what an earlier agent attached. Pins for interfaces no longer named are removed (which
/// detaches their programs).
pub fn attach_all(
    ebpf: &mut Ebpf,
    interfaces: &[String],
    links_dir: &Path,
    mode: TcMode,
) -> Result<Vec<TcAttachment>, DatapathError> {
    remove_stray_pins(links_dir, interfaces)?;
    // Filters of an earlier agent on interfaces no longer named would keep running its
    // program with maps nobody maintains any more.
    let stale = detach_clsact_filters(interfaces);
    if stale > 0 {
        info!(
            filters = stale,
            "removed TC filters from interfaces no longer named"
        );
    }
    if interfaces.is_empty() {
        return Ok(Vec::new());
    }
    let mut attachments = Vec::with_capacity(interfaces.len() * 2);
    for direction in Direction::BOTH {
        let program: &mut SchedClassifier = program_mut(ebpf, direction.program())?;
        program.load().map_err(program_error(direction.program()))?;
        for interface in interfaces {
            let attachment = match mode {
                TcMode::Tcx => attach_tcx(program, interface, direction, links_dir)?,
                TcMode::Clsact => attach_clsact(program, interface, direction)?,
            };
            info!(
                program = %attachment.name,
                adopted = attachment.adopted,
                mode = mode.as_str(),
                "TC program attached"
            );
            attachments.push(attachment);
        }
    }
    Ok(attachments)
}

fn attach_tcx(
    program: &mut SchedClassifier,
    interface: &str,
    direction: Direction,
    links_dir: &Path,
) -> Result<TcAttachment, DatapathError> {
    let name = format!("{}@{interface}", direction.program());
    let pin = links_dir.join(format!("{}{interface}", direction.pin_prefix()));
    let mut adopted = false;
    if pin.exists() {
        let fd = program_fd(program, direction.program())?;
        match update_pinned_link(&pin, fd) {
            Ok(()) => adopted = true,
            // The interface the link was on is gone (perhaps re-created under the same
            // name): the link is defunct, a fresh one takes its place.
            Err(error) if error.raw_os_error() == Some(libc::ENOLINK) => {
                warn!(link = %pin.display(), "pinned TC link is defunct (its interface went away); attaching anew");
                std::fs::remove_file(&pin).map_err(|error| DatapathError::Io {
                    what: "removing",
                    path: pin.clone(),
                    error,
                })?;
            }
            Err(error) => {
                return Err(DatapathError::Link {
                    path: pin,
                    error: Box::new(error),
                });
            }
        }
    }
    if !adopted {
        let interface_c = interface_name(interface)?;
        let id = program
            .attach(
                &interface_c,
                TcAttach::Tcx {
                    attach_type: direction.attach_type(),
                    order: direction.order(),
                },
            )
            .map_err(interface_error(interface, direction))?;
        let link = program
            .take_link(id)
            .map_err(interface_error(interface, direction))?;
        let link = FdLink::try_from(link).map_err(|e| DatapathError::Link {
            path: pin.clone(),
            error: Box::new(e),
        })?;
        link.pin(&pin).map_err(|e| DatapathError::Link {
            path: pin.clone(),
            error: Box::new(e),
        })?;
    }
    Ok(TcAttachment {
        name,
        adopted,
        pin: Some(pin),
    })
}

fn attach_clsact(
    program: &mut SchedClassifier,
    interface: &str,
    direction: Direction,
) -> Result<TcAttachment, DatapathError> {
    let name = format!("{}@{interface}", direction.program());
    let interface_c = interface_name(interface)?;
    match tc::qdisc_add_clsact(&interface_c) {
        Ok(()) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(interface_error(interface, direction)(e.into())),
    }
    let parent: TcHandle = direction.attach_type().into();
    let handle = TcHandle::from(CLSACT_HANDLE);
    // Replace weft's filter in place if it is there (no packet runs without a program);
    // the kernel answers ENOENT if not, and the filter is created.
    let existing =
        SchedClassifierLink::attached(&interface_c, parent, CLSACT_PRIORITY, handle, None)
            .map_err(|e| interface_error(interface, direction)(ProgramError::IOError(e)))?;
    let (id, adopted) = match program.attach_to_link(existing) {
        Ok(id) => (id, true),
        Err(error) if !is_not_found(&error) => {
            return Err(interface_error(interface, direction)(error));
        }
        Err(_) => {
            let id = program
                .attach(
                    &interface_c,
                    TcAttach::Netlink {
                        parent,
                        options: NlOptions {
                            priority: CLSACT_PRIORITY,
                            handle,
                            classid: None,
                        },
                    },
                )
                .map_err(interface_error(interface, direction))?;
            (id, false)
        }
    };
    let link = program
        .take_link(id)
        .map_err(interface_error(interface, direction))?;
    // Dropping the link would detach the filter; the filter must outlive the agent (it holds
    // the program itself), so the wrapper, which owns no fd, is forgotten.
    std::mem::forget(link);
    Ok(TcAttachment {
        name,
        adopted,
        pin: None,
    })
}

/// Whether a netlink filter replace failed because there was no filter to replace.
fn is_not_found(error: &ProgramError) -> bool {
    matches!(error, ProgramError::TcError(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::ENOENT))
}

/// Removes weft's clsact filters from every interface of this network namespace except
/// `keep` (TCX links go with their pins), and the clsact qdisc of an interface that had
/// them once no filter is left on it (another tool's filters keep it). Returns how many
/// filters (one per interface and direction) went.
pub fn detach_clsact_filters(keep: &[String]) -> usize {
    let mut removed = 0;
    for interface in interfaces().into_iter().filter(|i| !keep.contains(&i.name)) {
        let Ok(interface_c) = CString::new(interface.name.as_str()) else {
            continue;
        };
        let mut had_ours = false;
        for direction in Direction::BOTH {
            let parent: TcHandle = direction.attach_type().into();
            // NotFound (no filter of ours) and interfaces without clsact are the common case.
            if tc::qdisc_detach_program(&interface_c, parent, direction.program()).is_ok() {
                removed += 1;
                had_ours = true;
            }
        }
        if had_ours {
            remove_unused_clsact(&interface);
        }
    }
    removed
}

fn remove_unused_clsact(Interface { index, name }: &Interface) {
    let interface = name.as_str();
    match super::clsact::remove_if_unused(*index) {
        Ok(true) => info!(interface, "removed the clsact qdisc (no filter left on it)"),
        Ok(false) => {}
        // The filters are gone either way; an idle qdisc costs nothing.
        Err(error) => warn!(interface, %error, "could not remove the clsact qdisc"),
    }
}

/// Unpins TC links of interfaces not in `keep` (unpinning the last reference detaches).
fn remove_stray_pins(links_dir: &Path, keep: &[String]) -> Result<(), DatapathError> {
    let Ok(read) = std::fs::read_dir(links_dir) else {
        return Ok(());
    };
    for entry in read.filter_map(Result::ok) {
        let file_name = entry.file_name();
        let name = file_name.to_string_lossy();
        let Some((_, interface)) = name.split_once('@') else {
            continue;
        };
        if is_tc_pin(&name) && !keep.iter().any(|k| k == interface) {
            let path = entry.path();
            info!(link = %path.display(), "removing the TC link of an interface no longer named");
            std::fs::remove_file(&path).map_err(|error| DatapathError::Io {
                what: "removing",
                path,
                error,
            })?;
        }
    }
    Ok(())
}

/// A network interface of this process's namespace.
struct Interface {
    index: u32,
    name: String,
}

/// The interfaces of this process's network namespace.
fn interfaces() -> Vec<Interface> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns an array ending in a zeroed entry, or NULL; every name is
    // a NUL-terminated string; the array is freed once, after the last read.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return names;
        }
        let mut entry = list;
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            names.push(Interface {
                index: (*entry).if_index,
                name: std::ffi::CStr::from_ptr((*entry).if_name)
                    .to_string_lossy()
                    .into_owned(),
            });
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    names
}

fn interface_name(interface: &str) -> Result<CString, DatapathError> {
    CString::new(interface).map_err(|_| DatapathError::Interface {
        interface: interface.to_string(),
        program: INGRESS,
        error: "the name contains a NUL byte".into(),
    })
}

fn program_fd(program: &SchedClassifier, name: &'static str) -> Result<i32, DatapathError> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    Ok(program
        .fd()
        .map_err(program_error(name))?
        .as_fd()
        .as_raw_fd())
}

fn interface_error(
    interface: &str,
    direction: Direction,
) -> impl Fn(ProgramError) -> DatapathError + '_ {
    move |error| DatapathError::Interface {
        interface: interface.to_string(),
        program: direction.program(),
        error: Box::new(error),
    }
}
