//! A Kubernetes API server for tests, speaking the list/watch protocol for Services and
//! EndpointSlices (what weft's Kubernetes source uses) over plain HTTP/1.1, inside the test's
//! network namespace. The test writes objects directly; clients list and watch them as they
//! would a real API server:
//!
//! - one resourceVersion counter for every object, as etcd's revision;
//! - a list answers the matching objects and the version it was taken at, in pages of
//!   `limit` with a `continue` token served from the first page's snapshot;
//! - a watch streams `ADDED`/`MODIFIED`/`DELETED` events after the version it names, one
//!   JSON object per line in a chunked response, until its `timeoutSeconds`;
//! - a watch from a version the server no longer keeps gets a `410 Gone` Status as an `ERROR`
//!   event (as kube-apiserver answers), and so does every open watch when `expire` is
//!   called: the client must list again;
//! - label selectors `key`, `!key`, `key=value` and `key!=value`, comma-separated; an
//!   object that enters or leaves a watch's selector is `ADDED` or `DELETED` to it;
//! - a watch from version "0" (or none) first sends the current state as `ADDED`;
//! - `stop` kills the server (listener and every connection); `start_again` brings it back
//!   on the same address with the same objects, as an API server restarting.
//!
//! It validates nothing and needs no credentials. It serves plain HTTP, or TLS with a
//! certificate from a CA of its own that the kubeconfig it writes trusts.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::NetNs;

/// The resources the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
}

impl Kind {
    fn of(object: &Value) -> Kind {
        match object["kind"].as_str() {
            Some("Service") => Kind::Service,
            Some("EndpointSlice") => Kind::EndpointSlice,
            other => panic!("the fake API server has no kind {other:?}"),
        }
    }

    fn path(self) -> &'static str {
        match self {
            Kind::Service => "/api/v1/services",
            Kind::EndpointSlice => "/apis/discovery.k8s.io/v1/endpointslices",
        }
    }

    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Service => ("v1", "ServiceList"),
            Kind::EndpointSlice => ("discovery.k8s.io/v1", "EndpointSliceList"),
        }
    }
}

/// One change, as a watch sends it.
struct Change {
    version: u64,
    kind: Kind,
    /// The object before (for a watch whose selector it leaves or enters) and after.
    before: Option<Value>,
    after: Option<Value>,
}

impl Change {
    /// The event a watch with `selector` sees, if any: an object that starts matching is
    /// `ADDED`, one that stops matching `DELETED` (as a real API server sends them).
    fn event(&self, selector: &Selector) -> Option<Value> {
        let was = self.before.as_ref().filter(|o| selector.matches(o));
        let is = self.after.as_ref().filter(|o| selector.matches(o));
        let (kind, object) = match (was, is) {
            (None, Some(now)) => ("ADDED", now.clone()),
            (Some(_), Some(now)) => ("MODIFIED", now.clone()),
            (Some(then), None) => {
                // The last state, at this change's version.
                let mut gone = self.after.clone().unwrap_or_else(|| then.clone());
                gone["metadata"]["resourceVersion"] = json!(self.version.to_string());
                ("DELETED", gone)
            }
            (None, None) => return None,
        };
        Some(json!({ "type": kind, "object": object }))
    }
}

#[derive(Default)]
struct State {
    version: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    history: Vec<Change>,
    /// Watches from a version below this get `410 Gone`.
    oldest: u64,
    /// Bumped by `expire`: open watches end with `410 Gone`.
    expiries: u64,
    /// Open connections, to kill on `stop`.
    connections: Vec<TcpStream>,
    /// `METHOD path?query` of every request, in order.
    requests: Vec<String>,
    /// Lists being paged through: the items still to send, by continue token.
    pages: BTreeMap<String, (u64, Vec<Value>)>,
    next_cluster_ip: u32,
}

