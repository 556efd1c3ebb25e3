//! The TC path's conntrack (`WEFT_FLOWS_V1`) seen as flows: the kernel keeps one entry per
//! direction (the client's packets, the endpoint's replies), written by whichever CPU
//! handles that direction; here they are paired up for `weft conns`, and old flows are
//! expired.
//!
//! The map is an LRU: under a flood the kernel evicts the least recently used entries
//! itself, and the datapath keeps working. Expiry is what makes a closed or idle flow leave
//! before that, so the table shows what is alive and a port reused much later starts afresh:
//! - TCP: 10 s after a RST, or after a FIN in each direction (late retransmissions still
//!   find their endpoint); 60 s for a handshake that never completed; 6 h idle otherwise.
//! - UDP: 60 s idle.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    net::SocketAddr,
    path::Path,
    time::Duration,
};

use aya::maps::{HashMap, MapData};
use std::os::fd::AsFd as _;
use tracing::debug;
use weft_common::{FlowKey, FlowValue, PROTO_TCP, flow_dir, flow_flags, maps as names};

use super::{
    DatapathError,
    batch::{self, BatchError},
    maps::{self, map_error},
};
use crate::layout;

pub const TCP_CLOSED_LINGER: Duration = Duration::from_secs(10);
pub const TCP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One flow: the client's direction and, once the endpoint answered, the reply direction.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub key: FlowKey,
    pub forward: FlowValue,
    pub reverse: Option<FlowValue>,
}

/// Where a flow is, as `weft conns` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    /// TCP: the client's SYN went to the endpoint, no reply yet.
    SynSent,
    Established,
    /// TCP: a FIN in one direction.
    Closing,
    /// TCP: a FIN each way, or a RST: lingering until expiry.
    Closed,
    /// UDP: datagrams went to the endpoint.
    Active,
}

impl FlowState {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowState::SynSent => "syn_sent",
            FlowState::Established => "established",
            FlowState::Closing => "closing",
            FlowState::Closed => "closed",
            FlowState::Active => "active",
        }
    }
}

impl Flow {
    pub fn service_id(&self) -> u32 {
        self.forward.service_id
    }

    pub fn client(&self) -> SocketAddr {
        socket(&self.key.src, self.key.family, self.key.sport)
    }

    pub fn service(&self) -> SocketAddr {
        socket(&self.key.dst, self.key.family, self.key.dport)
    }

    pub fn endpoint(&self) -> SocketAddr {
        socket(
            &self.forward.nat_addr,
            self.key.family,
            self.forward.nat_port,
        )
    }

    fn flags(&self) -> u8 {
        self.forward.flags | self.reverse.map_or(0, |r| r.flags)
    }

    pub fn state(&self) -> FlowState {
        if self.key.protocol != PROTO_TCP {
            return FlowState::Active;
        }
        let reverse_flags = self.reverse.map_or(0, |r| r.flags);
        let flags = self.flags();
        if flags & flow_flags::RST != 0
            || (self.forward.flags & flow_flags::FIN != 0 && reverse_flags & flow_flags::FIN != 0)
        {
            FlowState::Closed
        } else if flags & flow_flags::FIN != 0 {
            FlowState::Closing
        } else if self.reverse.is_none() || flags & flow_flags::SEEN_NON_SYN == 0 {
            FlowState::SynSent
        } else {
            FlowState::Established
        }
    }

    /// The last packet either way (the kernel's coarse monotonic clock).
    pub fn last_ns(&self) -> u64 {
        self.forward
            .last_ns
            .max(self.reverse.map_or(0, |r| r.last_ns))
    }

    /// Whether the flow has outlived its state's timeout at `now_ns`.
    pub fn expired(&self, now_ns: u64) -> bool {
        let timeout = match self.state() {
            FlowState::Closed => TCP_CLOSED_LINGER,
            FlowState::SynSent => TCP_HANDSHAKE_TIMEOUT,
            FlowState::Closing | FlowState::Established => TCP_IDLE_TIMEOUT,
            FlowState::Active => UDP_IDLE_TIMEOUT,
        };
        now_ns.saturating_sub(self.last_ns()) > timeout.as_nanos() as u64
    }

    fn reverse_key(&self) -> FlowKey {
        reverse_key(&self.key, &self.forward)
    }
}

/// The key of the reply direction of the flow whose client direction is `key` → `value`.
fn reverse_key(key: &FlowKey, value: &FlowValue) -> FlowKey {
    FlowKey {
        src: value.nat_addr,
        dst: key.src,
        sport: value.nat_port,
        dport: key.sport,
        protocol: key.protocol,
        family: key.family,
        dir: flow_dir::REVERSE,
        _pad: 0,
    }
}

fn socket(addr: &weft_common::Addr, family: u8, port_be: u16) -> SocketAddr {
    SocketAddr::new(layout::ip_from_kernel(addr, family), u16::from_be(port_be))
}

