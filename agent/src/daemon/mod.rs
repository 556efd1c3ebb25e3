//! `weft agent`: load the datapath, apply the config, follow its changes until signalled.
//!
//! Three runtimes, so that reading the agent never delays what the kernel is told, and a
//! burst of admin requests never delays a liveness probe: the control loop (config changes,
//! health changes, map writes) runs alone on its own thread; `/metrics`, `/healthz` and
//! `/readyz` on a thread of their own; everything else that answers or waits on the outside
//! world (admin API, probes, the config watcher, the kernel event reader) on a small I/O
//! runtime.

mod control;
mod memory;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use tokio::{
    runtime::Runtime,
    signal::unix::{SignalKind, signal},
    sync::{broadcast, mpsc, watch},
};
use tracing::info;

use crate::{
    api::{self, ApiError, Shared},
    config::ConfigError,
    datapath::DatapathError,
    source::{self, SourceEvent},
};

pub struct Options {
    /// A config file or directory, if services come from files.
    pub config: Option<PathBuf>,
    /// This node's name, if services come from the Kubernetes API too.
    pub kubernetes: Option<KubernetesOptions>,
    pub cgroup: Option<PathBuf>,
    /// Interfaces the TC programs attach to.
    pub tc_interfaces: Vec<String>,
    pub bpffs_dir: PathBuf,
    pub admin_socket: PathBuf,
    pub metrics_addr: SocketAddr,
    /// What the kernel programs log, until the admin API changes it.
    pub kernel_log: crate::datapath::KernelLogLevel,
}

pub struct KubernetesOptions {
    /// This node's name: `internalTrafficPolicy: Local` keeps the endpoints on it.
    pub node_name: String,
}

/// Why the agent could not start or had to stop. Each error carries its cause in its own
/// message, so printed with its chain every fact appears once.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("config {}: {error}", path.display())]
    Config { path: PathBuf, error: ConfigError },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Watch(#[from] source::files::WatchError),
    #[error(transparent)]
    Kubernetes(#[from] source::kubernetes::ClientError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("starting the agent's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("the control loop stopped unexpectedly")]
    ControlLoop,
}

pub fn run(options: Options) -> Result<(), DaemonError> {
    memory::tune();
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("weft-io")
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // Signals first, so a SIGTERM at any later point means a clean exit, not the default
    // death.
    let signals = io.block_on(async {
        let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
        Ok::<_, DaemonError>(tokio::spawn(async move {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = sigint.recv() => {}
            }
            let _ = stop_tx.send(true);
        }))
    })?;
    let (publish, view) = watch::channel(Arc::default());
    // Followers that fall this far behind skip ahead (and are told in the agent log).
    let follow = broadcast::channel(1024).0;
    let (kernel_log_tx, kernel_log) = watch::channel(options.kernel_log);
    let shared = Arc::new(Shared::new(view, follow.clone(), kernel_log_tx));
    let wiring = control::Wiring {
        shared,
        publish,
        follow,
        kernel_log,
        io: io.handle().clone(),
    };
    let result = serve(&io, &options, wiring, stop_rx);
    signals.abort();
    api::admin::unbind(&options.admin_socket);
    info!("exiting; programs and maps stay pinned so traffic keeps flowing");
    result
}

/// Starts the sources on the I/O runtime; they all send to the channel returned.
fn start_sources(
    io: &Runtime,
    options: &Options,
    wiring: &control::Wiring,
) -> Result<mpsc::Receiver<SourceEvent>, DaemonError> {
    // A client that cannot be built is a mistake in the agent's setup: refuse to start. An
    // API server that does not answer is retried, with the pinned state serving.
    let client = match &options.kubernetes {
        Some(_) => Some(io.block_on(source::kubernetes::client())?),
        None => None,
    };
    let (tx, rx) = mpsc::channel(SOURCE_QUEUE);
    let _entered = io.enter();
    // Watching starts before the first read, so a change written while the agent starts up
    // is never missed.
    if let Some(config) = &options.config {
        source::files::watch(config.clone(), tx.clone())?;
    }
    if let (Some(kubernetes), Some(client)) = (&options.kubernetes, client) {
        let shared = Arc::clone(&wiring.shared);
        info!(node = %kubernetes.node_name, "watching Kubernetes Services and EndpointSlices");
        source::kubernetes::watch::spawn(
            client,
            kubernetes.node_name.as_str().into(),
            tx,
            move |resource| shared.metrics.kubernetes_watch_failed(resource.as_str()),
        );
    }
    Ok(rx)
}

/// Source events waiting for the control loop before sources wait for it.
const SOURCE_QUEUE: usize = 1024;

/// Starts the listeners and the config watcher on the I/O runtime, runs the control loop on
/// its own thread until it ends, and returns its result.
fn serve(
    io: &Runtime,
    options: &Options,
    wiring: control::Wiring,
    stop: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    let metrics = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    metrics.block_on(api::metrics::serve(
        options.metrics_addr,
        Arc::clone(&wiring.shared),
    ))?;
    std::thread::Builder::new()
        .name("weft-metrics".into())
        // Serves until the process exits.
        .spawn(move || metrics.block_on(std::future::pending::<()>()))
        .map_err(DaemonError::Runtime)?;
    io.block_on(api::admin::serve(
        options.admin_socket.clone(),
        Arc::clone(&wiring.shared),
    ))?;
    info!(admin = %options.admin_socket.display(), metrics = %options.metrics_addr, "listening");
    let updates = start_sources(io, options, &wiring)?;
    let control = control::Control::new(options, wiring);
    let thread = std::thread::Builder::new()
        .name("weft-control".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(DaemonError::Runtime)?;
            runtime.block_on(control.run(updates, stop))
        })
        .map_err(DaemonError::Runtime)?;
    thread.join().map_err(|_| DaemonError::ControlLoop)?
}
