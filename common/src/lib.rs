//! Map keys, values and limits shared by the kernel programs and the agent.
//!
//! Everything here is `#[repr(C)]` with explicit padding and plain integers: these structs
//! are the contract between the two halves. Map names carry a layout version; a layout change
//! must bump it so a new agent creates new maps instead of misreading pinned old ones.
#![no_std]

/// Address family tags used in keys (not AF_* numbers: kept small and explicit).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// Map names (at most 15 bytes: the kernel's object-name limit) and their capacities.
pub mod maps {
    pub const SERVICES: &str = "WEFT_SERVICE_V1";
    pub const BACKENDS: &str = "WEFT_BACKEND_V1";
    pub const MAGLEV: &str = "WEFT_MAGLEV_V1";
    pub const REVNAT: &str = "WEFT_REVNAT_V1";
    pub const EVENTS: &str = "WEFT_EVENTS_V2";
    pub const CONNS: &str = "WEFT_CONNS_V1";
    pub const LOST: &str = "WEFT_LOST_V1";
    pub const SETTINGS: &str = "WEFT_SETTINGS_V1";
    pub const SOCK_NAT: &str = "WEFT_SOCKNAT_V1";
    pub const COUNTERS: &str = "WEFT_COUNTERS_V1";
    pub const SOCK_UDP: &str = "WEFT_SOCKUDP_V1";
    pub const POLICY: &str = "WEFT_POLICY_V1";
    pub const GOVERN: &str = "WEFT_GOVCNT_V1";
    pub const SOCK_GOV: &str = "WEFT_SOCKGOV_V1";

    /// Every map weft pins.
    pub const ALL: [&str; 14] = [
        SERVICES, BACKENDS, MAGLEV, REVNAT, EVENTS, CONNS, LOST, SETTINGS, SOCK_NAT, COUNTERS,
        SOCK_UDP, POLICY, GOVERN, SOCK_GOV,
    ];

    /// Services (address, port, protocol) the kernel translates.
    pub const SERVICES_CAPACITY: u32 = 65_536;
    /// Distinct endpoints over all services.
    pub const BACKENDS_CAPACITY: u32 = 262_144;
    /// Maglev table chunks (`MAGLEV_CHUNK` slots each) over all services, including the
    /// one spare table a reconcile builds before publishing it.
    pub const MAGLEV_CAPACITY: u32 = 524_288;
    /// Translated sockets whose peer address the kernel remembers for recvmsg/getpeername.
    pub const REVNAT_CAPACITY: u32 = 131_072;
    /// Bytes of the connection-event ring buffer (a power of two, page aligned).
    pub const EVENTS_BYTES: u32 = 1 << 20;
    /// Live translated TCP connections the kernel follows (LRU: the oldest go first).
    pub const CONNS_CAPACITY: u32 = 131_072;
    /// Services with governance (`WEFT_POLICY_V1`): at most one entry per service.
    pub const POLICY_CAPACITY: u32 = SERVICES_CAPACITY;
    /// Governance counts: one per (governed service, endpoint) plus one per governed service.
    pub const GOVERN_CAPACITY: u32 = BACKENDS_CAPACITY;

    /// The TC path's maps (created when TC programs are attached, pinned like the rest).
    pub const FLOWS: &str = "WEFT_FLOWS_V1";
    pub const FRAGS: &str = "WEFT_FRAGS_V1";
    pub const VIPS: &str = "WEFT_VIPS_V1";
    pub const TC_COUNTERS: &str = "WEFT_TCSTAT_V1";

    /// Flow entries of the TC path's conntrack by default: two per flow (one per
    /// direction). The object declares these LRU maps with one entry; the agent sizes them
    /// when it attaches TC programs (an LRU map is allocated in full at creation).
    pub const FLOWS_CAPACITY: u32 = 262_144;
    /// IPv4 datagrams in fragments whose first fragment's ports are remembered.
    pub const FRAGS_CAPACITY: u32 = 8_192;
    /// Distinct service addresses.
    pub const VIPS_CAPACITY: u32 = 65_536;
}

/// Key of `WEFT_FLOWS_V1`, the TC path's conntrack: one direction of one flow, as the
/// packets of that direction carry it. A flow has two entries: `FORWARD` for the client's
/// packets to the service address, `REVERSE` for the endpoint's replies, each written only
/// by the CPU that handles its direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub protocol: u8,
    pub family: u8,
    /// `flow_dir::FORWARD` or `flow_dir::REVERSE`.
    pub dir: u8,
    pub _pad: u8,
}

