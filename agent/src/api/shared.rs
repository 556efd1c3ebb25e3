//! What the daemon publishes and the admin API and metrics listener read: a snapshot of the
//! applied state (replaced whole after every apply), the metrics, a sample of the kernel's
//! live tables and a broadcast of connection events for `weft conns --follow`.
//!
//! Reading must cost the control loop nothing: requests never take a lock the control loop
//! waits on for long, and never walk a kernel map themselves. Kernel tables are sampled at
//! most once a second however many requests arrive (they share one walk), on a blocking
//! thread; `/metrics` serves an exposition at most a second old, encoded once for everyone.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use tokio::sync::{Mutex, Semaphore, broadcast};
use weft_common::{ConnRecord, conn_flags, event, maps as names};

use super::{
    Snapshot,
    view::{
        ConnEventView, ConnStats, ConnView, DatapathView, EndpointRow, MapView, ServiceStats,
        StatsView, StatusView,
    },
};
use crate::{
    datapath::{KernelCounters, Observer},
    stats::{EndpointLabels, Metrics, record},
};

/// How old a kernel sample or a metrics exposition may be when a request is answered.
const FRESH: Duration = Duration::from_secs(1);

/// Kernel table walks (`weft conns`) that may run at once; more requests wait their turn.
const CONCURRENT_WALKS: usize = 2;

/// A kernel event resolved to the config: what health and statistics need.
pub struct Resolved {
    pub service: usize,
    pub endpoint: SocketAddr,
    pub kind: u8,
}

/// The kernel-written tables, counted at one instant.
#[derive(Debug, Default)]
pub struct KernelSample {
    pub revnat_entries: u64,
    pub conns_entries: u64,
    pub events_lost: u64,
    pub counters: KernelCounters,
    /// Established translated connections per endpoint.
    pub open: HashMap<EndpointLabels, u64>,
}

/// Whether the datapath the daemon installed is in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DatapathHealth {
    #[default]
    Installed,
    /// Its pins are gone (`weft reset` under a running agent) and it is not back yet.
    Missing(String),
}

pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    pub metrics: Metrics,
    observer: RwLock<Option<Arc<Observer>>>,
    datapath: RwLock<DatapathHealth>,
    events: broadcast::Sender<ConnEventView>,
    started: Instant,
    sample: Mutex<Option<(Instant, Arc<KernelSample>)>>,
    exposition: Mutex<Option<(Instant, Arc<String>)>>,
    walks: Semaphore,
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            snapshot: RwLock::default(),
            metrics: Metrics::new(),
            observer: RwLock::default(),
            datapath: RwLock::default(),
            // Followers that fall this far behind skip ahead (and are told in the agent log).
            events: broadcast::channel(4096).0,
            started: Instant::now(),
            sample: Mutex::default(),
            exposition: Mutex::default(),
            walks: Semaphore::new(CONCURRENT_WALKS),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

    pub fn set_datapath(&self, health: DatapathHealth) {
        *self.datapath.write().unwrap_or_else(|p| p.into_inner()) = health;
    }

    pub fn datapath(&self) -> DatapathHealth {
        self.datapath
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Ready: a config is applied and the datapath that serves it is in place. Otherwise the
    /// reason, for `/readyz`.
    pub fn readiness(&self) -> Result<(), String> {
        if self.snapshot().generation == 0 {
            return Err("no config applied yet".into());
        }
        match self.datapath() {
            DatapathHealth::Installed => Ok(()),
            DatapathHealth::Missing(why) => Err(format!("datapath missing: {why}")),
        }
    }

    /// Replaces the snapshot and brings the health metrics in line with it, touching only
    /// the services that changed (a health event changes one; a config change may change
    /// the set of endpoints, whose series then follow it).
    pub fn publish(&self, snapshot: Snapshot) {
        let old = self.snapshot();
        for (i, service) in snapshot.services.iter().enumerate() {
            let before = old.services.get(i).filter(|o| o.name == service.name);
            if before == Some(service) {
                continue;
            }
            self.metrics.set_panic(&service.name, service.panic);
            for (j, endpoint) in service.endpoints.iter().enumerate() {
                // Within a generation endpoints keep their order; across one, a moved
                // endpoint is simply set again.
                if before.and_then(|b| b.endpoints.get(j)) != Some(endpoint) {
                    let at = SocketAddr::new(endpoint.address, endpoint.port);
                    self.metrics.set_endpoint(
                        &labels(&service.name, at),
                        &endpoint.state,
                        endpoint.effective_weight,
                    );
                }
            }
        }
        if old.generation != snapshot.generation {
            let configured = snapshot
                .services
                .iter()
                .flat_map(|s| {
                    s.endpoints
                        .iter()
                        .map(|e| labels(&s.name, SocketAddr::new(e.address, e.port)))
                })
                .collect();
            self.metrics.retain(configured);
        }
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
    }

    /// Counts a batch of kernel events, tells followers, and returns them resolved to the
    /// config (events of services or endpoints no longer configured are dropped).
    pub fn record_events(&self, batch: &[ConnRecord]) -> Vec<Resolved> {
        let snapshot = self.snapshot();
        let now = record::boottime_ns();
        let mut resolved = Vec::with_capacity(batch.len());
        let mut by_endpoint: HashMap<(usize, SocketAddr), Vec<&ConnRecord>> = HashMap::new();
        for r in batch {
            let Some((service, endpoint)) = snapshot.resolver.resolve(r.service_id, r.backend_id)
            else {
                continue;
            };
            let name = &snapshot.services[service].name;
            by_endpoint.entry((service, endpoint)).or_default().push(r);
            if self.events.receiver_count() > 0 {
                let _ = self.events.send(ConnEventView {
                    event: event_name(r.kind).to_string(),
                    conn: conn_view(name, endpoint, r, now),
                });
            }
            resolved.push(Resolved {
                service,
                endpoint,
                kind: r.kind,
            });
        }
        for ((service, endpoint), records) in by_endpoint {
            let name = &snapshot.services[service].name;
            self.metrics
                .record_events(&labels(name, endpoint), &records);
        }
        resolved
    }

    pub fn follow(&self) -> broadcast::Receiver<ConnEventView> {
        self.events.subscribe()
    }

    /// The kernel tables as of at most `FRESH` ago. Concurrent callers share one walk, which
    /// runs on a blocking thread.
    pub async fn sample(&self) -> Arc<KernelSample> {
        let mut cached = self.sample.lock().await;
        if let Some((taken, sample)) = cached.as_ref()
            && taken.elapsed() < FRESH
        {
            return Arc::clone(sample);
        }
        let (observer, snapshot) = (self.observer(), self.snapshot());
        let sample = tokio::task::spawn_blocking(move || take_sample(observer, &snapshot))
            .await
            .unwrap_or_default();
        let sample = Arc::new(sample);
        *cached = Some((Instant::now(), Arc::clone(&sample)));
        sample
    }

    /// The metrics exposition (OpenMetrics text) as of at most `FRESH` ago, with the gauges
    /// read from the kernel brought up to date first.
    pub async fn exposition(self: &Arc<Self>) -> Arc<String> {
        let mut cached = self.exposition.lock().await;
        if let Some((taken, text)) = cached.as_ref()
            && taken.elapsed() < FRESH
        {
            return Arc::clone(text);
        }
        let sample = self.sample().await;
        let shared = Arc::clone(self);
        let text = tokio::task::spawn_blocking(move || {
            shared.set_kernel_gauges(&sample);
            shared.metrics.encode()
        })
        .await
        .unwrap_or_default();
        let text = Arc::new(text);
        *cached = Some((Instant::now(), Arc::clone(&text)));
        text
    }

    fn set_kernel_gauges(&self, sample: &KernelSample) {
        self.metrics.set_open(&sample.open);
        self.metrics.set_events_lost(sample.events_lost);
        self.metrics.set_kernel_counters(&sample.counters);
        for map in self.maps(sample) {
            if let Some(entries) = map.entries {
                self.metrics.set_map(&map.name, entries, map.capacity);
            }
        }
    }

    /// Live translated connections, optionally of one service: a walk of the kernel's table,
    /// at most `CONCURRENT_WALKS` at a time.
    pub async fn connections(&self, service: Option<String>) -> Vec<ConnView> {
        let Ok(_turn) = self.walks.acquire().await else {
            return Vec::new();
        };
        let (observer, snapshot) = (self.observer(), self.snapshot());
        tokio::task::spawn_blocking(move || {
            let now = record::boottime_ns();
            let records = observer.map(|o| o.connections()).unwrap_or_default();
            let mut conns: Vec<ConnView> = records
                .iter()
                .filter_map(|r| {
                    let (index, endpoint) =
                        snapshot.resolver.resolve(r.service_id, r.backend_id)?;
                    let name = &snapshot.services[index].name;
                    (service.as_deref().is_none_or(|s| s == name))
                        .then(|| conn_view(name, endpoint, r, now))
                })
                .collect();
            conns.sort_by(|a, b| (&a.service, a.src).cmp(&(&b.service, b.src)));
            conns
        })
        .await
        .unwrap_or_default()
    }

    /// True without a name, or if the named service is configured.
    pub fn knows(&self, service: Option<&str>) -> bool {
        service.is_none_or(|name| self.snapshot().services.iter().any(|s| s.name == name))
    }

    fn maps(&self, sample: &KernelSample) -> Vec<MapView> {
        use std::mem::size_of;
        use weft_common::*;
        let installed = self.snapshot().installed;
        let hash = |name: &str, entries, capacity, entry_bytes| MapView {
            name: name.to_string(),
            entries: Some(entries),
            capacity: u64::from(capacity),
            approx_bytes: entries * entry_bytes as u64,
        };
        vec![
            hash(
                names::SERVICES,
                installed.services,
                maps::SERVICES_CAPACITY,
                size_of::<ServiceKey>() + size_of::<ServiceValue>(),
            ),
            hash(
                names::BACKENDS,
                installed.backends,
                maps::BACKENDS_CAPACITY,
                size_of::<u32>() + size_of::<Backend>(),
            ),
            hash(
                names::MAGLEV,
                installed.maglev_chunks,
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
        ]
    }

    pub async fn status(&self) -> StatusView {
        let snapshot = self.snapshot();
        let sample = self.sample().await;
        StatusView {
            version: env!("CARGO_PKG_VERSION").to_string(),
            generation: snapshot.generation,
            ready: self.readiness().is_ok(),
            datapath: match self.datapath() {
                DatapathHealth::Installed => DatapathView::Installed,
                DatapathHealth::Missing(why) => DatapathView::Missing(why),
            },
            uptime_s: self.started.elapsed().as_secs(),
            programs: snapshot.programs.clone(),
            maps: self.maps(&sample),
            services: snapshot.services.len(),
            services_installed: snapshot.installed.services as usize,
            not_installed: snapshot.not_installed.clone(),
            endpoints: snapshot.services.iter().map(|s| s.endpoints.len()).sum(),
            connections: sample.conns_entries as usize,
            connection_stats: snapshot.connection_stats,
            panicking: snapshot
                .services
                .iter()
                .filter(|s| s.panic)
                .map(|s| s.name.clone())
                .collect(),
            events_lost: sample.events_lost,
            reverse_nat_evictions: sample.counters.revnat_evicted,
            reverse_nat_recovered: sample.counters.revnat_recovered,
            config_reloads_ok: self.metrics.config_reloads(true),
            config_reloads_failed: self.metrics.config_reloads(false),
        }
    }

    /// Every configured endpoint of one service (or all), with its connection totals.
    /// None if the named service does not exist.
    pub async fn endpoints(&self, service: Option<&str>) -> Option<Vec<EndpointRow>> {
        if !self.knows(service) {
            return None;
        }
        let snapshot = self.snapshot();
        let sample = self.sample().await;
        let rows = snapshot
            .services
            .iter()
            .filter(|s| service.is_none_or(|name| name == s.name))
            .flat_map(|s| {
                s.endpoints.iter().map(|e| {
                    let l = labels(&s.name, SocketAddr::new(e.address, e.port));
                    let stats = self
                        .metrics
                        .endpoint_stats(&l, sample.open.get(&l).copied().unwrap_or(0));
                    EndpointRow {
                        service: s.name.clone(),
                        endpoint: e.clone(),
                        stats,
                    }
                })
            })
            .collect();
        Some(rows)
    }

    pub async fn stats(&self) -> StatsView {
        let rows = self.endpoints(None).await.unwrap_or_default();
        let mut services: Vec<ServiceStats> = Vec::new();
        for row in &rows {
            match services.last_mut() {
                Some(last) if last.service == row.service => add(&mut last.stats, &row.stats),
                _ => services.push(ServiceStats {
                    service: row.service.clone(),
                    stats: row.stats.clone(),
                }),
            }
        }
        let mut total = ConnStats::default();
        services.iter().for_each(|s| add(&mut total, &s.stats));
        StatsView {
            total,
            services,
            events_lost: self.sample().await.events_lost,
        }
    }
}

/// One walk of the kernel-written tables (blocking syscalls, one per entry).
fn take_sample(observer: Option<Arc<Observer>>, snapshot: &Snapshot) -> KernelSample {
    let Some(observer) = observer else {
        return KernelSample::default();
    };
    let records = observer.connections();
    let mut open = HashMap::new();
    for r in &records {
        if r.flags & conn_flags::ESTABLISHED == 0 {
            continue;
        }
        if let Some((index, endpoint)) = snapshot.resolver.resolve(r.service_id, r.backend_id) {
            *open
                .entry(labels(&snapshot.services[index].name, endpoint))
                .or_default() += 1;
        }
    }
    KernelSample {
        revnat_entries: observer.revnat_entries() as u64,
        conns_entries: records.len() as u64,
        events_lost: observer.events_lost(),
        counters: observer.counters(),
        open,
    }
}

pub fn labels(service: &str, endpoint: SocketAddr) -> EndpointLabels {
    EndpointLabels {
        service: service.to_string(),
        endpoint: endpoint.to_string(),
    }
}

fn event_name(kind: u8) -> &'static str {
    match kind {
        event::ESTABLISHED => "opened",
        event::CONNECT_FAILED => "connect_failed",
        event::CLOSED => "closed",
        _ => "unknown",
    }
}

