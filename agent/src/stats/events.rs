//! The kernel's connection events, end to end: read from the ring, resolved to the service
//! and endpoint they concern (through the store's latest snapshot), counted, told to
//! followers (`weft conns --follow`), and the connect outcomes forwarded to passive failure
//! detection. Runs on the I/O runtime; the control loop sees only the outcomes it needs.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::sync::{broadcast, mpsc, watch};
use tracing::error;
use weft_common::{ConnRecord, event};

use super::record;
use crate::{
    datapath::{EventReader, EventRing},
    store::{EndpointRef, ServiceId, Snapshot},
};

/// One kernel event, resolved: for followers.
#[derive(Clone, Debug)]
pub struct ConnEvent {
    pub service: Arc<str>,
    pub endpoint: SocketAddr,
    pub record: ConnRecord,
}

/// A real connection's outcome, for passive failure detection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectOutcome {
    pub target: EndpointRef,
    pub ok: bool,
    pub at: Instant,
}

/// Where resolved events go.
#[derive(Clone)]
pub struct Sinks {
    pub view: watch::Receiver<Arc<Snapshot>>,
    pub follow: broadcast::Sender<ConnEvent>,
    pub passive: mpsc::Sender<Vec<ConnectOutcome>>,
}

/// Reads `ring` until it fails or the control loop is gone.
pub async fn run(ring: EventRing, sinks: Sinks) {
    let mut reader = match EventReader::new(ring) {
        Ok(reader) => reader,
        Err(e) => {
            error!("connection events unavailable; statistics and passive detection stop: {e}");
            return;
        }
    };
    loop {
        match reader.next_batch().await {
            Ok(batch) => {
                let outcomes = count(&batch, &sinks);
                if !outcomes.is_empty() && sinks.passive.send(outcomes).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                error!(error = %e, "reading connection events failed; statistics and passive detection stop");
                return;
            }
        }
    }
}

/// Counts a batch; returns the connect outcomes of services with passive detection.
pub fn count(batch: &[ConnRecord], sinks: &Sinks) -> Vec<ConnectOutcome> {
    let view = Arc::clone(&sinks.view.borrow());
    let now = Instant::now();
    let following = sinks.follow.receiver_count() > 0;
    let mut outcomes = Vec::new();
    for r in batch {
        // Events of services no longer in force (or not yet) are dropped.
        let Some(service) = view.service(ServiceId(r.service_id)) else {
            continue;
        };
        let endpoint = record::destination(r);
        // Refusals have no endpoint (the destination is the service address); the kernel
        // counts them itself, per service.
        if !record::is_refusal(r) {
            service.counters.count(endpoint, r);
        }
        if following {
            let _ = sinks.follow.send(ConnEvent {
                service: Arc::clone(&service.spec.name),
                endpoint,
                record: *r,
            });
        }
        if !record::is_socket_tcp(r) {
            continue;
        }
        let ok = match r.kind {
            event::ESTABLISHED => true,
            event::CONNECT_FAILED => false,
            _ => continue,
        };
        if service.spec.outlier.is_some() {
            outcomes.push(ConnectOutcome {
                target: EndpointRef {
                    service: service.id,
                    endpoint,
                },
                ok,
                at: now,
            });
        }
    }
    outcomes
}
