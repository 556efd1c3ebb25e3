//! Where services come from, turned into per-service deltas: each source knows what it
//! delivered before and hands on only the services that changed. Nothing downstream knows
//! where a service came from except its `Origin`.

pub mod files;
pub mod kubernetes;

use std::{fmt, path::Path, sync::Arc};

use crate::config::{ConfigError, ServiceSpec, StatsSettings, TcSettings};

/// The file (or Kubernetes object) a service was defined in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    File(Arc<Path>),
    /// `namespace/name` of a Kubernetes Service.
    Kubernetes(Arc<str>),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Kubernetes(name) => f.write_str(name),
        }
    }
}

/// One service's change, as its origin says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delta {
    /// The service exists now, with this definition.
    Upsert {
        origin: Origin,
        spec: Arc<ServiceSpec>,
    },
    /// The origin no longer defines it.
    Remove { origin: Origin, name: Arc<str> },
}

/// Whether an origin holds an agent-wide block (`stats:`, `tc:`): at most one origin may.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim<T> {
    Unchanged,
    Set(T),
    Cleared,
}

pub type StatsClaim = Claim<StatsSettings>;
pub type TcClaim = Claim<TcSettings>;

impl<T: PartialEq> Claim<T> {
    /// The claim of an origin whose block was `before` and is `now`.
    pub fn between(before: Option<T>, now: Option<T>) -> Claim<T> {
        match (before, now) {
            (before, now) if before == now => Claim::Unchanged,
            (_, Some(now)) => Claim::Set(now),
            (_, None) => Claim::Cleared,
        }
    }
}

/// Which source an event comes from (each says when it has delivered what it had).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Files,
    Kubernetes,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Files => "files",
            SourceKind::Kubernetes => "kubernetes",
        }
    }
}

/// What a source tells the control loop.
#[derive(Debug)]
pub enum SourceEvent {
    /// An origin changed and was accepted: the deltas of its services (possibly none).
    Accepted {
        origin: Origin,
        deltas: Vec<Delta>,
        stats: StatsClaim,
        tc: TcClaim,
    },
    /// An origin was rejected whole; what it defined before keeps serving.
    Rejected { origin: Origin, error: ConfigError },
    /// The source delivered everything it had when it started (for Kubernetes: the first
    /// full list of Services and EndpointSlices).
    Synced(SourceKind),
}
