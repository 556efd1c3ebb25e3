//! weft's Kubernetes source at scale: an agent with `--kubernetes` against the fake API
//! server (list/watch over HTTP in a network namespace of its own) holding `many` Services,
//! each with one EndpointSlice of 10 ready endpoints. Measured: the first sync (agent start
//! → every Service in the kernel), one EndpointSlice changing (API write → the agent's log
//! line after its map writes, and the agent's own apply time), and the agent's footprint.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{
    applies::{Apply, CONFIG_APPLIED, LogCursor, elapsed_ms},
    lab::{Footprint, footprint},
};
use crate::{
    Cgroup, NetNs,
    agent::{Agent, KubernetesSource},
    kubernetes::FakeApiServer,
};

const ENDPOINTS: u8 = 10;

/// What the Kubernetes measurement found.
#[derive(Clone, Debug, Default)]
pub struct KubernetesBench {
    pub services: usize,
    /// Agent start → the apply that leaves every Service in force.
    pub sync: Duration,
    /// The agent's own time for the applies of the sync.
    pub sync_applies: Vec<Apply>,
    /// Per change: API write → the agent logged the apply, and that apply.
    pub changes: Vec<(Duration, Apply)>,
    pub footprint: Option<Footprint>,
}

impl KubernetesBench {
    pub fn sync_apply_ms(&self) -> f64 {
        elapsed_ms(&self.sync_applies)
    }

    /// Median time from the API write to the kernel, and median agent apply time.
    pub fn change_medians(&self) -> Option<(Duration, f64)> {
        if self.changes.is_empty() {
            return None;
        }
        let mut totals: Vec<Duration> = self.changes.iter().map(|(t, _)| *t).collect();
        totals.sort();
        let mut applies: Vec<f64> = self.changes.iter().map(|(_, a)| a.elapsed_ms).collect();
        applies.sort_by(f64::total_cmp);
        Some((totals[totals.len() / 2], applies[applies.len() / 2]))
    }
}

fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, (i >> 8) as u8, (i & 0xff) as u8)
}

fn service(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "namespace": "bench", "name": format!("svc-{i}") },
        "spec": {
            "type": "ClusterIP", "clusterIP": cluster_ip(i).to_string(),
            "ports": [{ "name": "http", "port": 80, "protocol": "TCP" }]
        }
    })
}

/// Service `i`'s slice: 10 endpoints, the first one ready or not.
fn slice(i: usize, first_ready: bool) -> Value {
    let endpoints: Vec<Value> = (0..ENDPOINTS)
        .map(|e| {
            let ready = e != 0 || first_ready;
            json!({
                "addresses": [Ipv4Addr::new(10, 128 + e, (i >> 8) as u8, i as u8).to_string()],
                "conditions": { "ready": ready },
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "namespace": "bench", "name": format!("svc-{i}-x"),
            "labels": { "kubernetes.io/service-name": format!("svc-{i}") }
        },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        "endpoints": endpoints
    })
}

/// Runs the measurement with `many` Services and `rounds` slice changes; `idle` is the
/// footprint's window.
pub fn measure(many: usize, rounds: usize, idle: Duration) -> KubernetesBench {
    let netns = NetNs::create("bench-k8s");
    let cgroup = Cgroup::create("bench-k8s");
    let api = FakeApiServer::start(&netns);
    for i in 0..many {
        api.apply(service(i));
        api.apply(slice(i, true));
    }
    let mut agent = Agent::prepare(&netns, &cgroup, |dir| {
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        kubeconfig
    });
    agent.use_config = false;
    agent.kubernetes = Some(KubernetesSource {
        kubeconfig: agent.config.clone(),
        node_name: "bench-node".into(),
    });
    let mut log = LogCursor::at_end(&agent);
    let started = Instant::now();
    agent.spawn();
    let sync_applies = log.applies_until(CONFIG_APPLIED, many as u64);
    let sync = started.elapsed();
    // The measured Service is in the middle of the address range.
    let measured = many / 2;
    let mut changes = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let written = Instant::now();
        api.apply(slice(measured, round % 2 == 1));
        let apply = log.next_apply(CONFIG_APPLIED);
        changes.push((written.elapsed(), apply));
        // Apart, as a cluster's changes to one Service are.
        std::thread::sleep(Duration::from_millis(20));
    }
    let footprint = footprint(agent.pid(), idle);
    drop(agent);
    KubernetesBench {
        services: many,
        sync,
        sync_applies,
        changes,
        footprint: Some(footprint),
    }
}