/// Directions of a flow entry.
pub mod flow_dir {
    /// Client to service address: the value holds the endpoint it was sent to.
    pub const FORWARD: u8 = 0;
    /// Endpoint to client: the value holds the service address to show the client.
    pub const REVERSE: u8 = 1;
}

/// Value of `WEFT_FLOWS_V1`: where this direction's packets are translated to, and what
/// they have carried.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    /// Forward: the endpoint (new destination). Reverse: the service address (new source).
    pub nat_addr: Addr,
    /// Network byte order.
    pub nat_port: u16,
    /// `flow_flags` bits seen in this direction.
    pub flags: u8,
    pub _pad: u8,
    pub service_id: u32,
    pub backend_id: u32,
    pub _pad2: u32,
    /// CLOCK_MONOTONIC (coarse) nanoseconds when the flow was created.
    pub created_ns: u64,
    /// The same clock at the last packet of this direction, refreshed at most once a second.
    pub last_ns: u64,
    pub packets: u64,
    /// Bytes as the interface saw them (headers included).
    pub bytes: u64,
}

/// Bits of `FlowValue::flags`, per direction.
pub mod flow_flags {
    /// A TCP SYN without ACK.
    pub const SYN: u8 = 1;
    /// A packet that is not a bare SYN (the handshake went on).
    pub const SEEN_NON_SYN: u8 = 2;
    /// A TCP FIN.
    pub const FIN: u8 = 4;
    /// A TCP RST.
    pub const RST: u8 = 8;
}

/// Key of `WEFT_FRAGS_V1`: one IPv4 datagram in fragments.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragKey {
    pub src: u32,
    pub dst: u32,
    /// The IP identification field, network byte order.
    pub id: u16,
    pub protocol: u8,
    pub _pad: u8,
}

/// Value of `WEFT_FRAGS_V1`: the ports of the datagram's first fragment, network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}

/// Key of `WEFT_VIPS_V1`: a service address (any port or protocol), so the TC path can
/// tell a fragment or ICMP error meant for a service from unrelated traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VipKey {
    pub addr: Addr,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Indexes of `WEFT_TCSTAT_V1`, a per-CPU array of `u64` counts of what the TC programs
/// did with packets that were not simply translated.
pub mod tc_counter {
    /// A new flow to a service with no usable endpoint: dropped.
    pub const NO_ENDPOINT: u32 = 0;
    /// A packet to a service address too short for its headers: dropped.
    pub const TRUNCATED: u32 = 1;
    /// An IPv4 header length below 20 bytes, or beyond the packet: dropped.
    pub const BAD_HEADER: u32 = 2;
    /// A fragment to a service address whose first fragment was not seen: dropped.
    pub const FRAGMENT_UNKNOWN: u32 = 3;
    /// An IPv6 packet to a service address with extension headers (fragments included):
    /// dropped, the ports cannot be found cheaply.
    pub const IPV6_EXTENSION: u32 = 4;
    /// A packet to a service address of a protocol other than TCP, UDP or ICMP errors: passed.
    pub const OTHER_PROTOCOL: u32 = 5;
    /// An ICMP error about a translated flow, translated.
    pub const ICMP_TRANSLATED: u32 = 6;
    /// An ICMP error to a service address that matches no flow: passed.
    pub const ICMP_UNMATCHED: u32 = 7;
    /// A new flow whose entries could not be written (map full beyond LRU): dropped.
    pub const FLOW_NOT_WRITTEN: u32 = 8;
    /// A flow whose endpoint left every service, chosen anew.
    pub const ENDPOINT_GONE: u32 = 9;
    /// A new flow from a source the service's `allow` rules do not name: dropped.
    pub const DENIED: u32 = 10;
    /// Slots of the array (room to grow without a new layout).
    pub const SLOTS: u32 = 16;
}

/// Indexes of `WEFT_COUNTERS_V1`, a per-CPU array of `u64` event counts the kernel keeps
/// and the agent sums.
pub mod counter {
    /// Reverse-NAT entries the LRU evicted while their socket was still open (counted when
    /// the socket closes and finds its entry gone).
    pub const REVNAT_EVICTED: u32 = 0;
    /// Replies and getpeername calls translated back from the socket's own record because
    /// its reverse-NAT entry had been evicted.
    pub const REVNAT_RECOVERED: u32 = 1;
    /// Slots of the array (room to grow without a new layout).
    pub const SLOTS: u32 = 16;
}

