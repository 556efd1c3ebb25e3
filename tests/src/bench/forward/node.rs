//! One contender's forwarding world: a node namespace between a client namespace and two
//! endpoint namespaces (the topology of the TC tests), the same HTTP backend and bulk sink
//! at each endpoint, and the contender's own translation on the node: none (routing),
//! weft's TC programs (an agent with `--tc-interface`), or kube-proxy's rules at
//! PREROUTING. Dropping a node removes all of it, also when the bench fails: the agent
//! (with its pins and TC links) first, then the backends, then the namespaces.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use super::{
    bulk::{self, Sink, Stream},
    offloads::Offloads,
};
use crate::{
    Agent, Cgroup, NetNs,
    bench::{
        config_dir,
        lab::run_with_input,
        load::{self, Backend, Sample},
        rules::{Hook, SERVICE_PORT, Services},
    },
    tc::topology::{CLIENT_SIDE, Topology, endpoint_address},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Forwarder {
    Routing,
    WeftTc,
    Nftables,
    Iptables,
}

impl Forwarder {
    pub const ALL: [Forwarder; 4] = [
        Forwarder::Routing,
        Forwarder::WeftTc,
        Forwarder::Nftables,
        Forwarder::Iptables,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Forwarder::Routing => "routing",
            Forwarder::WeftTc => "weft TC",
            Forwarder::Nftables => "nftables",
            Forwarder::Iptables => "iptables",
        }
    }

    /// Its namespaces' names: `wbf-` keeps them apart from the tests' (`tc-...`).
    fn namespace(self) -> String {
        let short = match self {
            Forwarder::Routing => "route",
            Forwarder::WeftTc => "tc",
            Forwarder::Nftables => "nft",
            Forwarder::Iptables => "ipt",
        };
        format!("wbf-{short}")
    }
}

/// Service addresses: the same in every node, each node being a world of its own.
const BASE: [u8; 2] = [10, 96];
const HTTP_PORT: u16 = 8080;
/// The bulk sink's port, at the endpoints and as the measured service's second port.
const BULK_PORT: u16 = 5201;
/// Services per file of the agent's config directory, as in the socket bench.
const PER_FILE: usize = 1_000;
/// Service chains per `nft -f` run (see `Services::nft_batches`).
const NFT_BATCH: usize = 5_000;
/// How long a freshly programmed node may take to serve both endpoints.
const READY: Duration = Duration::from_secs(10);

pub struct Node {
    pub kind: Forwarder,
    /// weft TC only: its agent, attached to `cgroup`, which no client ever joins.
    agent: Option<Agent>,
    backends: Vec<Backend>,
    sinks: Vec<Sink>,
    topology: Topology,
    netns: NetNs,
    cgroup: Option<Cgroup>,
    services: Services,
}

fn endpoint_v4(i: usize) -> Ipv4Addr {
    match endpoint_address(i, false) {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => unreachable!("an IPv4 endpoint address"),
    }
}

fn services(count: usize) -> Services {
    Services {
        count,
        endpoints_each: 10,
        real_backends: (0..2).map(|i| (endpoint_v4(i), HTTP_PORT)).collect(),
        second_port: Some((BULK_PORT, BULK_PORT)),
    }
}

impl Node {
    /// The namespaces, backends and sinks; for weft TC, the agent on an empty config
    /// directory with its TC programs on the node's client-side interface.
    pub fn build(kind: Forwarder) -> Node {
        let name = kind.namespace();
        let netns = NetNs::create(&format!("{name}-n"));
        let topology = Topology::build(&name, &netns, 2);
        let mut node = Node {
            kind,
            agent: None,
            backends: Vec::new(),
            sinks: Vec::new(),
            topology,
            netns,
            cgroup: None,
            services: services(1),
        };
        for (i, endpoint) in node.topology.endpoints.iter().enumerate() {
            let address = endpoint_v4(i);
            let (backend, sink) = endpoint.run(move || {
                (
                    Backend::start(SocketAddr::from((address, HTTP_PORT)), ["a", "b"][i]),
                    Sink::start(SocketAddr::from((address, BULK_PORT))),
                )
            });
            node.backends.push(backend);
            node.sinks.push(sink);
        }
        if kind == Forwarder::WeftTc {
            node.start_agent();
        }
        node
    }

