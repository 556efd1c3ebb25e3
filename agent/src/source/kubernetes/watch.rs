//! The watch itself: kube-rs' watcher lists Services and EndpointSlices, then watches them
//! from the list's `resourceVersion`, relists when the API server says `410 Gone`, and backs
//! off and retries while it cannot reach the API server. Its events feed the cluster state;
//! what changed goes to the control loop, one Service per event.
//!
//! While the API server is away nothing is sent at all: the last known state keeps serving,
//! in the kernel and in the agent.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{Api, runtime::watcher};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    Connected,
    state::{ClusterState, Resource},
};
use crate::{
    chain::Chain,
    source::{SourceEvent, SourceKind},
};

/// Services another proxy claims (kube-proxy leaves them alone too).
const NOT_OURS: &str = "!service.kubernetes.io/service-proxy-name";
/// EndpointSlices of a Service, not of a headless one or one another proxy claims (the
/// controller copies those labels onto the slices): as kube-proxy selects them.
const OUR_SLICES: &str = "kubernetes.io/service-name,!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name";
/// Seconds a watch lasts before it is resumed: a connection that died silently (no FIN,
/// no RST) is noticed within this, not after the API server's default of about 5 minutes.
const WATCH_TIMEOUT: u32 = 60;
/// The same failure is logged again after this long, not at every retry.
const REPEAT_ERROR: Duration = Duration::from_secs(60);
/// Retries after a failed list or watch wait from the first to the longest delay, doubling
/// (spread), and from the first again once the API server answers. client-go's reflector
/// goes up to 30 s, kind to a struggling API server; a node agent also needs to see the API
/// server again soon after it is back (every change made meanwhile waits for it), so 10 s.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LONGEST_RETRY: Duration = Duration::from_secs(10);
/// Watch events waiting for the state before the watchers wait for it.
const QUEUE: usize = 256;

/// One resource's watch event, or why there is none (boxed: a Service is large, and the
/// two kinds share a queue).
enum Item {
    Service(Box<Result<watcher::Event<Service>, watcher::Error>>),
    Slice(Box<Result<watcher::Event<EndpointSlice>, watcher::Error>>),
}

/// Starts watching on the current runtime. `node` is this agent's node name, `on_error`
/// is called for each failed list or watch request (for the metrics).
pub fn spawn(
    api: Connected,
    node: Arc<str>,
    tx: mpsc::Sender<SourceEvent>,
    on_error: impl Fn(Resource) + Send + 'static,
) {
    let Connected { client, api_host } = api;
    let (items_tx, items) = mpsc::channel(QUEUE);
    // `any_semantic`: lists may be served from the API server's watch cache, as informers'
    // are; at thousands of nodes a quorum read per relist is the API server's problem.
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default()
            .labels(NOT_OURS)
            .timeout(WATCH_TIMEOUT)
            .any_semantic(),
    );
    let slices = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default()
            .labels(OUR_SLICES)
            .timeout(WATCH_TIMEOUT)
            .any_semantic(),
    );
    tokio::spawn(follow(
        services,
        |i| Item::Service(Box::new(i)),
        items_tx.clone(),
    ));
    tokio::spawn(follow(slices, |i| Item::Slice(Box::new(i)), items_tx));
    tokio::spawn(run(items, node, api_host, tx, on_error));
}

/// Passes one resource's watch events on, pausing after a failure (the watcher retries as
/// soon as it is polled again). `410 Gone` is no failure: the watcher lists again at once.
async fn follow<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    wrap: fn(Result<watcher::Event<K>, watcher::Error>) -> Item,
    items: mpsc::Sender<Item>,
) {
    let mut retries = Retries::new();
    futures_util::pin_mut!(events);
    while let Some(item) = events.next().await {
        let pause = match &item {
            // The API server answers: the next failure starts the delays over.
            Ok(event) if answers(event) => {
                retries.reset();
                None
            }
            Ok(_) => None,
            Err(error) if gone(error) => None,
            Err(_) => Some(retries.next_delay()),
        };
        if items.send(wrap(item)).await.is_err() {
            return;
        }
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
}

/// An event the API server had to answer for: a list complete, or a change. (`Init` comes
/// before the list request is even sent.)
fn answers<K>(event: &watcher::Event<K>) -> bool {
    matches!(
        event,
        watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_)
    )
}

/// The API server no longer has the history a watch resumes from: routine, the watcher
/// lists again.
fn gone(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

/// Delays between retries: doubling from `FIRST_RETRY` to `LONGEST_RETRY`, each spread by
/// up to a quarter either way so that the agents of a cluster do not retry in step.
struct Retries {
    next: Duration,
    /// xorshift state for the spread (no need for more randomness than this).
    seed: u64,
}

impl Retries {
    fn new() -> Retries {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Retries {
            next: FIRST_RETRY,
            seed: (now.as_nanos() as u64 ^ u64::from(std::process::id())) | 1,
        }
    }

    fn next_delay(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        // A factor in [0.75, 1.25).
        let spread = 0.75 + (self.seed % 1000) as f64 / 2000.0;
        let delay = self.next.mul_f64(spread);
        self.next = (self.next * 2).min(LONGEST_RETRY);
        delay
    }

    fn reset(&mut self) {
        self.next = FIRST_RETRY;
    }
}

async fn run(
    mut items: mpsc::Receiver<Item>,
    node: Arc<str>,
    api_host: Option<IpAddr>,
    tx: mpsc::Sender<SourceEvent>,
    on_error: impl Fn(Resource) + Send + 'static,
) {
    let mut state = ClusterState::new(node);
    let mut errors = ErrorLog::default();
    let mut synced = false;
    while let Some(item) = items.recv().await {
        let failed = match item {
            Item::Service(item) => match *item {
                Ok(event) => {
                    if answers(&event) {
                        errors.recovered(Resource::Services);
                    }
                    on_service(&mut state, event);
                    None
                }
                Err(error) => Some((Resource::Services, error)),
            },
            Item::Slice(item) => match *item {
                Ok(event) => {
                    if answers(&event) {
                        errors.recovered(Resource::EndpointSlices);
                    }
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
                services = state.service_count(),
                "Kubernetes Services and EndpointSlices listed"
            );
            if let Some(service) = api_host.and_then(|ip| state.service_at(ip)) {
                warn!(
                    "the agent reaches the API server at {}, an address of Service {service}, which it translates itself: if the API server's addresses change while no agent runs on this node, the node cannot reach it; set KUBERNETES_SERVICE_HOST (or the kubeconfig's server) to the API server's own address",
                    api_host.map(|ip| ip.to_string()).unwrap_or_default()
                );
            }
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
        if gone(error) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_the_longest_spread_by_a_quarter_and_reset() {
        let mut retries = Retries::new();
        let delays: Vec<Duration> = (0..8).map(|_| retries.next_delay()).collect();
        let bases = [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0];
        for (delay, base) in delays.iter().zip(bases) {
            let seconds = delay.as_secs_f64();
            assert!(
                (base * 0.75..base * 1.25).contains(&seconds),
                "{delay:?} not within a quarter of {base} s: {delays:?}"
            );
        }
        retries.reset();
        assert!(retries.next_delay() < Duration::from_millis(625));
    }
}
