//! The same services written for each contender: weft's YAML, kube-proxy's iptables and
//! nftables rule shapes, and an HAProxy TCP config. Pure text generation.

use std::{fmt::Write as _, net::Ipv4Addr};

/// The file of weft's config directory that holds the measured service alone.
pub const MEASURED_FILE: &str = "measured.yaml";

/// The bulk services' detection: none, so the agent is idle between changes.
pub const NO_PROBES: &str = "    health: { kind: none }\n";

/// Every service's port (the measured service may have a second one).
pub const SERVICE_PORT: u16 = 80;

/// The nftables table every bench ruleset lives in.
const NFT_TABLE: &str = "table ip weft-bench";

/// Where kube-proxy's rules see a connection's first packet: OUTPUT for clients on the node
/// itself (the socket bench), PREROUTING for traffic forwarded through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Output,
    Prerouting,
}

impl Hook {
    fn iptables_chain(self) -> &'static str {
        match self {
            Hook::Output => "OUTPUT",
            Hook::Prerouting => "PREROUTING",
        }
    }

    /// nft's name for the hook (the nat base chain is `nat-` and this).
    fn nft(self) -> &'static str {
        match self {
            Hook::Output => "output",
            Hook::Prerouting => "prerouting",
        }
    }
}

/// The services a bench run installs: `count` services; the measured one (in the middle,
/// so a linear rule walk pays half the chain) has the real backends, the others
/// `endpoints_each` addresses nothing listens on.
pub struct Services {
    pub count: usize,
    pub endpoints_each: usize,
    pub real_backends: Vec<(Ipv4Addr, u16)>,
    /// A second port of the measured service, `(service port, endpoint port)`, served at the
    /// real backends' addresses: the forwarded bench's bulk streams. Every contender gets it
    /// as a service port of its own, as kube-proxy does for each port of a Service.
    pub second_port: Option<(u16, u16)>,
}

/// One port of one service, as the rules name it.
struct Frontend {
    /// `7` for service 7's port 80, `7-5201` for its second port.
    id: String,
    address: Ipv4Addr,
    port: u16,
    endpoints: Vec<(Ipv4Addr, u16)>,
}

impl Services {
    pub fn measured_index(&self) -> usize {
        self.count / 2
    }

    /// Service ports in force once installed: what weft counts as services.
    pub fn frontend_count(&self) -> usize {
        self.count + usize::from(self.second_port.is_some())
    }

    /// Frontend address of service `i` in a /16 starting at `base` (e.g. 10.97.0.0).
    pub fn address(base: [u8; 2], i: usize) -> Ipv4Addr {
        Ipv4Addr::new(base[0], base[1], (i / 250) as u8, (i % 250 + 1) as u8)
    }

    pub fn endpoints(&self, i: usize) -> Vec<(Ipv4Addr, u16)> {
        if i == self.measured_index() {
            return self.real_backends.clone();
        }
        (0..self.endpoints_each)
            .map(|e| {
                let n = i * self.endpoints_each + e;
                let addr = Ipv4Addr::new(10, 200 + (n >> 16) as u8, (n >> 8) as u8, n as u8);
                (addr, 8080)
            })
            .collect()
    }

    /// Service `i`'s ports.
    fn frontends_of(&self, base: [u8; 2], i: usize) -> Vec<Frontend> {
        let address = Self::address(base, i);
        let mut ports = vec![Frontend {
            id: i.to_string(),
            address,
            port: SERVICE_PORT,
            endpoints: self.endpoints(i),
        }];
        if i == self.measured_index()
            && let Some((port, endpoint_port)) = self.second_port
        {
            ports.push(Frontend {
                id: format!("{i}-{port}"),
                address,
                port,
                endpoints: self
                    .real_backends
                    .iter()
                    .map(|&(addr, _)| (addr, endpoint_port))
                    .collect(),
            });
        }
        ports
    }

