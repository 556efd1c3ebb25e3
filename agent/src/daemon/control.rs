//! The control loop: the one owner of the config, the endpoints' health and the datapath.
//! It turns config and health changes into map writes, retries what could not be written,
//! and reinstalls the datapath if its pins disappear under it.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    runtime::Handle,
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{error, info, warn};
use weft_common::ConnRecord;

use super::{DaemonError, Options};
use crate::{
    api::{DatapathHealth, Shared, Snapshot, view::ProgramView},
    config::Config,
    datapath::{self, ApplyReport, Datapath, EventReader, EventRing},
    health::{self, Health, ProbeOutcome, ProbeResult, Prober},
    plan::{desired_state, diff},
    source::file::Update,
};

/// How often the pins are checked (seconds until a `weft reset` under the agent is noticed).
const PIN_CHECK: Duration = Duration::from_secs(1);
/// How often ejections are checked for expiry.
const EJECTION_CHECK: Duration = Duration::from_millis(50);
/// First and longest wait before retrying services that could not be installed.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(30);
/// At most one warning per this long about probes that could not be sent.
const NOT_SENT_WARNING: Duration = Duration::from_secs(10);

/// What an apply reacts to; each is logged with its own message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Start,
    ConfigChange,
    HealthChange,
    Retry,
    Reinstall,
}

impl Trigger {
    fn message(self) -> &'static str {
        match self {
            Trigger::Start | Trigger::ConfigChange => "config applied",
            Trigger::HealthChange => "health change applied",
            Trigger::Retry => "retry applied",
            Trigger::Reinstall => "datapath reinstalled",
        }
    }
}

/// The control loop before its first config.
pub struct Control {
    config_path: PathBuf,
    datapath: datapath::Options,
    cgroup_given: bool,
    shared: Arc<Shared>,
    io: Handle,
}

impl Control {
    pub fn new(options: &Options, shared: Arc<Shared>, io: Handle) -> Control {
        Control {
            config_path: options.config.clone(),
            datapath: datapath::Options {
                bpffs_dir: options.bpffs_dir.clone(),
                cgroup: options.cgroup.clone().unwrap_or_default(),
            },
            cgroup_given: options.cgroup.is_some(),
            shared,
            io,
        }
    }

    /// Waits for the first config, installs the datapath, then follows changes until `stop`.
    pub async fn run(
        mut self,
        mut updates: mpsc::Receiver<Update>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), DaemonError> {
        let config = tokio::select! {
            update = updates.recv() => match update {
                Some(Ok(config)) => config,
                // A bad file at start: refuse to start. Whatever an earlier agent pinned
                // keeps serving.
                Some(Err(error)) => {
                    return Err(DaemonError::Config { path: self.config_path, error });
                }
                None => return Err(DaemonError::ControlLoop),
            },
            _ = stop.changed() => return Ok(()),
        };
        if !self.cgroup_given {
            self.datapath.cgroup = datapath::discover_cgroup2_root()?;
        }
        let mut datapath = Datapath::open(&self.datapath)?;
        info!(
            cgroup = %self.datapath.cgroup.display(),
            bpffs = %self.datapath.bpffs_dir.display(),
            "datapath ready"
        );
        if let Some(observer) = datapath.take_observer() {
            self.shared.set_observer(observer);
        }
        let (events, reader) = spawn_event_reader(&mut datapath, &self.io);
        let (probe_tx, probe_rx) = mpsc::channel::<ProbeResult>(4096);
        let mut agent = Agent {
            prober: Prober::new(probe_tx, self.io.clone()),
            options: self.datapath,
            config_path: self.config_path,
            datapath,
            config,
            health: Health::default(),
            generation: 1,
            shared: self.shared,
            io: self.io,
            reader,
            retry: Retry::default(),
            last_not_sent_warning: None,
            last_reinstall_error: None,
        };
        agent.serve(updates, probe_rx, events, stop).await
    }
}

/// When to retry services that could not be installed, backing off while they keep failing.
#[derive(Default)]
struct Retry {
    at: Option<tokio::time::Instant>,
    delay: Option<Duration>,
}

