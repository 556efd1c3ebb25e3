//! What the admin API serves and the CLI prints: one set of types on both sides, so the JSON
//! field names (an interface other tools test against: see docs/architecture.md) are
//! written down once.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::datapath::KernelLogLevel;

/// `weft services -o json`: one per configured service.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceView {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: String,
    /// Where the service is defined: a file path, or `namespace/name` in Kubernetes.
    pub origin: String,
    /// Too little healthy weight: every endpoint gets traffic by configured weight.
    pub panic: bool,
    /// The kernel holds an entry for this service (false while it could not be written:
    /// `weft status` says why, and the agent retries).
    pub installed: bool,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EndpointView {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u16,
    pub effective_weight: u32,
    /// `healthy` | `unhealthy` | `ejected` | `draining` | `unknown`
    pub state: String,
    /// Slow start: the percent of its weight the endpoint has reached on its ramp (absent
    /// when it has its whole weight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start_percent: Option<u8>,
}

/// `weft endpoints -o json`: one per (service, endpoint), with its connection statistics.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EndpointRow {
    pub service: String,
    #[serde(flatten)]
    pub endpoint: EndpointView,
    #[serde(flatten)]
    pub stats: ConnStats,
    #[serde(flatten)]
    pub governance: GovernanceStats,
}

/// What a service's governance did, counted by the kernel (all zero without governance).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GovernanceStats {
    /// Open connections counted against the service's `limits` (0 without limits).
    pub limited_open: u64,
    /// Service: connects refused because no endpoint (or the service) had room. Endpoint:
    /// connects that drew it while it was full (sent elsewhere, or refused).
    pub overflows: u64,
    /// Connects refused by fault injection (service only).
    pub fault_aborts: u64,
    /// Connects (and forwarded flows) refused by `allow` (service only).
    pub denials: u64,
}

impl std::ops::Add for GovernanceStats {
    type Output = GovernanceStats;

    fn add(self, other: GovernanceStats) -> GovernanceStats {
        GovernanceStats {
            limited_open: self.limited_open + other.limited_open,
            overflows: self.overflows + other.overflows,
            fault_aborts: self.fault_aborts + other.fault_aborts,
            denials: self.denials + other.denials,
        }
    }
}

/// Connection totals of one endpoint (or, summed, of a service) since the agent started.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnStats {
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub connect_failures: u64,
    pub connections_open: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Mean over closed connections; absent before the first one.
    pub mean_duration_ms: Option<f64>,
    /// Mean smoothed RTT at close; absent before the first one.
    pub mean_srtt_us: Option<f64>,
}

/// `weft stats -o json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatsView {
    pub total: ConnStats,
    pub services: Vec<ServiceStats>,
    pub events_lost: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceStats {
    pub service: String,
    #[serde(flatten)]
    pub stats: ConnStats,
    #[serde(flatten)]
    pub governance: GovernanceStats,
}

/// `weft conns -o json`: one per live translated connection.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConnView {
    pub service: String,
    pub endpoint: SocketAddr,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The kernel's TCP state, lower case (`established`, `syn_sent`, `fin_wait1`, ...).
    pub state: String,
    /// Payload bytes the peer acknowledged.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    pub srtt_us: u32,
    pub retransmits: u32,
    pub age_ms: u64,
    pub segs_in: u32,
    pub segs_out: u32,
    pub cookie: u64,
    /// Which half of weft translated it.
    pub path: ConnPath,
}

/// `socket`: translated at connect by the socket programs (a local client in the cgroup);
/// `tc`: translated packet by packet by the TC programs (forwarded traffic).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConnPath {
    Socket,
    Tc,
}

impl ConnPath {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnPath::Socket => "socket",
            ConnPath::Tc => "tc",
        }
    }
}

/// `weft conns --follow -o json`: one line per connection event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConnEventView {
    /// `opened` | `closed` | `connect_failed`, or a connect the service's governance
    /// refused: `denied` (`allow`), `aborted` (`fault`), `overflow` (`limits`).
    pub event: String,
    #[serde(flatten)]
    pub conn: ConnView,
}

/// `weft status -o json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusView {
    pub version: String,
    /// Counts config versions applied since the agent started (1 = the file it started on).
    pub generation: u64,
    pub ready: bool,
    pub datapath: DatapathView,
    pub uptime_s: u64,
    pub programs: Vec<ProgramView>,
    pub maps: Vec<MapView>,
    /// Services configured.
    pub services: usize,
    /// Services the kernel holds an entry for.
    pub services_installed: usize,
    /// Services not brought to their configured state, with why (the agent retries them).
    pub not_installed: Vec<String>,
    /// Definitions not in force because another origin holds their name or frontend.
    pub conflicts: Vec<String>,
    /// Whether map writes go in batches (kernels without batch operations: one by one).
    pub batched_writes: bool,
    pub endpoints: usize,
    pub connections: usize,
    /// Per-connection records and events on (`stats.connections` in the config).
    pub connection_stats: bool,
    /// Metric series per endpoint as well as per service (`stats.endpoint_metrics`).
    pub endpoint_metrics: bool,
    pub panicking: Vec<String>,
    pub events_lost: u64,
    /// Reverse-NAT entries the kernel evicted while their socket was open (map full).
    pub reverse_nat_evictions: u64,
    /// Replies translated back from a socket's own record after such an eviction.
    pub reverse_nat_recovered: u64,
    pub config_reloads_ok: u64,
    pub config_reloads_failed: u64,
    /// What the kernel programs log into the agent's log (`--kernel-log`, `weft kernel-log`).
    #[serde(default)]
    pub kernel_log: KernelLogLevel,
}

/// Body of `PUT /v1/kernel-log`, and its answer.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct KernelLogView {
    pub level: KernelLogLevel,
}

/// Whether the datapath is in place: `"installed"`, or `{"missing": "why"}` while the agent
/// reinstalls what was removed under it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum DatapathView {
    Installed,
    Missing(String),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProgramView {
    pub name: String,
    /// Taken over from an earlier agent's pinned link rather than attached anew.
    pub adopted: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MapView {
    pub name: String,
    /// Entries in use (for the ring buffer: none; it has only a size).
    pub entries: Option<u64>,
    /// Maximum entries (for the ring buffer: bytes).
    pub capacity: u64,
    /// Kernel memory the used entries cost, roughly: entries × (key + value) bytes.
    pub approx_bytes: u64,
}
