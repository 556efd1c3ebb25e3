//! What the admin API and the metrics listener read: the store's latest snapshot, what the
//! control loop publishes about the agent, the counters, a sample of the kernel's live
//! tables and the stream of connection events for `weft conns --follow`.
//!
//! Reading must cost the control loop nothing: requests only clone published `Arc`s, never
//! take a lock the control loop waits on for long, and never walk a kernel map themselves.
//! Kernel tables are sampled at most once a second however many requests arrive (they share
//! one walk, on a blocking thread); `/metrics` is encoded once for every scraper that asks
//! within a second.

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock, Weak},
    time::{Duration, Instant},
};

use tokio::sync::{Mutex, broadcast, watch};
use weft_common::{ConnRecord, conn_flags, event, maps as names};

use super::{
    AgentInfo, DatapathHealth,
    view::{
        ConnEventView, ConnPath, ConnStats, ConnView, DatapathView, EndpointRow, EndpointView,
        GovernanceStats, MapView, ServiceStats, ServiceView, StatsView, StatusView,
    },
};
use crate::{
    datapath::{Flow, KernelLogLevel, Observer},
    stats::{ConnEvent, Governed, KernelSample, Metrics, Totals, record},
    store::{Installed, ServiceState, Snapshot},
};

/// One walk of the socket path's connection table and the TC path's flow table.
#[derive(Default)]
struct LiveTables {
    records: Vec<ConnRecord>,
    flows: Vec<Flow>,
}

/// How old a kernel sample or a metrics exposition may be when a request is answered.
const FRESH: Duration = Duration::from_secs(1);

/// A value computed at most once per `FRESH`, and when it was.
type Cache<T> = Arc<Mutex<Option<(Instant, T)>>>;

pub struct Shared {
    view: watch::Receiver<Arc<Snapshot>>,
    info: RwLock<Arc<AgentInfo>>,
    pub metrics: Metrics,
    observer: RwLock<Option<Arc<Observer>>>,
    follow: broadcast::Sender<ConnEvent>,
    started: Instant,
    sample: Cache<Arc<KernelSample>>,
    /// The last walk of the live-connection and flow tables, while someone still holds it.
    conns: Cache<Weak<LiveTables>>,
    /// The last exposition, while someone still holds it: scrapers arriving within `FRESH`
    /// share it, and nothing keeps megabytes of text alive between scrapes.
    exposition: Cache<Weak<String>>,
    /// The kernel-log level wanted; the control loop writes it to the kernel.
    kernel_log: watch::Sender<KernelLogLevel>,
}

impl Shared {
    pub fn new(
        view: watch::Receiver<Arc<Snapshot>>,
        follow: broadcast::Sender<ConnEvent>,
        kernel_log: watch::Sender<KernelLogLevel>,
    ) -> Shared {
        Shared {
            kernel_log,
            view,
            info: RwLock::default(),
            metrics: Metrics::new(),
            observer: RwLock::default(),
            follow,
            started: Instant::now(),
            sample: Arc::default(),
            conns: Arc::default(),
            exposition: Arc::default(),
        }
    }

    pub fn kernel_log(&self) -> KernelLogLevel {
        *self.kernel_log.borrow()
    }

    /// Asks for another kernel-log level; the control loop writes it at once.
    pub fn set_kernel_log(&self, level: KernelLogLevel) {
        self.kernel_log.send_replace(level);
    }

    /// The store's latest snapshot.
    pub fn view(&self) -> Arc<Snapshot> {
        Arc::clone(&self.view.borrow())
    }

    pub fn info(&self) -> Arc<AgentInfo> {
        self.info.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn publish_info(&self, info: AgentInfo) {
        *self.info.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(info);
    }

    /// The kernel tables of a newly opened datapath (at start, and after a reinstall).
    pub fn set_observer(&self, observer: Observer) {
        *self.observer.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(observer));
    }

