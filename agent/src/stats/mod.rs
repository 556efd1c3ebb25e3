//! Connection statistics: kernel events resolved and counted (`events`), compact counters
//! (`counters`), the kernel tables sampled (`sample`), and the Prometheus metrics built from
//! them (`metrics`).

mod counters;
pub mod events;
mod exposition;
mod metrics;
pub mod record;
mod sample;

pub use counters::{Counters, Histograms, ServiceCounters, Totals};
pub use events::{ConnEvent, ConnectOutcome};
pub use exposition::classic_text;
pub use metrics::Metrics;
pub use sample::KernelSample;
