//! Kernel-side diagnostics: the level the kernel programs log at, which the datapath keeps in
//! the settings word (so it changes on a live node without reloading a program), and the
//! reader that bridges their lines from aya-log's ring into the agent's own log.

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;
use tracing::warn;
use weft_common::{kernel_log, settings};

use super::DatapathError;

/// How much the kernel programs say (`--kernel-log`): `info` tells why a connection was
/// refused, `debug` also which endpoint each connect went to; `warn` and `error` only map
/// writes that failed.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum KernelLogLevel {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

impl KernelLogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            KernelLogLevel::Off => "off",
            KernelLogLevel::Error => "error",
            KernelLogLevel::Warn => "warn",
            KernelLogLevel::Info => "info",
            KernelLogLevel::Debug => "debug",
        }
    }

    /// Its place in the kernel's settings word.
    pub(super) fn settings_bits(self) -> u32 {
        let level = match self {
            KernelLogLevel::Off => kernel_log::OFF,
            KernelLogLevel::Error => kernel_log::ERROR,
            KernelLogLevel::Warn => kernel_log::WARN,
            KernelLogLevel::Info => kernel_log::INFO,
            KernelLogLevel::Debug => kernel_log::DEBUG,
        };
        (level & settings::KERNEL_LOG_MASK) << settings::KERNEL_LOG_SHIFT
    }
}

impl std::fmt::Display for KernelLogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The target kernel lines carry in the agent's log (the agent's own filter lets them all
/// through: `--kernel-log` already chose which are written).
pub const TARGET: &str = "weft::kernel";

/// The kernel programs' log ring, taken from the loaded object; read with `run`.
pub struct KernelLogRing(EbpfLogger<Bridge>);

impl KernelLogRing {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<KernelLogRing, DatapathError> {
        EbpfLogger::init_with_logger(ebpf, Bridge)
            .map(KernelLogRing)
            .map_err(|error| DatapathError::KernelLog(Box::new(error)))
    }

    /// Forwards kernel lines into the agent's log as they are written, until the task is
    /// aborted (with the datapath that loaded the programs).
    pub async fn run(self) {
        // SAFETY: the logger owns its ring's fd for its whole life and always reports that
        // same fd, which is what AsyncFd requires.
        let mut ring = match unsafe { AsyncFd::register(self.0) } {
            Ok(ring) => ring,
            Err(error) => {
                let error = error.into_parts().1;
                warn!(%error, "cannot poll the kernel log ring; kernel lines will not show");
                return;
            }
        };
        loop {
            let Ok(mut ready) = ring.readable_mut().await else {
                return;
            };
            // Cleared before reading, so a line written meanwhile raises readiness again.
            ready.clear_ready();
            ready.get_inner_mut().flush();
        }
    }
}

/// Hands aya-log's records to tracing, at their own level, under `TARGET`.
pub struct Bridge;

impl log::Log for Bridge {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: TARGET, "{message}"),
            log::Level::Warn => tracing::warn!(target: TARGET, "{message}"),
            log::Level::Info => tracing::info!(target: TARGET, "{message}"),
            log::Level::Debug => tracing::debug!(target: TARGET, "{message}"),
            log::Level::Trace => tracing::trace!(target: TARGET, "{message}"),
        }
    }

    fn flush(&self) {}
}
