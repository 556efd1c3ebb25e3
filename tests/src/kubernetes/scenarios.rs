//! The Kubernetes scenarios: each creates its backends and objects, runs the real agent with
//! `--kubernetes` against a `Cluster` (the fake API server in every test run, a real cluster
//! in the opt-in suite) and drives real connects to the Service's cluster IP, checking what
//! the kernel's tables hold and what clients reach.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{Cluster, Kind};
use crate::{
    Env,
    agent::{Agent, KubernetesSource},
    bpf, client, metrics,
};

/// The node the agent says it runs on.
pub const NODE: &str = "weft-test-node";
/// Backends by name, on the test namespace's loopback, at addresses a real cluster also
/// accepts in an EndpointSlice (not loopback ones).
const BACKENDS: [(&str, &str); 3] = [
    ("a", "10.244.1.2"),
    ("b", "10.244.1.3"),
    ("c", "10.244.1.4"),
];
const TARGET_PORT: u16 = 8080;

/// An endpoint's conditions in an EndpointSlice.
#[derive(Clone, Copy)]
pub enum Condition {
    Ready,
    /// Neither ready nor serving (a failing readiness probe).
    Unready,
    /// Shutting down but still serving (graceful termination).
    Terminating,
}

fn address_of(name: &str) -> &'static str {
    BACKENDS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, ip)| *ip)
        .unwrap_or_else(|| panic!("no backend {name}"))
}

/// Starts backends a, b and c, each answering with its name.
pub fn start_backends(env: &mut Env) {
    for (name, ip) in BACKENDS {
        env.netns
            .ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
        env.backends
            .tcp(&env.netns, &format!("{ip}:{TARGET_PORT}"), name);
    }
}

/// A Service without a selector (the test writes its EndpointSlices), port `http` 80.
pub fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name },
        "spec": {
            "type": "ClusterIP",
            "ports": [{ "name": "http", "port": 80, "protocol": "TCP", "targetPort": TARGET_PORT }]
        }
    })
}

/// An EndpointSlice of `service` holding `endpoints` (backend name, conditions, node).
pub fn slice(
    name: &str,
    service: &str,
    endpoints: &[(&str, Condition)],
    weight: Option<u16>,
) -> Value {
    slice_on_nodes(
        name,
        service,
        &endpoints
            .iter()
            .map(|&(n, c)| (n, c, "elsewhere"))
            .collect::<Vec<_>>(),
        weight,
    )
}

fn slice_on_nodes(
    name: &str,
    service: &str,
    endpoints: &[(&str, Condition, &str)],
    weight: Option<u16>,
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|&(backend, condition, node)| {
            let (ready, serving, terminating) = match condition {
                Condition::Ready => (true, true, false),
                Condition::Unready => (false, false, false),
                Condition::Terminating => (false, true, true),
            };
            json!({
                "addresses": [address_of(backend)],
                "conditions": { "ready": ready, "serving": serving, "terminating": terminating },
                "nodeName": node
            })
        })
        .collect();
    let mut annotations = serde_json::Map::new();
    if let Some(weight) = weight {
        annotations.insert("weft.io/weight".into(), weight.to_string().into());
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/service-name": service,
                // The cluster's own controllers leave it alone.
                "endpointslice.kubernetes.io/managed-by": "weft-tests"
            },
            "annotations": annotations
        },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": TARGET_PORT, "protocol": "TCP" }],
        "endpoints": endpoints
    })
}

/// The cluster IP and port of a Service as the API server stored it.
pub fn frontend(stored: &Value) -> SocketAddr {
    let ip: IpAddr = stored["spec"]["clusterIP"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("no cluster IP in {stored}"));
    SocketAddr::new(ip, 80)
}

