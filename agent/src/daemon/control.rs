//! The control loop: the one owner of the store (services and endpoint health) and the
//! datapath. It takes whatever changes are waiting — source deltas, probe results, connect
//! outcomes, ejection expiries — as one batch, then plans and writes only the services they
//! made dirty, and publishes the result. It also retries what could not be written and
//! reinstalls the datapath if its pins disappear under it.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    runtime::Handle,
    sync::{broadcast, mpsc, watch},
    task::JoinHandle,
};
use tracing::{debug, error, info, warn};

use super::{DaemonError, Options};
use crate::{
    api::{AgentInfo, DatapathHealth, Shared, view::ProgramView},
    config::TcSettings,
    datapath::{self, ApplyReport, Datapath, KernelLogLevel, KernelSettings},
    health::{self, ProbeOutcome, ProbeResult, Prober},
    plan::ServicePlan,
    source::{Origin, SourceEvent, SourceKind},
    stats::{self, ConnEvent, ConnectOutcome},
    store::{Held, Installed, Snapshot, Store},
};

/// How often the pins are checked (seconds until a `weft reset` under the agent is noticed).
const PIN_CHECK: Duration = Duration::from_secs(1);
/// How often ejections are checked for expiry and slow-start ramps for their next step.
const TIMER_CHECK: Duration = Duration::from_millis(50);
/// First and longest wait before retrying services that could not be installed.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(30);
/// At most one warning per this long about probes that could not be sent.
const NOT_SENT_WARNING: Duration = Duration::from_secs(10);
/// Changes taken from one channel before the loop writes what it has.
const BATCH: usize = 4096;

/// What an apply reacts to; each is logged with its own message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    /// The first apply, logged even when there is nothing to write (an empty config).
    Start,
    ConfigChange,
    HealthChange,
    /// An ejection ran out or a slow-start ramp reached its next step.
    Timer,
    Retry,
    Reinstall,
}

impl Trigger {
    fn message(self) -> &'static str {
        match self {
            Trigger::Start | Trigger::ConfigChange => "config applied",
            Trigger::HealthChange => "health change applied",
            Trigger::Timer => "ejection expiry or slow-start step applied",
            Trigger::Retry => "retry applied",
            Trigger::Reinstall => "datapath reinstalled",
        }
    }
}

/// The channels the control loop shares with the rest of the agent.
pub struct Wiring {
    pub shared: Arc<Shared>,
    pub publish: watch::Sender<Arc<Snapshot>>,
    pub follow: broadcast::Sender<ConnEvent>,
    /// The kernel-log level wanted now (`--kernel-log`, then the admin API).
    pub kernel_log: watch::Receiver<KernelLogLevel>,
    pub io: Handle,
}

/// The control loop before its first config.
pub struct Control {
    /// Sources that have not delivered what they had at start.
    pending: Vec<SourceKind>,
    datapath: datapath::Options,
    cgroup_given: bool,
    wiring: Wiring,
}

impl Control {
    pub fn new(options: &Options, wiring: Wiring) -> Control {
        let mut pending = Vec::new();
        if options.config.is_some() {
            pending.push(SourceKind::Files);
        }
        if options.kubernetes.is_some() {
            pending.push(SourceKind::Kubernetes);
        }
        Control {
            pending,
            datapath: datapath::Options {
                bpffs_dir: options.bpffs_dir.clone(),
                cgroup: options.cgroup.clone().unwrap_or_default(),
                tc_interfaces: options.tc_interfaces.clone(),
                flow_table_entries: TcSettings::default().table_entries(),
            },
            cgroup_given: options.cgroup.is_some(),
            wiring,
        }
    }

