//! Connection statistics: kernel records made readable, and the Prometheus metrics they feed.

mod exposition;
mod metrics;
pub mod record;

pub use exposition::classic_text;
pub use metrics::{EndpointLabels, Metrics};
