//! The Prometheus metrics. Agent-wide series live in a small registry; the per-service (and,
//! when `stats.endpoint_metrics` is on, per-endpoint) series are encoded at scrape time by a
//! collector that reads the store's snapshot and the counters where they are, so at rest
//! they cost no memory at all, and every configured service is exported from the start,
//! counters at 0.

use std::{
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet, text::encode},
    metrics::{MetricType, counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use super::{Governed, KernelSample, Totals};
use crate::{
    config::Protocol,
    datapath::KernelCounters,
    health::State,
    store::{ServiceState, Snapshot},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// The TC programs' counts by reason, and the kernel totals last seen.
    tc_packets: Family<ReasonLabels, Counter>,
    tc_last: Mutex<std::collections::HashMap<&'static str, u64>>,
    events_lost: KernelTotal,
    revnat_evicted: KernelTotal,
    revnat_recovered: KernelTotal,
    reinstalls: Counter,
    probes_not_sent: Counter,
    not_installed: Gauge,
    map_entries: Family<MapLabels, Gauge>,
    map_capacity: Family<MapLabels, Gauge>,
    reloads: Family<ResultLabels, Counter>,
    watch_failures: Family<ResourceLabels, Counter>,
    /// What the collector reads during one encode.
    scrape: Arc<Mutex<Scrape>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let scrape = Arc::new(Mutex::new(Scrape::default()));
        let m = Metrics {
            tc_packets: Family::default(),
            tc_last: Mutex::default(),
            events_lost: KernelTotal::default(),
            revnat_evicted: KernelTotal::default(),
            revnat_recovered: KernelTotal::default(),
            reinstalls: Counter::default(),
            probes_not_sent: Counter::default(),
            not_installed: Gauge::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            reloads: Family::default(),
            watch_failures: Family::default(),
            scrape: Arc::clone(&scrape),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "weft_datapath_map_entries",
            "Entries in use in each BPF map",
            m.map_entries.clone(),
        );
        r.register(
            "weft_datapath_map_capacity",
            "Maximum entries of each BPF map",
            m.map_capacity.clone(),
        );
        r.register(
            "weft_events_lost",
            "Connection events the kernel dropped because the ring buffer was full",
            m.events_lost.counter.clone(),
        );
        r.register(
            "weft_reverse_nat_evictions",
            "Reverse-NAT entries evicted from the full map while their socket was open",
            m.revnat_evicted.counter.clone(),
        );
        r.register(
            "weft_reverse_nat_recovered",
            "Replies and getpeername calls translated back from a socket's own record after its reverse-NAT entry was evicted",
            m.revnat_recovered.counter.clone(),
        );
        r.register(
            "weft_tc_packets",
            "Packets the TC programs did not simply translate, by reason (dropped, to a service address: no_endpoint, truncated, bad_header, fragment_unknown, ipv6_extension, flow_not_written; passed untouched: other_protocol, icmp_unmatched; translated: icmp_translated; endpoint_gone: a flow whose endpoint was removed, sent to a new one)",
            m.tc_packets.clone(),
        );
        r.register(
            "weft_datapath_reinstalls",
            "Times the agent found its pinned programs or maps removed (weft reset) and installed them again",
            m.reinstalls.clone(),
        );
        r.register(
            "weft_health_probes_not_sent",
            "Health probes that could not be sent (no local port), which count neither way",
            m.probes_not_sent.clone(),
        );
        r.register(
            "weft_services_not_installed",
            "Services in force that the kernel does not hold as configured (retried)",
            m.not_installed.clone(),
        );
        r.register(
            "weft_config_reloads",
            "Config reloads (a changed file, or a Kubernetes object) by result",
            m.reloads.clone(),
        );
        r.register(
            "weft_kubernetes_watch_failures",
            "List or watch requests to the Kubernetes API that failed (each is retried with backoff)",
            m.watch_failures.clone(),
        );
        r.register_collector(Box::new(ServiceCollector { scrape }));
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text of every series, the per-service ones from `view` and `sample`.
    pub fn encode(&self, view: Arc<Snapshot>, sample: Arc<KernelSample>) -> String {
        self.events_lost.follow(sample.events_lost);
        self.set_kernel_counters(&sample.counters);
        if let Some(tc) = &sample.tc_counters {
            let mut last = self.tc_last.lock().unwrap_or_else(|p| p.into_inner());
            for &(reason, total) in &tc.0 {
                let before = last.insert(reason, total).unwrap_or(0);
                // A smaller total is a new map (reinstalled datapath): count from zero.
                let grew = if total >= before {
                    total - before
                } else {
                    total
                };
                self.tc_packets
                    .get_or_create(&ReasonLabels { reason })
                    .inc_by(grew);
            }
        }
        *self.scrape.lock().unwrap_or_else(|p| p.into_inner()) = Scrape {
            view: Some(view),
            sample: Some(sample),
        };
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        *self.scrape.lock().unwrap_or_else(|p| p.into_inner()) = Scrape::default();
        out
    }

    fn set_kernel_counters(&self, counters: &KernelCounters) {
        self.revnat_evicted.follow(counters.revnat_evicted);
        self.revnat_recovered.follow(counters.revnat_recovered);
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

    pub fn probe_not_sent(&self) {
        self.probes_not_sent.inc();
    }

    pub fn datapath_reinstalled(&self) {
        self.reinstalls.inc();
    }

    pub fn set_services_not_installed(&self, count: usize) {
        self.not_installed.set(count as i64);
    }

    pub fn config_reloaded(&self, ok: bool) {
        self.reloads.get_or_create(&ResultLabels::of(ok)).inc();
    }

    pub fn kubernetes_watch_failed(&self, resource: &'static str) {
        self.watch_failures
            .get_or_create(&ResourceLabels { resource })
            .inc();
    }

    pub fn config_reloads(&self, ok: bool) -> u64 {
        self.reloads
            .get(&ResultLabels::of(ok))
            .map_or(0, |c| c.get())
    }
}

/// Follows a cumulative count the kernel keeps in a pinned map: adds what it grew by. A
/// smaller total means the map is new (a reinstalled datapath) and counts from zero.
#[derive(Default)]
struct KernelTotal {
    counter: Counter,
    last: AtomicU64,
}

impl KernelTotal {
    fn follow(&self, total: u64) {
        let last = self.last.swap(total, Relaxed);
        self.counter
            .inc_by(if total >= last { total - last } else { total });
    }
}

#[derive(Default)]
struct Scrape {
    view: Option<Arc<Snapshot>>,
    sample: Option<Arc<KernelSample>>,
}

/// Encodes the per-service and per-endpoint series during a scrape.
struct ServiceCollector {
    scrape: Arc<Mutex<Scrape>>,
}

impl fmt::Debug for ServiceCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceCollector")
    }
}