struct Inner {
    /// Serving TLS with this config, or plain HTTP.
    tls: Option<Tls>,
    state: Mutex<State>,
    changed: Condvar,
    stopped: AtomicBool,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct FakeApiServer {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Starts serving plain HTTP on a free port of 127.0.0.1 inside `netns`.
    pub fn start(netns: &NetNs) -> FakeApiServer {
        FakeApiServer::serving(netns, None)
    }

    /// Starts serving HTTPS, with a certificate for 127.0.0.1 from a CA of its own (the
    /// kubeconfig it writes trusts that CA), as a real API server does.
    pub fn start_tls(netns: &NetNs) -> FakeApiServer {
        FakeApiServer::serving(netns, Some(Tls::new()))
    }

    fn serving(netns: &NetNs, tls: Option<Tls>) -> FakeApiServer {
        let listener =
            netns.run(|| TcpListener::bind("127.0.0.1:0").expect("binding the fake API server"));
        let addr = listener.local_addr().expect("local address");
        let inner = Arc::new(Inner {
            tls,
            state: Mutex::new(State {
                // Versions start high enough that "0" (any version) is never a real one.
                version: 1000,
                oldest: 1000,
                ..State::default()
            }),
            changed: Condvar::new(),
            stopped: AtomicBool::new(false),
        });
        let mut server = FakeApiServer {
            addr,
            inner,
            acceptor: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let inner = Arc::clone(&self.inner);
        self.acceptor = Some(std::thread::spawn(move || accept(listener, inner)));
    }

    /// A kubeconfig that points a client at this server, written to `path`.
    pub fn write_kubeconfig(&self, path: &Path) {
        let cluster = match &self.inner.tls {
            None => format!("{{ server: \"http://{}\" }}", self.addr),
            Some(tls) => format!(
                "{{ server: \"https://{}\", certificate-authority-data: \"{}\" }}",
                self.addr,
                base64(tls.ca_pem.as_bytes())
            ),
        };
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
  - name: fake
    cluster: {cluster}
users:
  - name: test
    user: {{}}
contexts:
  - name: fake
    context: {{ cluster: fake, user: test, namespace: default }}
current-context: fake
"
        );
        std::fs::write(path, text).expect("writing kubeconfig");
    }

    /// Creates or replaces `object` (a Service or EndpointSlice in the API's JSON shape) and
    /// returns it as stored: with its resourceVersion, and a Service with its cluster IP.
    pub fn apply(&self, mut object: Value) -> Value {
        let kind = Kind::of(&object);
        let mut state = self.inner.lock();
        state.version += 1;
        let version = state.version;
        let meta = &mut object["metadata"];
        if meta["namespace"].is_null() {
            meta["namespace"] = json!("default");
        }
        meta["resourceVersion"] = json!(version.to_string());
        let key = (
            kind,
            meta["namespace"].as_str().unwrap_or_default().to_string(),
            meta["name"]
                .as_str()
                .expect("an object needs a name")
                .to_string(),
        );
        if kind == Kind::Service {
            let spec = &mut object["spec"];
            let wants_ip =
                spec["type"].as_str() != Some("ExternalName") && spec["clusterIP"].is_null();
            if wants_ip {
                let kept = state
                    .objects
                    .get(&key)
                    .map(|o| o["spec"]["clusterIP"].clone());
                let ip = kept.filter(|ip| !ip.is_null()).unwrap_or_else(|| {
                    state.next_cluster_ip += 1;
                    let n = state.next_cluster_ip;
                    json!(format!("10.96.{}.{}", 128 + (n >> 8), n & 0xff))
                });
                object["spec"]["clusterIP"] = ip.clone();
                object["spec"]["clusterIPs"] = json!([ip]);
            }
        }
        let before = state.objects.insert(key, object.clone());
        state.history.push(Change {
            version,
            kind,
            before,
            after: Some(object.clone()),
        });
        drop(state);
        self.inner.changed.notify_all();
        object
    }

    /// Deletes an object; a watch sends its last state with `DELETED`.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut state = self.inner.lock();
        let Some(mut object) =
            state
                .objects
                .remove(&(kind, namespace.to_string(), name.to_string()))
        else {
            panic!("no {kind:?} {namespace}/{name} to delete");
        };
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        state.history.push(Change {
            version,
            kind,
            before: Some(object),
            after: None,
        });
        drop(state);
        self.inner.changed.notify_all();
    }

    /// Forgets the history: every open watch ends with `410 Gone`, and so does any watch
    /// from a version before now. Clients must list again.
    pub fn expire(&self) {
        let mut state = self.inner.lock();
        // A version of its own, so a list taken after this is one a watch can resume from.
        state.version += 1;
        state.oldest = state.version;
        state.expiries += 1;
        drop(state);
        self.inner.changed.notify_all();
    }

