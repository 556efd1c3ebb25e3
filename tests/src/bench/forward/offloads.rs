//! The offload settings (`ethtool -k`) of every interface of a contender's topology. The
//! bench compares them across contenders before measuring: GRO, segmentation or checksum
//! offload alone moves bulk throughput more than any datapath, so contenders whose veths
//! differ must not be compared.

use std::process::Command;

use crate::{
    NetNs,
    tc::topology::{CLIENT_IFACE, CLIENT_SIDE, ENDPOINT_IFACE, Topology, endpoint_side},
};

/// The features summarised in the report: the ones that decide how big the packets are
/// that a datapath sees, and who computes checksums.
const SUMMARY: [(&str, &str); 5] = [
    ("tcp-segmentation-offload", "TSO"),
    ("generic-segmentation-offload", "GSO"),
    ("generic-receive-offload", "GRO"),
    ("tx-checksumming", "tx checksum"),
    ("rx-checksumming", "rx checksum"),
];

/// Each interface of a topology, by its role, with its `ethtool -k` lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offloads {
    interfaces: Vec<(String, Vec<String>)>,
}

impl Offloads {
    pub fn of(node: &NetNs, topology: &Topology) -> Offloads {
        let mut interfaces = vec![(format!("node {CLIENT_SIDE}"), features(node, CLIENT_SIDE))];
        for i in 0..topology.endpoints.len() {
            let name = endpoint_side(i);
            interfaces.push((format!("node {name}"), features(node, &name)));
        }
        interfaces.push((
            format!("client {CLIENT_IFACE}"),
            features(&topology.client, CLIENT_IFACE),
        ));
        for (i, endpoint) in topology.endpoints.iter().enumerate() {
            interfaces.push((
                format!("endpoint {i} {ENDPOINT_IFACE}"),
                features(endpoint, ENDPOINT_IFACE),
            ));
        }
        Offloads { interfaces }
    }

    /// The features that differ from `other`'s, as `role: feature line`.
    pub fn differences(&self, other: &Offloads) -> Vec<String> {
        let mut out = Vec::new();
        for ((role, mine), (_, theirs)) in self.interfaces.iter().zip(&other.interfaces) {
            for line in mine.iter().filter(|l| !theirs.contains(l)) {
                out.push(format!("{role}: {line}"));
            }
        }
        if self.interfaces.len() != other.interfaces.len() {
            out.push("a different number of interfaces".into());
        }
        out
    }

    /// The node's client-side interface, in a few words (`TSO on, GSO on, GRO off, ...`).
    pub fn summary(&self) -> String {
        let Some((_, lines)) = self.interfaces.first() else {
            return "unknown".into();
        };
        SUMMARY
            .iter()
            .map(|(feature, short)| {
                let value = lines
                    .iter()
                    .find_map(|l| l.strip_prefix(feature)?.strip_prefix(": "))
                    .map_or("?", |v| v.split_whitespace().next().unwrap_or("?"));
                format!("{short} {value}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `ethtool -k` of an interface in a namespace, without its header line.
fn features(ns: &NetNs, interface: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "ethtool", "-k", interface])
        .output()
        .expect("running ethtool (Debian package ethtool; `cargo xtask bench` installs it)");
    assert!(
        out.status.success(),
        "ethtool -k {interface} in {}: {}",
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("Features for"))
        .map(|l| l.trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offloads(gro: &str) -> Offloads {
        let lines = |gro: &str| {
            vec![
                "rx-checksumming: on".to_string(),
                "tx-checksumming: on".into(),
                "tcp-segmentation-offload: on".into(),
                "generic-segmentation-offload: on".into(),
                format!("generic-receive-offload: {gro}"),
                "rx-gro-list: off [fixed]".into(),
            ]
        };
        Offloads {
            interfaces: vec![
                ("node vethn".into(), lines(gro)),
                ("client vethc".into(), lines("off")),
            ],
        }
    }

    #[test]
    fn differences_name_the_interface_and_the_feature() {
        assert!(offloads("off").differences(&offloads("off")).is_empty());
        assert_eq!(
            offloads("on").differences(&offloads("off")),
            ["node vethn: generic-receive-offload: on"]
        );
        assert_eq!(
            offloads("off").summary(),
            "TSO on, GSO on, GRO off, tx checksum on, rx checksum on"
        );
    }
}
