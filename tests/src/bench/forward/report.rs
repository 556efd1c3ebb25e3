//! The forwarded section's numbers and how the report shows them: medians per contender and
//! scale, ratios to routing and to nftables (paired round by round), bulk throughput.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use super::{Plan, bulk::Stream, node::Forwarder};
use crate::bench::{
    load::Sample,
    report::{Summary, median, paired, paired_ratio, summarize, target_row},
};

pub struct Forwarded {
    pub many: usize,
    rounds: usize,
    duration: Duration,
    stream: Duration,
    max_stream_bytes: u64,
    workers: usize,
    short: BTreeMap<(usize, Forwarder), Vec<Sample>>,
    streams: BTreeMap<(usize, Forwarder), Vec<Stream>>,
    /// How long programming each node took, per scale.
    pub installs: BTreeMap<(usize, Forwarder), Duration>,
    /// The offloads every contender's interfaces share, in a few words.
    pub offloads: String,
    /// The whole section, building and removing the namespaces included.
    pub elapsed: Duration,
}

impl Forwarded {
    pub fn new(plan: &Plan) -> Forwarded {
        Forwarded {
            many: plan.many,
            rounds: plan.rounds,
            duration: plan.duration,
            stream: plan.stream,
            max_stream_bytes: plan.max_stream_bytes,
            workers: plan.workers,
            short: BTreeMap::new(),
            streams: BTreeMap::new(),
            installs: BTreeMap::new(),
            offloads: String::new(),
            elapsed: Duration::ZERO,
        }
    }

    pub fn add(&mut self, scale: usize, kind: Forwarder, sample: Sample, stream: Stream) {
        self.short.entry((scale, kind)).or_default().push(sample);
        self.streams.entry((scale, kind)).or_default().push(stream);
    }

    pub fn summary(&self, scale: usize, kind: Forwarder) -> Option<Summary> {
        summarize(self.short.get(&(scale, kind))?)
    }

    /// Connection rate over `baseline`'s, paired round by round.
    pub fn ratio(&self, scale: usize, kind: Forwarder, baseline: Forwarder) -> Option<f64> {
        paired_ratio(
            self.short.get(&(scale, kind))?,
            self.short.get(&(scale, baseline))?,
        )
    }

    /// Gbit/s of each round's stream (0 for a failed one).
    fn gbits(&self, scale: usize, kind: Forwarder) -> Vec<f64> {
        self.streams
            .get(&(scale, kind))
            .map(|streams| streams.iter().map(Stream::gbit_per_s).collect())
            .unwrap_or_default()
    }

    /// Median bulk throughput in Gbit/s.
    pub fn bulk(&self, scale: usize, kind: Forwarder) -> Option<f64> {
        let gbits = self.gbits(scale, kind);
        (!gbits.is_empty()).then(|| median(gbits))
    }

    /// Bulk throughput over routing's, paired round by round.
    pub fn bulk_ratio(&self, scale: usize, kind: Forwarder) -> Option<f64> {
        paired(
            &self.gbits(scale, kind),
            &self.gbits(scale, Forwarder::Routing),
        )
    }

