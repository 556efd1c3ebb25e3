//! The watch itself: kube-rs' watcher lists Services and EndpointSlices, then watches them
//! from the list's `resourceVersion`, relists when the API server says `410 Gone`, and backs
//! off and retries while it cannot reach the API server. Its events feed the cluster state;
//! what changed goes to the control loop, one Service per event.
//!
//! While the API server is away nothing is sent at all: the last known state keeps serving,
//! in the kernel and in the agent.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{Stream, StreamExt, stream};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    mapping::SERVICE_NAME,
    state::{ClusterState, Resource},
};
use crate::{
    chain::Chain,
    source::{SourceEvent, SourceKind},
};

/// Services another proxy claims (kube-proxy leaves them alone too).
const NOT_OURS: &str = "!service.kubernetes.io/service-proxy-name";
/// The same failure is logged again after this long, not at every retry.
const REPEAT_ERROR: Duration = Duration::from_secs(60);

/// One resource's watch event, or why there is none (boxed: a Service is large, and the
/// two kinds share the stream).
enum Item {
    Service(Box<Result<watcher::Event<Service>, watcher::Error>>),
    Slice(Box<Result<watcher::Event<EndpointSlice>, watcher::Error>>),
}

/// Starts watching on the current runtime. `node` is this agent's node name, `on_error`
/// is called for each failed list or watch request (for the metrics).
pub fn spawn(
    client: Client,
    node: Arc<str>,
    tx: mpsc::Sender<SourceEvent>,
    on_error: impl Fn(Resource) + Send + 'static,
) {
    tokio::spawn(run(client, node, tx, on_error));
}

fn events(client: Client) -> impl Stream<Item = Item> + Send {
    // `any_semantic`: lists may be served from the API server's watch cache, as informers'
    // are; at thousands of nodes a quorum read per relist is the API server's problem.
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default().labels(NOT_OURS).any_semantic(),
    )
    .default_backoff()
    .map(|item| Item::Service(Box::new(item)));
    let slices = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default()
            .labels(SERVICE_NAME)
            .any_semantic(),
    )
    .default_backoff()
    .map(|item| Item::Slice(Box::new(item)));
    stream::select(services, slices)
}

async fn run(
    client: Client,
    node: Arc<str>,
    tx: mpsc::Sender<SourceEvent>,
    on_error: impl Fn(Resource) + Send + 'static,
) {
    let mut state = ClusterState::new(node);
    let mut errors = ErrorLog::default();
    let mut synced = false;
    let events = events(client);
    futures_util::pin_mut!(events);
    while let Some(item) = events.next().await {
        let failed = match item {
            Item::Service(item) => match *item {
                Ok(event) => {
                    errors.recovered(Resource::Services);
                    on_service(&mut state, event);
                    None
                }
                Err(error) => Some((Resource::Services, error)),
            },
            Item::Slice(item) => match *item {
                Ok(event) => {
                    errors.recovered(Resource::EndpointSlices);
                    on_slice(&mut state, event);
                    None
                }
                Err(error) => Some((Resource::EndpointSlices, error)),
            },
        };
        if let Some((resource, error)) = failed
            && errors.failed(resource, &error)
        {
            on_error(resource);
        }
        for problem in state.take_problems() {
            warn!("{problem}");
        }
        for event in state.changes() {
            if tx.send(event).await.is_err() {
                return;
            }
        }
        if !synced && state.synced() {
            synced = true;
            info!(
                services = state.services(),
                "Kubernetes Services and EndpointSlices listed"
            );
            if tx
                .send(SourceEvent::Synced(SourceKind::Kubernetes))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

fn on_service(state: &mut ClusterState, event: watcher::Event<Service>) {
    match event {
        watcher::Event::Apply(s) => state.service_applied(&s),
        watcher::Event::Delete(s) => state.service_deleted(&s),
        watcher::Event::Init => state.relist_started(Resource::Services),
        watcher::Event::InitApply(s) => state.relisted_service(&s),
        watcher::Event::InitDone => state.relist_done(Resource::Services),
    }
}

fn on_slice(state: &mut ClusterState, event: watcher::Event<EndpointSlice>) {
    match event {
        watcher::Event::Apply(s) => state.slice_applied(&s),
        watcher::Event::Delete(s) => state.slice_deleted(&s),
        watcher::Event::Init => state.relist_started(Resource::EndpointSlices),
        watcher::Event::InitApply(s) => state.relisted_slice(&s),
        watcher::Event::InitDone => state.relist_done(Resource::EndpointSlices),
    }
}

/// Logs a failing list or watch once, not at every retry, and says when it works again.
#[derive(Default)]
struct ErrorLog {
    last: [Option<(String, Instant)>; 2],
}

impl ErrorLog {
    fn slot(resource: Resource) -> usize {
        match resource {
            Resource::Services => 0,
            Resource::EndpointSlices => 1,
        }
    }

    /// Logs `error` unless it was just logged; false if it is no failure at all.
    fn failed(&mut self, resource: Resource, error: &watcher::Error) -> bool {
        // The API server no longer has the history the watch resumes from: routine, and
        // the watcher relists.
        if let watcher::Error::WatchError(status) = error
            && status.code == 410
        {
            info!(
                resource = resource.as_str(),
                "the watch's resourceVersion expired; listing again (nothing is flushed meanwhile)"
            );
            return false;
        }
        let message = Chain(error).to_string();
        let slot = &mut self.last[Self::slot(resource)];
        let repeat = slot
            .as_ref()
            .is_some_and(|(last, at)| *last == message && at.elapsed() < REPEAT_ERROR);
        if !repeat {
            warn!(
                resource = resource.as_str(),
                "watching the Kubernetes API failed, retrying with backoff; the last known state keeps serving: {message}"
            );
            *slot = Some((message, Instant::now()));
        }
        true
    }

    fn recovered(&mut self, resource: Resource) {
        if self.last[Self::slot(resource)].take().is_some() {
            info!(
                resource = resource.as_str(),
                "watching the Kubernetes API again"
            );
        }
    }
}