/// Bits of the one `u32` in `WEFT_SETTINGS_V1`, written by the agent from its config. Zero
/// (a freshly created map) is the default behaviour.
pub mod settings {
    /// No live record, no opened/closed events: only connect failures are reported (passive
    /// failure detection needs them).
    pub const CONNECTION_STATS_OFF: u32 = 1;
    /// Where the kernel-log level sits (`KERNEL_LOG_MASK << KERNEL_LOG_SHIFT`): 0 = off,
    /// else the most verbose `kernel_log` level the kernel programs write. Agents that
    /// predate it write 0 there, which turns logging off.
    pub const KERNEL_LOG_SHIFT: u32 = 8;
    pub const KERNEL_LOG_MASK: u32 = 0x7;
}

/// Kernel-log levels as `settings` holds them (aya-log's numbering: the lower, the graver).
pub mod kernel_log {
    pub const OFF: u32 = 0;
    pub const ERROR: u32 = 1;
    pub const WARN: u32 = 2;
    pub const INFO: u32 = 3;
    pub const DEBUG: u32 = 4;
}

/// Rules one service's `allow` list may hold (checked in order at connect).
pub const MAX_ALLOW_RULES: usize = 16;

/// Value of `WEFT_POLICY_V1`, keyed by service id: what the kernel enforces for a service
/// beyond choosing its endpoint. Services without governance have no entry (one failed
/// lookup at connect is all they pay).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Policy {
    /// Open connections per endpoint at most; 0 = no limit.
    pub max_per_endpoint: u32,
    /// Open connections to the whole service at most; 0 = no limit.
    pub max_connections: u32,
    /// Percent (0..=100) of new connections refused by fault injection.
    pub abort_percent: u32,
    /// The errno a fault-injected refusal reports (positive).
    pub abort_errno: u32,
    /// Only clients in this cgroup see the fault; id 0 = every client.
    pub fault_cgroup: CgroupMatch,
    /// Rules in `rules`; 0 = the service is open to everyone.
    pub rule_count: u32,
    pub _pad: u32,
    pub rules: [AllowRule; MAX_ALLOW_RULES],
}

impl Policy {
    /// Whether connections to the service are counted (it has a limit).
    pub const fn limited(&self) -> bool {
        self.max_per_endpoint != 0 || self.max_connections != 0
    }
}

/// A cgroup and its depth below the cgroup2 root (the level
/// `bpf_get_current_ancestor_cgroup_id` takes): a task matches when the cgroup is its own or
/// one of its ancestors.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CgroupMatch {
    pub id: u64,
    pub level: u32,
    pub _pad: u32,
}

/// Kinds of `AllowRule`.
pub mod allow_kind {
    pub const CGROUP: u8 = 1;
    pub const UID: u8 = 2;
    pub const GID: u8 = 3;
    /// Source addresses of forwarded traffic (the TC path).
    pub const CIDR: u8 = 4;
}

/// One `allow` rule as the kernel checks it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AllowRule {
    /// An `allow_kind`.
    pub kind: u8,
    /// CIDR: the prefix length.
    pub prefix: u8,
    /// CIDR: `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub _pad: u8,
    /// UID or GID: the id.
    pub id: u32,
    /// CGROUP: the cgroup.
    pub cgroup: CgroupMatch,
    /// CIDR: the network, as `Addr`.
    pub network: Addr,
}

/// Key of `WEFT_GOVCNT_V1`: an endpoint of a governed service, or (with `WHOLE_SERVICE`)
/// the service itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct GovernKey {
    pub service_id: u32,
    pub backend_id: u32,
}

/// `GovernKey::backend_id` of a service's own counts (backend ids start at 1 and stay far
/// below this).
pub const WHOLE_SERVICE: u32 = u32::MAX;

/// Value of `WEFT_GOVCNT_V1`, updated with atomic adds by every CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GovernCount {
    /// Open connections counted against the limits: up at connect, down when the socket is
    /// released. Signed so that a decrement racing another never wraps.
    pub open: i64,
    /// Endpoint: connections that drew it while it was full. Service: connections refused
    /// because no endpoint (or the service) had room.
    pub overflow: u64,
    /// Service: connections refused by fault injection.
    pub aborted: u64,
    /// Service: connections refused by `allow`.
    pub denied: u64,
}

