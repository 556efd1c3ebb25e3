//! The datapath: sole owner of weft's kernel programs, links and maps — the only module that
//! imports aya. It loads and attaches (or adopts what is pinned), writes the maps in commit
//! order from the planner's per-service plans, keeps count of what they hold, and checks
//! that its pins still exist.

mod adopt;
mod attach;
mod batch;
mod clsact;
mod error;
mod events;
mod features;
mod flows;
mod fs;
mod install;
mod kernel_log;
mod maps;
mod observe;
mod pinned_layout;
mod pins;
mod policies;
pub mod privileges;
mod reset;
mod tc;
mod vips;

use std::path::{Path, PathBuf};

use aya::{Ebpf, EbpfLoader};
use tracing::{info, warn};

pub use error::DatapathError;
pub use events::{EventReader, EventRing};
pub use flows::{Flow, FlowExpiry, FlowState, Sweep, age_ms as flow_age_ms};
pub use fs::discover_cgroup2_root;
pub use install::{ApplyFailure, ApplyReport, Counts, Installed, Removal};
pub use kernel_log::{KernelLogLevel, KernelLogRing, TARGET as KERNEL_LOG_TARGET};
pub use maps::{Maps, MemoryMaps, WriteFailure};
pub use observe::{KernelCounters, Observer, TcCounters};
pub use pins::PinsMissing;
pub use reset::{ResetReport, reset};
pub use tc::TcMode;

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
    /// Interfaces the TC programs attach to (none: the TC path is off).
    pub tc_interfaces: Vec<String>,
    /// Entries of the TC flow table when it is created (`tc.max_flows`, two per flow); a
    /// pinned table keeps the size it was created with.
    pub flow_table_entries: u32,
}

/// The TC path's maps: pinned and sized only when TC programs are attached (unattached,
/// the object's one-entry placeholders cost nothing).
const TC_MAPS: [&str; 4] = [
    weft_common::maps::FLOWS,
    weft_common::maps::FRAGS,
    weft_common::maps::VIPS,
    weft_common::maps::TC_COUNTERS,
];

/// Maps the agent writes from its sources alone (nothing in them comes from the kernel).
const FILLED_FROM_SOURCES: [&str; 4] = [
    weft_common::maps::SERVICES,
    weft_common::maps::BACKENDS,
    weft_common::maps::MAGLEV,
    weft_common::maps::POLICY,
];

/// Where a datapath's programs attach.
struct Unattached {
    bpffs_dir: PathBuf,
    cgroup: PathBuf,
    tc_interfaces: Vec<String>,
}

/// Maps whose entry count the agent sets at load (a pinned one keeps its own).
const SIZED_BY_AGENT: [&str; 2] = [weft_common::maps::FLOWS, weft_common::maps::FRAGS];