    /// Waits for the files' first delivery, installs the datapath, then follows changes
    /// until `stop`. The Kubernetes source is not waited for: an API server that cannot be
    /// reached must not keep the agent from serving what is pinned (and the files).
    pub async fn run(
        mut self,
        mut sources: mpsc::Receiver<SourceEvent>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), DaemonError> {
        let mut initial = Vec::new();
        while self.pending.contains(&SourceKind::Files) {
            tokio::select! {
                event = sources.recv() => match event {
                    Some(SourceEvent::Synced(SourceKind::Files)) => {
                        self.pending.retain(|&k| k != SourceKind::Files);
                    }
                    // A bad file at start: refuse to start. Whatever an earlier agent pinned
                    // keeps serving.
                    Some(SourceEvent::Rejected { origin, error }) => {
                        return Err(DaemonError::Config { path: PathBuf::from(origin.to_string()), error });
                    }
                    Some(event) => initial.push(event),
                    None => return Err(DaemonError::ControlLoop),
                },
                _ = stop.changed() => return Ok(()),
            }
        }
        if !self.cgroup_given {
            self.datapath.cgroup = datapath::discover_cgroup2_root()?;
        }
        self.datapath.flow_table_entries = initial_tc_settings(&initial).table_entries();
        let mut datapath = Datapath::open(&self.datapath)?;
        info!(
            cgroup = %self.datapath.cgroup.display(),
            bpffs = %self.datapath.bpffs_dir.display(),
            "datapath ready"
        );
        let (passive_tx, passive_rx) = mpsc::channel::<Vec<ConnectOutcome>>(256);
        let sinks = stats::events::Sinks {
            view: self.wiring.publish.subscribe(),
            follow: self.wiring.follow.clone(),
            passive: passive_tx,
        };
        let reader = spawn_reader(&mut datapath, &self.wiring, &sinks);
        let (probe_tx, probe_rx) = mpsc::channel::<ProbeResult>(4096);
        let mut store = Store::default();
        store.adopt_ids(datapath.installed_frontends());
        let mut agent = Agent {
            prober: Prober::new(probe_tx, &self.wiring.io),
            options: self.datapath,
            datapath,
            store,
            generation: 0,
            kernel_settings: None,
            wiring: self.wiring,
            sinks,
            reader,
            retry: Retry::default(),
            last_not_sent_warning: None,
            last_reinstall_error: None,
            not_installed: Vec::new(),
            pending: self.pending,
        };
        agent
            .serve(initial, sources, probe_rx, passive_rx, stop)
            .await
    }
}

/// The `tc:` block the files delivered at start hold (conflicts are reported when the
/// events are applied): the flow table is created with its size.
fn initial_tc_settings(initial: &[SourceEvent]) -> TcSettings {
    let mut held = Held::<TcSettings>::default();
    for event in initial {
        if let SourceEvent::Accepted { origin, tc, .. } = event {
            let _ = held.claim("tc", origin, *tc);
        }
    }
    held.value
}

/// When to retry services that could not be installed, backing off while they keep failing.
#[derive(Default)]
struct Retry {
    at: Option<tokio::time::Instant>,
    delay: Option<Duration>,
}

impl Retry {
    fn after(&mut self, failures: usize) {
        if failures == 0 {
            *self = Retry::default();
            return;
        }
        let delay = self
            .delay
            .map_or(FIRST_RETRY, |d| (d * 2).min(LONGEST_RETRY));
        self.delay = Some(delay);
        self.at = Some(tokio::time::Instant::now() + delay);
    }