    /// Every service's ports, in service order.
    fn frontends(&self, base: [u8; 2]) -> impl Iterator<Item = Frontend> + '_ {
        (0..self.count).flat_map(move |i| self.frontends_of(base, i))
    }

    /// weft's config as a directory: every service but the measured one in files of
    /// `per_file` services (`bulk-00.yaml`, ...), then the measured service alone in
    /// `MEASURED_FILE`, so that a change to it re-reads a small file.
    pub fn weft_files(&self, base: [u8; 2], per_file: usize) -> Vec<(String, String)> {
        let bulk: Vec<usize> = (0..self.count)
            .filter(|&i| i != self.measured_index())
            .collect();
        let mut files: Vec<(String, String)> = bulk
            .chunks(per_file.max(1))
            .enumerate()
            .map(|(n, chunk)| {
                let mut out = String::from("services:\n");
                for &i in chunk {
                    for frontend in self.frontends_of(base, i) {
                        weft_service(&mut out, &frontend, &[], NO_PROBES);
                    }
                }
                (format!("bulk-{n:02}.yaml"), out)
            })
            .collect();
        files.push((
            MEASURED_FILE.to_string(),
            self.weft_measured(base, &[], NO_PROBES),
        ));
        files
    }

    /// The measured service alone (each of its ports), with `detection` (its
    /// `health:`/`outlier:` lines); `weights` overrides its endpoints' weights (1 for those
    /// it does not name).
    pub fn weft_measured(&self, base: [u8; 2], weights: &[u16], detection: &str) -> String {
        let mut out = String::from("services:\n");
        for frontend in self.frontends_of(base, self.measured_index()) {
            weft_service(&mut out, &frontend, weights, detection);
        }
        out
    }

    /// kube-proxy's iptables shape for `iptables-restore`: KUBE-SERVICES, jumped to from
    /// `hook`, with one rule per service port, a KUBE-SVC chain per service port choosing
    /// with `-m statistic --mode random`, a KUBE-SEP chain per endpoint doing the DNAT.
    pub fn iptables_restore(&self, base: [u8; 2], hook: Hook) -> String {
        let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
        let mut rules = format!("-A {} -j KUBE-SERVICES\n", hook.iptables_chain());
        for frontend in self.frontends(base) {
            let Frontend {
                id, address, port, ..
            } = &frontend;
            let _ = writeln!(chains, ":KUBE-SVC-{id} - [0:0]");
            let _ = writeln!(
                rules,
                "-A KUBE-SERVICES -d {address}/32 -p tcp -m tcp --dport {port} -j KUBE-SVC-{id}"
            );
            iptables_service(&frontend, &mut chains, &mut rules);
        }
        chains + &rules + "COMMIT\n"
    }

    /// What kube-proxy restores (with --noflush) when one service's endpoints change: that
    /// service's chain, rewritten. Here the measured service keeps only its first endpoint.
    pub fn iptables_drain_first_but_one(&self) -> String {
        let i = self.measured_index();
        // Declaring the chain in a --noflush restore flushes it; its endpoint chains stay.
        let last = self.endpoints(i).len() - 1;
        format!("*nat\n:KUBE-SVC-{i} - [0:0]\n-A KUBE-SVC-{i} -j KUBE-SEP-{i}-{last}\nCOMMIT\n")
    }

    /// kube-proxy's nftables-mode shape for `nft -f`, in one transaction: one verdict-map
    /// lookup on address . protocol . port (from a nat chain on `hook`), then `numgen
    /// random` over the endpoint chains.
    pub fn nft_ruleset(&self, base: [u8; 2], hook: Hook) -> String {
        let mut out = format!("{NFT_TABLE}\ndelete {NFT_TABLE}\n{NFT_TABLE} {{\n");
        out.push_str(&self.nft_map(base));
        out.push_str(&nft_base_chain(hook));
        for frontend in self.frontends(base) {
            out.push_str(&nft_service_chain(&frontend));
            out.push_str(&nft_endpoint_chains(&frontend));
        }
        out + "}\n"
    }

    /// The same ruleset as `nft_ruleset`, as several `nft -f` inputs to run in order: the
    /// endpoint chains, the service chains `per_batch` at a time, then the map naming them
    /// and the base chain. In one transaction the kernel binds each service chain's
    /// anonymous verdict map by walking the transaction so far, which is quadratic: ~100 s
    /// for 10,000 services × 10 endpoints here, ~20 s like this. Each run also reads the
    /// ruleset so far, so batches should not be small.
    pub fn nft_batches(&self, base: [u8; 2], hook: Hook, per_batch: usize) -> Vec<String> {
        let table = |body: String| format!("{NFT_TABLE} {{\n{body}}}\n");
        let endpoints: String = self
            .frontends(base)
            .map(|f| nft_endpoint_chains(&f))
            .collect();
        let mut batches = vec![format!("{NFT_TABLE}\ndelete {NFT_TABLE}\n") + &table(endpoints)];
        let services: Vec<String> = self
            .frontends(base)
            .map(|f| nft_service_chain(&f))
            .collect();
        batches.extend(
            services
                .chunks(per_batch.max(1))
                .map(|chunk| table(chunk.concat())),
        );
        batches.push(table(self.nft_map(base) + &nft_base_chain(hook)));
        batches
    }

    /// The verdict map from address . protocol . port to the service port's chain.
    fn nft_map(&self, base: [u8; 2]) -> String {
        let elements: Vec<String> = self
            .frontends(base)
            .map(|f| format!("{} . tcp . {} : goto svc-{}", f.address, f.port, f.id))
            .collect();
        format!(
            "  map service-ips {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n    elements = {{ {} }}\n  }}\n",
            elements.join(", ")
        )
    }

    /// The one-service change for `nft -f`: the measured service's chain, rewritten to
    /// its last endpoint only.
    pub fn nft_drain_first_but_one(&self) -> String {
        let i = self.measured_index();
        let last = self.endpoints(i).len() - 1;
        format!(
            "flush chain ip weft-bench svc-{i}\nadd rule ip weft-bench svc-{i} goto ep-{i}-{last}\n"
        )
    }

    /// HAProxy in TCP mode with the measured service's backends, round robin.
    pub fn haproxy_cfg(&self, bind: &str) -> String {
        let mut out = format!(
            "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\nfrontend bench\n  bind {bind}\n  default_backend endpoints\nbackend endpoints\n  balance roundrobin\n"
        );
        for (e, (addr, port)) in self.real_backends.iter().enumerate() {
            let _ = writeln!(out, "  server e{e} {addr}:{port}");
        }
        out
    }
}