pub struct Datapath {
    maps: maps::KernelMaps,
    events: Option<EventRing>,
    kernel_log: Option<KernelLogRing>,
    observer: Option<Observer>,
    attachments: Vec<attach::Attachment>,
    tc_attachments: Vec<tc::TcAttachment>,
    /// Service addresses for the TC programs (when they are attached).
    vips: Option<vips::Vips>,
    /// Governance the kernel enforces per service.
    policies: policies::Policies,
    flow_expiry: Option<FlowExpiry>,
    /// Entries the TC flow table was created with (when TC programs are attached).
    flow_table_entries: Option<u32>,
    installed: Installed,
    pins: pins::Pins,
    /// Where the programs go, while `open` holds them back (see `attach_held_back`).
    unattached: Option<Unattached>,
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
        let missing = features::missing();
        if !missing.is_empty() {
            return Err(DatapathError::KernelLacks(features::refusal(&missing)));
        }
        let layout = fs::Layout::create(&options.bpffs_dir)?;
        let tc_on = !options.tc_interfaces.is_empty();
        // Before anything is created or swapped: a pinned map of another layout stops here
        // (not the TC maps when the TC path is off: they are removed below).
        let unused: &[&str] = if tc_on { &[] } else { &TC_MAPS };
        pinned_layout::check(OBJECT, &layout.maps, &SIZED_BY_AGENT, unused)?;
        let mut flow_table_entries = None;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&layout.maps);
        if tc_on {
            for name in TC_MAPS {
                loader.map_pin_path(name, layout.maps.join(name));
            }
            let entries = flows_capacity(
                &layout.maps.join(weft_common::maps::FLOWS),
                options.flow_table_entries,
            );
            loader.map_max_entries(weft_common::maps::FLOWS, entries);
            flow_table_entries = Some(entries);
            loader.map_max_entries(weft_common::maps::FRAGS, weft_common::maps::FRAGS_CAPACITY);
        } else {
            remove_tc_maps(&layout.maps)?;
        }
        // Maps the agent fills from its sources: if one is not pinned while an earlier
        // agent's programs serve (the running release named it otherwise: its layout
        // changed), swapping the programs in now would send them to an empty map. They are
        // swapped in once the first apply has filled it; until then the programs in place
        // keep serving from their own maps.
        let links_pinned = attach::all_programs().any(|name| layout.links.join(name).exists());
        let fresh: Vec<&str> = FILLED_FROM_SOURCES
            .into_iter()
            .filter(|name| !layout.maps.join(name).exists())
            .collect();
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|error| DatapathError::Load(Box::new(error)))?;
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
        let kernel_log = Some(KernelLogRing::take(&mut ebpf)?);
        let observer = Some(Observer::take(&mut ebpf, tc_on, &layout.maps)?);
        let policies = policies::Policies::take(&mut ebpf)?;
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
        let (vips, flow_expiry) = if tc_on {
            (
                Some(vips::Vips::take(&mut ebpf, installed.service_keys())?),
                Some(FlowExpiry::open(
                    &layout.maps.join(weft_common::maps::FLOWS),
                )?),
            )
        } else {
            (None, None)
        };
        let mut datapath = Datapath {
            maps,
            events: Some(EventRing(ring)),
            kernel_log,
            observer,
            attachments: Vec::new(),
            tc_attachments: Vec::new(),
            vips,
            policies,
            flow_expiry,
            flow_table_entries,
            installed,
            pins: pins::Pins::record(&options.bpffs_dir, std::iter::empty(), None),
            unattached: None,
            _ebpf: ebpf,
        };
        let target = Unattached {
            bpffs_dir: options.bpffs_dir.clone(),
            cgroup: options.cgroup.clone(),
            tc_interfaces: options.tc_interfaces.clone(),
        };
        if links_pinned && !fresh.is_empty() {
            info!(
                maps = fresh.join(","),
                "maps new to this node (the running programs know them by another name): the programs in place keep serving until this agent has filled them"
            );
            datapath.unattached = Some(target);
        } else {
            datapath.attach(&target)?;
        }
        Ok(datapath)
    }

    /// Swaps this agent's programs in (or attaches them), and records the pins.
    fn attach(&mut self, target: &Unattached) -> Result<(), DatapathError> {
        let links = links_dir(&target.bpffs_dir);
        let attachments = attach::attach_all(&mut self._ebpf, &target.cgroup, &links)?;
        for attachment in &attachments {
            info!(
                program = attachment.program,
                adopted = attachment.adopted,
                "program attached"
            );
        }
        let tc_mode = TcMode::detect();
        let tc_attachments =
            tc::attach_all(&mut self._ebpf, &target.tc_interfaces, &links, tc_mode)?;
        let tc_on = !target.tc_interfaces.is_empty();
        let tc_pins = tc_attachments.iter().filter_map(|a| a.pin.clone());
        self.pins = pins::Pins::record(&target.bpffs_dir, tc_pins, tc_on.then_some(&TC_MAPS[..]));
        self.attachments = attachments;
        self.tc_attachments = tc_attachments;
        Ok(())
    }

    /// Swaps the programs in if `open` held them back until the maps were filled (call after
    /// the first apply). Does nothing otherwise.
    pub fn attach_held_back(&mut self) -> Result<(), DatapathError> {
        let Some(target) = self.unattached.take() else {
            return Ok(());
        };
        if let Err(error) = self.attach(&target) {
            self.unattached = Some(target);
            return Err(error);
        }
        info!("maps filled; this agent's programs swapped in");
        Ok(())
    }

    /// Whether `open` held the programs back and they are not swapped in yet.
    pub fn holds_back(&self) -> bool {
        self.unattached.is_some()
    }

    /// The connection-event ring, for the task that will read it (once).
    pub fn take_events(&mut self) -> Option<EventRing> {
        self.events.take()
    }

    /// The kernel programs' log ring, for the task that will forward it (once).
    pub fn take_kernel_log(&mut self) -> Option<KernelLogRing> {
        self.kernel_log.take()
    }

    /// The read-only view of the kernel-written maps, for whoever serves statistics (once).
    pub fn take_observer(&mut self) -> Option<Observer> {
        self.observer.take()
    }

    /// The handle that expires old TC flows, for the task that sweeps them (once; none
    /// without TC programs).
    pub fn take_flow_expiry(&mut self) -> Option<FlowExpiry> {
        self.flow_expiry.take()
    }

    /// Entries of the TC flow table (none without TC programs).
    pub fn flow_table_entries(&self) -> Option<u32> {
        self.flow_table_entries
    }

    /// Whether everything this datapath pinned is still pinned (see `pins`).
    pub fn check_pins(&self) -> Result<(), PinsMissing> {
        self.pins.check()
    }

    /// The programs and whether each was adopted from an earlier agent's pinned link.
    pub fn programs(&self) -> impl Iterator<Item = (&str, bool)> + '_ {
        self.attachments
            .iter()
            .map(|a| (a.program, a.adopted))
            .chain(
                self.tc_attachments
                    .iter()
                    .map(|a| (a.name.as_str(), a.adopted)),
            )
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

    /// Writes what the kernel programs read at every connection: whether they keep
    /// per-connection records and events (connect failures are reported either way), and
    /// what they log.
    pub fn write_settings(&mut self, settings: KernelSettings) -> Result<(), DatapathError> {
        let stats_off = if settings.connection_stats {
            0
        } else {
            weft_common::settings::CONNECTION_STATS_OFF
        };
        self.maps
            .write_settings(stats_off | settings.kernel_log.settings_bits())
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
        // The services whose address the TC programs may need to learn or forget.
        let touched: Vec<ServiceId> = match self.vips {
            Some(_) => removed
                .iter()
                .map(|r| r.id)
                .chain(plans.iter().map(|p| p.id))
                .collect(),
            None => Vec::new(),
        };
        // A policy goes in before the table it governs: a new service is governed from its
        // first connection.
        for plan in &plans {
            self.policies.follow(plan.id, plan.policy.as_ref());
        }
        let report = self.installed.apply(&mut self.maps, removals, plans);
        self.follow_vips(touched.into_iter());
        for r in removed {
            self.policies.follow(r.id, None);
        }
        self.policies.sweep();
        report
    }

    /// Service addresses follow what the service map holds now for `ids`.
    fn follow_vips(&mut self, ids: impl Iterator<Item = ServiceId>) {
        let Some(vips) = &mut self.vips else {
            return;
        };
        for id in ids {
            match self.installed.key_of(id) {
                Some(key) => vips.hold(id, &key),
                None => vips.release(id),
            }
        }
    }

    /// Removes installed services `keep` does not want: an earlier agent's that no source
    /// defines any more. Called once the sources have delivered everything.
    pub fn remove_strays(&mut self, keep: impl Fn(ServiceId) -> bool) -> ApplyReport {
        let strays = self.installed.strays(&keep);
        let ids: Vec<ServiceId> = match self.vips {
            Some(_) => strays.iter().map(|r| r.id).collect(),
            None => Vec::new(),
        };
        let report = self.installed.apply(&mut self.maps, strays, Vec::new());
        self.follow_vips(ids.into_iter());
        // Policies of services no source defines (an earlier agent's) go with them.
        let stale: Vec<ServiceId> = self.policies.services().filter(|&id| !keep(id)).collect();
        for id in stale {
            self.policies.follow(id, None);
        }
        self.policies.sweep();
        report
    }
}