impl Retry {
    fn after(&mut self, report: &ApplyReport) {
        if report.failures.is_empty() {
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

/// The running agent: what it applied and what it knows about endpoint health.
struct Agent {
    options: datapath::Options,
    config_path: PathBuf,
    datapath: Datapath,
    config: Config,
    health: Health,
    prober: Prober,
    generation: u64,
    shared: Arc<Shared>,
    io: Handle,
    /// The task reading the current datapath's event ring.
    reader: JoinHandle<()>,
    retry: Retry,
    last_not_sent_warning: Option<Instant>,
    last_reinstall_error: Option<String>,
}

impl Agent {
    async fn serve(
        &mut self,
        mut updates: mpsc::Receiver<Update>,
        mut probe_rx: mpsc::Receiver<ProbeResult>,
        mut events: mpsc::Receiver<Vec<ConnRecord>>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), DaemonError> {
        self.health.sync(&self.config);
        self.prober.sync(&self.config);
        self.first_probe_round(&mut probe_rx).await;
        self.apply(Trigger::Start);
        let mut ejection_check = tokio::time::interval(EJECTION_CHECK);
        let mut pin_check = tokio::time::interval(PIN_CHECK);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                update = updates.recv() => match update {
                    Some(Ok(new)) if new == self.config => {}
                    Some(Ok(new)) => {
                        self.generation += 1;
                        self.config = new;
                        self.health.sync(&self.config);
                        self.prober.sync(&self.config);
                        let report = self.apply(Trigger::ConfigChange);
                        self.shared.metrics.config_reloaded(report.failures.is_empty());
                    }
                    Some(Err(e)) => {
                        let generation = self.generation;
                        self.shared.metrics.config_reloaded(false);
                        warn!(
                            path = %self.config_path.display(),
                            generation,
                            "config rejected, the running config (generation {generation}) keeps serving: {e}"
                        );
                    }
                    None => break,
                },
                Some(first) = probe_rx.recv() => {
                    // Take every result already waiting, then reconcile once.
                    let mut changed = self.record_probe(&first);
                    while let Ok(result) = probe_rx.try_recv() {
                        changed |= self.record_probe(&result);
                    }
                    if changed {
                        self.apply(Trigger::HealthChange);
                    }
                }
                Some(batch) = events.recv() => {
                    if self.on_connection_events(&batch) {
                        self.apply(Trigger::HealthChange);
                    }
                }
                _ = ejection_check.tick() => {
                    let transitions = self.health.expire_ejections(Instant::now());
                    transitions.iter().for_each(log_transition);
                    if !transitions.is_empty() {
                        self.apply(Trigger::HealthChange);
                    }
                }
                _ = self.retry.due() => {
                    self.apply(Trigger::Retry);
                }
                _ = pin_check.tick() => {
                    if let Some(new_events) = self.check_pins() {
                        events = new_events;
                    }
                }
            }
        }
        self.reader.abort();
        Ok(())
    }

    /// Feeds one probe result to the health state; true if an endpoint changed state.
    fn record_probe(&mut self, result: &ProbeResult) -> bool {
        if let ProbeOutcome::Inconclusive(why) = result.outcome {
            let quiet = self
                .last_not_sent_warning
                .is_some_and(|at| at.elapsed() < NOT_SENT_WARNING);
            if !quiet {
                self.last_not_sent_warning = Some(Instant::now());
                warn!(service = %result.service, endpoint = %result.endpoint, "health probe not sent: {why}");
            }
        }
        let Some(transition) = self.health.on_probe(result) else {
            return false;
        };
        log_transition(&transition);
        true
    }

    /// Counts the kernel's connection events and feeds connect outcomes to passive failure
    /// detection; true if an endpoint changed state.
    fn on_connection_events(&mut self, batch: &[ConnRecord]) -> bool {
        let now = Instant::now();
        let mut changed = false;
        for event in self.shared.record_events(batch) {
            let ok = match event.kind {
                weft_common::event::ESTABLISHED => true,
                weft_common::event::CONNECT_FAILED => false,
                _ => continue,
            };
            let service = &self.config.services[event.service];
            if let Some(t) = self.health.on_connect(service, event.endpoint, ok, now) {
                log_transition(&t);
                changed = true;
            }
        }
        changed
    }

    /// Recomputes effective weights, writes what changed and publishes the result.
    fn apply(&mut self, trigger: Trigger) -> ApplyReport {
        let started = Instant::now();
        let generation = self.generation;
        let (weights, panic_changes) = self.health.effective(&self.config);
        for (service, panicking) in panic_changes {
            if panicking {
                warn!(
                    service,
                    "panic mode: too little healthy weight, routing to every endpoint by configured weight"
                );
            } else {
                info!(service, "panic mode over: routing by health again");
            }
        }
        let desired = desired_state(&self.config, |service, endpoint| {
            weights
                .by_endpoint
                .get(&health::endpoint_key(service, endpoint))
                .copied()
                .unwrap_or(0)
        });
        if let Err(e) = self
            .datapath
            .set_connection_stats(self.config.connection_stats)
        {
            error!(generation, "switching connection statistics: {e}");
        }
        let changes = diff(self.datapath.installed(), &desired);
        let report: ApplyReport = self.datapath.apply(changes);
        let programs = self
            .datapath
            .programs()
            .map(|(name, adopted)| ProgramView {
                name: name.to_string(),
                adopted,
            })
            .collect();
        let not_installed: Vec<String> = report.failures.iter().map(|f| f.to_string()).collect();
        self.shared
            .metrics
            .set_services_not_installed(not_installed.len());
        self.shared.publish(Snapshot::build(
            generation,
            &self.config,
            &self.health,
            &weights,
            self.datapath.installed(),
            programs,
            not_installed,
        ));
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        for failure in &report.failures {
            error!(generation, "{failure}");
        }
        self.retry.after(&report);
        if let Some(delay) = self.retry.delay
            && !report.failures.is_empty()
        {
            warn!(
                generation,
                services = report.failures.len(),
                "services not installed; retrying in {} s",
                delay.as_secs()
            );
        }
        info!(
            generation,
            services = self.config.services.len(),
            written = report.services_written,
            removed = report.services_removed,
            backends_added = report.backends_added,
            backends_removed = report.backends_removed,
            failures = report.failures.len(),
            elapsed_ms,
            "{}",
            trigger.message()
        );
        release_freed_memory();
        report
    }

    /// Checks the pins; if any is gone, reinstalls the datapath and returns the new event
    /// channel. While it cannot, the agent reports itself not ready and tries every check.
    fn check_pins(&mut self) -> Option<mpsc::Receiver<Vec<ConnRecord>>> {
        let missing = self.datapath.check_pins().err()?;
        if self.shared.datapath() == DatapathHealth::Installed {
            error!("{missing}; reinstalling the datapath, not ready until it is back");
            self.shared
                .set_datapath(DatapathHealth::Missing(missing.to_string()));
        }
        let started = Instant::now();
        match Datapath::open(&self.options) {
            Ok(mut datapath) => {
                if let Some(observer) = datapath.take_observer() {
                    self.shared.set_observer(observer);
                }
                let (events, reader) = spawn_event_reader(&mut datapath, &self.io);
                self.reader.abort();
                self.reader = reader;
                self.datapath = datapath;
                self.apply(Trigger::Reinstall);
                self.shared.set_datapath(DatapathHealth::Installed);
                self.shared.metrics.datapath_reinstalled();
                self.last_reinstall_error = None;
                info!(
                    elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "datapath back in place"
                );
                Some(events)
            }
            Err(e) => {
                let message = e.to_string();
                if self.last_reinstall_error.as_ref() != Some(&message) {
                    error!("reinstalling the datapath failed, retrying every second: {message}");
                    self.shared.set_datapath(DatapathHealth::Missing(format!(
                        "{missing}; reinstalling failed: {message}"
                    )));
                    self.last_reinstall_error = Some(message);
                }
                None
            }
        }
    }

    /// Waits for every endpoint's first probe (bounded by the longest timeout), so the first
    /// tables reflect health instead of flapping as the results trickle in. Meanwhile
    /// whatever an earlier agent installed keeps serving.
    async fn first_probe_round(&mut self, results: &mut mpsc::Receiver<ProbeResult>) {
        let longest = self
            .config
            .services
            .iter()
            .map(|s| s.health.timeout)
            .max()
            .unwrap_or_default();
        let deadline = tokio::time::Instant::now() + longest + Duration::from_millis(200);
        let probing = self.prober.len();
        let mut seen = std::collections::HashSet::new();
        while seen.len() < probing {
            tokio::select! {
                Some(result) = results.recv() => {
                    self.record_probe(&result);
                    seen.insert((result.service, result.endpoint));
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
}

/// Hands memory freed by a large parse and apply back to the kernel: glibc keeps freed heap
/// pages otherwise, and a 10,000-service reload would leave the agent at its peak size.
fn release_freed_memory() {
    // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

fn log_transition(transition: &health::Transition) {
    // A new endpoint passing its first probe is routine; everything else is news.
    if transition.from == health::State::Unknown && transition.to == health::State::Healthy {
        tracing::debug!(service = %transition.key.0, endpoint = %transition.key.1, "endpoint healthy");
    } else if let Some(cause) = transition.cause {
        info!(
            service = %transition.key.0,
            endpoint = %transition.key.1,
            from = transition.from.as_str(),
            to = transition.to.as_str(),
            probe = %cause,
            "endpoint state changed"
        );
    } else {
        info!(
            service = %transition.key.0,
            endpoint = %transition.key.1,
            from = transition.from.as_str(),
            to = transition.to.as_str(),
            "endpoint state changed"
        );
    }
}

/// Reads the datapath's event ring on the I/O runtime (the ring's one owner); batches of
/// events come back over a channel.
fn spawn_event_reader(
    datapath: &mut Datapath,
    io: &Handle,
) -> (mpsc::Receiver<Vec<ConnRecord>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(256);
    let ring: Option<EventRing> = datapath.take_events();
    let task = io.spawn(async move {
        let Some(ring) = ring else { return };
        let mut reader = match EventReader::new(ring) {
            Ok(reader) => reader,
            Err(e) => {
                error!("connection events unavailable; statistics and passive detection stop: {e}");
                return;
            }
        };
        loop {
            match reader.next_batch().await {
                Ok(batch) => {
                    if tx.send(batch).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    error!(error = %e, "reading connection events failed; statistics and passive detection stop");
                    return;
                }
            }
        }
    });
    (rx, task)
}