/// Pairs the entries of one walk into flows. Reply entries whose client entry is gone
/// (evicted) are returned apart.
fn pair(entries: Vec<(FlowKey, FlowValue)>) -> (Vec<Flow>, Vec<(FlowKey, FlowValue)>) {
    let mut reverse: StdHashMap<FlowKey, FlowValue> = StdHashMap::new();
    let mut forward = Vec::new();
    for (key, value) in entries {
        if key.dir == flow_dir::REVERSE {
            reverse.insert(key, value);
        } else {
            forward.push((key, value));
        }
    }
    let flows = forward
        .into_iter()
        .map(|(key, value)| Flow {
            key,
            forward: value,
            reverse: reverse.remove(&reverse_key(&key, &value)),
        })
        .collect();
    (flows, reverse.into_iter().collect())
}

/// Reads the flows (for statistics and `weft conns`).
pub struct FlowReader {
    map: HashMap<MapData, FlowKey, FlowValue>,
}

impl FlowReader {
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Result<FlowReader, DatapathError> {
        let raw = ebpf
            .take_map(names::FLOWS)
            .ok_or(DatapathError::MissingMap { map: names::FLOWS })?;
        Ok(FlowReader {
            map: HashMap::try_from(raw).map_err(map_error(names::FLOWS))?,
        })
    }

    /// Entries the table was created with (two per flow).
    pub fn capacity(&self) -> u64 {
        aya::maps::IterableMap::map(&self.map)
            .info()
            .map_or(0, |info| u64::from(info.max_entries()))
    }

    /// Every flow with a client entry. Entries that vanish during the walk are skipped.
    pub fn flows(&self) -> Vec<Flow> {
        pair(walk(&self.map, &mut true)).0
    }
}

/// Every entry of the table: in batches where the kernel has them (a full table is a
/// quarter of a million entries or more; one by one that is two syscalls each), else one
/// by one. `batches` turns false for good once the kernel says it has none.
fn walk(
    map: &HashMap<MapData, FlowKey, FlowValue>,
    batches: &mut bool,
) -> Vec<(FlowKey, FlowValue)> {
    if *batches {
        let fd = aya::maps::IterableMap::map(map).fd().as_fd();
        match batch::lookup_all(fd, maps::BATCH) {
            Ok(entries) => return entries,
            Err(BatchError::Unsupported) => *batches = false,
            // A walk that failed midway: the next one starts over, one by one this time.
            Err(BatchError::Failed { error, .. }) => {
                debug!(%error, "reading the flow table in batches failed; reading it one by one");
            }
        }
    }
    map.iter().filter_map(Result::ok).collect()
}

/// Deletes flows past their timeout, from a handle of its own on the pinned map, and
/// reports the flows it saw start and end (for the per-service statistics).
pub struct FlowExpiry {
    map: HashMap<MapData, FlowKey, FlowValue>,
    /// Flows already reported as answered: the client key and its creation time (a new
    /// flow on the same key is another flow).
    answered: HashSet<(FlowKey, u64)>,
    /// Whether the kernel has batch map operations (until it says otherwise).
    batches: bool,
}

/// What one sweep did and saw.
#[derive(Debug, Default, Clone)]
pub struct Sweep {
    pub flows: usize,
    pub expired: usize,
    /// Flows whose endpoint answered, seen so for the first time.
    pub answered: Vec<Flow>,
    /// Flows removed, with the counters the walk read.
    pub ended: Vec<Flow>,
}

impl FlowExpiry {
    pub(super) fn open(pin: &Path) -> Result<FlowExpiry, DatapathError> {
        let data = MapData::from_pin(pin).map_err(map_error(names::FLOWS))?;
        let map =
            HashMap::try_from(aya::maps::Map::LruHashMap(data)).map_err(map_error(names::FLOWS))?;
        Ok(FlowExpiry {
            map,
            answered: HashSet::new(),
            batches: true,
        })
    }

    /// One walk: expired flows lose both entries; reply entries without a client entry
    /// (evicted under pressure) go once idle as long as a UDP flow may be.
    pub fn sweep(&mut self) -> Sweep {
        let now = monotonic_ns();
        let (flows, orphans) = pair(walk(&self.map, &mut self.batches));
        let mut sweep = Sweep {
            flows: flows.len(),
            ..Sweep::default()
        };
        let mut answered = HashSet::with_capacity(self.answered.len());
        let mut gone = Vec::new();
        for flow in flows.iter().filter(|f| f.reverse.is_some()) {
            let id = (flow.key, flow.forward.created_ns);
            if !self.answered.contains(&id) {
                sweep.answered.push(*flow);
            }
            answered.insert(id);
        }
        for flow in flows.iter().filter(|f| f.expired(now)) {
            // A flow that saw a packet since the walk read it keeps its entries: the kernel
            // refreshed it, or a new flow took the same key. A new flow on a closed flow's
            // key starts with the client's packet, so there the client entry tells (one
            // lookup instead of two for what most expiries are under churn).
            let closed = flow.state() == FlowState::Closed;
            if self.changed(&flow.key, flow.forward.last_ns)
                || (!closed
                    && self.changed(&flow.reverse_key(), flow.reverse.map_or(0, |r| r.last_ns)))
            {
                continue;
            }
            gone.push(flow.key);
            gone.push(flow.reverse_key());
            sweep.expired += 1;
            answered.remove(&(flow.key, flow.forward.created_ns));
            sweep.ended.push(*flow);
        }
        self.answered = answered;
        for (key, value) in orphans {
            if now.saturating_sub(value.last_ns) > UDP_IDLE_TIMEOUT.as_nanos() as u64
                && !self.changed(&key, value.last_ns)
            {
                gone.push(key);
            }
        }
        maps::delete(&mut self.map, &mut self.batches, &gone);
        sweep
    }

