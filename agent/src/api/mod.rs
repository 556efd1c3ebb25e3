//! The agent's listeners: the admin API on a unix socket and the Prometheus endpoint, both
//! only reading what the others publish (`Shared`). `view` holds the JSON types the CLI
//! shares.

pub mod admin;
pub mod metrics;
mod shared;
mod snapshot;
pub mod view;

use std::{net::SocketAddr, path::PathBuf};

pub use shared::{Shared, event_view};
pub use snapshot::{AgentInfo, DatapathHealth};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("admin socket {}: {error}", path.display())]
    Admin {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("metrics address {addr}: {error}")]
    Metrics {
        addr: SocketAddr,
        error: std::io::Error,
    },
}
