//! Connection statistics: kernel events resolved and counted (`events`), TC flows reported
//! as the same records (`flows`), compact counters
//! (`counters`), the kernel tables sampled (`sample`), and the Prometheus metrics built from
//! them (`metrics`).

mod counters;
pub mod events;
mod exposition;
pub mod flows;
mod metrics;
pub mod record;
mod sample;

pub use counters::{Counters, Histograms, ServiceCounters, Totals};
pub use events::{ConnEvent, ConnectOutcome};
pub use exposition::classic_text;
pub use metrics::Metrics;
pub use sample::{Governed, KernelSample};