    /// Whether the entry at `key` is not the one the walk read (refreshed, or created anew
    /// since). An entry that is gone has not changed: there is nothing to keep.
    fn changed(&self, key: &FlowKey, last_ns_read: u64) -> bool {
        self.map
            .get(key, 0)
            .is_ok_and(|current| current.last_ns != last_ns_read)
    }
}

/// CLOCK_MONOTONIC, the clock the kernel's coarse timestamps count on.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Age of a flow at this instant, in milliseconds.
pub fn age_ms(flow: &Flow) -> u64 {
    monotonic_ns().saturating_sub(flow.forward.created_ns) / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_common::{FAMILY_V4, PROTO_UDP};

    fn v4(a: u8) -> weft_common::Addr {
        [u32::from_ne_bytes([10, 0, 0, a]), 0, 0, 0]
    }

    fn forward(protocol: u8, flags: u8, last_ns: u64) -> (FlowKey, FlowValue) {
        (
            FlowKey {
                src: v4(1),
                dst: v4(100),
                sport: 4000u16.to_be(),
                dport: 80u16.to_be(),
                protocol,
                family: FAMILY_V4,
                dir: flow_dir::FORWARD,
                _pad: 0,
            },
            FlowValue {
                nat_addr: v4(2),
                nat_port: 8080u16.to_be(),
                flags,
                last_ns,
                ..FlowValue::default()
            },
        )
    }

    fn with_reply(
        (key, value): (FlowKey, FlowValue),
        flags: u8,
        last_ns: u64,
    ) -> Vec<(FlowKey, FlowValue)> {
        let reply = FlowValue {
            nat_addr: key.dst,
            nat_port: key.dport,
            flags,
            last_ns,
            ..FlowValue::default()
        };
        vec![(key, value), (reverse_key(&key, &value), reply)]
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn directions_pair_up_and_addresses_read_back() {
        let (flows, orphans) = pair(with_reply(
            forward(PROTO_TCP, flow_flags::SYN | flow_flags::SEEN_NON_SYN, 5),
            flow_flags::SEEN_NON_SYN,
            7,
        ));
        assert!(orphans.is_empty());
        let flow = flows[0];
        assert_eq!(flow.client(), "10.0.0.1:4000".parse().unwrap());
        assert_eq!(flow.service(), "10.0.0.100:80".parse().unwrap());
        assert_eq!(flow.endpoint(), "10.0.0.2:8080".parse().unwrap());
        assert_eq!(flow.state(), FlowState::Established);
        assert_eq!(flow.last_ns(), 7);
    }

    #[test]
    fn a_reply_without_its_client_entry_is_an_orphan() {
        let mut entries = with_reply(forward(PROTO_UDP, 0, 1), 0, 1);
        entries.remove(0);
        let (flows, orphans) = pair(entries);
        assert!(flows.is_empty());
        assert_eq!(orphans.len(), 1);
    }

    #[test]
    fn each_state_expires_after_its_own_timeout() {
        let cases = [
            // (flows, state, still alive at, expired at)
            (
                pair(vec![forward(PROTO_TCP, flow_flags::SYN, 0)]).0,
                FlowState::SynSent,
                59 * SEC,
                61 * SEC,
            ),
            (
                pair(with_reply(
                    forward(PROTO_TCP, flow_flags::SEEN_NON_SYN | flow_flags::FIN, 0),
                    flow_flags::SEEN_NON_SYN | flow_flags::FIN,
                    0,
                ))
                .0,
                FlowState::Closed,
                9 * SEC,
                11 * SEC,
            ),
            (
                pair(with_reply(
                    forward(PROTO_TCP, flow_flags::SEEN_NON_SYN, 0),
                    flow_flags::RST,
                    0,
                ))
                .0,
                FlowState::Closed,
                9 * SEC,
                11 * SEC,
            ),
            (
                pair(with_reply(
                    forward(PROTO_TCP, flow_flags::SEEN_NON_SYN, 0),
                    flow_flags::SEEN_NON_SYN,
                    0,
                ))
                .0,
                FlowState::Established,
                3600 * SEC,
                6 * 3600 * SEC + SEC,
            ),
            (
                pair(vec![forward(PROTO_UDP, 0, 0)]).0,
                FlowState::Active,
                59 * SEC,
                61 * SEC,
            ),
        ];
        for (flows, state, alive, dead) in cases {
            let flow = flows[0];
            assert_eq!(flow.state(), state);
            assert!(!flow.expired(alive), "{state:?} expired at {alive}");
            assert!(flow.expired(dead), "{state:?} alive at {dead}");
        }
    }
}
