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

    /// Every map weft pins.
    pub const ALL: [&str; 10] = [
        SERVICES, BACKENDS, MAGLEV, REVNAT, EVENTS, CONNS, LOST, SETTINGS, SOCK_NAT, COUNTERS,
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

/// What happened to a translated TCP connection (`ConnRecord::kind` of an event).
pub mod event {
    /// The handshake completed.
    pub const ESTABLISHED: u8 = 1;
    /// The connect failed: refused (RST) or timed out in SYN_SENT.
    pub const CONNECT_FAILED: u8 = 2;
    /// An established connection closed; the record holds its final counters.
    pub const CLOSED: u8 = 3;
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
}