/// A traffic counter, exported per service (`weft_<name>`) and per endpoint
/// (`weft_endpoint_<name>`) for the services of one protocol: TCP services count
/// connections, UDP services sockets and flows, each from both paths.
struct Traffic {
    protocol: Protocol,
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    value: fn(&Totals) -> u64,
}

const TRAFFIC: [Traffic; 11] = [
    Traffic {
        protocol: Protocol::Tcp,
        name: "tcp_connections_opened",
        help: "Translated TCP connections established (socket path) and TC flows whose endpoint answered",
        unit: None,
        value: |t| t.opened,
    },
    Traffic {
        protocol: Protocol::Tcp,
        name: "tcp_connections_closed",
        help: "Translated TCP connections closed after being established, and TC flows ended",
        unit: None,
        value: |t| t.closed,
    },
    Traffic {
        protocol: Protocol::Tcp,
        name: "tcp_connect_failures",
        help: "Translated TCP connects that failed (refused or timed out), and TC flows the endpoint never answered",
        unit: None,
        value: |t| t.failed,
    },
    Traffic {
        protocol: Protocol::Tcp,
        name: "tcp_sent",
        help: "Bytes sent to the endpoints, counted when a connection closes: payload acknowledged on the socket path, IP bytes on the TC path",
        unit: Some(Unit::Bytes),
        value: |t| t.sent,
    },
    Traffic {
        protocol: Protocol::Tcp,
        name: "tcp_received",
        help: "Bytes received from the endpoints, counted when a connection closes: payload on the socket path, IP bytes on the TC path",
        unit: Some(Unit::Bytes),
        value: |t| t.received,
    },
    Traffic {
        protocol: Protocol::Udp,
        name: "udp_sockets_opened",
        help: "Translated UDP sockets (socket path: once per endpoint a socket sends to) and TC flows whose endpoint answered",
        unit: None,
        value: |t| t.opened,
    },
    Traffic {
        protocol: Protocol::Udp,
        name: "udp_sockets_closed",
        help: "Translated UDP sockets released and TC flows expired",
        unit: None,
        value: |t| t.closed,
    },
    Traffic {
        protocol: Protocol::Udp,
        name: "udp_sent",
        help: "Bytes sent to the endpoints, counted when the socket or flow ends: payload on the socket path, IP bytes on the TC path",
        unit: Some(Unit::Bytes),
        value: |t| t.sent,
    },
    Traffic {
        protocol: Protocol::Udp,
        name: "udp_received",
        help: "Bytes received from the endpoints, counted when the socket or flow ends: payload on the socket path, IP bytes on the TC path",
        unit: Some(Unit::Bytes),
        value: |t| t.received,
    },
    Traffic {
        protocol: Protocol::Udp,
        name: "udp_datagrams_sent",
        help: "Datagrams sent to the endpoints, counted when the socket or flow ends",
        unit: None,
        value: |t| t.packets_sent,
    },
    Traffic {
        protocol: Protocol::Udp,
        name: "udp_datagrams_received",
        help: "Datagrams received from the endpoints, counted when the socket or flow ends",
        unit: None,
        value: |t| t.packets_received,
    },
];