fn conn_view(service: &str, endpoint: SocketAddr, r: &ConnRecord, now_ns: u64) -> ConnView {
    // A record from the ring is final: its age is its lifetime, not time since connect.
    let age_ms = if r.kind == event::CLOSED || r.kind == event::CONNECT_FAILED {
        record::age_ms(r, r.update_ns)
    } else {
        record::age_ms(r, now_ns)
    };
    ConnView {
        service: service.to_string(),
        endpoint,
        src: record::source(r),
        dst: record::destination(r),
        state: record::state_name(r.state).to_string(),
        bytes_sent: record::bytes_sent(r),
        bytes_received: record::bytes_received(r),
        srtt_us: r.srtt_us,
        retransmits: r.total_retrans,
        age_ms,
        segs_in: r.segs_in,
        segs_out: r.segs_out,
        cookie: r.cookie,
    }
}

/// Sums totals; means weighted by how many connections each stands for.
fn add(into: &mut ConnStats, from: &ConnStats) {
    let weighted = |a: Option<f64>, na: u64, b: Option<f64>, nb: u64| match (a, b) {
        (Some(a), Some(b)) if na + nb > 0 => {
            Some((a * na as f64 + b * nb as f64) / (na + nb) as f64)
        }
        (a, b) => a.or(b),
    };
    let (n_into, n_from) = (into.connections_closed, from.connections_closed);
    into.mean_duration_ms = weighted(into.mean_duration_ms, n_into, from.mean_duration_ms, n_from);
    into.mean_srtt_us = weighted(into.mean_srtt_us, n_into, from.mean_srtt_us, n_from);
    into.connections_opened += from.connections_opened;
    into.connections_closed += from.connections_closed;
    into.connect_failures += from.connect_failures;
    into.connections_open += from.connections_open;
    into.bytes_sent += from.bytes_sent;
    into.bytes_received += from.bytes_received;
}
