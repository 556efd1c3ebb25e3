//! `weft agent`: load the datapath, apply the config, follow its changes until signalled.

use std::{path::PathBuf, time::Instant};

use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    config::{Config, ConfigError},
    datapath::{self, ApplyReport, Datapath, DatapathError},
    plan::{desired_state, diff},
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
    apply(&mut datapath, &config, generation);

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
                    apply(&mut datapath, &config, generation);
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
        }
    }
    info!("exiting; programs and maps stay pinned so traffic keeps flowing");
    Ok(())
}

fn apply(datapath: &mut Datapath, config: &Config, generation: u64) {
    let started = Instant::now();
    // Until health checking exists every endpoint's effective weight is its configured one.
    let desired = desired_state(config, |_, endpoint| u32::from(endpoint.weight));
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
        "config applied"
    );
}