/// A series of one family: its value for a service, or an endpoint of it.
type ServiceValue = fn(&ServiceState, &KernelSample) -> u64;
type EndpointValue = fn(&ServiceState, usize, &Totals, &KernelSample) -> u64;
/// A series of a governed service or endpoint: its value from the kernel's counts.
type GovernedValue = fn(&Governed) -> u64;

const STATES: [State; 5] = [
    State::Unknown,
    State::Healthy,
    State::Unhealthy,
    State::Ejected,
    State::Draining,
];

impl Collector for ServiceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let (view, sample) = {
            let scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
            match (&scrape.view, &scrape.sample) {
                (Some(v), Some(s)) => (Arc::clone(v), Arc::clone(s)),
                _ => return Ok(()),
            }
        };
        let mut services: Vec<&Arc<ServiceState>> = view.iter().collect();
        services.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));

        for t in &TRAFFIC {
            let name = format!("weft_{}", t.name);
            let mut family =
                encoder.encode_descriptor(&name, t.help, t.unit.as_ref(), MetricType::Counter)?;
            for s in services
                .iter()
                .filter(|s| s.spec.frontend.protocol == t.protocol)
            {
                family
                    .encode_family(&[("service", &*s.spec.name)])?
                    .encode_counter::<NoLabelSet, _, u64>(&(t.value)(&s.counters.totals()), None)?;
            }
        }
        let open: ServiceValue =
            |s, sample| sample.open_per_service.get(&s.id).copied().unwrap_or(0);
        let gauges: [(&str, &str, Option<Protocol>, ServiceValue); 5] = [
            (
                "weft_tcp_connections_open",
                "Translated TCP connections established and not yet closed",
                Some(Protocol::Tcp),
                open,
            ),
            (
                "weft_udp_flows_active",
                "UDP flows the TC path forwards that have not expired (60 s idle)",
                Some(Protocol::Udp),
                open,
            ),
            (
                "weft_service_panic",
                "1 while the service is in panic mode (every endpoint by configured weight)",
                None,
                |s, _| u64::from(s.panic),
            ),
            (
                "weft_service_endpoints",
                "Endpoints configured",
                None,
                |s, _| s.endpoints.len() as u64,
            ),
            (
                "weft_service_endpoints_usable",
                "Endpoints the kernel sends new connections to (effective weight above 0)",
                None,
                |s, _| s.endpoints.iter().filter(|e| e.effective > 0).count() as u64,
            ),
        ];
        for (name, help, protocol, value) in &gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for s in services
                .iter()
                .filter(|s| protocol.is_none_or(|p| s.spec.frontend.protocol == p))
            {
                family
                    .encode_family(&[("service", &*s.spec.name)])?
                    .encode_gauge(&(value(s, &sample) as i64))?;
            }
        }
        encode_governance(
            &mut encoder,
            &services,
            &sample,
            view.settings.endpoint_metrics,
        )?;
        for (name, help, pick) in [
            (
                "weft_tcp_connection_duration",
                "Lifetime of closed translated TCP connections",
                true,
            ),
            (
                "weft_tcp_srtt",
                "Smoothed round-trip time of translated TCP connections at close",
                false,
            ),
        ] {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            // Only services that closed a connection have one (a histogram per service
            // would otherwise be a dozen series each).
            for s in &services {
                if let Some(h) = s.counters.histograms() {
                    let histogram = if pick { &h.duration } else { &h.srtt };
                    histogram.encode(family.encode_family(&[("service", &*s.spec.name)])?)?;
                }
            }
        }
        if view.settings.endpoint_metrics {
            encode_endpoints(&mut encoder, &services, &sample)?;
        }
        Ok(())
    }
}