    fn start_agent(&mut self) {
        let cgroup = Cgroup::create(&self.kind.namespace());
        let mut agent = Agent::prepare(&self.netns, &cgroup, |dir| {
            let config = dir.join("conf.d");
            std::fs::create_dir_all(&config).expect("creating the agent's config directory");
            config
        });
        agent.tc_interfaces = vec![CLIENT_SIDE.to_string()];
        agent.spawn();
        agent.wait_for_log(0, "config applied", Duration::from_secs(60));
        self.agent = Some(agent);
        self.cgroup = Some(cgroup);
    }

    /// Programs `scale` services (10 endpoints each but the measured one) on the node and
    /// returns how long it took (not compared: the socket bench times programming).
    pub fn install(&mut self, scale: usize) -> Duration {
        self.services = services(scale);
        let s = &self.services;
        // The rule text is made before any clock starts, as in the socket bench.
        match self.kind {
            Forwarder::Routing => Duration::ZERO,
            Forwarder::WeftTc => {
                let agent = self.agent.as_ref().expect("weft TC has an agent");
                let files = s.weft_files(BASE, PER_FILE);
                config_dir::install(agent, &files, s.frontend_count()).to_kernel
            }
            Forwarder::Nftables => {
                let batches = s.nft_batches(BASE, Hook::Prerouting, NFT_BATCH);
                let started = Instant::now();
                for batch in &batches {
                    run_with_input(&self.netns, &["nft", "-f", "-"], batch);
                }
                started.elapsed()
            }
            Forwarder::Iptables => {
                let rules = s.iptables_restore(BASE, Hook::Prerouting);
                let started = Instant::now();
                run_with_input(&self.netns, &["iptables-restore"], &rules);
                started.elapsed()
            }
        }
    }

    /// Where the client's short connections go: the measured service, or for routing the
    /// endpoints themselves, each connection to one chosen at random. A backend answers one
    /// connection at a time, so two clients on one backend wait for each other: spread as
    /// a random balancer spreads them, routing meets that as often as the balancers do
    /// (a worker per endpoint would never meet it, and doubled routing's rate here).
    fn http_targets(&self) -> Vec<SocketAddr> {
        match self.kind {
            Forwarder::Routing => (0..2)
                .map(|i| SocketAddr::from((endpoint_v4(i), HTTP_PORT)))
                .collect(),
            _ => vec![SocketAddr::from((self.vip(), SERVICE_PORT))],
        }
    }

    /// Where the bulk stream goes: the measured service's second port, or an endpoint.
    fn bulk_target(&self) -> SocketAddr {
        match self.kind {
            Forwarder::Routing => SocketAddr::from((endpoint_v4(0), BULK_PORT)),
            _ => SocketAddr::from((self.vip(), BULK_PORT)),
        }
    }

    fn vip(&self) -> Ipv4Addr {
        Services::address(BASE, self.services.measured_index())
    }

    /// Waits until clients reach both endpoints and a short stream gets through: from then
    /// on every failure counts.
    pub fn wait_ready(&self) {
        let targets = self.http_targets();
        let stream_to = self.bulk_target();
        let what = self.kind.name();
        let (seen, stream) = self.topology.client.run(move || {
            let seen = reach_both(&targets);
            (
                seen,
                bulk::stream(stream_to, Duration::from_millis(50), 1 << 20),
            )
        });
        assert_eq!(
            seen.len(),
            2,
            "{what}: clients reached only {seen:?} within {READY:?}"
        );
        if let Some(error) = stream.error {
            panic!("{what}: a first bulk stream failed: {error}");
        }
    }

    /// Short connections for `duration` from the client namespace, outside any cgroup
    /// the agent hooks: only the node can translate them.
    pub fn short(&self, workers: usize, duration: Duration) -> Sample {
        let targets = self.http_targets();
        self.topology
            .client
            .run(move || load::drive_over(&targets, workers, duration))
    }

    /// One bulk stream from the client namespace.
    pub fn bulk(&self, duration: Duration, max_bytes: u64) -> Stream {
        let target = self.bulk_target();
        self.topology
            .client
            .run(move || bulk::stream(target, duration, max_bytes))
    }

    pub fn offloads(&self) -> Offloads {
        Offloads::of(&self.netns, &self.topology)
    }
}

/// The backends' names answering through `targets` (round robin), until both answered or
/// `READY` is over.
fn reach_both(targets: &[SocketAddr]) -> BTreeSet<String> {
    let deadline = Instant::now() + READY;
    let mut seen = BTreeSet::new();
    for target in targets.iter().cycle() {
        if seen.len() == 2 || Instant::now() >= deadline {
            break;
        }
        match load::one_request_named(*target) {
            Ok(name) => {
                seen.insert(name);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    seen
}
