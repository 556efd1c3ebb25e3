//! The Prometheus metrics: connection counters and histograms per (service, endpoint),
//! endpoint health, map usage, lost events and config reloads. Label sets are bounded by the
//! config: an endpoint that leaves the config takes its series with it.

use std::{
    collections::HashSet,
    sync::{Mutex, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};
use weft_common::{ConnRecord, event};

use super::record;
use crate::{api::view::ConnStats, datapath::KernelCounters};

/// Follows a cumulative count the kernel keeps in a pinned map: adds what it grew by. A
/// smaller total means the map is new (a reinstalled datapath) and counts from zero.
#[derive(Default)]
struct KernelTotal(AtomicU64);

impl KernelTotal {
    fn follow(&self, counter: &Counter, total: u64) {
        let last = self.0.swap(total, std::sync::atomic::Ordering::Relaxed);
        counter.inc_by(if total >= last { total - last } else { total });
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub service: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    service: String,
    endpoint: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

impl ResultLabels {
    fn of(ok: bool) -> ResultLabels {
        ResultLabels {
            result: if ok { "success" } else { "failure" },
        }
    }
}

/// Histogram buckets, as a constructor the families can call per label set.
#[derive(Clone)]
struct Buckets {
    start: f64,
    factor: f64,
    count: u16,
}

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(self.start, self.factor, self.count))
    }
}

type PerEndpoint<M> = Family<EndpointLabels, M>;

pub struct Metrics {
    registry: Registry,
    opened: PerEndpoint<Counter>,
    closed: PerEndpoint<Counter>,
    failed: PerEndpoint<Counter>,
    sent: PerEndpoint<Counter>,
    received: PerEndpoint<Counter>,
    open: PerEndpoint<Gauge>,
    duration: Family<EndpointLabels, Histogram, Buckets>,
    srtt: Family<EndpointLabels, Histogram, Buckets>,
    /// Sums behind the histograms, for the means `weft stats` shows (prometheus-client
    /// keeps its histogram sums to itself). Not exported.
    duration_sum: PerEndpoint<Counter<f64, AtomicU64>>,
    srtt_sum: PerEndpoint<Counter<f64, AtomicU64>>,
    state: Family<StateLabels, Gauge>,
    effective_weight: PerEndpoint<Gauge>,
    panic: Family<ServiceLabels, Gauge>,
    map_entries: Family<MapLabels, Gauge>,
    map_capacity: Family<MapLabels, Gauge>,
    events_lost: Counter,
    events_lost_seen: KernelTotal,
    revnat_evicted: Counter,
    revnat_evicted_seen: KernelTotal,
    revnat_recovered: Counter,
    revnat_recovered_seen: KernelTotal,
    reinstalls: Counter,
    not_installed: Gauge,
    reloads: Family<ResultLabels, Counter>,
    /// The (service, endpoint) label sets the config has now.
    known: Mutex<HashSet<EndpointLabels>>,
}

/// Endpoint states as `weft_endpoint_state` spells them.
const STATES: [&str; 5] = ["unknown", "healthy", "unhealthy", "ejected", "draining"];

