//! The datapath: sole owner of weft's kernel programs, links and maps — the only module that
//! imports aya. It loads and attaches (or adopts what is pinned), and writes the maps in
//! commit order from the planner's changes.

mod attach;
mod error;
mod events;
mod fs;
mod maps;
mod observe;
mod pins;
mod reset;

use std::path::{Path, PathBuf};

use aya::{Ebpf, EbpfLoader};
use tracing::{info, warn};

pub use error::DatapathError;
pub use events::{EventReader, EventRing};
pub use fs::discover_cgroup2_root;
pub use maps::{ApplyFailure, WriteFailure};
pub use observe::{KernelCounters, Observer};
pub use pins::PinsMissing;
pub use reset::{ResetReport, reset};

use crate::plan::{Changes, Installed};

/// The kernel object built by `cargo xtask build` (empty if built otherwise).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft-ebpf.o"));

pub struct Options {
    pub bpffs_dir: PathBuf,
    pub cgroup: PathBuf,
}

/// What one `apply` did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub services_written: usize,
    pub services_removed: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    /// Services not brought to their desired state (the daemon retries them).
    pub failures: Vec<ApplyFailure>,
}

pub struct Datapath {
    maps: maps::Maps,
    events: Option<EventRing>,
    observer: Option<Observer>,
    attachments: Vec<attach::Attachment>,
    installed: Installed,
    pins: pins::Pins,
    /// Holds the programs (and the links it manages) for the agent's lifetime.
    _ebpf: Ebpf,
}

impl Datapath {
    /// Loads the programs, attaches them to the cgroup or adopts the pinned links of an earlier
    /// agent (swapping in the new programs atomically), and reads back what the maps hold.
    pub fn open(options: &Options) -> Result<Datapath, DatapathError> {
        if OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        fs::raise_memlock_limit();
        let layout = fs::Layout::create(&options.bpffs_dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&layout.maps)
            .load(OBJECT)
            .map_err(|source| DatapathError::Load(Box::new(source)))?;
        let attachments = attach::attach_all(&mut ebpf, &options.cgroup, &layout.links)?;
        for attachment in &attachments {
            info!(
                program = attachment.program,
                adopted = attachment.adopted,
                "program attached"
            );
        }
        let mut maps = maps::Maps::take(&mut ebpf)?;
        let ring = ebpf
            .take_map(weft_common::maps::EVENTS)
            .ok_or(DatapathError::MissingMap {
                map: weft_common::maps::EVENTS,
            })?;
        let ring = aya::maps::RingBuf::try_from(ring).map_err(|source| DatapathError::Map {
            map: weft_common::maps::EVENTS,
            error: Box::new(source),
        })?;
        let events = Some(EventRing(ring));
        let observer = Some(Observer::take(&mut ebpf)?);
        let installed = maps.read_installed()?;
        let orphans = maps.delete_orphan_tables(&installed)?;
        if orphans > 0 {
            warn!(
                orphans,
                "removed table chunks no service referenced (earlier agent stopped mid-update)"
            );
        }
        info!(
            services = installed.services.len(),
            backends = installed.backends.len(),
            "adopted installed state"
        );
        Ok(Datapath {
            maps,
            events,
            observer,
            attachments,
            installed,
            pins: pins::Pins::record(&options.bpffs_dir),
            _ebpf: ebpf,
        })
    }

    /// The connection-event ring, for the task that will read it (once).
    pub fn take_events(&mut self) -> Option<EventRing> {
        self.events.take()
    }

    /// Whether everything this datapath pinned is still pinned (see `pins`).
    pub fn check_pins(&self) -> Result<(), PinsMissing> {
        self.pins.check()
    }

    /// The read-only view of the kernel-written maps, for whoever serves statistics (once).
    pub fn take_observer(&mut self) -> Option<Observer> {
        self.observer.take()
    }

    /// The programs and whether each was adopted from an earlier agent's pinned link.
    pub fn programs(&self) -> impl Iterator<Item = (&'static str, bool)> + '_ {
        self.attachments.iter().map(|a| (a.program, a.adopted))
    }

    pub fn installed(&self) -> &Installed {
        &self.installed
    }

    /// Turns the kernel's per-connection records and events on or off; connect failures are
    /// reported either way.
    pub fn set_connection_stats(&mut self, on: bool) -> Result<(), DatapathError> {
        let bits = if on {
            0
        } else {
            weft_common::settings::CONNECTION_STATS_OFF
        };
        self.maps.write_settings(bits)
    }

    /// Applies changes in commit order. A service whose table cannot be written keeps its
    /// previous one (reported in `failures`); everything else still applies.
    pub fn apply(&mut self, changes: Changes) -> ApplyReport {
        self.maps.apply(&mut self.installed, changes)
    }
}

/// Where a bpffs directory keeps maps and links.
pub fn maps_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("maps")
}

pub fn links_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("links")
}