/// Value of `WEFT_SOCKGOV_V1`, socket storage: the count a connection took, so that the
/// socket's release gives back exactly that one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockGov {
    pub service_id: u32,
    pub backend_id: u32,
    /// The counts the socket holds: `sock_gov` bits, 0 once given back.
    pub counted: u32,
    pub _pad: u32,
}

/// `SockGov::counted` bits.
pub mod sock_gov {
    /// A count of the endpoint's open connections.
    pub const ENDPOINT: u32 = 1;
    /// A count of the whole service's (taken only when it has `max_connections`: without a
    /// cap the agent sums its endpoints' counts, sparing every connect and close an atomic
    /// add on a cache line all CPUs share).
    pub const SERVICE: u32 = 2;
}

/// Flag for hash maps whose elements are allocated on insert: memory follows use, and a
/// reader never sees an element recycled under it while the agent replaces it.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// An IP address as the kernel's sockaddr hooks see it: four 32-bit words, each holding
/// four bytes in network order (so `u32::from_ne_bytes(octets)`). IPv4 uses word 0 only.
pub type Addr = [u32; 4];

/// Key of `WEFT_SERVICE_V1`: one service frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ServiceKey {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub protocol: u8,
    pub family: u8,
}

/// Value of `WEFT_SERVICE_V1`. Rewriting this one value is how a new Maglev table is
/// published: readers follow `table_id` to the table that is complete at that instant.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Stable id of the service, for statistics.
    pub service_id: u32,
    /// Key prefix of this service's current table in `WEFT_MAGLEV_V1`.
    pub table_id: u32,
    /// Slots in the table (a prime M); 0 means no usable endpoint: refuse connects.
    pub table_size: u32,
    pub flags: u32,
}

/// Value of `WEFT_BACKEND_V1`, keyed by a u32 backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Backend {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
}

/// Slots per element of `WEFT_MAGLEV_V1`: a table of M slots spans ceil(M / 64) elements,
/// so kernel memory follows the tables actually installed.
pub const MAGLEV_CHUNK: u32 = 64;

/// Key of `WEFT_MAGLEV_V1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MaglevKey {
    pub table_id: u32,
    pub chunk: u32,
}

/// Value of `WEFT_MAGLEV_V1`: backend ids of 64 consecutive slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevChunk {
    pub backends: [u32; MAGLEV_CHUNK as usize],
}

/// Key of `WEFT_REVNAT_V1`: a translated socket and the endpoint it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNatKey {
    pub cookie: u64,
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: [u8; 5],
}

impl RevNatKey {
    /// `port` in network byte order; `family` a `FAMILY_*` tag.
    pub const fn new(cookie: u64, addr: Addr, port: u16, family: u8) -> RevNatKey {
        RevNatKey {
            cookie,
            addr,
            port,
            family,
            _pad: [0; 5],
        }
    }
}

/// Value of `WEFT_REVNAT_V1`: the service address the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNatValue {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub _pad: u16,
    pub service_id: u32,
    pub backend_id: u32,
}

/// Distinct endpoints a socket that is not TCP remembers in its own storage
/// (`WEFT_SOCKNAT_V1`): an unconnected UDP socket may talk to several services.
pub const SOCK_NAT_SLOTS: usize = 4;

/// One translation a socket made: the endpoint it was sent to and the service it meant.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockNatEntry {
    pub endpoint: Addr,
    /// Network byte order.
    pub endpoint_port: u16,
    pub family: u8,
    pub _pad: u8,
    pub service: RevNatValue,
}

/// Value of `WEFT_SOCKNAT_V1`, socket-local storage the kernel frees with the socket: the
/// reverse-NAT keys this socket created, so its release removes exactly those (an entry then
/// lives as long as its socket), and a copy of each translation, so a reply still shows the
/// service address if the shared map had to evict the entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockNat {
    /// Entries written so far; past `SOCK_NAT_SLOTS` the oldest slot is reused.
    pub written: u32,
    pub _pad: u32,
    pub entries: [SockNatEntry; SOCK_NAT_SLOTS],
}

/// What one UDP socket sent to and received from one endpoint, in the slot of its
/// `SockNat` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UdpTraffic {
    /// CLOCK_BOOTTIME nanoseconds of the socket's first datagram to the endpoint.
    pub opened_ns: u64,
    pub datagrams_out: u64,
    /// UDP payload bytes (a GSO send counts each segment's payload once).
    pub bytes_out: u64,
    pub datagrams_in: u64,
    pub bytes_in: u64,
}