    /// Kills the server: the listener and every open connection.
    pub fn stop(&mut self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.inner.changed.notify_all();
        for connection in std::mem::take(&mut self.inner.lock().connections) {
            let _ = connection.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }

    /// Serves again on the same address (in `netns`), with the objects it had.
    pub fn start_again(&mut self, netns: &NetNs) {
        assert!(self.acceptor.is_none(), "the fake API server is running");
        self.inner.stopped.store(false, Ordering::SeqCst);
        let listener = netns.bind_tcp(self.addr);
        self.serve(listener);
    }

    /// `METHOD path?query` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().requests.clone()
    }

    /// The current resourceVersion.
    pub fn version(&self) -> u64 {
        self.inner.lock().version
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept(listener: TcpListener, inner: Arc<Inner>) {
    while !inner.stopped.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                if let Ok(clone) = stream.try_clone() {
                    inner.lock().connections.push(clone);
                }
                let inner = Arc::clone(&inner);
                std::thread::spawn(move || serve_connection(stream, &inner));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
}

/// Requests on one connection, one after another (HTTP/1.1 keep-alive), until a watch ends
/// it or the client closes it.
fn serve_connection(stream: TcpStream, inner: &Inner) {
    match &inner.tls {
        None => serve_requests(BufReader::new(stream), inner),
        Some(tls) => {
            let Ok(session) = rustls::ServerConnection::new(Arc::clone(&tls.config)) else {
                return;
            };
            serve_requests(
                BufReader::new(rustls::StreamOwned::new(session, stream)),
                inner,
            );
        }
    }
}

/// Requests on one connection, plain or TLS.
fn serve_requests<S: Read + Write>(mut reader: BufReader<S>, inner: &Inner) {
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        // Headers: nothing in them matters here (no body on GET).
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        inner.lock().requests.push(format!("{method} {target}"));
        if inner.stopped.load(Ordering::SeqCst) {
            return;
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let query: BTreeMap<String, String> = query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect();
        let kind = [Kind::Service, Kind::EndpointSlice]
            .into_iter()
            .find(|k| k.path() == path);
        let keep_open = match (method, kind) {
            ("GET", Some(kind)) if query.get("watch").map(String::as_str) == Some("true") => {
                watch(reader.get_mut(), inner, kind, &query);
                false
            }
            ("GET", Some(kind)) => list(reader.get_mut(), inner, kind, &query),
            _ => respond(
                reader.get_mut(),
                "404 Not Found",
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": format!("{method} {path}: not served by the fake")}),
            ),
        };
        if !keep_open {
            return;
        }
    }
}

fn respond(stream: &mut impl Write, status: &str, body: &Value) -> bool {
    let body = serde_json::to_vec(body).expect("json");
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).is_ok()
        && stream.write_all(&body).is_ok()
        && stream.flush().is_ok()
}

fn list(
    stream: &mut impl Write,
    inner: &Inner,
    kind: Kind,
    query: &BTreeMap<String, String>,
) -> bool {
    let selector = Selector::parse(query.get("labelSelector").map_or("", String::as_str));
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0);
    let mut state = inner.lock();
    // A continued list is served from the snapshot its first page was taken from.
    let (version, mut items) = match query.get("continue").filter(|t| !t.is_empty()) {
        Some(token) => match state.pages.remove(token) {
            Some(rest) => rest,
            None => {
                drop(state);
                let expired = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired", "message": "the continue token is no longer valid"});
                return respond(stream, "410 Gone", &expired);
            }
        },
        None => {
            let items = state
                .objects
                .iter()
                .filter(|((k, _, _), object)| *k == kind && selector.matches(object))
                .map(|(_, object)| object.clone())
                .collect();
            (state.version, items)
        }
    };
    let mut metadata = json!({ "resourceVersion": version.to_string() });
    if let Some(limit) = limit.filter(|&l| items.len() > l) {
        let rest = items.split_off(limit);
        let token = format!("{version}-{}", state.requests.len());
        state.pages.insert(token.clone(), (version, rest));
        metadata["continue"] = json!(token);
    }
    drop(state);
    let (api_version, list_kind) = kind.list_kind();
    let body = json!({
        "apiVersion": api_version,
        "kind": list_kind,
        "metadata": metadata,
        "items": items,
    });
    respond(stream, "200 OK", &body)
}

fn chunk(stream: &mut impl Write, event: &Value) -> bool {
    let mut line = serde_json::to_vec(event).expect("json");
    line.push(b'\n');
    let head = format!("{:x}\r\n", line.len());
    stream.write_all(head.as_bytes()).is_ok()
        && stream.write_all(&line).is_ok()
        && stream.write_all(b"\r\n").is_ok()
        && stream.flush().is_ok()
}

