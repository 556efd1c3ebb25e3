//! Connection counters, kept compact: a few atomics per service, per endpoint only once an
//! endpoint has seen a connection, histograms only once a service has seen a close. Metrics
//! and the admin API read them where they are; nothing is copied into label strings.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use weft_common::{ConnRecord, event};

use super::record;

/// Totals of one service or one endpoint since the agent started.
#[derive(Debug, Default)]
pub struct Counters {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    pub failed: AtomicU64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Segments, datagrams or packets each way, counted at close.
    pub packets_sent: AtomicU64,
    pub packets_received: AtomicU64,
    /// Sums over closed connections, for the means `weft stats` shows.
    pub duration_us: AtomicU64,
    pub srtt_us: AtomicU64,
    /// Closed connections with a round-trip time (TCP on the socket path): the mean's divisor.
    pub rtt_samples: AtomicU64,
}

/// A snapshot of `Counters`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    pub opened: u64,
    pub closed: u64,
    pub failed: u64,
    pub sent: u64,
    pub received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub duration_us: u64,
    pub srtt_us: u64,
    pub rtt_samples: u64,
}

impl Counters {
    pub fn totals(&self) -> Totals {
        Totals {
            opened: self.opened.load(Relaxed),
            closed: self.closed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            sent: self.sent.load(Relaxed),
            received: self.received.load(Relaxed),
            packets_sent: self.packets_sent.load(Relaxed),
            packets_received: self.packets_received.load(Relaxed),
            duration_us: self.duration_us.load(Relaxed),
            srtt_us: self.srtt_us.load(Relaxed),
            rtt_samples: self.rtt_samples.load(Relaxed),
        }
    }

    fn count(&self, r: &ConnRecord) {
        match r.kind {
            event::ESTABLISHED => {
                self.opened.fetch_add(1, Relaxed);
            }
            event::CONNECT_FAILED => {
                self.failed.fetch_add(1, Relaxed);
            }
            event::CLOSED => {
                self.closed.fetch_add(1, Relaxed);
                self.sent.fetch_add(record::bytes_sent(r), Relaxed);
                self.received.fetch_add(record::bytes_received(r), Relaxed);
                self.packets_sent.fetch_add(u64::from(r.segs_out), Relaxed);
                self.packets_received
                    .fetch_add(u64::from(r.segs_in), Relaxed);
                self.duration_us
                    .fetch_add((record::duration_s(r) * 1e6) as u64, Relaxed);
                if record::is_socket_tcp(r) {
                    self.srtt_us.fetch_add(u64::from(r.srtt_us), Relaxed);
                    self.rtt_samples.fetch_add(1, Relaxed);
                }
            }
            _ => {}
        }
    }
}

/// Lifetime and round-trip histograms of a service's closed connections.
#[derive(Debug)]
pub struct Histograms {
    pub duration: Histogram,
    pub srtt: Histogram,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            // 1 ms .. ~4,400 s
            duration: Histogram::new(exponential_buckets(0.001, 4.0, 12)),
            // 10 µs .. ~2.6 s
            srtt: Histogram::new(exponential_buckets(0.000_01, 4.0, 10)),
        }
    }
}

/// Everything counted for one service: kept across changes of its definition, dropped with
/// it. Allocated with the service's first event: 10,000 idle services cost a pointer each.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    kept: OnceLock<Box<Kept>>,
}

#[derive(Debug, Default)]
struct Kept {
    service: Counters,
    /// Per endpoint, created with the endpoint's first connection.
    endpoints: Mutex<HashMap<SocketAddr, Arc<Counters>>>,
    histograms: OnceLock<Histograms>,
}

impl ServiceCounters {
    /// Counts one kernel event of this service, sent to `endpoint`.
    pub fn count(&self, endpoint: SocketAddr, r: &ConnRecord) {
        let kept = self.kept.get_or_init(Box::default);
        kept.service.count(r);
        let per_endpoint = {
            let mut endpoints = kept.endpoints.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(endpoints.entry(endpoint).or_default())
        };
        per_endpoint.count(r);
        if r.kind == event::CLOSED {
            let histograms = kept.histograms.get_or_init(Histograms::default);
            histograms.duration.observe(record::duration_s(r));
            if record::is_socket_tcp(r) {
                histograms.srtt.observe(f64::from(r.srtt_us) / 1e6);
            }
        }
    }

    /// The service's totals (zero before its first event).
    pub fn totals(&self) -> Totals {
        self.kept
            .get()
            .map(|k| k.service.totals())
            .unwrap_or_default()
    }

    /// One endpoint's totals (zero before its first connection).
    pub fn endpoint(&self, endpoint: SocketAddr) -> Totals {
        let Some(kept) = self.kept.get() else {
            return Totals::default();
        };
        kept.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&endpoint)
            .map(|c| c.totals())
            .unwrap_or_default()
    }

    pub fn histograms(&self) -> Option<&Histograms> {
        self.kept.get()?.histograms.get()
    }

    /// Forgets endpoints the service no longer has.
    pub fn retain_endpoints(&self, endpoints: impl Iterator<Item = SocketAddr>) {
        let Some(kept) = self.kept.get() else {
            return;
        };
        let keep: std::collections::HashSet<SocketAddr> = endpoints.collect();
        kept.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|endpoint, _| keep.contains(endpoint));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_connection_moves_bytes_by_its_payload() {
        let counters = ServiceCounters::default();
        let endpoint: SocketAddr = "10.0.0.1:80".parse().unwrap();
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
        for r in [&closed, &opened, &closed] {
            counters.count(endpoint, r);
        }
        let totals = counters.endpoint(endpoint);
        assert_eq!((totals.sent, totals.received), (2000, 4000));
        assert_eq!((totals.closed, totals.opened), (2, 1));
        assert_eq!(totals.duration_us, 4000);
        assert_eq!(counters.totals(), totals);
        assert!(counters.histograms().is_some());
        counters.retain_endpoints(std::iter::empty());
        assert_eq!(counters.endpoint(endpoint), Totals::default());
        assert_eq!(counters.totals().closed, 2, "the service keeps its totals");
    }
}
