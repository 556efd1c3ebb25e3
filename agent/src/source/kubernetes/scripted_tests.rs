//! The watch against a scripted API server at the HTTP level (kube-rs tests its own client
//! this way): every request the watchers make is checked — list, then watch from the list's
//! `resourceVersion`, a watch resumed from the last event's, a relist after `410 Gone` — and
//! answered as the API server would.

use std::{collections::HashMap, pin::Pin, time::Duration};

use http::{Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower_test::mock;

use super::{Connected, state::Resource, watch};
use crate::source::{Delta, SourceEvent, SourceKind};

/// How long a step may take before the test says what it was waiting for.
const STEP: Duration = Duration::from_secs(10);

type Handle = mock::Handle<Request<Body>, Response<Body>>;
type Reply = mock::SendResponse<Response<Body>>;

/// One request of a watcher, parsed.
struct Call {
    resource: Resource,
    watch: bool,
    query: HashMap<String, String>,
    reply: Reply,
}

/// The API server's side: requests arrive from two watchers in any order; a test asks for
/// the next one of a resource and kind, and the others wait their turn.
struct Api {
    handle: Pin<Box<Handle>>,
    waiting: Vec<Call>,
}

impl Api {
    async fn next(&mut self, resource: Resource, watch: bool) -> Call {
        if let Some(i) = self
            .waiting
            .iter()
            .position(|c| c.resource == resource && c.watch == watch)
        {
            return self.waiting.remove(i);
        }
        loop {
            let (request, reply) = tokio::time::timeout(STEP, self.handle.as_mut().next_request())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {} {} request",
                        resource.as_str(),
                        if watch { "watch" } else { "list" }
                    )
                })
                .expect("the client went away");
            let call = parse(&request, reply);
            if call.resource == resource && call.watch == watch {
                return call;
            }
            self.waiting.push(call);
        }
    }
}

fn parse(request: &Request<Body>, reply: Reply) -> Call {
    let path = request.uri().path();
    let resource = match path {
        "/api/v1/services" => Resource::Services,
        "/apis/discovery.k8s.io/v1/endpointslices" => Resource::EndpointSlices,
        other => panic!("unexpected request for {other}"),
    };
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.replace("%21", "!")
                    .replace("%2F", "/")
                    .replace("%2C", ","),
            )
        })
        .collect();
    Call {
        resource,
        watch: query.get("watch").map(String::as_str) == Some("true"),
        query,
        reply,
    }
}

fn respond(reply: Reply, body: Vec<u8>) {
    reply.send_response(
        Response::builder()
            .status(StatusCode::OK)
            .body(Body::from(body))
            .expect("a response"),
    );
}

fn list(reply: Reply, version: &str, items: Vec<Value>) {
    let body = json!({ "metadata": { "resourceVersion": version }, "items": items });
    respond(reply, serde_json::to_vec(&body).unwrap());
}

/// A watch response: these events, then the end of the stream.
fn events(reply: Reply, events: &[(&str, Value)]) {
    let mut body = Vec::new();
    for (kind, object) in events {
        serde_json::to_writer(&mut body, &json!({ "type": kind, "object": object })).unwrap();
        body.push(b'\n');
    }
    respond(reply, body);
}

fn gone(reply: Reply) {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "too old resource version: 100 (250)", "reason": "Expired", "code": 410
    });
    events(reply, &[("ERROR", status)]);
}

fn service(version: &str) -> Value {
    json!({
        "metadata": { "namespace": "shop", "name": "reviews", "resourceVersion": version },
        "spec": { "type": "ClusterIP", "clusterIP": "10.96.0.10", "ports": [{ "name": "http", "port": 80 }] }
    })
}

fn slice(version: &str, endpoints: &[(&str, bool)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, ready)| json!({ "addresses": [ip], "conditions": { "ready": ready } }))
        .collect();
    json!({
        "metadata": {
            "namespace": "shop", "name": "reviews-x1", "resourceVersion": version,
            "labels": { "kubernetes.io/service-name": "reviews" }
        },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        "endpoints": endpoints
    })
}

