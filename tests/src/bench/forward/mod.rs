//! Forwarded traffic: weft's TC path against plain routing and kube-proxy's nftables and
//! iptables shapes at the prerouting hook, for clients whose connections cross a node (see
//! `node` for the topology). Short connections with the socket bench's load generator, and
//! bulk streams; contenders alternate within each round.

mod bulk;
mod node;
mod offloads;
mod report;

use std::time::{Duration, Instant};

pub use node::Forwarder;
use node::Node;
pub use report::Forwarded;

/// How long and how often.
pub struct Plan {
    pub rounds: usize,
    /// Short connections per contender and round.
    pub duration: Duration,
    /// One bulk stream per contender and round.
    pub stream: Duration,
    /// A bulk stream's bound in bytes, should a path be faster than expected.
    pub max_stream_bytes: u64,
    pub workers: usize,
    /// Services installed for the second set of rounds.
    pub many: usize,
}

pub fn measure(plan: &Plan) -> Forwarded {
    let started = Instant::now();
    let mut results = Forwarded::new(plan);
    for scale in [1, plan.many] {
        // Fresh namespaces per scale: the endpoints' TIME_WAIT sockets from connections to
        // the first scale's service address would turn away SYNs to the next one (another
        // address, so other sequence numbers and timestamps) until they expire.
        eprintln!("bench: forwarded: building a node, a client and two endpoints per contender");
        let mut nodes = build_all();
        results.offloads = same_offloads(&nodes);
        for node in &mut nodes {
            let took = node.install(scale);
            eprintln!(
                "bench: forwarded: {} programmed with {scale} service(s) in {took:?}",
                node.kind.name()
            );
            results.installs.insert((scale, node.kind), took);
        }
        for node in &nodes {
            node.wait_ready();
        }
        // A B C D, B C D A, ...: drift on this shared machine hits every contender alike,
        // and whatever one contender's stream leaves behind (socket memory, softirq
        // backlog) does not always fall on the same next one.
        for round in 0..plan.rounds {
            for k in 0..nodes.len() {
                let node = &nodes[(round + k) % nodes.len()];
                let sample = node.short(plan.workers, plan.duration);
                let stream = node.bulk(plan.stream, plan.max_stream_bytes);
                eprintln!(
                    "bench: forwarded, {scale:>5} services, round {round}, {:<8} {:>8.0} conn/s  p50 {:>5.0} µs  p99 {:>6.0} µs  failed {}  bulk {:>5.1} Gbit/s{}",
                    node.kind.name(),
                    sample.per_second,
                    sample.p50_us,
                    sample.p99_us,
                    sample.failures,
                    stream.gbit_per_s(),
                    stream
                        .error
                        .as_deref()
                        .map_or(String::new(), |e| format!(" (failed: {e})"))
                );
                results.add(scale, node.kind, sample, stream);
            }
        }
    }
    results.elapsed = started.elapsed();
    eprintln!(
        "bench: forwarded section took {:.1} s",
        results.elapsed.as_secs_f64()
    );
    results
}

/// Every contender's node, built in parallel (each waits for its IPv6 addresses to leave
/// duplicate address detection). A node that fails to build panics here once all are done;
/// the others are removed as the panic unwinds.
fn build_all() -> Vec<Node> {
    let built: Vec<std::thread::Result<Node>> = std::thread::scope(|scope| {
        let handles: Vec<_> = Forwarder::ALL
            .map(|kind| scope.spawn(move || Node::build(kind)))
            .into_iter()
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut nodes = Vec::new();
    for node in built {
        match node {
            Ok(node) => nodes.push(node),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    nodes
}

/// Checks that every contender's interfaces have the same offloads as the first's, and
/// returns them in a few words.
fn same_offloads(nodes: &[Node]) -> String {
    let first = nodes[0].offloads();
    for node in &nodes[1..] {
        let differences = node.offloads().differences(&first);
        assert!(
            differences.is_empty(),
            "{}'s interfaces differ from {}'s: {differences:?}",
            node.kind.name(),
            nodes[0].kind.name()
        );
    }
    first.summary()
}