/// One service port in weft's YAML, named `s` and its id.
fn weft_service(out: &mut String, frontend: &Frontend, weights: &[u16], detection: &str) {
    let Frontend {
        id,
        address,
        port,
        endpoints,
    } = frontend;
    let _ = write!(
        out,
        "  - name: s{id}\n    address: {address}\n    port: {port}\n{detection}    endpoints:\n"
    );
    for (e, (addr, port)) in endpoints.iter().enumerate() {
        let weight = weights.get(e).copied().unwrap_or(1);
        let _ = writeln!(
            out,
            "      - {{ address: {addr}, port: {port}, weight: {weight} }}"
        );
    }
}

/// A service port's KUBE-SEP chains and the KUBE-SVC rules choosing among them.
fn iptables_service(frontend: &Frontend, chains: &mut String, rules: &mut String) {
    let id = &frontend.id;
    let n = frontend.endpoints.len();
    for (e, (addr, port)) in frontend.endpoints.iter().enumerate() {
        let _ = writeln!(chains, ":KUBE-SEP-{id}-{e} - [0:0]");
        let remaining = n - e;
        if remaining > 1 {
            let _ = writeln!(
                rules,
                "-A KUBE-SVC-{id} -m statistic --mode random --probability {:.10} -j KUBE-SEP-{id}-{e}",
                1.0 / remaining as f64
            );
        } else {
            let _ = writeln!(rules, "-A KUBE-SVC-{id} -j KUBE-SEP-{id}-{e}");
        }
        let _ = writeln!(
            rules,
            "-A KUBE-SEP-{id}-{e} -p tcp -j DNAT --to-destination {addr}:{port}"
        );
    }
}

/// The nat base chain looking every packet's address . protocol . port up in the map.
fn nft_base_chain(hook: Hook) -> String {
    let hook = hook.nft();
    format!(
        "  chain nat-{hook} {{\n    type nat hook {hook} priority -100; policy accept;\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }}\n"
    )
}

fn nft_service_chain(frontend: &Frontend) -> String {
    let endpoints = frontend.endpoints.len();
    let id = &frontend.id;
    let choices: Vec<String> = (0..endpoints)
        .map(|e| format!("{e} : goto ep-{id}-{e}"))
        .collect();
    format!(
        "  chain svc-{id} {{\n    numgen random mod {endpoints} vmap {{ {} }}\n  }}\n",
        choices.join(", ")
    )
}