/// The endpoints the next event gives `shop/reviews:http`.
async fn next_endpoints(rx: &mut mpsc::Receiver<SourceEvent>) -> Vec<String> {
    let event = tokio::time::timeout(STEP, rx.recv())
        .await
        .expect("no event from the source")
        .expect("the source ended");
    let SourceEvent::Accepted { deltas, .. } = event else {
        panic!("expected a change, got {event:?}");
    };
    match deltas.as_slice() {
        [Delta::Upsert { spec, .. }] if &*spec.name == "shop/reviews:http" => spec
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect(),
        other => panic!("expected one upsert of shop/reviews:http, got {other:?}"),
    }
}

fn start() -> (Api, mpsc::Receiver<SourceEvent>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let (tx, rx) = mpsc::channel(16);
    let api = Connected {
        client: Client::new(service, "default"),
        api_host: None,
    };
    watch::spawn(api, "n1".into(), tx, |_| {});
    (
        Api {
            handle: Box::pin(handle),
            waiting: Vec::new(),
        },
        rx,
    )
}

/// Lists both resources (service "100", slices "200") and checks the first sync.
async fn synced(api: &mut Api, rx: &mut mpsc::Receiver<SourceEvent>) {
    let call = api.next(Resource::Services, false).await;
    assert_eq!(
        call.query.get("labelSelector").map(String::as_str),
        Some("!service.kubernetes.io/service-proxy-name"),
        "Services another proxy claims are not listed"
    );
    list(call.reply, "100", vec![service("90")]);
    let call = api.next(Resource::EndpointSlices, false).await;
    assert_eq!(
        call.query.get("labelSelector").map(String::as_str),
        Some(
            "kubernetes.io/service-name,!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
        ),
        "slices of headless Services and of another proxy's are not listed"
    );
    list(
        call.reply,
        "200",
        vec![slice("190", &[("10.1.0.5", true), ("10.1.0.6", true)])],
    );
    assert_eq!(next_endpoints(rx).await, ["10.1.0.5:8080", "10.1.0.6:8080"]);
    let event = tokio::time::timeout(STEP, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(event, SourceEvent::Synced(SourceKind::Kubernetes)),
        "{event:?}"
    );
}

#[tokio::test]
async fn list_then_watch_from_the_lists_version_and_a_modified_slice_removes_the_unready_endpoint()
{
    let (mut api, mut rx) = start();
    synced(&mut api, &mut rx).await;
    let services = api.next(Resource::Services, true).await;
    assert_eq!(services.query["resourceVersion"], "100");
    let slices = api.next(Resource::EndpointSlices, true).await;
    assert_eq!(slices.query["resourceVersion"], "200");
    events(
        slices.reply,
        &[(
            "MODIFIED",
            slice("201", &[("10.1.0.5", true), ("10.1.0.6", false)]),
        )],
    );
    assert_eq!(next_endpoints(&mut rx).await, ["10.1.0.5:8080"]);
    // The stream ended: the watch resumes where it was, no relist.
    let again = api.next(Resource::EndpointSlices, true).await;
    assert_eq!(again.query["resourceVersion"], "201");
    drop(services);
}

#[tokio::test]
async fn gone_relists_without_a_flush_and_only_what_changed_is_sent() {
    let (mut api, mut rx) = start();
    synced(&mut api, &mut rx).await;
    let _services = api.next(Resource::Services, true).await;
    gone(api.next(Resource::EndpointSlices, true).await.reply);
    // The relist finds the same slice (a newer version of the same object): nothing is sent.
    let relist = api.next(Resource::EndpointSlices, false).await;
    list(
        relist.reply,
        "300",
        vec![slice("250", &[("10.1.0.5", true), ("10.1.0.6", true)])],
    );
    let watch = api.next(Resource::EndpointSlices, true).await;
    assert_eq!(watch.query["resourceVersion"], "300");
    // The next thing sent is the next change, not a flush or a re-send.
    events(
        watch.reply,
        &[(
            "MODIFIED",
            slice("301", &[("10.1.0.6", true), ("10.1.0.7", true)]),
        )],
    );
    assert_eq!(
        next_endpoints(&mut rx).await,
        ["10.1.0.6:8080", "10.1.0.7:8080"]
    );
    // Gone again, and the relist finds a change made while the watch was down: it is sent.
    gone(api.next(Resource::EndpointSlices, true).await.reply);
    list(
        api.next(Resource::EndpointSlices, false).await.reply,
        "400",
        vec![slice("350", &[("10.1.0.7", true)])],
    );
    assert_eq!(next_endpoints(&mut rx).await, ["10.1.0.7:8080"]);
}

