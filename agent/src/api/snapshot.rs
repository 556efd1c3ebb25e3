//! What the control loop publishes about the agent itself, beside the store's snapshot:
//! the config generation, the datapath's programs and map counts, and whether it is ready.

use super::view::ProgramView;
use crate::datapath::Counts;

/// Whether the datapath the daemon installed is in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DatapathHealth {
    #[default]
    Installed,
    /// Its pins are gone (`weft reset` under a running agent) and it is not back yet.
    Missing(String),
}

#[derive(Clone, Debug, Default)]
pub struct AgentInfo {
    /// Config versions applied; 0 until the first.
    pub generation: u64,
    /// Whether every source delivered what it had at start (readiness waits for it).
    pub synced: bool,
    pub datapath: DatapathHealth,
    pub programs: Vec<ProgramView>,
    pub counts: Counts,
    pub batched_writes: bool,
    /// Services not in their configured state in the kernel, and why.
    pub not_installed: Vec<String>,
}