fn nft_endpoint_chains(frontend: &Frontend) -> String {
    let mut out = String::new();
    for (e, (addr, port)) in frontend.endpoints.iter().enumerate() {
        let _ = writeln!(
            out,
            "  chain ep-{}-{e} {{\n    meta l4proto tcp dnat to {addr}:{port}\n  }}",
            frontend.id
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(count: usize) -> Services {
        Services {
            count,
            endpoints_each: 3,
            real_backends: vec![
                (Ipv4Addr::new(127, 0, 0, 2), 8080),
                (Ipv4Addr::new(127, 0, 0, 3), 8080),
            ],
            second_port: None,
        }
    }

    #[test]
    fn kube_proxy_probabilities_spread_evenly() {
        let rules = services(1).iptables_restore([10, 97], Hook::Output);
        assert!(rules.contains("--probability 0.5000000000 -j KUBE-SEP-0-0"));
        assert!(rules.contains("-A KUBE-SVC-0 -j KUBE-SEP-0-1"));
        assert!(rules.contains("--to-destination 127.0.0.2:8080"));
        let three = services(3).iptables_restore([10, 97], Hook::Output);
        assert!(three.contains("--probability 0.3333333333 -j KUBE-SEP-0-0"));
        assert!(three.contains("--probability 0.5000000000 -j KUBE-SEP-0-1"));
    }

    #[test]
    fn addresses_are_distinct_across_ten_thousand_services() {
        let set: std::collections::HashSet<_> = (0..10_000)
            .map(|i| Services::address([10, 97], i))
            .collect();
        assert_eq!(set.len(), 10_000);
        let s = services(10_000);
        let eps: std::collections::HashSet<_> = (0..10_000).flat_map(|i| s.endpoints(i)).collect();
        assert_eq!(eps.len(), 9_999 * 3 + 2);
    }

    #[test]
    fn weft_files_hold_every_service_once_and_the_measured_one_alone() {
        let s = services(2_501);
        let files = s.weft_files([10, 96], 1_000);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "bulk-00.yaml",
                "bulk-01.yaml",
                "bulk-02.yaml",
                MEASURED_FILE
            ]
        );
        let count = |text: &str| text.matches("  - name: s").count();
        assert_eq!(files.iter().map(|(_, t)| count(t)).sum::<usize>(), 2_501);
        let measured = &files[3].1;
        assert_eq!(count(measured), 1);
        assert!(measured.contains("name: s1250\n    address: 10.96.5.1\n"));
        assert!(!files[1].1.contains("name: s1250\n"));
        let drained = s.weft_measured([10, 96], &[0, 1], NO_PROBES);
        assert!(drained.contains("{ address: 127.0.0.2, port: 8080, weight: 0 }"));
        assert!(drained.contains("{ address: 127.0.0.3, port: 8080, weight: 1 }"));
    }

    #[test]
    fn nft_map_names_every_service() {
        let text = services(3).nft_ruleset([10, 98], Hook::Output);
        assert!(text.contains("10.98.0.2 . tcp . 80 : goto svc-1"));
        assert!(text.contains("numgen random mod 2 vmap { 0 : goto ep-1-0, 1 : goto ep-1-1 }"));
    }

    #[test]
    fn a_second_port_is_a_service_port_of_its_own_at_the_prerouting_hook() {
        let s = Services {
            second_port: Some((5201, 5202)),
            ..services(3)
        };
        assert_eq!(s.frontend_count(), 4);
        let ipt = s.iptables_restore([10, 96], Hook::Prerouting);
        assert!(ipt.contains("-A PREROUTING -j KUBE-SERVICES\n"));
        assert!(!ipt.contains("OUTPUT"));
        assert!(ipt.contains(
            "-A KUBE-SERVICES -d 10.96.0.2/32 -p tcp -m tcp --dport 5201 -j KUBE-SVC-1-5201\n"
        ));
        assert!(
            ipt.contains("-A KUBE-SEP-1-5201-1 -p tcp -j DNAT --to-destination 127.0.0.3:5202")
        );
        let nft = s.nft_ruleset([10, 96], Hook::Prerouting);
        assert!(
            nft.contains("chain nat-prerouting {\n    type nat hook prerouting priority -100;")
        );
        assert!(nft.contains("10.96.0.2 . tcp . 5201 : goto svc-1-5201"));
        let weft = s.weft_measured([10, 96], &[], NO_PROBES);
        assert!(weft.contains("  - name: s1-5201\n    address: 10.96.0.2\n    port: 5201\n"));
        assert!(weft.contains("{ address: 127.0.0.3, port: 5202, weight: 1 }"));
    }

    #[test]
    fn nft_batches_make_the_one_transaction_ruleset() {
        let s = Services {
            second_port: Some((5201, 5201)),
            ..services(5)
        };
        let batches = s.nft_batches([10, 96], Hook::Prerouting, 2);
        // Endpoint chains; 6 service ports' chains, 2 at a time; the map and the base chain.
        assert_eq!(batches.len(), 5);
        assert!(batches[0].starts_with("table ip weft-bench\ndelete table ip weft-bench\n"));
        assert!(batches[4].contains("map service-ips"));
        let body = |text: &str| {
            let mut lines: Vec<String> = text
                .lines()
                .filter(|l| !l.starts_with("table") && !l.starts_with("delete") && *l != "}")
                .map(String::from)
                .collect();
            lines.sort();
            lines
        };
        assert_eq!(
            body(&batches.concat()),
            body(&s.nft_ruleset([10, 96], Hook::Prerouting))
        );
    }
}