    fn observer(&self) -> Option<Arc<Observer>> {
        self.observer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Ready: the sources delivered what they had, a config is applied, and the datapath
    /// serving it is in place. Otherwise the reason, for `/readyz`.
    pub fn readiness(&self) -> Result<(), String> {
        let info = self.info();
        if info.generation == 0 {
            return Err("no config applied yet".into());
        }
        if !info.synced {
            return Err("sources not synced yet".into());
        }
        match &info.datapath {
            DatapathHealth::Installed => Ok(()),
            DatapathHealth::Missing(why) => Err(format!("datapath missing: {why}")),
        }
    }

    pub fn follow(&self) -> broadcast::Receiver<ConnEvent> {
        self.follow.subscribe()
    }

    /// The kernel tables as of at most `FRESH` ago. Concurrent callers share one walk, which
    /// runs on a blocking thread.
    pub async fn sample(&self) -> Arc<KernelSample> {
        let mut cached = Arc::clone(&self.sample).lock_owned().await;
        if let Some((taken, sample)) = cached.as_ref()
            && taken.elapsed() < FRESH
        {
            return Arc::clone(sample);
        }
        let (observer, view) = (self.observer(), self.view());
        // The walk and the cache update run in a task that holds the lock: a request that
        // gives up waiting neither cancels the walk nor lets the next one start another.
        let task = tokio::spawn(async move {
            let sample = tokio::task::spawn_blocking(move || {
                observer.map_or_else(KernelSample::default, |o| KernelSample::take(&o, &view))
            })
            .await
            .unwrap_or_default();
            let sample = Arc::new(sample);
            *cached = Some((Instant::now(), Arc::clone(&sample)));
            sample
        });
        task.await.unwrap_or_default()
    }

    /// The metrics exposition (OpenMetrics text) as of at most `FRESH` ago.
    pub async fn exposition(self: &Arc<Self>) -> Arc<String> {
        let mut cached = Arc::clone(&self.exposition).lock_owned().await;
        if let Some((taken, text)) = cached.as_ref()
            && taken.elapsed() < FRESH
            && let Some(text) = text.upgrade()
        {
            return text;
        }
        let shared = Arc::clone(self);
        let task = tokio::spawn(async move {
            let sample = shared.sample().await;
            let text = tokio::task::spawn_blocking(move || {
                for map in shared.maps(&sample) {
                    if let Some(entries) = map.entries {
                        shared.metrics.set_map(&map.name, entries, map.capacity);
                    }
                }
                shared.metrics.encode(shared.view(), sample)
            })
            .await
            .unwrap_or_default();
            let text = Arc::new(text);
            *cached = Some((Instant::now(), Arc::downgrade(&text)));
            text
        });
        task.await.unwrap_or_default()
    }

    /// The live-connection and flow tables as of at most `FRESH` ago: one walk for every
    /// request within a second, however many ask.
    async fn tables(&self) -> Arc<LiveTables> {
        let mut cached = Arc::clone(&self.conns).lock_owned().await;
        if let Some((taken, tables)) = cached.as_ref()
            && taken.elapsed() < FRESH
            && let Some(tables) = tables.upgrade()
        {
            return tables;
        }
        let observer = self.observer();
        let task = tokio::spawn(async move {
            let tables = tokio::task::spawn_blocking(move || {
                observer
                    .map(|o| LiveTables {
                        records: o.connections(),
                        flows: o.flows(),
                    })
                    .unwrap_or_default()
            })
            .await
            .unwrap_or_default();
            let tables = Arc::new(tables);
            *cached = Some((Instant::now(), Arc::downgrade(&tables)));
            tables
        });
        task.await.unwrap_or_default()
    }

    /// Live translated connections (socket path) and flows (TC path), optionally of one
    /// service.
    pub async fn connections(&self, service: Option<String>) -> Vec<ConnView> {
        let (tables, view) = (self.tables().await, self.view());
        let now = record::boottime_ns();
        let named = |id: u32| {
            let s = view.service(crate::store::ServiceId(id))?;
            service
                .as_deref()
                .is_none_or(|name| name == &*s.spec.name)
                .then_some(s)
        };
        let sockets = tables.records.iter().filter_map(|r| {
            let s = named(r.service_id)?;
            Some(conn_view(&s.spec.name, record::destination(r), r, now))
        });
        let flows = tables.flows.iter().filter_map(|f| {
            let s = named(f.service_id())?;
            Some(flow_view(&s.spec.name, f))
        });
        let mut conns: Vec<ConnView> = sockets.chain(flows).collect();
        conns.sort_by(|a, b| (&a.service, a.src).cmp(&(&b.service, b.src)));
        conns
    }

    /// True without a name, or if the named service is in force.
    pub fn knows(&self, service: Option<&str>) -> bool {
        service.is_none_or(|name| self.view().named(name).is_some())
    }

    /// Every service in force, by name.
    pub fn services(&self) -> Vec<ServiceView> {
        let view = self.view();
        let mut services: Vec<ServiceView> = view.iter().map(|s| service_view(s)).collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        services
    }

    fn maps(&self, sample: &KernelSample) -> Vec<MapView> {
        use std::mem::size_of;
        use weft_common::*;
        let counts = self.info().counts;
        let hash = |name: &str, entries, capacity, entry_bytes| MapView {
            name: name.to_string(),
            entries: Some(entries),
            capacity: u64::from(capacity),
            approx_bytes: entries * entry_bytes as u64,
        };
        // The TC path's flow table, when its programs are attached: an LRU map, allocated
        // whole at creation.
        let flows = sample.tc_counters.is_some().then(|| MapView {
            name: names::FLOWS.to_string(),
            entries: Some(sample.flows),
            capacity: sample.flows_capacity,
            approx_bytes: sample.flows_capacity
                * (size_of::<FlowKey>() + size_of::<FlowValue>()) as u64,
        });
        let mut views = vec![
            hash(
                names::SERVICES,
                counts.services,
                maps::SERVICES_CAPACITY,
                size_of::<ServiceKey>() + size_of::<ServiceValue>(),
            ),
            hash(
                names::BACKENDS,
                counts.backends,
                maps::BACKENDS_CAPACITY,
                size_of::<u32>() + size_of::<Backend>(),
            ),
            hash(
                names::MAGLEV,
                counts.maglev_chunks,
                maps::MAGLEV_CAPACITY,
                size_of::<MaglevKey>() + size_of::<MaglevChunk>(),
            ),
            hash(
                names::REVNAT,
                sample.revnat_entries,
                maps::REVNAT_CAPACITY,
                size_of::<RevNatKey>() + size_of::<RevNatValue>(),
            ),
            hash(
                names::CONNS,
                sample.conns_entries,
                maps::CONNS_CAPACITY,
                size_of::<u64>() + size_of::<ConnRecord>(),
            ),
            MapView {
                name: names::EVENTS.to_string(),
                entries: None,
                capacity: u64::from(maps::EVENTS_BYTES),
                approx_bytes: u64::from(maps::EVENTS_BYTES),
            },
        ];
        views.extend(flows);
        views
    }

    pub async fn status(&self) -> StatusView {
        let (view, info) = (self.view(), self.info());
        let sample = self.sample().await;
        StatusView {
            version: env!("CARGO_PKG_VERSION").to_string(),
            generation: info.generation,
            ready: self.readiness().is_ok(),
            datapath: match &info.datapath {
                DatapathHealth::Installed => DatapathView::Installed,
                DatapathHealth::Missing(why) => DatapathView::Missing(why.clone()),
            },
            uptime_s: self.started.elapsed().as_secs(),
            programs: info.programs.clone(),
            maps: self.maps(&sample),
            services: view.iter().count(),
            services_installed: info.counts.services as usize,
            not_installed: info.not_installed.clone(),
            conflicts: view.conflicts.clone(),
            batched_writes: info.batched_writes,
            endpoints: view.iter().map(|s| s.endpoints.len()).sum(),
            connections: sample.conns_entries as usize,
            connection_stats: view.settings.connections,
            endpoint_metrics: view.settings.endpoint_metrics,
            panicking: {
                let mut names: Vec<String> = view
                    .iter()
                    .filter(|s| s.panic)
                    .map(|s| s.spec.name.to_string())
                    .collect();
                names.sort();
                names
            },
            events_lost: sample.events_lost,
            reverse_nat_evictions: sample.counters.revnat_evicted,
            reverse_nat_recovered: sample.counters.revnat_recovered,
            config_reloads_ok: self.metrics.config_reloads(true),
            config_reloads_failed: self.metrics.config_reloads(false),
            kernel_log: self.kernel_log(),
        }
    }

    /// Every endpoint of one service (or all), with its connection totals. None if the named
    /// service is not in force.
    pub async fn endpoints(&self, service: Option<&str>) -> Option<Vec<EndpointRow>> {
        if !self.knows(service) {
            return None;
        }
        let view = self.view();
        let sample = self.sample().await;
        let mut services: Vec<&Arc<ServiceState>> = view
            .iter()
            .filter(|s| service.is_none_or(|name| name == &*s.spec.name))
            .collect();
        services.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        let rows = services
            .into_iter()
            .flat_map(|s| {
                let sample = &sample;
                (0..s.spec.endpoints.len()).map(move |i| {
                    let address = s.spec.endpoints[i].address;
                    let open = sample.open.get(&(s.id, address)).copied().unwrap_or(0);
                    EndpointRow {
                        service: s.spec.name.to_string(),
                        endpoint: endpoint_view(s, i),
                        stats: conn_stats(&s.counters.endpoint(address), open),
                        governance: governance_stats(sample.governed(s.id, Some(address))),
                    }
                })
            })
            .collect();
        Some(rows)
    }

    pub async fn stats(&self) -> StatsView {
        let view = self.view();
        let sample = self.sample().await;
        let mut services: Vec<ServiceStats> = view
            .iter()
            .map(|s| ServiceStats {
                service: s.spec.name.to_string(),
                stats: conn_stats(
                    &s.counters.totals(),
                    sample.open_per_service.get(&s.id).copied().unwrap_or(0),
                ),
                governance: governance_stats(sample.governed(s.id, None)),
            })
            .collect();
        services.sort_by(|a, b| a.service.cmp(&b.service));
        let mut total = Totals::default();
        let mut open = 0;
        for s in view.iter() {
            let t = s.counters.totals();
            total.opened += t.opened;
            total.closed += t.closed;
            total.failed += t.failed;
            total.sent += t.sent;
            total.received += t.received;
            total.packets_sent += t.packets_sent;
            total.packets_received += t.packets_received;
            total.duration_us += t.duration_us;
            total.srtt_us += t.srtt_us;
            total.rtt_samples += t.rtt_samples;
            open += sample.open_per_service.get(&s.id).copied().unwrap_or(0);
        }
        StatsView {
            total: conn_stats(&total, open),
            services,
            events_lost: sample.events_lost,
        }
    }
}

fn service_view(s: &ServiceState) -> ServiceView {
    ServiceView {
        name: s.spec.name.to_string(),
        address: s.spec.frontend.address,
        port: s.spec.frontend.port,
        protocol: s.spec.frontend.protocol.as_str().to_string(),
        origin: s.origin.to_string(),
        panic: s.panic,
        installed: s.installed == Installed::Yes,
        endpoints: (0..s.spec.endpoints.len())
            .map(|i| endpoint_view(s, i))
            .collect(),
    }
}

fn endpoint_view(s: &ServiceState, i: usize) -> EndpointView {
    let spec = &s.spec.endpoints[i];
    EndpointView {
        address: spec.address.ip(),
        port: spec.address.port(),
        weight: spec.weight,
        effective_weight: s.endpoints[i].effective,
        state: s.state(i).as_str().to_string(),
        slow_start_percent: s.endpoints[i]
            .ramp
            .map(|(_, permille)| (permille / 10) as u8),
    }
}

/// Totals as the admin API shows them: means over closed connections (the round-trip time
/// over those that have one).
fn conn_stats(t: &Totals, open: u64) -> ConnStats {
    let mean = |sum: u64, n: u64| (n > 0).then(|| sum as f64 / n as f64);
    ConnStats {
        connections_opened: t.opened,
        connections_closed: t.closed,
        connect_failures: t.failed,
        connections_open: open,
        bytes_sent: t.sent,
        bytes_received: t.received,
        mean_duration_ms: mean(t.duration_us, t.closed).map(|us| us / 1e3),
        mean_srtt_us: mean(t.srtt_us, t.rtt_samples),
    }
}

fn governance_stats(g: Governed) -> GovernanceStats {
    GovernanceStats {
        limited_open: g.open,
        overflows: g.overflow,
        fault_aborts: g.aborted,
        denials: g.denied,
    }
}

/// A connection event as `weft conns --follow` prints it.
pub fn event_view(e: &ConnEvent) -> ConnEventView {
    ConnEventView {
        event: match e.record.kind {
            event::ESTABLISHED => "opened",
            event::CONNECT_FAILED => "connect_failed",
            event::CLOSED => "closed",
            event::DENIED => "denied",
            event::ABORTED => "aborted",
            event::OVERFLOW => "overflow",
            _ => "unknown",
        }
        .to_string(),
        conn: conn_view(&e.service, e.endpoint, &e.record, record::boottime_ns()),
    }
}

/// A TC flow as `weft conns` shows it: the client is the source, the endpoint the
/// destination its packets were sent to; bytes as the interface saw them each way.
fn flow_view(service: &str, f: &Flow) -> ConnView {
    let reverse = f.reverse.unwrap_or_default();
    ConnView {
        service: service.to_string(),
        endpoint: f.endpoint(),
        src: f.client(),
        dst: f.endpoint(),
        state: f.state().as_str().to_string(),
        bytes_sent: f.forward.bytes,
        bytes_received: reverse.bytes,
        srtt_us: 0,
        retransmits: 0,
        age_ms: crate::datapath::flow_age_ms(f),
        segs_in: reverse.packets.min(u64::from(u32::MAX)) as u32,
        segs_out: f.forward.packets.min(u64::from(u32::MAX)) as u32,
        cookie: 0,
        path: ConnPath::Tc,
    }
}

fn conn_view(service: &str, endpoint: SocketAddr, r: &ConnRecord, now_ns: u64) -> ConnView {
    // A record from the ring is final: its age is its lifetime, not time since connect.
    let age_ms = if r.kind != event::ESTABLISHED && r.kind != 0 {
        record::age_ms(r, r.update_ns)
    } else {
        record::age_ms(r, now_ns)
    };
    ConnView {
        service: service.to_string(),
        endpoint,
        src: record::source(r),
        dst: record::destination(r),
        state: record::state(r).to_string(),
        bytes_sent: record::bytes_sent(r),
        bytes_received: record::bytes_received(r),
        srtt_us: r.srtt_us,
        retransmits: r.total_retrans,
        age_ms,
        segs_in: r.segs_in,
        segs_out: r.segs_out,
        cookie: r.cookie,
        path: if r.flags & conn_flags::TC != 0 {
            ConnPath::Tc
        } else {
            ConnPath::Socket
        },
    }
}
