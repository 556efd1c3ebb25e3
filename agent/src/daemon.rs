//! `weft agent`: load the datapath, apply the config, follow its changes until signalled.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Instant};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info, warn};

use crate::{
    api::{self, ApiError, Shared, Snapshot, view::ProgramView},
    config::{Config, ConfigError},
    datapath::{self, ApplyReport, Datapath, DatapathError},
    health::{self, Health, ProbeResult, Prober},
    plan::{desired_state, diff},
    source,
};

pub struct Options {
    pub config: PathBuf,
    pub cgroup: Option<PathBuf>,
    pub bpffs_dir: PathBuf,
    pub admin_socket: PathBuf,
    pub metrics_addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("config {}: {source}", path.display())]
    Config { path: PathBuf, source: ConfigError },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Watch(#[from] source::file::WatchError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

pub async fn run(options: Options) -> Result<(), DaemonError> {
    // First, so a SIGTERM at any later point means a clean exit, not the default death.
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let bytes = std::fs::read(&options.config).map_err(|source| DaemonError::Config {
        path: options.config.clone(),
        source: ConfigError::Read {
            path: options.config.clone(),
            source,
        },
    })?;
    // A bad file at start: refuse to start. Whatever an earlier agent pinned keeps serving.
    let config = String::from_utf8(bytes.clone())
        .map_err(|_| ConfigError::single("", "the file is not UTF-8 text"))
        .and_then(|text| Config::parse(&text))
        .map_err(|source| DaemonError::Config {
            path: options.config.clone(),
            source,
        })?;
    let cgroup = match &options.cgroup {
        Some(path) => path.clone(),
        None => datapath::discover_cgroup2_root()?,
    };
    let mut datapath = Datapath::open(&datapath::Options {
        bpffs_dir: options.bpffs_dir.clone(),
        cgroup: cgroup.clone(),
    })?;
    info!(cgroup = %cgroup.display(), bpffs = %options.bpffs_dir.display(), "datapath ready");
    let observer = datapath
        .take_observer()
        .expect("a freshly opened datapath has its observer");
    let shared = Arc::new(Shared::new(observer));
    api::metrics::serve(options.metrics_addr, shared.clone()).await?;
    api::admin::serve(options.admin_socket.clone(), shared.clone()).await?;
    info!(admin = %options.admin_socket.display(), metrics = %options.metrics_addr, "listening");
    let mut agent = Agent {
        datapath,
        config,
        health: Health::default(),
        generation: 1,
        shared,
    };
    let result = agent
        .serve(&options, bytes, &mut sigterm, &mut sigint)
        .await;
    api::admin::unbind(&options.admin_socket);
    info!("exiting; programs and maps stay pinned so traffic keeps flowing");
    result
}

/// The running agent: what it applied and what it knows about endpoint health.
struct Agent {
    datapath: Datapath,
    config: Config,
    health: Health,
    generation: u64,
    shared: Arc<Shared>,
}

impl Agent {
    async fn serve(
        &mut self,
        options: &Options,
        bytes: Vec<u8>,
        sigterm: &mut tokio::signal::unix::Signal,
        sigint: &mut tokio::signal::unix::Signal,
    ) -> Result<(), DaemonError> {
        self.health.sync(&self.config);
        let (probe_tx, mut probe_rx) = mpsc::channel::<ProbeResult>(4096);
        let mut prober = Prober::new(probe_tx);
        prober.sync(&self.config);
        first_probe_round(&mut probe_rx, &mut self.health, &self.config, prober.len()).await;
        self.apply("config applied");
        let mut events = spawn_event_reader(&mut self.datapath);
        let mut ejection_check = tokio::time::interval(std::time::Duration::from_millis(50));

        let mut updates = source::file::watch(options.config.clone(), bytes)?;
        loop {
            tokio::select! {
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
                update = updates.recv() => match update {
                    Some(Ok(new)) if new == self.config => {}
                    Some(Ok(new)) => {
                        self.generation += 1;
                        self.config = new;
                        self.health.sync(&self.config);
                        prober.sync(&self.config);
                        self.apply("config applied");
                        self.shared.metrics.config_reloaded(true);
                    }
                    Some(Err(e)) => {
                        let generation = self.generation;
                        self.shared.metrics.config_reloaded(false);
                        warn!(
                            path = %options.config.display(),
                            generation,
                            "config rejected, the running config (generation {generation}) keeps serving: {e}"
                        );
                    }
                    None => break,
                },
                Some(first) = probe_rx.recv() => {
                    // Take every result already waiting, then reconcile once.
                    let mut changed = record_probe(&mut self.health, &first);
                    while let Ok(result) = probe_rx.try_recv() {
                        changed |= record_probe(&mut self.health, &result);
                    }
                    if changed {
                        self.apply("health change applied");
                    }
                }
                Some(batch) = events.recv() => {
                    if self.on_connection_events(&batch) {
                        self.apply("health change applied");
                    }
                }
                _ = ejection_check.tick() => {
                    let transitions = self.health.expire_ejections(Instant::now());
                    transitions.iter().for_each(log_transition);
                    if !transitions.is_empty() {
                        self.apply("health change applied");
                    }
                }
            }
        }
        Ok(())
    }

    /// Counts the kernel's connection events and feeds connect outcomes to passive failure
    /// detection; true if an endpoint changed state.
    fn on_connection_events(&mut self, batch: &[weft_common::ConnRecord]) -> bool {
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
    fn apply(&mut self, what: &'static str) {
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
        self.shared.publish(Snapshot::build(
            generation,
            &self.config,
            &self.health,
            &weights,
            self.datapath.installed(),
            programs,
        ));
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        for failure in &report.failures {
            error!(generation, "{failure}");
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
            "{what}"
        );
        release_freed_memory();
    }
}

/// Hands memory freed by a large parse and apply back to the kernel: glibc keeps freed heap
/// pages otherwise, and a 10,000-service reload would leave the agent at its peak size.
fn release_freed_memory() {
    // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

/// Feeds one probe result to the health state; true if an endpoint changed state.
fn record_probe(health: &mut Health, result: &ProbeResult) -> bool {
    let Some(transition) = health.on_probe(result) else {
        return false;
    };
    log_transition(&transition);
    true
}

fn log_transition(transition: &health::Transition) {
    // A new endpoint passing its first probe is routine; everything else is news.
    if transition.from == health::State::Unknown && transition.to == health::State::Healthy {
        tracing::debug!(service = %transition.key.0, endpoint = %transition.key.1, "endpoint healthy");
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

/// Moves the ring-buffer reader to its own task (the map's one owner); batches of events
/// come back over a channel.
fn spawn_event_reader(datapath: &mut Datapath) -> mpsc::Receiver<Vec<weft_common::ConnRecord>> {
    let (tx, rx) = mpsc::channel(256);
    if let Some(mut reader) = datapath.take_events() {
        tokio::spawn(async move {
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
    }
    rx
}

/// Waits for every endpoint's first probe (bounded by the longest timeout), so the first
/// tables reflect health instead of flapping as the results trickle in. Meanwhile whatever an
/// earlier agent installed keeps serving.
async fn first_probe_round(
    results: &mut mpsc::Receiver<ProbeResult>,
    health: &mut Health,
    config: &Config,
    probing: usize,
) {
    let longest = config
        .services
        .iter()
        .map(|s| s.health.timeout)
        .max()
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + longest + std::time::Duration::from_millis(200);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < probing {
        tokio::select! {
            Some(result) = results.recv() => {
                record_probe(health, &result);
                seen.insert((result.service, result.endpoint));
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
}