/// Starts the agent on the cluster (and on `config`, if given) and waits until it applied
/// its first config; not until it is ready.
pub fn start_agent(env: &mut Env, cluster: &dyn Cluster, config: Option<&str>) {
    let text = config.unwrap_or("services: []\n").to_string();
    let mut agent = Agent::prepare(&env.netns, &env.cgroup, |dir| {
        let path = dir.join("weft.yaml");
        std::fs::write(&path, text).expect("writing config");
        path
    });
    agent.use_config = config.is_some();
    agent.kubernetes = Some(KubernetesSource {
        kubeconfig: cluster.kubeconfig().to_path_buf(),
        node_name: NODE.into(),
    });
    agent.spawn();
    agent.wait_for_log(0, "config applied", Duration::from_secs(60));
    env.agent = Some(agent);
}

/// Polls `/readyz` until it answers `code`; returns its body.
pub fn wait_readyz(env: &Env, code: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = metrics::get(&env.netns, "/readyz");
        if status == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz answered {status} ({body}), not {code}, for {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The backends (by name) of the kernel's table for `frontend`; `None` if the kernel has no
/// such service.
pub fn kernel_backends(env: &Env, frontend: SocketAddr) -> Option<BTreeSet<&'static str>> {
    let IpAddr::V4(ip) = frontend.ip() else {
        panic!("the scenarios use IPv4 cluster IPs");
    };
    // Read until the maps are seen between two writes of the agent.
    let maps = env.agent().bpffs_dir.join("maps");
    let deadline = Instant::now() + Duration::from_secs(5);
    let tables = loop {
        match bpf::try_kernel_tables(&maps) {
            Ok(tables) => break tables,
            Err(why) => assert!(Instant::now() < deadline, "the kernel's maps: {why}"),
        }
    };
    let (_, slots) = tables.tables.iter().find(|(key, _)| {
        key[0..4] == ip.octets() && key[16..18] == frontend.port().to_be_bytes()
    })?;
    Some(
        slots
            .iter()
            .map(|backend| {
                BACKENDS
                    .iter()
                    .find(|(_, address)| {
                        address.parse::<std::net::Ipv4Addr>().unwrap().octets() == backend[0..4]
                    })
                    .map(|(name, _)| *name)
                    .unwrap_or_else(|| panic!("a slot holds an unknown backend {backend:?}"))
            })
            .collect(),
    )
}

/// Waits until the kernel's table for `frontend` holds exactly `want`; returns how long
/// that took (polling every millisecond).
pub fn wait_kernel(env: &Env, frontend: SocketAddr, want: &[&str], limit: Duration) -> Duration {
    let want: BTreeSet<&str> = want.iter().copied().collect();
    let started = Instant::now();
    loop {
        let got = kernel_backends(env, frontend);
        if got.as_ref() == Some(&want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "the kernel's table for {frontend} holds {got:?}, not {want:?}, after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn tally(
    env: &Env,
    frontend: SocketAddr,
    count: usize,
) -> std::collections::BTreeMap<String, usize> {
    env.client(move || client::tally_tcp(frontend, count))
}

/// EndpointSlice changes drive the kernel: the first list, readiness flips (timed), a
/// canary weighed by annotation, graceful termination, `internalTrafficPolicy: Local`, and
/// the Service's deletion.
pub fn slices_drive_the_kernel(env: &mut Env, cluster: &dyn Cluster) {
    start_backends(env);
    let ns = cluster.namespace().to_string();
    let reviews = frontend(&cluster.apply(service("reviews")));
    cluster.apply(slice(
        "reviews-1",
        "reviews",
        &[("a", Condition::Ready), ("b", Condition::Ready)],
        None,
    ));
    start_agent(env, cluster, None);
    wait_readyz(env, 200, Duration::from_secs(30));
    wait_kernel(env, reviews, &["a", "b"], Duration::from_secs(10));
    let seen = tally(env, reviews, 200);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["a", "b"], "{seen:?}");

    // What an operator sees: one service per port, its origin the Service.
    let services = env.agent().cli_json(&["services"]);
    let name = format!("{ns}/reviews:http");
    let shown = services
        .as_array()
        .expect("services array")
        .iter()
        .find(|s| s["name"] == name.as_str())
        .unwrap_or_else(|| panic!("no {name} in {services}"));
    assert_eq!(shown["origin"], format!("{ns}/reviews").as_str(), "{shown}");
    assert_eq!(
        shown["address"],
        reviews.ip().to_string().as_str(),
        "{shown}"
    );
    assert_eq!(shown["port"], 80);
    let endpoints: BTreeSet<String> = shown["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| format!("{}:{}", e["address"].as_str().unwrap(), e["port"]))
        .collect();
    assert_eq!(
        endpoints,
        BTreeSet::from(["10.244.1.2:8080".to_string(), "10.244.1.3:8080".to_string()])
    );

    // Readiness flips, each timed from the API write until the kernel's table changed.
    let mut took = Vec::new();
    for round in 0..6 {
        let b = if round % 2 == 0 {
            Condition::Unready
        } else {
            Condition::Ready
        };
        let want: &[&str] = if round % 2 == 0 { &["a"] } else { &["a", "b"] };
        cluster.apply(slice(
            "reviews-1",
            "reviews",
            &[("a", Condition::Ready), ("b", b)],
            None,
        ));
        // From the write's answer (the API server has it by then): a real cluster's
        // kubectl takes longer to start than the agent takes to follow.
        took.push(wait_kernel(env, reviews, want, Duration::from_secs(10)));
    }
    took.sort();
    let slowest = took[took.len() - 1];
    println!("EndpointSlice update → kernel: {took:?}");
    assert!(
        slowest < Duration::from_millis(100),
        "an EndpointSlice update took {slowest:?} to reach the kernel ({took:?})"
    );

    // A canary: a second slice at three times the weight.
    cluster.apply(slice(
        "reviews-1",
        "reviews",
        &[("a", Condition::Ready), ("b", Condition::Ready)],
        Some(1),
    ));
    cluster.apply(slice(
        "reviews-2",
        "reviews",
        &[("c", Condition::Ready)],
        Some(3),
    ));
    wait_kernel(env, reviews, &["a", "b", "c"], Duration::from_secs(10));
    let seen = tally(env, reviews, 500);
    let c = client::share(&seen, "c");
    println!("canary a:b:c weights 1:1:3 → {seen:?}");
    assert!(
        (50.0..70.0).contains(&c),
        "c should take 3/5 of connects: {seen:?}"
    );

    // No endpoint ready: the one still serving while it terminates takes the traffic.
    cluster.apply(slice(
        "reviews-1",
        "reviews",
        &[("a", Condition::Unready), ("b", Condition::Unready)],
        Some(1),
    ));
    cluster.apply(slice(
        "reviews-2",
        "reviews",
        &[("c", Condition::Terminating)],
        Some(3),
    ));
    wait_kernel(env, reviews, &["c"], Duration::from_secs(10));
    let seen = tally(env, reviews, 50);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["c"], "{seen:?}");
    // Not even that: unready endpoints never get traffic, connects are refused.
    cluster.apply(slice(
        "reviews-2",
        "reviews",
        &[("c", Condition::Unready)],
        Some(3),
    ));
    wait_kernel(env, reviews, &[], Duration::from_secs(10));
    let refused = env.client(move || client::connect_error_kind(reviews));
    assert_eq!(refused, std::io::ErrorKind::ConnectionRefused);

    // internalTrafficPolicy: Local keeps only this node's endpoints.
    let mut local = service("local");
    local["spec"]["internalTrafficPolicy"] = json!("Local");
    let local = frontend(&cluster.apply(local));
    cluster.apply(slice_on_nodes(
        "local-1",
        "local",
        &[
            ("a", Condition::Ready, "elsewhere"),
            ("b", Condition::Ready, NODE),
        ],
        None,
    ));
    wait_kernel(env, local, &["b"], Duration::from_secs(10));
    // Claimed by another proxy (the label kube-proxy also honours): weft lets go of it.
    let mut claimed = service("local");
    claimed["spec"]["internalTrafficPolicy"] = json!("Local");
    claimed["metadata"]["labels"] =
        json!({ "service.kubernetes.io/service-proxy-name": "another" });
    cluster.apply(claimed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while kernel_backends(env, local).is_some() {
        assert!(
            Instant::now() < deadline,
            "{local} still in the kernel after another proxy claimed it"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // The Service goes: so does its table.
    cluster.delete(Kind::Service, "reviews");
    let deadline = Instant::now() + Duration::from_secs(10);
    while kernel_backends(env, reviews).is_some() {
        assert!(Instant::now() < deadline, "{reviews} still in the kernel");
        std::thread::sleep(Duration::from_millis(5));
    }
    let services = env.agent().cli_json(&["services"]).to_string();
    assert!(!services.contains(&name), "{name} still shown: {services}");
}

/// The API server goes away for 10 s under load: no connect fails, the agent stays ready;
/// a change made meanwhile arrives once it is back (through a relist where the cluster can
/// force one), and only the Service that changed is written.
pub fn api_server_gone_keeps_traffic_flowing(env: &mut Env, cluster: &mut dyn Cluster) {
    start_backends(env);
    let reviews = frontend(&cluster.apply(service("reviews")));
    cluster.apply(slice(
        "reviews-1",
        "reviews",
        &[("a", Condition::Ready), ("b", Condition::Ready)],
        None,
    ));
    let ratings = frontend(&cluster.apply(service("ratings")));
    cluster.apply(slice(
        "ratings-1",
        "ratings",
        &[("c", Condition::Ready)],
        None,
    ));
    start_agent(env, cluster, None);
    wait_readyz(env, 200, Duration::from_secs(30));
    wait_kernel(env, reviews, &["a", "b"], Duration::from_secs(10));
    wait_kernel(env, ratings, &["c"], Duration::from_secs(10));

    let load = env.load(reviews, Duration::from_secs(90));
    cluster.cut();
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        metrics::get(&env.netns, "/readyz").0,
        200,
        "an agent that synced once stays ready without its API server"
    );
    // Meanwhile b stops being ready.
    cluster.apply(slice(
        "reviews-1",
        "reviews",
        &[("a", Condition::Ready), ("b", Condition::Unready)],
        None,
    ));
    let relists = cluster.expire();
    let requests_before = cluster.requests().map_or(0, |r| r.len());
    let mark = env.agent().log_mark();
    cluster.restore(&env.netns);
    let took = wait_kernel(env, reviews, &["a"], Duration::from_secs(60));
    println!("the change made while the API server was away arrived {took:?} after it came back");
    let outcome = load.finish();
    println!(
        "API server away 10 s: {} connects, {} failed",
        outcome.ok,
        outcome.failures.len()
    );
    assert!(
        outcome.failures.is_empty(),
        "connects failed: {:?}",
        &outcome.failures[..outcome.failures.len().min(5)]
    );
    assert!(outcome.ok > 500, "only {} connects made", outcome.ok);
    assert_eq!(kernel_backends(env, ratings), Some(BTreeSet::from(["c"])));
    let log = env.agent().log_text();
    assert!(
        log.contains("watching the Kubernetes API failed"),
        "the lost API server is not in the log"
    );
    if relists {
        let requests = cluster.requests().expect("the fake knows its requests");
        let relisted = requests[requests_before..].iter().any(|r| {
            r.starts_with("GET /apis/discovery.k8s.io/v1/endpointslices?")
                && !r.contains("watch=true")
        });
        assert!(
            relisted,
            "no relist after 410 Gone: {:?}",
            &requests[requests_before..]
        );
        // The relist changed one Service: one written, nothing flushed and rewritten.
        let applied = &log[mark..];
        let line = applied
            .lines()
            .find(|l| l.contains("config applied") && !l.contains("\"changed\":0"))
            .unwrap_or_else(|| panic!("no apply after the API server came back:\n{applied}"));
        assert!(
            line.contains("\"changed\":1") && line.contains("\"written\":1"),
            "the relist rewrote more than the changed Service: {line}"
        );
    }
}

/// The API server cannot be reached when the agent starts: the agent starts anyway, what
/// an earlier agent pinned keeps serving, nothing is removed, and it is not ready until
/// the first full list.
pub fn unreachable_at_start(env: &mut Env, cluster: &mut dyn Cluster) {
    start_backends(env);
    let reviews = frontend(&cluster.apply(service("reviews")));
    cluster.apply(slice(
        "reviews-1",
        "reviews",
        &[("a", Condition::Ready), ("b", Condition::Ready)],
        None,
    ));
    start_agent(env, cluster, None);
    wait_readyz(env, 200, Duration::from_secs(30));
    wait_kernel(env, reviews, &["a", "b"], Duration::from_secs(10));
    let status = env.agent_mut().signal(libc::SIGTERM);
    assert!(status.success(), "agent exit: {status}");

    cluster.cut();
    cluster.apply(slice(
        "reviews-1",
        "reviews",
        &[("a", Condition::Ready), ("b", Condition::Unready)],
        None,
    ));
    let mark = env.agent().log_mark();
    env.agent_mut().spawn();
    env.agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(30));
    let body = wait_readyz(env, 503, Duration::from_secs(5));
    assert!(body.contains("not synced"), "/readyz: {body}");
    // The pinned state serves, and stays (no stray removal before the first list).
    let seen = tally(env, reviews, 100);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["a", "b"], "{seen:?}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        kernel_backends(env, reviews),
        Some(BTreeSet::from(["a", "b"]))
    );

    cluster.restore(&env.netns);
    wait_readyz(env, 200, Duration::from_secs(60));
    wait_kernel(env, reviews, &["a"], Duration::from_secs(10));
    assert!(
        env.agent().log_text()[mark..].contains("watching the Kubernetes API failed"),
        "the unreachable API server is not in the log"
    );
}

/// A service name defined by a file and by a Service: an error naming both origins; the
/// file's definition (there first) serves, the rest serves too, and the Service's takes
/// over once the file lets go of the name.
pub fn file_and_kubernetes_conflict(env: &mut Env, cluster: &dyn Cluster) {
    start_backends(env);
    let ns = cluster.namespace().to_string();
    let reviews = frontend(&cluster.apply(service("reviews")));
    cluster.apply(slice(
        "reviews-1",
        "reviews",
        &[("a", Condition::Ready)],
        None,
    ));
    let name = format!("{ns}/reviews:http");
    let both = format!(
        "services:
  - name: {name}
    address: 198.18.0.99
    port: 80
    health: {{ kind: none }}
    endpoints: [ {{ address: 10.244.1.3, port: 8080 }} ]
  - name: web
    address: 198.18.0.98
    port: 80
    health: {{ kind: none }}
    endpoints: [ {{ address: 10.244.1.4, port: 8080 }} ]
"
    );
    start_agent(env, cluster, Some(&both));
    wait_readyz(env, 200, Duration::from_secs(30));
    let config = env.agent().config.display().to_string();
    let log = env.agent().log_text();
    let error = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains(&name))
        .unwrap_or_else(|| panic!("no error about {name}:\n{log}"));
    assert!(
        error.contains(&config) && error.contains(&format!("{ns}/reviews")),
        "the error must name both origins: {error}"
    );
    let conflicts = env.agent().cli_json(&["status"])["conflicts"].to_string();
    assert!(conflicts.contains(&name), "status conflicts: {conflicts}");

    let from_file: SocketAddr = "198.18.0.99:80".parse().unwrap();
    let web: SocketAddr = "198.18.0.98:80".parse().unwrap();
    assert_eq!(tally(env, from_file, 20).keys().collect::<Vec<_>>(), ["b"]);
    assert_eq!(tally(env, web, 20).keys().collect::<Vec<_>>(), ["c"]);
    assert_eq!(
        kernel_backends(env, reviews),
        None,
        "the Service's definition waits"
    );

    // The file lets go of the name: the Service's definition takes it.
    env.agent().write_config(
        "services:
  - name: web
    address: 198.18.0.98
    port: 80
    health: { kind: none }
    endpoints: [ { address: 10.244.1.4, port: 8080 } ]
",
    );
    wait_kernel(env, reviews, &["a"], Duration::from_secs(10));
    assert_eq!(tally(env, reviews, 20).keys().collect::<Vec<_>>(), ["a"]);
}
