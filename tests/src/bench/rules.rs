//! The same services written for each contender: weft's YAML, kube-proxy's iptables and
//! nftables rule shapes, and an HAProxy TCP config. Pure text generation.

use std::{fmt::Write as _, net::Ipv4Addr};

/// The file of weft's config directory that holds the measured service alone.
pub const MEASURED_FILE: &str = "measured.yaml";

/// The bulk services' detection: none, so the agent is idle between changes.
pub const NO_PROBES: &str = "    health: { kind: none }\n";

/// The services a bench run installs: `count` services; the measured one (in the middle,
/// so a linear rule walk pays half the chain) has the real backends, the others
/// `endpoints_each` addresses nothing listens on.
pub struct Services {
    pub count: usize,
    pub endpoints_each: usize,
    pub real_backends: Vec<(Ipv4Addr, u16)>,
}

impl Services {
    pub fn measured_index(&self) -> usize {
        self.count / 2
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
                    self.weft_service(&mut out, base, i, &[], NO_PROBES);
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

    /// The measured service alone, with `detection` (its `health:`/`outlier:` lines);
    /// `weights` overrides its endpoints' weights (1 for those it does not name).
    pub fn weft_measured(&self, base: [u8; 2], weights: &[u16], detection: &str) -> String {
        let mut out = String::from("services:\n");
        self.weft_service(&mut out, base, self.measured_index(), weights, detection);
        out
    }

    fn weft_service(
        &self,
        out: &mut String,
        base: [u8; 2],
        i: usize,
        weights: &[u16],
        detection: &str,
    ) {
        let _ = write!(
            out,
            "  - name: s{i}\n    address: {}\n    port: 80\n{detection}    endpoints:\n",
            Self::address(base, i)
        );
        for (e, (addr, port)) in self.endpoints(i).iter().enumerate() {
            let weight = weights.get(e).copied().unwrap_or(1);
            let _ = writeln!(
                out,
                "      - {{ address: {addr}, port: {port}, weight: {weight} }}"
            );
        }
    }

    /// kube-proxy's iptables shape for `iptables-restore`: KUBE-SERVICES with one rule per
    /// service, a KUBE-SVC chain per service choosing with `-m statistic --mode random`, a
    /// KUBE-SEP chain per endpoint doing the DNAT.
    pub fn iptables_restore(&self, base: [u8; 2]) -> String {
        let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
        let mut rules = String::from("-A OUTPUT -j KUBE-SERVICES\n");
        for i in 0..self.count {
            let _ = writeln!(chains, ":KUBE-SVC-{i} - [0:0]");
            let _ = writeln!(
                rules,
                "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i}",
                Self::address(base, i)
            );
            self.iptables_service(i, &mut chains, &mut rules);
        }
        chains + &rules + "COMMIT\n"
    }

    fn iptables_service(&self, i: usize, chains: &mut String, rules: &mut String) {
        let endpoints = self.endpoints(i);
        let n = endpoints.len();
        for (e, (addr, port)) in endpoints.iter().enumerate() {
            let _ = writeln!(chains, ":KUBE-SEP-{i}-{e} - [0:0]");
            let remaining = n - e;
            if remaining > 1 {
                let _ = writeln!(
                    rules,
                    "-A KUBE-SVC-{i} -m statistic --mode random --probability {:.10} -j KUBE-SEP-{i}-{e}",
                    1.0 / remaining as f64
                );
            } else {
                let _ = writeln!(rules, "-A KUBE-SVC-{i} -j KUBE-SEP-{i}-{e}");
            }
            let _ = writeln!(
                rules,
                "-A KUBE-SEP-{i}-{e} -p tcp -j DNAT --to-destination {addr}:{port}"
            );
        }
    }

    /// What kube-proxy restores (with --noflush) when one service's endpoints change: that
    /// service's chain, rewritten. Here the measured service keeps only its first endpoint.
    pub fn iptables_drain_first_but_one(&self) -> String {
        let i = self.measured_index();
        // Declaring the chain in a --noflush restore flushes it; its endpoint chains stay.
        let last = self.endpoints(i).len() - 1;
        format!("*nat\n:KUBE-SVC-{i} - [0:0]\n-A KUBE-SVC-{i} -j KUBE-SEP-{i}-{last}\nCOMMIT\n")
    }

    /// kube-proxy's nftables-mode shape for `nft -f`: one verdict-map lookup on
    /// address . protocol . port, then `numgen random` over the endpoint chains.
    pub fn nft_ruleset(&self, base: [u8; 2]) -> String {
        let mut out = String::from(
            "table ip weft-bench\ndelete table ip weft-bench\ntable ip weft-bench {\n  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n",
        );
        let elements: Vec<String> = (0..self.count)
            .map(|i| format!("{} . tcp . 80 : goto svc-{i}", Self::address(base, i)))
            .collect();
        let _ = writeln!(out, "    elements = {{ {} }}\n  }}", elements.join(", "));
        out.push_str("  chain nat-output {\n    type nat hook output priority -100; policy accept;\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }\n");
        for i in 0..self.count {
            out.push_str(&self.nft_service_chain(i));
            for (e, (addr, port)) in self.endpoints(i).iter().enumerate() {
                let _ = writeln!(
                    out,
                    "  chain ep-{i}-{e} {{\n    meta l4proto tcp dnat to {addr}:{port}\n  }}"
                );
            }
        }
        out + "}\n"
    }

    fn nft_service_chain(&self, i: usize) -> String {
        let endpoints = self.endpoints(i).len();
        let choices: Vec<String> = (0..endpoints)
            .map(|e| format!("{e} : goto ep-{i}-{e}"))
            .collect();
        format!(
            "  chain svc-{i} {{\n    numgen random mod {endpoints} vmap {{ {} }}\n  }}\n",
            choices.join(", ")
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
        }
    }

    #[test]
    fn kube_proxy_probabilities_spread_evenly() {
        let rules = services(1).iptables_restore([10, 97]);
        assert!(rules.contains("--probability 0.5000000000 -j KUBE-SEP-0-0"));
        assert!(rules.contains("-A KUBE-SVC-0 -j KUBE-SEP-0-1"));
        assert!(rules.contains("--to-destination 127.0.0.2:8080"));
        let three = services(3).iptables_restore([10, 97]);
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
        let text = services(3).nft_ruleset([10, 98]);
        assert!(text.contains("10.98.0.2 . tcp . 80 : goto svc-1"));
        assert!(text.contains("numgen random mod 2 vmap { 0 : goto ep-1-0, 1 : goto ep-1-1 }"));
    }
}