#[tokio::test]
async fn a_broken_watch_reconnects_from_where_it_was() {
    let (mut api, mut rx) = start();
    synced(&mut api, &mut rx).await;
    let _services = api.next(Resource::Services, true).await;
    let watch = api.next(Resource::EndpointSlices, true).await;
    watch.reply.send_error(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset by peer",
    ));
    // After the backoff: a watch from the same version, not a list.
    let again = api.next(Resource::EndpointSlices, true).await;
    assert_eq!(again.query["resourceVersion"], "200");
    events(
        again.reply,
        &[("DELETED", slice("201", &[("10.1.0.5", true)]))],
    );
    assert!(next_endpoints(&mut rx).await.is_empty());
}

#[tokio::test]
async fn an_api_server_that_fails_at_first_is_retried_until_it_lists() {
    let (mut api, mut rx) = start();
    let first = api.next(Resource::Services, false).await;
    first.reply.send_error(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused",
    ));
    // Nothing is sent, not even an empty state, while the API server cannot be reached.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err()
    );
    synced(&mut api, &mut rx).await;
}

#[tokio::test]
async fn a_watch_broken_mid_stream_resumes_from_its_last_event() {
    let (mut api, mut rx) = start();
    synced(&mut api, &mut rx).await;
    let _services = api.next(Resource::Services, true).await;
    let watch = api.next(Resource::EndpointSlices, true).await;
    // One event, then the connection dies halfway through the next.
    let mut body = Vec::new();
    let event = json!({ "type": "MODIFIED", "object": slice("205", &[("10.1.0.5", true)]) });
    serde_json::to_writer(&mut body, &event).unwrap();
    body.extend_from_slice(b"\n{\"type\":\"MODIFIED\",\"object\":{\"metadata\":");
    respond(watch.reply, body);
    assert_eq!(next_endpoints(&mut rx).await, ["10.1.0.5:8080"]);
    let again = api.next(Resource::EndpointSlices, true).await;
    assert_eq!(again.query["resourceVersion"], "205");
}

#[tokio::test]
async fn a_list_in_pages_is_one_list_and_a_failed_page_starts_it_over_without_a_flush() {
    let (mut api, mut rx) = start();
    let services = api.next(Resource::Services, false).await;
    list(services.reply, "100", vec![service("90")]);
    // Page one, then page two fails: the list starts over.
    let first = api.next(Resource::EndpointSlices, false).await;
    let limit: usize = first.query["limit"].parse().expect("a paged list");
    assert!(limit > 0);
    let page = json!({ "metadata": { "resourceVersion": "200", "continue": "page-2" }, "items": [slice("190", &[("10.1.0.5", true)])] });
    respond(first.reply, serde_json::to_vec(&page).unwrap());
    let second = api.next(Resource::EndpointSlices, false).await;
    assert_eq!(second.query["continue"], "page-2");
    second
        .reply
        .send_error(std::io::Error::other("the API server went away"));
    // Nothing is sent from half a list.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err()
    );
    let again = api.next(Resource::EndpointSlices, false).await;
    assert!(
        !again.query.contains_key("continue"),
        "a new list, from the start"
    );
    let page = json!({ "metadata": { "resourceVersion": "210", "continue": "page-2" }, "items": [slice("190", &[("10.1.0.5", true)])] });
    respond(again.reply, serde_json::to_vec(&page).unwrap());
    let rest = api.next(Resource::EndpointSlices, false).await;
    assert_eq!(rest.query["continue"], "page-2");
    let mut other = slice("195", &[("10.1.0.6", true)]);
    other["metadata"]["name"] = json!("reviews-x2");
    list(rest.reply, "210", vec![other]);
    // Both pages make the first sync.
    assert_eq!(
        next_endpoints(&mut rx).await,
        ["10.1.0.5:8080", "10.1.0.6:8080"]
    );
}
