//! The kernel-written tables counted at one instant: one walk of the live-connection table
//! and the reverse-NAT map, and the kernel's counters. Taken at most once a second, off the
//! control loop (the API decides when), shared by every reader.

use std::{collections::HashMap, net::SocketAddr};

use weft_common::conn_flags;

use super::record;
use crate::{
    datapath::{FlowState, KernelCounters, Observer, TcCounters},
    store::{ServiceId, Snapshot},
};

#[derive(Debug, Default)]
pub struct KernelSample {
    pub revnat_entries: u64,
    pub conns_entries: u64,
    pub events_lost: u64,
    pub counters: KernelCounters,
    /// Flow-table entries of the TC path (two per flow once the endpoint answered).
    pub flows: u64,
    /// Entries the flow table holds at most (`tc.max_flows`, two per flow when created).
    pub flows_capacity: u64,
    /// What the TC programs counted, if they are attached.
    pub tc_counters: Option<TcCounters>,
    /// Established translated connections per endpoint of each service: the socket path's
    /// TCP connections and the TC path's established flows.
    pub open: HashMap<(ServiceId, SocketAddr), u64>,
    /// The same, summed per service.
    pub open_per_service: HashMap<ServiceId, u64>,
    /// What governance counted, per governed service and per endpoint of one.
    pub governance: HashMap<(ServiceId, Option<SocketAddr>), Governed>,
}

/// A governed service's (or endpoint's) counts, as the kernel keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Governed {
    /// Open connections counted against the limits (services with limits).
    pub open: u64,
    /// Endpoint: connections that drew it while full. Service: connections refused for
    /// want of room.
    pub overflow: u64,
    /// Connections refused by fault injection (service only).
    pub aborted: u64,
    /// Connections refused by `allow` (service only).
    pub denied: u64,
}

impl KernelSample {
    /// Walks the tables (blocking syscalls, one per entry).
    pub fn take(observer: &Observer, view: &Snapshot) -> KernelSample {
        let records = observer.connections();
        let mut sample = KernelSample {
            revnat_entries: observer.revnat_entries() as u64,
            conns_entries: records.len() as u64,
            events_lost: observer.events_lost(),
            counters: observer.counters(),
            ..KernelSample::default()
        };
        for r in &records {
            if r.flags & conn_flags::ESTABLISHED == 0 {
                continue;
            }
            let id = ServiceId(r.service_id);
            if view.service(id).is_none() {
                continue;
            }
            sample.count_open(id, record::destination(r));
        }
        let flows = observer.flows();
        sample.flows = flows
            .iter()
            .map(|f| 1 + u64::from(f.reverse.is_some()))
            .sum();
        sample.tc_counters = observer.tc_counters();
        sample.flows_capacity = observer.flows_capacity();
        for flow in &flows {
            let id = ServiceId(flow.service_id());
            if matches!(flow.state(), FlowState::Established | FlowState::Active)
                && view.service(id).is_some()
            {
                sample.count_open(id, flow.endpoint());
            }
        }
        for row in observer.governance() {
            let id = ServiceId(row.service_id);
            if view.service(id).is_none() {
                continue;
            }
            sample.governance.insert(
                (id, row.endpoint),
                Governed {
                    // A count a racing decrement took below zero is none open.
                    open: row.count.open.max(0) as u64,
                    overflow: row.count.overflow,
                    aborted: row.count.aborted,
                    denied: row.count.denied,
                },
            );
        }
        sample.sum_uncapped_services(view);
        sample
    }

    /// A service without `max_connections` has no open count of its own (the kernel spares
    /// every connect and close that atomic add): its open connections are its endpoints'.
    fn sum_uncapped_services(&mut self, view: &Snapshot) {
        let mut endpoints_open: HashMap<ServiceId, u64> = HashMap::new();
        for ((id, endpoint), counts) in &self.governance {
            if endpoint.is_some() {
                *endpoints_open.entry(*id).or_default() += counts.open;
            }
        }
        for (id, open) in endpoints_open {
            let capped = view
                .service(id)
                .is_some_and(|s| s.spec.governance.limits.max_connections.is_some());
            if !capped {
                self.governance.entry((id, None)).or_default().open = open;
            }
        }
    }

    /// A service's governance counts (zero if it has none, or nothing happened yet).
    pub fn governed(&self, id: ServiceId, endpoint: Option<SocketAddr>) -> Governed {
        self.governance
            .get(&(id, endpoint))
            .copied()
            .unwrap_or_default()
    }

    fn count_open(&mut self, id: ServiceId, endpoint: SocketAddr) {
        *self.open.entry((id, endpoint)).or_default() += 1;
        *self.open_per_service.entry(id).or_default() += 1;
    }
}