/// What governance counted, for the services that have any (and, with endpoint metrics on,
/// their endpoints): refusals by reason, and the open connections limits count.
fn encode_governance(
    encoder: &mut DescriptorEncoder,
    services: &[&Arc<ServiceState>],
    sample: &KernelSample,
    per_endpoint: bool,
) -> Result<(), fmt::Error> {
    let governed: Vec<&Arc<ServiceState>> = services
        .iter()
        .filter(|s| s.spec.governance != Default::default())
        .copied()
        .collect();
    let counters: [(&str, &str, GovernedValue); 3] = [
        (
            "weft_service_overflows",
            "Connects refused because no endpoint (or the service) had room under its limits",
            |g| g.overflow,
        ),
        (
            "weft_service_fault_aborts",
            "Connects refused by fault injection",
            |g| g.aborted,
        ),
        (
            "weft_service_denials",
            "Connects and forwarded flows refused by the service's allow rules",
            |g| g.denied,
        ),
    ];
    for (name, help, value) in &counters {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for s in &governed {
            family
                .encode_family(&[("service", &*s.spec.name)])?
                .encode_counter::<NoLabelSet, _, u64>(&value(&sample.governed(s.id, None)), None)?;
        }
    }
    let limited: Vec<&&Arc<ServiceState>> = governed
        .iter()
        .filter(|s| s.spec.governance.limits != Default::default())
        .collect();
    let mut family = encoder.encode_descriptor(
        "weft_service_limited_connections_open",
        "Open connections counted against the service's limits (connect to socket release)",
        None,
        MetricType::Gauge,
    )?;
    for s in &limited {
        family
            .encode_family(&[("service", &*s.spec.name)])?
            .encode_gauge(&(sample.governed(s.id, None).open as i64))?;
    }
    if !per_endpoint {
        return Ok(());
    }
    let endpoint_series: [(&str, &str, MetricType, GovernedValue); 2] = [
        (
            "weft_endpoint_overflows",
            "Connects that drew the endpoint while it was at its limit (sent elsewhere or refused)",
            MetricType::Counter,
            |g| g.overflow,
        ),
        (
            "weft_endpoint_limited_connections_open",
            "Open connections counted against the endpoint's limit",
            MetricType::Gauge,
            |g| g.open,
        ),
    ];
    for (name, help, kind, value) in &endpoint_series {
        let mut family = encoder.encode_descriptor(name, help, None, *kind)?;
        for s in &limited {
            for e in &s.spec.endpoints {
                let labels = [
                    ("service", s.spec.name.to_string()),
                    ("endpoint", e.address.to_string()),
                ];
                let v = value(&sample.governed(s.id, Some(e.address)));
                let mut metric = family.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => metric.encode_counter::<NoLabelSet, _, u64>(&v, None)?,
                    _ => metric.encode_gauge(&(v as i64))?,
                }
            }
        }
    }
    Ok(())
}