fn state_labels(endpoint: &EndpointLabels, state: &'static str) -> StateLabels {
    StateLabels {
        service: endpoint.service.clone(),
        endpoint: endpoint.endpoint.clone(),
        state,
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            opened: Family::default(),
            closed: Family::default(),
            failed: Family::default(),
            sent: Family::default(),
            received: Family::default(),
            open: Family::default(),
            // 1 ms .. ~4,400 s
            duration: Family::new_with_constructor(Buckets {
                start: 0.001,
                factor: 4.0,
                count: 12,
            }),
            // 10 µs .. ~2.6 s
            srtt: Family::new_with_constructor(Buckets {
                start: 0.000_01,
                factor: 4.0,
                count: 10,
            }),
            duration_sum: Family::default(),
            srtt_sum: Family::default(),
            state: Family::default(),
            effective_weight: Family::default(),
            panic: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            events_lost: Counter::default(),
            events_lost_seen: KernelTotal::default(),
            revnat_evicted: Counter::default(),
            revnat_evicted_seen: KernelTotal::default(),
            revnat_recovered: Counter::default(),
            revnat_recovered_seen: KernelTotal::default(),
            reinstalls: Counter::default(),
            not_installed: Gauge::default(),
            reloads: Family::default(),
            known: Mutex::default(),
        };
        m.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "weft_tcp_connections_opened",
            "Translated TCP connections established",
            self.opened.clone(),
        );
        r.register(
            "weft_tcp_connections_closed",
            "Translated TCP connections closed after being established",
            self.closed.clone(),
        );
        r.register(
            "weft_tcp_connect_failures",
            "Translated TCP connects that failed (refused or timed out)",
            self.failed.clone(),
        );
        r.register_with_unit(
            "weft_tcp_sent",
            "Payload bytes sent and acknowledged, counted when a connection closes",
            Unit::Bytes,
            self.sent.clone(),
        );
        r.register_with_unit(
            "weft_tcp_received",
            "Payload bytes received, counted when a connection closes",
            Unit::Bytes,
            self.received.clone(),
        );
        r.register(
            "weft_tcp_connections_open",
            "Translated TCP connections established and not yet closed",
            self.open.clone(),
        );
        r.register_with_unit(
            "weft_tcp_connection_duration",
            "Lifetime of closed translated TCP connections",
            Unit::Seconds,
            self.duration.clone(),
        );
        r.register_with_unit(
            "weft_tcp_srtt",
            "Smoothed round-trip time of translated TCP connections at close",
            Unit::Seconds,
            self.srtt.clone(),
        );
        r.register(
            "weft_endpoint_state",
            "Health state of the endpoint: one series, labelled with the current state, value 1",
            self.state.clone(),
        );
        r.register(
            "weft_endpoint_effective_weight",
            "Weight the kernel uses for the endpoint (0 = no new connections)",
            self.effective_weight.clone(),
        );
        r.register(
            "weft_service_panic",
            "1 while the service is in panic mode (every endpoint by configured weight)",
            self.panic.clone(),
        );
        r.register(
            "weft_datapath_map_entries",
            "Entries in use in each BPF map",
            self.map_entries.clone(),
        );
        r.register(
            "weft_datapath_map_capacity",
            "Maximum entries of each BPF map",
            self.map_capacity.clone(),
        );
        r.register(
            "weft_events_lost",
            "Connection events the kernel dropped because the ring buffer was full",
            self.events_lost.clone(),
        );
        r.register(
            "weft_reverse_nat_evictions",
            "Reverse-NAT entries evicted from the full map while their socket was open",
            self.revnat_evicted.clone(),
        );
        r.register(
            "weft_reverse_nat_recovered",
            "Replies and getpeername calls translated back from a socket's own record after its reverse-NAT entry was evicted",
            self.revnat_recovered.clone(),
        );
        r.register(
            "weft_datapath_reinstalls",
            "Times the agent found its pinned programs or maps removed (weft reset) and installed them again",
            self.reinstalls.clone(),
        );
        r.register(
            "weft_services_not_installed",
            "Configured services the kernel does not hold in their configured state (retried)",
            self.not_installed.clone(),
        );
        r.register(
            "weft_config_reloads",
            "Config reloads by result",
            self.reloads.clone(),
        );
        self
    }

    /// A batch of connection events of one endpoint: each family's series is looked up
    /// once per batch, not once per event (at 10,000 connections a second the lookups, not
    /// the counting, were the agent's cost).
    pub fn record_events(&self, labels: &EndpointLabels, records: &[&ConnRecord]) {
        let count = |kind: u8| records.iter().filter(|r| r.kind == kind).count() as u64;
        let opened = count(event::ESTABLISHED);
        if opened > 0 {
            self.opened.get_or_create(labels).inc_by(opened);
        }
        let failed = count(event::CONNECT_FAILED);
        if failed > 0 {
            self.failed.get_or_create(labels).inc_by(failed);
        }
        let closed: Vec<&ConnRecord> = records
            .iter()
            .copied()
            .filter(|r| r.kind == event::CLOSED)
            .collect();
        if closed.is_empty() {
            return;
        }
        self.closed
            .get_or_create(labels)
            .inc_by(closed.len() as u64);
        self.sent
            .get_or_create(labels)
            .inc_by(closed.iter().map(|r| record::bytes_sent(r)).sum());
        self.received
            .get_or_create(labels)
            .inc_by(closed.iter().map(|r| record::bytes_received(r)).sum());
        let (mut duration_sum, mut srtt_sum) = (0.0, 0.0);
        {
            let (duration, srtt) = (
                self.duration.get_or_create(labels),
                self.srtt.get_or_create(labels),
            );
            for r in &closed {
                let (d, s) = (record::duration_s(r), f64::from(r.srtt_us) / 1e6);
                duration.observe(d);
                srtt.observe(s);
                duration_sum += d;
                srtt_sum += s;
            }
        }
        self.duration_sum.get_or_create(labels).inc_by(duration_sum);
        self.srtt_sum.get_or_create(labels).inc_by(srtt_sum);
    }

    /// Health and weight of one configured endpoint. The state is one series per endpoint,
    /// labelled with the current state (value 1): the series count stays at one per endpoint
    /// however many states there are. Connection series appear with the first connection,
    /// so an idle endpoint costs two series, not a dozen.
    pub fn set_endpoint(&self, labels: &EndpointLabels, state: &str, effective_weight: u32) {
        let state = STATES
            .into_iter()
            .find(|s| *s == state)
            .unwrap_or("unknown");
        for other in STATES.into_iter().filter(|s| *s != state) {
            self.state.remove(&state_labels(labels, other));
        }
        self.state
            .get_or_create(&state_labels(labels, state))
            .set(1);
        self.effective_weight
            .get_or_create(labels)
            .set(i64::from(effective_weight));
    }

    pub fn set_panic(&self, service: &str, panic: bool) {
        self.panic
            .get_or_create(&ServiceLabels {
                service: service.to_string(),
            })
            .set(i64::from(panic));
    }

    /// Drops the series of endpoints and services no longer configured, so label sets stay
    /// bounded by the config however it changes.
    pub fn retain(&self, configured: HashSet<EndpointLabels>) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let services: HashSet<&String> = configured.iter().map(|l| &l.service).collect();
        for gone in known.difference(&configured) {
            for family in [
                &self.opened,
                &self.closed,
                &self.failed,
                &self.sent,
                &self.received,
            ] {
                family.remove(gone);
            }
            self.open.remove(gone);
            self.duration.remove(gone);
            self.srtt.remove(gone);
            self.duration_sum.remove(gone);
            self.srtt_sum.remove(gone);
            self.effective_weight.remove(gone);
            for state in STATES {
                self.state.remove(&state_labels(gone, state));
            }
            if !services.contains(&gone.service) {
                self.panic.remove(&ServiceLabels {
                    service: gone.service.clone(),
                });
            }
        }
        *known = configured;
    }

    /// Live connections per endpoint, counted from the kernel's table just now.
    pub fn set_open(&self, open: &std::collections::HashMap<EndpointLabels, u64>) {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        for labels in known.iter() {
            let n = open.get(labels).copied().unwrap_or(0);
            self.open.get_or_create(labels).set(n as i64);
        }
    }

    pub fn set_map(&self, map: &str, entries: u64, capacity: u64) {
        let labels = MapLabels {
            map: map.to_string(),
        };
        self.map_entries.get_or_create(&labels).set(entries as i64);
        self.map_capacity
            .get_or_create(&labels)
            .set(capacity as i64);
    }

    /// The kernel's lost-event count is cumulative; the counter follows it.
    pub fn set_events_lost(&self, total: u64) {
        self.events_lost_seen.follow(&self.events_lost, total);
    }

    /// The kernel's own event counters, cumulative like the lost events.
    pub fn set_kernel_counters(&self, counters: &KernelCounters) {
        self.revnat_evicted_seen
            .follow(&self.revnat_evicted, counters.revnat_evicted);
        self.revnat_recovered_seen
            .follow(&self.revnat_recovered, counters.revnat_recovered);
    }

    pub fn datapath_reinstalled(&self) {
        self.reinstalls.inc();
    }

    pub fn set_services_not_installed(&self, count: usize) {
        self.not_installed.set(count as i64);
    }

    pub fn events_lost(&self) -> u64 {
        self.events_lost.get()
    }

    pub fn config_reloaded(&self, ok: bool) {
        self.reloads.get_or_create(&ResultLabels::of(ok)).inc();
    }

    pub fn config_reloads(&self, ok: bool) -> u64 {
        self.reloads
            .get(&ResultLabels::of(ok))
            .map_or(0, |c| c.get())
    }

    /// Totals of one endpoint; `open` comes from the kernel's live table.
    pub fn endpoint_stats(&self, labels: &EndpointLabels, open: u64) -> ConnStats {
        let counter = |f: &PerEndpoint<Counter>| f.get(labels).map_or(0, |c| c.get());
        let closed = counter(&self.closed);
        let mean = |f: &PerEndpoint<Counter<f64, AtomicU64>>, scale: f64| {
            let sum = f.get(labels)?.get();
            (closed > 0).then(|| sum / closed as f64 * scale)
        };
        ConnStats {
            connections_opened: counter(&self.opened),
            connections_closed: closed,
            connect_failures: counter(&self.failed),
            connections_open: open,
            bytes_sent: counter(&self.sent),
            bytes_received: counter(&self.received),
            mean_duration_ms: mean(&self.duration_sum, 1e3),
            mean_srtt_us: mean(&self.srtt_sum, 1e6),
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(endpoint: &str) -> EndpointLabels {
        EndpointLabels {
            service: "web".into(),
            endpoint: endpoint.into(),
        }
    }

    #[test]
    fn a_closed_connection_moves_bytes_by_its_payload() {
        let metrics = Metrics::new();
        let l = labels("10.0.0.1:80");
        let closed = ConnRecord {
            kind: event::CLOSED,
            bytes_acked: 1002,
            bytes_received: 2001,
            flags: weft_common::conn_flags::ESTABLISHED
                | weft_common::conn_flags::FIN_SENT
                | weft_common::conn_flags::FIN_ACKED
                | weft_common::conn_flags::FIN_RECEIVED,
            start_ns: 0,
            update_ns: 2_000_000,
            srtt_us: 50,
            ..ConnRecord::default()
        };
        let opened = ConnRecord {
            kind: event::ESTABLISHED,
            ..ConnRecord::default()
        };
        // One batch: two closes and an open of the same endpoint.
        metrics.record_events(&l, &[&closed, &opened, &closed]);
        let stats = metrics.endpoint_stats(&l, 0);
        assert_eq!((stats.bytes_sent, stats.bytes_received), (2000, 4000));
        assert_eq!(stats.connections_closed, 2);
        assert_eq!(stats.connections_opened, 1);
        assert_eq!(stats.mean_duration_ms, Some(2.0));
        assert_eq!(stats.mean_srtt_us, Some(50.0));
        let text = metrics.encode();
        assert!(
            text.contains(
                "weft_tcp_sent_bytes_total{service=\"web\",endpoint=\"10.0.0.1:80\"} 2000"
            ),
            "{text}"
        );
    }

    #[test]
    fn removed_endpoints_take_their_series() {
        let metrics = Metrics::new();
        let (a, b) = (labels("10.0.0.1:80"), labels("10.0.0.2:80"));
        metrics.retain([a.clone(), b.clone()].into());
        metrics.set_endpoint(&b, "healthy", 1);
        metrics.record_events(
            &b,
            &[&ConnRecord {
                kind: event::ESTABLISHED,
                ..ConnRecord::default()
            }],
        );
        assert!(metrics.encode().contains("10.0.0.2:80"));
        metrics.retain([a].into());
        assert!(!metrics.encode().contains("10.0.0.2:80"));
    }

    #[test]
    fn an_endpoint_has_one_state_series_labelled_with_its_current_state() {
        let metrics = Metrics::new();
        let l = labels("10.0.0.1:80");
        metrics.set_endpoint(&l, "healthy", 3);
        metrics.set_endpoint(&l, "ejected", 0);
        let text = metrics.encode();
        let states: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("weft_endpoint_state{"))
            .collect();
        assert_eq!(
            states,
            ["weft_endpoint_state{service=\"web\",endpoint=\"10.0.0.1:80\",state=\"ejected\"} 1"]
        );
        assert!(text.contains(
            "weft_endpoint_effective_weight{service=\"web\",endpoint=\"10.0.0.1:80\"} 0"
        ));
    }

    #[test]
    fn lost_events_follow_the_kernel_total() {
        let metrics = Metrics::new();
        metrics.set_events_lost(5);
        metrics.set_events_lost(5);
        metrics.set_events_lost(7);
        assert_eq!(metrics.events_lost(), 7);
    }
}
