//! Endpoint health: the state machine one endpoint goes through (active probe results with
//! hysteresis, passive ejection), what the states mean for a service's weights (with the
//! panic threshold), the slow-start ramp of an endpoint that becomes usable, and the prober that sends the active probes. The store keeps each
//! endpoint's state; this module only knows how states change.

mod probe;
pub mod ramp;
mod state;
mod weights;

use std::{net::SocketAddr, sync::Arc};

pub use probe::{NotSent, ProbeFailure, ProbeOutcome, ProbeResult, Prober};
pub use state::{EndpointHealth, State};
pub use weights::{Effective, effective_weights};

/// A change of an endpoint's state, worth logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub service: Arc<str>,
    pub endpoint: SocketAddr,
    pub from: State,
    pub to: State,
    /// The failed probe that made it, if one did.
    pub cause: Option<ProbeFailure>,
}