    async fn due(&self) {
        match self.at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

/// The running agent.
struct Agent {
    options: datapath::Options,
    datapath: Datapath,
    store: Store,
    prober: Prober,
    /// Config versions applied.
    generation: u64,
    /// The kernel's switches as last written (none: to be written at the next apply).
    kernel_settings: Option<KernelSettings>,
    wiring: Wiring,
    sinks: stats::events::Sinks,
    /// The task reading the current datapath's event ring.
    reader: JoinHandle<()>,
    retry: Retry,
    last_not_sent_warning: Option<Instant>,
    last_reinstall_error: Option<String>,
    not_installed: Vec<String>,
    /// Sources that have not delivered what they had at start: until they have, nothing
    /// already installed is removed and the agent is not ready.
    pending: Vec<SourceKind>,
}

/// What a batch of source events asks of the apply that follows.
#[derive(Default)]
struct Reloads {
    /// Origins that changed, and whether each got in whole.
    origins: Vec<(Origin, bool)>,
    changed: bool,
    /// The last source that was pending delivered what it had.
    all_synced: bool,
}

impl Agent {
    /// `tc.max_flows` changed: a datapath created from now on (a reinstall after
    /// `weft reset`) gets the new size; the table in use keeps its own, which is said once
    /// per configured size.
    fn warn_if_flow_table_differs(&mut self) {
        let configured = self.store.tc_settings().table_entries();
        if configured == self.options.flow_table_entries {
            return;
        }
        self.options.flow_table_entries = configured;
        if let Some(entries) = self.datapath.flow_table_entries()
            && entries != configured
        {
            warn!(
                flows = entries / 2,
                configured = configured / 2,
                "tc.max_flows changed; the TC flow table keeps the size it was created with until `weft reset` (the agent then recreates it at the configured size)"
            );
        }
    }

    async fn serve(
        &mut self,
        initial: Vec<SourceEvent>,
        mut sources: mpsc::Receiver<SourceEvent>,
        mut probe_rx: mpsc::Receiver<ProbeResult>,
        mut passive_rx: mpsc::Receiver<Vec<ConnectOutcome>>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), DaemonError> {
        let mut reloads = Reloads::default();
        for event in initial {
            self.on_source(event, &mut reloads);
        }
        let probes = self.store.take_probes();
        let probing = probes.iter().filter(|p| p.check.is_some()).count();
        self.prober.apply(probes);
        self.first_probe_round(&mut probe_rx, probing).await;
        self.generation = 1;
        self.apply(Trigger::Start, Reloads::default());
        if self.pending.is_empty() {
            self.all_synced();
        } else {
            let pending: Vec<&str> = self.pending.iter().map(|k| k.as_str()).collect();
            info!(
                waiting_for = pending.join(","),
                "not ready until every source has delivered what it has; what is pinned keeps serving"
            );
        }
        let mut timer_check = tokio::time::interval(TIMER_CHECK);
        let mut pin_check = tokio::time::interval(PIN_CHECK);
        loop {
            let mut reloads = Reloads::default();
            let trigger = tokio::select! {
                _ = stop.changed() => break,
                event = sources.recv() => {
                    // The sources live as long as the agent: their end is a failure.
                    let Some(event) = event else { return Err(DaemonError::ControlLoop) };
                    self.on_source(event, &mut reloads);
                    for _ in 0..BATCH {
                        let Ok(event) = sources.try_recv() else { break };
                        self.on_source(event, &mut reloads);
                    }
                    Trigger::ConfigChange
                }
                Some(first) = probe_rx.recv() => {
                    self.on_probe(&first);
                    for _ in 0..BATCH {
                        let Ok(result) = probe_rx.try_recv() else { break };
                        self.on_probe(&result);
                    }
                    Trigger::HealthChange
                }
                Some(outcomes) = passive_rx.recv() => {
                    for outcome in outcomes {
                        self.store.on_connect(outcome.target, outcome.ok, outcome.at);
                    }
                    Trigger::HealthChange
                }
                _ = timer_check.tick() => {
                    let now = Instant::now();
                    self.store.expire_ejections(now);
                    self.store.advance_ramps(now);
                    Trigger::Timer
                }
                _ = self.retry.due() => {
                    self.store.retry_not_installed();
                    Trigger::Retry
                }
                _ = pin_check.tick() => {
                    self.check_pins();
                    if self.pending.is_empty() {
                        self.attach_held_back();
                    }
                    continue;
                }
                Ok(()) = self.wiring.kernel_log.changed() => {
                    self.write_kernel_settings();
                    continue;
                }
            };
            if reloads.changed {
                self.generation += 1;
            }
            let all_synced = reloads.all_synced;
            self.apply(trigger, reloads);
            if all_synced {
                self.all_synced();
            }
        }
        self.reader.abort();
        Ok(())
    }

    fn on_source(&mut self, event: SourceEvent, reloads: &mut Reloads) {
        match event {
            SourceEvent::Accepted {
                origin,
                deltas,
                stats,
                tc,
            } => {
                let changed = !deltas.is_empty();
                // Conflicts are kept sorted by name, not by arrival: the new ones are those
                // not there before (a count would blame the wrong lines).
                let before: std::collections::HashSet<String> =
                    self.store.conflicts().into_iter().collect();
                self.store.apply(deltas);
                let mut ok = true;
                for conflict in self.store.conflicts() {
                    if !before.contains(&conflict) {
                        error!("{conflict}");
                        ok = false;
                    }
                }
                if let Err(conflict) = self.store.claim_stats(&origin, stats) {
                    error!("{conflict}");
                    ok = false;
                }
                if let Err(conflict) = self.store.claim_tc(&origin, tc) {
                    error!("{conflict}");
                    ok = false;
                }
                self.warn_if_flow_table_differs();
                reloads.changed |= changed || stats != crate::source::StatsClaim::Unchanged;
                reloads.origins.push((origin, ok));
            }
            SourceEvent::Rejected { origin, error } => {
                self.wiring.shared.metrics.config_reloaded(false);
                let generation = self.generation;
                warn!(
                    path = %origin,
                    generation,
                    "config rejected, the running config (generation {generation}) keeps serving: {error}"
                );
            }
            SourceEvent::Synced(kind) => {
                let before = self.pending.len();
                self.pending.retain(|&k| k != kind);
                reloads.all_synced |= before > 0 && self.pending.is_empty();
            }
        }
    }

    /// Every source has delivered: what an earlier agent installed and no source defines any
    /// more goes now, not before (a slow source must not flush the kernel's tables), and the
    /// agent is ready.
    fn all_synced(&mut self) {
        // Programs held back until maps new to this node were filled go in now that every
        // source has delivered what it had.
        self.attach_held_back();
        let store = &self.store;
        let strays = self.datapath.remove_strays(|id| store.get(id).is_some());
        if strays.services_removed > 0 {
            info!(
                removed = strays.services_removed,
                "removed services no source defines"
            );
        }
        self.publish(true);
    }

    fn on_probe(&mut self, result: &ProbeResult) {
        if let ProbeOutcome::Inconclusive(why) = result.outcome {
            self.wiring.shared.metrics.probe_not_sent();
            let quiet = self
                .last_not_sent_warning
                .is_some_and(|at| at.elapsed() < NOT_SENT_WARNING);
            if !quiet {
                self.last_not_sent_warning = Some(Instant::now());
                let service = self
                    .store
                    .get(result.target.service)
                    .map(|s| s.spec.name.to_string())
                    .unwrap_or_default();
                warn!(service, endpoint = %result.target.endpoint, "health probe not sent: {why}");
            }
        }
        self.store.on_probe(result.target, result.outcome);
    }

    /// Plans and writes the services the changes so far made dirty, and publishes the
    /// result. Does nothing (and logs nothing) when nothing is dirty.
    fn apply(&mut self, trigger: Trigger, reloads: Reloads) -> ApplyReport {
        let started = Instant::now();
        let work = self.store.take_work();
        work.transitions.iter().for_each(log_transition);
        if !work.probes.is_empty() {
            self.prober.apply(work.probes);
        }
        self.write_kernel_settings();
        let quiet = work.dirty.is_empty()
            && work.removed.is_empty()
            && !matches!(trigger, Trigger::Start | Trigger::Reinstall);
        if quiet {
            self.count_reloads(&reloads, &ApplyReport::default());
            if reloads.changed {
                self.publish(false);
            }
            return ApplyReport::default();
        }
        for (service, panicking) in self.store.reweigh(&work.dirty) {
            if panicking {
                warn!(
                    service = %service,
                    "panic mode: too little healthy weight, routing to every endpoint by configured weight"
                );
            } else {
                info!(service = %service, "panic mode over: routing by health again");
            }
        }
        let plans: Vec<ServicePlan> = work
            .dirty
            .iter()
            .filter_map(|&id| self.store.get(id))
            .map(|s| ServicePlan::of(s))
            .collect();
        let report = self.datapath.apply(&work.removed, plans);
        for &id in report.written.iter().chain(&report.unchanged) {
            self.store.set_installed(id, Installed::Yes);
        }
        let generation = self.generation;
        for failure in &report.failures {
            let name = self
                .store
                .get(failure.id)
                .map(|s| s.spec.name.to_string())
                .unwrap_or_default();
            error!(generation, "service {name}: {failure}");
            self.store
                .set_installed(failure.id, Installed::Failed(failure.to_string()));
        }
        self.not_installed = self
            .store
            .not_installed()
            .map(|s| match &s.installed {
                Installed::Failed(why) => format!("service {}: {why}", s.spec.name),
                _ => format!("service {}: not written yet", s.spec.name),
            })
            .collect();
        self.not_installed.sort();
        self.wiring
            .shared
            .metrics
            .set_services_not_installed(self.not_installed.len());
        self.retry.after(self.not_installed.len());
        if let Some(delay) = self.retry.delay
            && !self.not_installed.is_empty()
        {
            warn!(
                generation,
                services = self.not_installed.len(),
                "services not installed; retrying in {} s",
                delay.as_secs()
            );
        }
        self.count_reloads(&reloads, &report);
        self.publish(false);
        info!(
            generation,
            services = self.store.len(),
            changed = work.dirty.len() + work.removed.len(),
            written = report.services_written,
            removed = report.services_removed,
            backends_added = report.backends_added,
            backends_removed = report.backends_removed,
            failures = report.failures.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "{}",
            trigger.message()
        );
        if work.dirty.len() > 1000 {
            super::memory::release();
        }
        report
    }

    fn count_reloads(&self, reloads: &Reloads, report: &ApplyReport) {
        for (_, ok) in &reloads.origins {
            self.wiring
                .shared
                .metrics
                .config_reloaded(*ok && report.failures.is_empty());
        }
    }

    /// Publishes the store's snapshot and the agent's own state.
    fn publish(&self, synced: bool) {
        let _ = self.wiring.publish.send(Arc::new(self.store.snapshot()));
        let previous = self.wiring.shared.info();
        self.wiring.shared.publish_info(AgentInfo {
            generation: self.generation,
            synced: synced || previous.synced,
            datapath: previous.datapath.clone(),
            programs: self
                .datapath
                .programs()
                .map(|(name, adopted)| ProgramView {
                    name: name.to_string(),
                    adopted,
                })
                .collect(),
            counts: self.datapath.counts(),
            batched_writes: self.datapath.batches(),
            not_installed: self.not_installed.clone(),
        });
    }

    fn set_datapath_health(&self, health: DatapathHealth) {
        let mut info = (*self.wiring.shared.info()).clone();
        info.datapath = health;
        self.wiring.shared.publish_info(info);
    }

    /// Swaps in the programs the datapath held back (see `Datapath::attach_held_back`); a
    /// failure is retried at every pin check, and the agent is not ready meanwhile.
    fn attach_held_back(&mut self) {
        if !self.datapath.holds_back() {
            return;
        }
        match self.datapath.attach_held_back() {
            Ok(()) => {
                self.set_datapath_health(DatapathHealth::Installed);
                self.publish(false);
            }
            Err(e) => {
                error!("swapping in the programs, retrying every second: {e}");
                self.set_datapath_health(DatapathHealth::Missing(format!(
                    "programs not swapped in: {e}"
                )));
            }
        }
    }

    /// Writes the kernel's switches if they differ from what was written last: the
    /// connection-statistics setting of the config, and the kernel-log level asked for.
    fn write_kernel_settings(&mut self) {
        let wanted = KernelSettings {
            connection_stats: self.store.stats_settings().connections,
            kernel_log: *self.wiring.kernel_log.borrow(),
        };
        if self.kernel_settings == Some(wanted) {
            return;
        }
        if let Err(e) = self.datapath.write_settings(wanted) {
            error!("writing the kernel's settings: {e}");
            self.kernel_settings = None;
            return;
        }
        let was = self
            .kernel_settings
            .replace(wanted)
            .map_or(KernelLogLevel::Off, |before| before.kernel_log);
        if was != wanted.kernel_log {
            info!(level = %wanted.kernel_log, "kernel log level set");
        }
    }

    /// Checks the pins; if any is gone, reinstalls the datapath. While it cannot, the agent
    /// reports itself not ready and tries at every check.
    fn check_pins(&mut self) {
        let Err(missing) = self.datapath.check_pins() else {
            return;
        };
        if self.wiring.shared.info().datapath == DatapathHealth::Installed {
            error!("{missing}; reinstalling the datapath, not ready until it is back");
            self.set_datapath_health(DatapathHealth::Missing(missing.to_string()));
        }
        let started = Instant::now();
        match Datapath::open(&self.options) {
            Ok(mut datapath) => {
                let reader = spawn_reader(&mut datapath, &self.wiring, &self.sinks);
                self.reader.abort();
                self.reader = reader;
                self.datapath = datapath;
                // The new maps are empty (or an earlier agent's): every service is planned.
                self.store.mark_all_dirty();
                self.kernel_settings = None;
                self.apply(Trigger::Reinstall, Reloads::default());
                if self.pending.is_empty() {
                    self.attach_held_back();
                }
                self.set_datapath_health(DatapathHealth::Installed);
                self.wiring.shared.metrics.datapath_reinstalled();
                self.last_reinstall_error = None;
                info!(
                    elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "datapath back in place"
                );
            }
            Err(e) => {
                let message = e.to_string();
                if self.last_reinstall_error.as_ref() != Some(&message) {
                    error!("reinstalling the datapath failed, retrying every second: {message}");
                    self.set_datapath_health(DatapathHealth::Missing(format!(
                        "{missing}; reinstalling failed: {message}"
                    )));
                    self.last_reinstall_error = Some(message);
                }
            }
        }
    }

    /// Waits for every probed endpoint's first probe (bounded by the longest timeout), so
    /// the first tables reflect health instead of flapping as the results trickle in.
    /// Meanwhile whatever an earlier agent installed keeps serving.
    async fn first_probe_round(
        &mut self,
        results: &mut mpsc::Receiver<ProbeResult>,
        probing: usize,
    ) {
        let longest = self
            .store
            .services()
            .iter()
            .flatten()
            .map(|s| s.spec.health.timeout)
            .max()
            .unwrap_or_default();
        let deadline = tokio::time::Instant::now() + longest + Duration::from_millis(200);
        let mut seen = std::collections::HashSet::new();
        while seen.len() < probing {
            tokio::select! {
                Some(result) = results.recv() => {
                    self.on_probe(&result);
                    seen.insert(result.target);
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
}

fn log_transition(transition: &health::Transition) {
    // A new endpoint passing its first probe is routine; everything else is news.
    if transition.from == health::State::Unknown && transition.to == health::State::Healthy {
        tracing::debug!(service = %transition.service, endpoint = %transition.endpoint, "endpoint healthy");
    } else if let Some(cause) = transition.cause {
        info!(
            service = %transition.service,
            endpoint = %transition.endpoint,
            from = transition.from.as_str(),
            to = transition.to.as_str(),
            probe = %cause,
            "endpoint state changed"
        );
    } else {
        info!(
            service = %transition.service,
            endpoint = %transition.endpoint,
            from = transition.from.as_str(),
            to = transition.to.as_str(),
            "endpoint state changed"
        );
    }
}

/// Reads the datapath's event ring on the I/O runtime (stats owns the events from there).
fn spawn_reader(
    datapath: &mut Datapath,
    wiring: &Wiring,
    sinks: &stats::events::Sinks,
) -> JoinHandle<()> {
    if let Some(observer) = datapath.take_observer() {
        wiring.shared.set_observer(observer);
    }
    let ring = datapath.take_events();
    let kernel_log = datapath.take_kernel_log();
    let expiry = datapath.take_flow_expiry();
    let event_sinks = sinks.clone();
    let flow_sinks = sinks.clone();
    wiring.io.spawn(async move {
        let events = async move {
            if let Some(ring) = ring {
                stats::events::run(ring, event_sinks).await;
            }
        };
        let flows = async move {
            if let Some(expiry) = expiry {
                expire_flows(expiry, flow_sinks).await;
            }
        };
        let kernel_lines = async move {
            if let Some(kernel_log) = kernel_log {
                kernel_log.run().await;
            }
        };
        tokio::join!(events, flows, kernel_lines);
    })
}

/// How often the TC flow table is walked for expired flows: often enough that a closed
/// flow's 10 s linger is not doubled, rarely enough that walking a full table (read in
/// batches, some tens of milliseconds for a quarter of a million entries) costs little.
const FLOW_SWEEP: Duration = Duration::from_secs(5);

/// Expires old TC flows until aborted (with the rest of the reader), off the runtime's
/// threads: a walk is blocking syscalls. The flows each walk saw start and end are counted
/// like the socket path's connections.
async fn expire_flows(mut expiry: datapath::FlowExpiry, sinks: stats::events::Sinks) {
    let mut tick = tokio::time::interval(FLOW_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let swept = tokio::task::spawn_blocking(move || {
            let sweep = expiry.sweep();
            (expiry, sweep)
        })
        .await;
        match swept {
            Ok((back, sweep)) => {
                // TC records carry no connect outcome: nothing goes to passive detection.
                let _ = stats::events::count(&stats::flows::records(&sweep), &sinks);
                if sweep.expired > 0 {
                    debug!(
                        flows = sweep.flows,
                        expired = sweep.expired,
                        "TC flows expired"
                    );
                }
                expiry = back;
            }
            Err(_) => return,
        }
    }
}
