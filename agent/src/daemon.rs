//! `weft agent`: load the datapath, apply the config, follow its changes until signalled.

use std::{path::PathBuf, time::Instant};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info, warn};

use crate::{
    config::{Config, ConfigError},
    datapath::{self, ApplyReport, Datapath, DatapathError},
    health::{self, Health, ProbeResult, Prober},
    plan::{desired_state, diff, resolve::Resolver},
    source,
};

pub struct Options {
    pub config: PathBuf,
    pub cgroup: Option<PathBuf>,
    pub bpffs_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("config {}: {source}", path.display())]
    Config { path: PathBuf, source: ConfigError },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Watch(#[from] source::file::WatchError),
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
    let mut config = String::from_utf8(bytes.clone())
        .map_err(|_| ConfigError::single("", "the file is not UTF-8 text"))
        .and_then(|text| Config::parse(&text))
        .map_err(|source| DaemonError::Config {
            path: options.config.clone(),
            source,
        })?;
    let cgroup = match options.cgroup {
        Some(path) => path,
        None => datapath::discover_cgroup2_root()?,
    };
    let mut datapath = Datapath::open(&datapath::Options {
        bpffs_dir: options.bpffs_dir.clone(),
        cgroup: cgroup.clone(),
    })?;
    info!(cgroup = %cgroup.display(), bpffs = %options.bpffs_dir.display(), "datapath ready");
    let mut generation: u64 = 1;
    let mut health = Health::default();
    health.sync(&config);
    let (probe_tx, mut probe_rx) = mpsc::channel::<ProbeResult>(4096);
    let mut prober = Prober::new(probe_tx);
    prober.sync(&config);
    first_probe_round(&mut probe_rx, &mut health, &config, prober.len()).await;
    apply(
        &mut datapath,
        &config,
        &mut health,
        generation,
        "config applied",
    );
    let mut resolver = Resolver::new(datapath.installed(), &config);
    let mut events = spawn_event_reader(&mut datapath);
    let mut ejection_check = tokio::time::interval(std::time::Duration::from_millis(50));

    let mut updates = source::file::watch(options.config.clone(), bytes)?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            update = updates.recv() => match update {
                Some(Ok(new)) if new == config => {}
                Some(Ok(new)) => {
                    generation += 1;
                    config = new;
                    health.sync(&config);
                    prober.sync(&config);
                    apply(&mut datapath, &config, &mut health, generation, "config applied");
                    resolver = Resolver::new(datapath.installed(), &config);
                }
                Some(Err(e)) => {
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
                let mut changed = record_probe(&mut health, &first);
                while let Ok(result) = probe_rx.try_recv() {
                    changed |= record_probe(&mut health, &result);
                }
                if changed {
                    apply(&mut datapath, &config, &mut health, generation, "health change applied");
                }
            }
            Some(batch) = events.recv() => {
                let now = std::time::Instant::now();
                let mut changed = false;
                for event in batch {
                    let Some((index, endpoint)) = resolver.resolve(event.service_id, event.backend_id) else {
                        continue;
                    };
                    let ok = event.kind == weft_common::event::ESTABLISHED;
                    if let Some(t) = health.on_connect(&config.services[index], endpoint, ok, now) {
                        log_transition(&t);
                        changed = true;
                    }
                }
                if changed {
                    apply(&mut datapath, &config, &mut health, generation, "health change applied");
                }
            }
            _ = ejection_check.tick() => {
                let transitions = health.expire_ejections(std::time::Instant::now());
                transitions.iter().for_each(log_transition);
                if !transitions.is_empty() {
                    apply(&mut datapath, &config, &mut health, generation, "health change applied");
                }
            }
        }
    }
    info!("exiting; programs and maps stay pinned so traffic keeps flowing");
    Ok(())
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
fn spawn_event_reader(datapath: &mut Datapath) -> mpsc::Receiver<Vec<weft_common::ConnEvent>> {
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
                        error!(error = %e, "reading connection events failed; passive detection stops");
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

fn apply(
    datapath: &mut Datapath,
    config: &Config,
    health: &mut Health,
    generation: u64,
    what: &'static str,
) {
    let started = Instant::now();
    let (weights, panic_changes) = health.effective(config);
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
    let desired = desired_state(config, |service, endpoint| {
        weights
            .by_endpoint
            .get(&health::endpoint_key(service, endpoint))
            .copied()
            .unwrap_or(0)
    });
    let changes = diff(datapath.installed(), &desired);
    let report: ApplyReport = datapath.apply(changes);
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    for failure in &report.failures {
        error!(generation, "{failure}");
    }
    info!(
        generation,
        services = config.services.len(),
        written = report.services_written,
        removed = report.services_removed,
        backends_added = report.backends_added,
        backends_removed = report.backends_removed,
        failures = report.failures.len(),
        elapsed_ms,
        "{what}"
    );
}
