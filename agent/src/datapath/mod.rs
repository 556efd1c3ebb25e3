//! The datapath: sole owner of weft's kernel programs, links and maps — the only module that
//! imports aya. It loads and attaches (or adopts what is pinned), writes the maps in commit
//! order from the planner's per-service plans, keeps count of what they hold, and checks
//! that its pins still exist.

mod adopt;
mod attach;
mod batch;
mod error;
mod events;
mod fs;
mod install;
mod maps;
mod observe;
mod pins;
pub mod privileges;
mod reset;

use std::path::{Path, PathBuf};

use aya::{Ebpf, EbpfLoader};
use tracing::{info, warn};

pub use error::DatapathError;
pub use events::{EventReader, EventRing};
pub use fs::discover_cgroup2_root;
pub use install::{ApplyFailure, ApplyReport, Counts, Installed, Removal};
pub use maps::{Maps, MemoryMaps, WriteFailure};
pub use observe::{KernelCounters, Observer};
pub use pins::PinsMissing;
pub use reset::{ResetReport, reset};

use crate::{
    config::Frontend,
    layout,
    plan::ServicePlan,
    store::{Removed, ServiceId},
};

/// The kernel object built by `cargo xtask build` (empty if built otherwise).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft-ebpf.o"));

pub struct Options {
    pub bpffs_dir: PathBuf,
    pub cgroup: PathBuf,
}

pub struct Datapath {
    maps: maps::KernelMaps,
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
            .map_err(|error| DatapathError::Load(Box::new(error)))?;
        let attachments = attach::attach_all(&mut ebpf, &options.cgroup, &layout.links)?;
        for attachment in &attachments {
            info!(
                program = attachment.program,
                adopted = attachment.adopted,
                "program attached"
            );
        }
        let mut maps = maps::KernelMaps::take(&mut ebpf)?;
        let ring = ebpf
            .take_map(weft_common::maps::EVENTS)
            .ok_or(DatapathError::MissingMap {
                map: weft_common::maps::EVENTS,
            })?;
        let ring = aya::maps::RingBuf::try_from(ring).map_err(|error| DatapathError::Map {
            map: weft_common::maps::EVENTS,
            error: Box::new(error),
        })?;
        let observer = Some(Observer::take(&mut ebpf)?);
        let (installed, orphans) = adopt::read_installed(&mut maps)?;
        if orphans > 0 {
            warn!(
                orphans,
                "removed table chunks no service referenced (earlier agent stopped mid-update)"
            );
        }
        let counts = installed.counts();
        info!(
            services = counts.services,
            backends = counts.backends,
            "adopted installed state"
        );
        Ok(Datapath {
            maps,
            events: Some(EventRing(ring)),
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

    /// The read-only view of the kernel-written maps, for whoever serves statistics (once).
    pub fn take_observer(&mut self) -> Option<Observer> {
        self.observer.take()
    }

    /// Whether everything this datapath pinned is still pinned (see `pins`).
    pub fn check_pins(&self) -> Result<(), PinsMissing> {
        self.pins.check()
    }

    /// The programs and whether each was adopted from an earlier agent's pinned link.
    pub fn programs(&self) -> impl Iterator<Item = (&'static str, bool)> + '_ {
        self.attachments.iter().map(|a| (a.program, a.adopted))
    }

    /// Entries the agent's maps hold.
    pub fn counts(&self) -> Counts {
        self.installed.counts()
    }

    /// Whether map writes go in batches (false on kernels without batch operations).
    pub fn batches(&self) -> bool {
        self.maps.batches()
    }

    /// The frontends the kernel serves now, with the service ids it knows them by.
    pub fn installed_frontends(&self) -> Vec<(Frontend, u32)> {
        self.installed
            .service_keys()
            .map(|(key, id)| (layout::frontend_of(&key), id.0))
            .collect()
    }

    pub fn is_installed(&self, id: ServiceId) -> bool {
        self.installed.contains(id)
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

    /// Removes services and writes the planned ones, in commit order. A service whose writes
    /// fail keeps its previous state (reported in `failures`); everything else applies.
    pub fn apply(&mut self, removed: &[Removed], plans: Vec<ServicePlan>) -> ApplyReport {
        let removals = removed
            .iter()
            .map(|r| Removal {
                id: r.id,
                key: layout::service_key(&r.frontend),
            })
            .collect();
        self.installed.apply(&mut self.maps, removals, plans)
    }

    /// Removes installed services `keep` does not want: an earlier agent's that no source
    /// defines any more. Called once the sources have delivered everything.
    pub fn remove_strays(&mut self, keep: impl Fn(ServiceId) -> bool) -> ApplyReport {
        let strays = self.installed.strays(keep);
        self.installed.apply(&mut self.maps, strays, Vec::new())
    }
}

/// Where a bpffs directory keeps maps and links.
pub fn maps_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("maps")
}

pub fn links_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("links")
}