/// Value of `WEFT_SOCKUDP_V1`, socket storage beside `WEFT_SOCKNAT_V1`: the traffic of a
/// translated UDP socket per translation slot, reported when the socket is released. A map
/// of its own so that the translation record keeps its layout (and its pinned map) across
/// upgrades.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockUdp {
    pub slots: [UdpTraffic; SOCK_NAT_SLOTS],
}

/// What happened to a translated TCP connection (`ConnRecord::kind` of an event).
pub mod event {
    /// The handshake completed.
    pub const ESTABLISHED: u8 = 1;
    /// The connect failed: refused (RST) or timed out in SYN_SENT.
    pub const CONNECT_FAILED: u8 = 2;
    /// An established connection closed; the record holds its final counters.
    pub const CLOSED: u8 = 3;
    /// A connect refused by the service's `allow` rules (`dst_addr` is the service address).
    pub const DENIED: u8 = 4;
    /// A connect refused by fault injection.
    pub const ABORTED: u8 = 5;
    /// A connect refused because no endpoint (or the service) had room under its limits.
    pub const OVERFLOW: u8 = 6;
}

/// One translated TCP connection: the value of `WEFT_CONNS_V1` (keyed by socket cookie) while
/// it lives, and the record of `WEFT_EVENTS_V2` when it opens, fails or closes. The counters
/// are the kernel's own socket fields, copied at the last callback.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnRecord {
    pub cookie: u64,
    /// CLOCK_BOOTTIME nanoseconds at connect.
    pub start_ns: u64,
    /// CLOCK_BOOTTIME nanoseconds at the last update.
    pub update_ns: u64,
    /// Payload bytes the peer acknowledged (what was sent, exactly once).
    pub bytes_acked: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// The socket's own address and the endpoint's.
    pub src_addr: Addr,
    pub dst_addr: Addr,
    pub service_id: u32,
    pub backend_id: u32,
    pub segs_in: u32,
    pub segs_out: u32,
    /// Smoothed round-trip time in microseconds.
    pub srtt_us: u32,
    pub total_retrans: u32,
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    pub family: u8,
    /// The kernel's TCP state (1 = ESTABLISHED, 2 = SYN_SENT, ... 7 = CLOSE).
    pub state: u8,
    /// An `event` kind in ring-buffer records; 0 in the live map.
    pub kind: u8,
    /// `conn_flags` bits: which FINs the counters include.
    pub flags: u8,
}

/// Bits of `ConnRecord::flags`. The kernel's byte counters count sequence space, so the
/// SYN and each FIN add one; these bits let the agent take them out again.
pub mod conn_flags {
    /// This side sent its FIN.
    pub const FIN_SENT: u8 = 1;
    /// The peer acknowledged our FIN (counted in `bytes_acked`).
    pub const FIN_ACKED: u8 = 2;
    /// The peer's FIN arrived (counted in `bytes_received`).
    pub const FIN_RECEIVED: u8 = 4;
    /// The handshake completed (the SYN is counted in `bytes_acked`).
    pub const ESTABLISHED: u8 = 8;
    /// A UDP socket's traffic with one endpoint, not a TCP connection: opened at its first
    /// translated datagram, closed when the socket is released; the counters are payload
    /// bytes (`bytes_acked` out, `bytes_received` in) and datagrams (`segs_out`, `segs_in`).
    pub const UDP: u8 = 16;
    /// A flow of the TC path, reported by the agent's flow expiry (never by the kernel):
    /// the counters are IP bytes and packets each way.
    pub const TC: u8 = 32;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C) structs of plain integers with explicit padding fields.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for MaglevKey {}
    unsafe impl aya::Pod for MaglevChunk {}
    unsafe impl aya::Pod for RevNatKey {}
    unsafe impl aya::Pod for RevNatValue {}
    unsafe impl aya::Pod for ConnRecord {}
    unsafe impl aya::Pod for SockNat {}
    unsafe impl aya::Pod for SockUdp {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragPorts {}
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for Policy {}
    unsafe impl aya::Pod for GovernKey {}
    unsafe impl aya::Pod for GovernCount {}
}

// The layouts the kernel and the agent share, checked where both are compiled.
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<FlowValue>() == 64);
const _: () = assert!(core::mem::size_of::<FragKey>() == 12);
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);
const _: () = assert!(core::mem::size_of::<AllowRule>() == 40);
const _: () = assert!(core::mem::size_of::<Policy>() == 40 + 40 * MAX_ALLOW_RULES);
const _: () = assert!(core::mem::size_of::<GovernCount>() == 32);