/// The switches the kernel programs read (one word in `WEFT_SETTINGS_V1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSettings {
    pub connection_stats: bool,
    pub kernel_log: KernelLogLevel,
}

/// Where a bpffs directory keeps maps and links.
pub fn maps_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("maps")
}

pub fn links_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("links")
}

/// Entries of the TC flow map: the size it was created with if it is pinned already (an
/// LRU map is allocated whole and cannot be resized in place: its flows would be lost),
/// else the configured size.
fn flows_capacity(pin: &Path, configured: u32) -> u32 {
    match aya::maps::MapInfo::from_pin(pin) {
        Ok(info) => {
            let pinned = info.max_entries();
            if pinned != configured {
                warn!(
                    pinned = pinned / 2,
                    configured = configured / 2,
                    "the TC flow table keeps the size it was created with (flows); tc.max_flows takes effect once it is created anew: `weft reset`, then start the agent"
                );
            }
            pinned
        }
        Err(_) => configured,
    }
}

/// Without TC programs the TC maps have no use: an earlier agent's pins go (its flows with
/// them; their programs are gone too).
fn remove_tc_maps(maps_dir: &Path) -> Result<(), DatapathError> {
    for name in TC_MAPS {
        let path = maps_dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => info!(map = name, "removed the TC path's map (no --tc-interface)"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(DatapathError::Io {
                    what: "removing",
                    path,
                    error,
                });
            }
        }
    }
    Ok(())
}