/// The per-endpoint series (`stats.endpoint_metrics: true`): every configured endpoint,
/// counters at 0 until its first connection.
fn encode_endpoints(
    encoder: &mut DescriptorEncoder,
    services: &[&Arc<ServiceState>],
    sample: &KernelSample,
) -> Result<(), fmt::Error> {
    let labels = |s: &ServiceState, i: usize| -> [(&'static str, String); 2] {
        [
            ("service", s.spec.name.to_string()),
            ("endpoint", s.spec.endpoints[i].address.to_string()),
        ]
    };
    let endpoints = |s: &ServiceState| -> Vec<(usize, SocketAddr, Totals)> {
        s.spec
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (i, e.address, s.counters.endpoint(e.address)))
            .collect()
    };
    for t in &TRAFFIC {
        let name = format!("weft_endpoint_{}", t.name);
        let help = format!("{} (per endpoint)", t.help);
        let mut family =
            encoder.encode_descriptor(&name, &help, t.unit.as_ref(), MetricType::Counter)?;
        for s in services
            .iter()
            .filter(|s| s.spec.frontend.protocol == t.protocol)
        {
            for (i, _, totals) in endpoints(s) {
                family
                    .encode_family(&labels(s, i))?
                    .encode_counter::<NoLabelSet, _, u64>(&(t.value)(&totals), None)?;
            }
        }
    }
    let open: EndpointValue = |s, i, _, sample| {
        sample
            .open
            .get(&(s.id, s.spec.endpoints[i].address))
            .copied()
            .unwrap_or(0)
    };
    let gauges: [(&str, &str, Option<Protocol>, EndpointValue); 3] = [
        (
            "weft_endpoint_tcp_connections_open",
            "Translated TCP connections established and not yet closed, per endpoint",
            Some(Protocol::Tcp),
            open,
        ),
        (
            "weft_endpoint_udp_flows_active",
            "UDP flows the TC path forwards that have not expired (60 s idle), per endpoint",
            Some(Protocol::Udp),
            open,
        ),
        (
            "weft_endpoint_effective_weight",
            "Weight the kernel uses for the endpoint (0 = no new connections)",
            None,
            |s, i, _, _| u64::from(s.endpoints[i].effective),
        ),
    ];
    for (name, help, protocol, value) in &gauges {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for s in services
            .iter()
            .filter(|s| protocol.is_none_or(|p| s.spec.frontend.protocol == p))
        {
            for (i, _, totals) in endpoints(s) {
                family
                    .encode_family(&labels(s, i))?
                    .encode_gauge(&(value(s, i, &totals, sample) as i64))?;
            }
        }
    }
    let mut family = encoder.encode_descriptor(
        "weft_endpoint_state",
        "Health state of the endpoint: one series, labelled with the current state, value 1",
        None,
        MetricType::Gauge,
    )?;
    for s in services {
        for i in 0..s.spec.endpoints.len() {
            let state = s.state(i);
            let state = STATES
                .iter()
                .find(|&&st| st == state)
                .map_or("unknown", |st| st.as_str());
            let [service, endpoint] = labels(s, i);
            family
                .encode_family(&[service, endpoint, ("state", state.to_string())])?
                .encode_gauge(&1i64)?;
        }
    }
    Ok(())
}