fn gone(since: u64, oldest: u64) -> Value {
    json!({
        "type": "ERROR",
        "object": {
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410,
            "message": format!("too old resource version: {since} ({oldest})"),
        }
    })
}

fn watch(stream: &mut impl Write, inner: &Inner, kind: Kind, query: &BTreeMap<String, String>) {
    let selector = Selector::parse(query.get("labelSelector").map_or("", String::as_str));
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let deadline = Instant::now() + timeout;
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut state = inner.lock();
    // "" or "0": the current state first, as ADDED events, then what follows.
    let mut since: u64 = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => {
            let current: Vec<Value> = state
                .objects
                .iter()
                .filter(|((k, _, _), object)| *k == kind && selector.matches(object))
                .map(|(_, object)| json!({ "type": "ADDED", "object": object }))
                .collect();
            let version = state.version;
            drop(state);
            for event in &current {
                if !chunk(stream, event) {
                    return;
                }
            }
            state = inner.lock();
            version
        }
        Some(v) => v.parse().unwrap_or(0),
    };
    let expiries = state.expiries;
    if since < state.oldest {
        let oldest = state.oldest;
        drop(state);
        chunk(stream, &gone(since, oldest));
        let _ = stream.write_all(b"0\r\n\r\n");
        return;
    }
    loop {
        if inner.stopped.load(Ordering::SeqCst) {
            return;
        }
        if state.expiries != expiries {
            let oldest = state.oldest;
            drop(state);
            chunk(stream, &gone(since, oldest));
            let _ = stream.write_all(b"0\r\n\r\n");
            return;
        }
        let start = state.history.partition_point(|c| c.version <= since);
        let events: Vec<Value> = state.history[start..]
            .iter()
            .filter(|c| c.kind == kind)
            .filter_map(|c| c.event(&selector))
            .collect();
        since = state.version;
        if !events.is_empty() {
            drop(state);
            for event in &events {
                if !chunk(stream, event) {
                    return;
                }
            }
            state = inner.lock();
            continue;
        }
        let now = Instant::now();
        if now >= deadline {
            drop(state);
            let _ = stream.write_all(b"0\r\n\r\n");
            return;
        }
        let wait = (deadline - now).min(Duration::from_millis(200));
        state = inner
            .changed
            .wait_timeout(state, wait)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// One term of a label selector.
enum Term {
    Exists(String),
    Absent(String),
    Equals(String, String),
    Differs(String, String),
}

/// A label selector of `key`, `!key`, `key=value` (or `==`) and `key!=value` terms, all of
/// which must hold.
struct Selector(Vec<Term>);

impl Selector {
    fn parse(text: &str) -> Selector {
        Selector(
            text.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|term| {
                    if let Some((key, value)) = term.split_once("!=") {
                        Term::Differs(key.into(), value.into())
                    } else if let Some((key, value)) = term.split_once('=') {
                        Term::Equals(key.into(), value.trim_start_matches('=').into())
                    } else if let Some(key) = term.strip_prefix('!') {
                        Term::Absent(key.into())
                    } else {
                        Term::Exists(term.into())
                    }
                })
                .collect(),
        )
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        self.0.iter().all(|term| match term {
            Term::Exists(key) => label(key).is_some(),
            Term::Absent(key) => label(key).is_none(),
            Term::Equals(key, value) => label(key) == Some(value.as_str()),
            Term::Differs(key, value) => label(key) != Some(value.as_str()),
        })
    }
}

/// A CA of the fake's own and a server certificate for 127.0.0.1 it signed.
struct Tls {
    config: Arc<rustls::ServerConfig>,
    ca_pem: String,
}

impl Tls {
    fn new() -> Tls {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "weft test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("server key");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("server");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .expect("server TLS config");
        Tls {
            config: Arc::new(config),
            ca_pem: ca.pem(),
        }
    }
}

/// Standard base64, for the kubeconfig's certificate data.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads_as_the_standard_says() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn selectors_match_as_the_api_servers_do() {
        let object = json!({ "metadata": { "labels": { "a": "1", "b": "2" } } });
        for (selector, matches) in [
            ("a", true),
            ("!a", false),
            ("!c", true),
            ("a=1", true),
            ("a==1", true),
            ("a!=1", false),
            ("c!=1", true),
            ("a,!c,b=2", true),
            ("a,b=3", false),
        ] {
            assert_eq!(
                Selector::parse(selector).matches(&object),
                matches,
                "{selector}"
            );
        }
    }
}