    /// A contender without numbers, a failed connection or a failed stream.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for scale in [1, self.many] {
            for kind in Forwarder::ALL {
                let what = format!("forwarded, {} at {scale}", kind.name());
                match self.summary(scale, kind) {
                    None => problems.push(format!("{what}: no numbers")),
                    Some(s) if s.per_second.is_nan() || s.per_second <= 0.0 => {
                        problems.push(format!("{what}: no connections"))
                    }
                    Some(s) if s.failures > 0 => {
                        problems.push(format!("{what}: {} failed connections", s.failures))
                    }
                    Some(_) => {}
                }
                let streams = self
                    .streams
                    .get(&(scale, kind))
                    .map_or(&[][..], Vec::as_slice);
                if streams.is_empty() {
                    problems.push(format!("{what}: no bulk stream"));
                }
                for stream in streams {
                    match &stream.error {
                        Some(error) => {
                            problems.push(format!("{what}: bulk stream failed: {error}"))
                        }
                        None if stream.bytes == 0 => {
                            problems.push(format!("{what}: a bulk stream moved nothing"))
                        }
                        None => {}
                    }
                }
            }
        }
        problems
    }

    pub fn section(&self) -> String {
        let mut out = String::from("## Forwarded traffic: the TC path\n\n");
        let _ = writeln!(
            out,
            "Traffic forwarded through a node, as from pods or other hosts: a client network \
             namespace sends through a node namespace (IPv4 forwarding on) to two endpoint \
             namespaces, each link a veth pair (the topology of the TC tests). Every contender \
             has a set of four namespaces of its own, built alike: netfilter and conntrack hook \
             a namespace only once rules there need them, so the routing and weft TC nodes have \
             neither, and one contender's rules never see another's packets. Clients run in the \
             client namespace, outside the cgroup weft's socket hooks watch, so only the node \
             translates them. Every interface has the same offloads in every set, checked with \
             `ethtool -k` before measuring (on the node's client side: {}).\n",
            self.offloads
        );
        let _ = writeln!(
            out,
            "Contenders: **routing**, the client connecting to the endpoints' own addresses, \
             each connection to one of the two at random as a random balancer spreads them (a \
             backend answers one connection at a time, so the spread matters), forwarded \
             without translation: the limit; **weft TC**, the \
             agent with `--tc-interface` on the node's client-side interface (its own flow \
             table, no kernel conntrack); **nftables**, kube-proxy's nftables shape as above \
             in a nat chain at the prerouting hook; **iptables**, kube-proxy's iptables shape \
             from PREROUTING (KUBE-SERVICES → KUBE-SVC → `statistic random` → KUBE-SEP DNAT), \
             the measured service in the middle of KUBE-SERVICES. nftables and iptables \
             translate with kernel conntrack. As in the socket bench only the DNAT rules are \
             there: kube-proxy's masquerade marks and filter chains would cost them more. The \
             services are the socket bench's (10 endpoints each but the measured one, which \
             has the two real endpoints and a second port for the bulk stream).\n"
        );
        let _ = writeln!(
            out,
            "Short connections: the workload above, {} client threads, {} rounds of {:.1} s. \
             Bulk: one TCP stream from the client into a sink at an endpoint for {:.2} s (at \
             most {} GiB), counted once the sink confirms every byte; through the measured \
             service's second port, or straight to an endpoint for routing. Contenders \
             alternate within each round, each round starting one contender later (A B C D, \
             B C D A, ...), short connections then a stream each; ratios are medians of \
             per-round ratios.\n",
            self.workers,
            self.rounds,
            self.duration.as_secs_f64(),
            self.stream.as_secs_f64(),
            self.max_stream_bytes >> 30
        );
        for scale in [1, self.many] {
            self.table(&mut out, scale);
        }
        let _ = writeln!(
            out,
            "The section took {:.0} s, namespaces built and removed included; programming \
             the nodes at {} services took {}. nftables gets its rules in several `nft -f` \
             runs (endpoint chains, service chains, then the map): in one transaction, as in \
             the programming table above, the kernel binds each service chain's anonymous map \
             by walking the transaction, which is quadratic.\n",
            self.elapsed.as_secs_f64(),
            self.many,
            self.install_times(self.many)
        );
        out
    }

    fn table(&self, out: &mut String, scale: usize) {
        let _ = writeln!(
            out,
            "### Forwarded, {scale} service{} installed\n\n\
             | contender | connections/s | p50 latency | p99 latency | ratio to routing | ratio to nftables | bulk Gbit/s | bulk ratio to routing |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            if scale == 1 { "" } else { "s" }
        );
        for kind in Forwarder::ALL {
            let Some(s) = self.summary(scale, kind) else {
                let _ = writeln!(out, "| {} | n/a | | | | | | |", kind.name());
                continue;
            };
            let ratio = |r: Option<f64>| r.map_or("n/a".to_string(), |r| format!("{r:.2}"));
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} µs | {:.0} µs | {} | {} | {} | {} |",
                kind.name(),
                s.per_second,
                s.p50_us,
                s.p99_us,
                ratio(self.ratio(scale, kind, Forwarder::Routing)),
                ratio(self.ratio(scale, kind, Forwarder::Nftables)),
                self.bulk(scale, kind)
                    .map_or("n/a".to_string(), |g| format!("{g:.1}")),
                ratio(self.bulk_ratio(scale, kind)),
            );
        }
        out.push('\n');
    }

    fn install_times(&self, scale: usize) -> String {
        let times: Vec<String> = Forwarder::ALL
            .into_iter()
            .filter(|&kind| kind != Forwarder::Routing)
            .filter_map(|kind| {
                let took = self.installs.get(&(scale, kind))?;
                Some(format!("{} {:.1} s", kind.name(), took.as_secs_f64()))
            })
            .collect();
        if times.is_empty() {
            "n/a".into()
        } else {
            times.join(", ")
        }
    }

    /// The forwarded targets, as rows of the report's target table.
    pub fn target_rows(&self, out: &mut String) {
        let many = self.many;
        let rows = [
            (
                format!("forwarded: weft TC ≥ 1.0× nftables in connections/s at {many} services"),
                self.ratio(many, Forwarder::WeftTc, Forwarder::Nftables),
                1.0,
            ),
            (
                format!("forwarded: weft TC ≥ 0.9× routing in connections/s at {many} services"),
                self.ratio(many, Forwarder::WeftTc, Forwarder::Routing),
                0.9,
            ),
            (
                "forwarded: weft TC bulk ≥ 0.95× routing at 1 service".to_string(),
                self.bulk_ratio(1, Forwarder::WeftTc),
                0.95,
            ),
            (
                format!("forwarded: weft TC bulk ≥ 0.95× routing at {many} services"),
                self.bulk_ratio(many, Forwarder::WeftTc),
                0.95,
            ),
        ];
        for (target, ratio, at_least) in rows {
            if let Some(r) = ratio {
                target_row(out, &target, format!("{r:.2}×"), r >= at_least);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rate: f64, failures: u64) -> Sample {
        Sample {
            connections: rate as u64,
            failures,
            per_second: rate,
            p50_us: 100.0,
            p99_us: 300.0,
        }
    }

    fn stream(gbit: f64) -> Stream {
        Stream {
            bytes: (gbit * 1e9 / 8.0) as u64,
            elapsed: Duration::from_secs(1),
            error: None,
        }
    }

    fn plan() -> Plan {
        Plan {
            rounds: 2,
            duration: Duration::from_secs(1),
            stream: Duration::from_secs(1),
            max_stream_bytes: 1 << 30,
            workers: 2,
            many: 100,
        }
    }

    #[test]
    fn ratios_pair_rounds_and_problems_name_what_failed() {
        let mut f = Forwarded::new(&plan());
        let rates = [
            (Forwarder::Routing, [1000.0, 2000.0], [20.0, 10.0]),
            (Forwarder::WeftTc, [900.0, 1900.0], [19.0, 10.0]),
            (Forwarder::Nftables, [800.0, 1000.0], [18.0, 9.0]),
            (Forwarder::Iptables, [500.0, 400.0], [18.0, 9.0]),
        ];
        for scale in [1, 100] {
            for (kind, rate, gbit) in rates {
                for round in 0..2 {
                    f.add(scale, kind, sample(rate[round], 0), stream(gbit[round]));
                }
            }
        }
        assert!(f.problems().is_empty(), "{:?}", f.problems());
        // Per round 0.9 and 0.95 → 0.925; to nftables 1.125 and 1.9 → 1.5125.
        let weft = f.ratio(100, Forwarder::WeftTc, Forwarder::Routing).unwrap();
        assert!((weft - 0.925).abs() < 1e-9);
        let to_nft = f
            .ratio(100, Forwarder::WeftTc, Forwarder::Nftables)
            .unwrap();
        assert!((to_nft - 1.5125).abs() < 1e-9);
        let bulk = f.bulk_ratio(1, Forwarder::WeftTc).unwrap();
        assert!((bulk - 0.975).abs() < 1e-6, "{bulk}");
        let text = f.section();
        assert!(text.contains("### Forwarded, 100 services installed"));
        let mut targets = String::new();
        f.target_rows(&mut targets);
        assert!(targets.contains("≥ 1.0× nftables in connections/s at 100 services | 1.51× | met"));
        assert!(targets.contains("≥ 0.9× routing in connections/s at 100 services | 0.93× | met"));

        f.add(
            100,
            Forwarder::Iptables,
            sample(10.0, 3),
            Stream {
                error: Some("refused".into()),
                ..Stream::default()
            },
        );
        let problems = f.problems();
        assert!(problems.contains(&"forwarded, iptables at 100: 3 failed connections".to_string()));
        assert!(
            problems
                .contains(&"forwarded, iptables at 100: bulk stream failed: refused".to_string())
        );
        assert!(
            Forwarded::new(&plan())
                .problems()
                .iter()
                .any(|p| p == "forwarded, weft TC at 1: no numbers")
        );
    }
}
