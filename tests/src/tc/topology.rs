//! A node forwarding between a client and endpoints, in network namespaces the test owns:
//!
//! ```text
//!  client (C)                node (N: the test's namespace, where the agent runs)
//!  10.0.1.2  fd01::2  vethc ── vethn  10.0.1.1 fd01::1        (weft's TC programs here)
//!                              vethe1 10.0.2.1 fd02::1 ── vethx 10.0.2.2 fd02::2  endpoint E1
//!                              vethe2 10.0.3.1 fd03::1 ── vethx 10.0.3.2 fd03::2  endpoint E2
//! ```
//!
//! The client and the endpoints route everything through the node. Clients run outside the
//! test's cgroup, so the socket hooks never see them: only the TC path can translate them.

use std::net::IpAddr;

use crate::NetNs;

/// The interface of the node that clients send through.
pub const CLIENT_SIDE: &str = "vethn";
/// The client's interface, in its namespace.
pub const CLIENT_IFACE: &str = "vethc";
/// Each endpoint's interface, in its namespace.
pub const ENDPOINT_IFACE: &str = "vethx";

/// The node's interface towards endpoint `i` (from 0).
pub fn endpoint_side(i: usize) -> String {
    format!("vethe{}", i + 1)
}

pub struct Topology {
    pub client: NetNs,
    pub endpoints: Vec<NetNs>,
}

/// The address of endpoint `i` (0-based) in a family.
pub fn endpoint_address(i: usize, v6: bool) -> IpAddr {
    if v6 {
        format!("fd0{}::2", i + 2).parse().unwrap()
    } else {
        format!("10.0.{}.2", i + 2).parse().unwrap()
    }
}

pub fn client_address(v6: bool) -> IpAddr {
    if v6 {
        "fd01::2".parse().unwrap()
    } else {
        "10.0.1.2".parse().unwrap()
    }
}

/// Links `node`'s interface `node_if` to a new namespace's `peer_if`.
fn link(node: &NetNs, node_if: &str, other: &NetNs, other_if: &str) {
    node.ip(&[
        "link",
        "add",
        node_if,
        "type",
        "veth",
        "peer",
        "name",
        other_if,
        "netns",
        &other.name,
    ]);
    node.ip(&["link", "set", node_if, "up"]);
    other.ip(&["link", "set", other_if, "up"]);
}

fn sysctl(ns: &NetNs, key: &str, value: &str) {
    let status = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ])
        .status()
        .expect("running sysctl");
    assert!(status.success(), "sysctl {key}={value} in {}", ns.name);
}

impl Topology {
    /// Builds the client and `endpoints` endpoint namespaces around `node`.
    pub fn build(test: &str, node: &NetNs, endpoints: usize) -> Topology {
        let client = NetNs::create(&format!("{test}-c"));
        link(node, CLIENT_SIDE, &client, CLIENT_IFACE);
        node.ip(&["addr", "add", "10.0.1.1/24", "dev", CLIENT_SIDE]);
        node.ip(&["addr", "add", "fd01::1/64", "dev", CLIENT_SIDE, "nodad"]);
        client.ip(&["addr", "add", "10.0.1.2/24", "dev", CLIENT_IFACE]);
        client.ip(&["addr", "add", "fd01::2/64", "dev", CLIENT_IFACE, "nodad"]);
        client.ip(&["route", "add", "default", "via", "10.0.1.1"]);
        client.ip(&["-6", "route", "add", "default", "via", "fd01::1"]);
        for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
            sysctl(node, key, "1");
        }
        // Replies leave through the interface they arrived on: no redirects to offer.
        sysctl(node, "net.ipv4.conf.all.send_redirects", "0");
        let mut namespaces = Vec::new();
        for i in 0..endpoints {
            let ns = NetNs::create(&format!("{test}-e{i}"));
            let node_if = endpoint_side(i);
            link(node, &node_if, &ns, ENDPOINT_IFACE);
            node.ip(&[
                "addr",
                "add",
                &format!("10.0.{}.1/24", i + 2),
                "dev",
                &node_if,
            ]);
            node.ip(&[
                "addr",
                "add",
                &format!("fd0{}::1/64", i + 2),
                "dev",
                &node_if,
                "nodad",
            ]);
            ns.ip(&[
                "addr",
                "add",
                &format!("10.0.{}.2/24", i + 2),
                "dev",
                ENDPOINT_IFACE,
            ]);
            ns.ip(&[
                "addr",
                "add",
                &format!("fd0{}::2/64", i + 2),
                "dev",
                ENDPOINT_IFACE,
                "nodad",
            ]);
            ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("10.0.{}.1", i + 2),
            ]);
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd0{}::1", i + 2),
            ]);
            namespaces.push(ns);
        }
        let topology = Topology {
            client,
            endpoints: namespaces,
        };
        topology.wait_for_ipv6(node);
        topology
    }

    /// Waits until no IPv6 address in the topology is tentative: until the link-local
    /// addresses finish duplicate address detection, the first IPv6 packets through the node
    /// are lost (a first connect took 1–2 s with no translation at all), which a test would
    /// blame on whatever it measures.
    fn wait_for_ipv6(&self, node: &NetNs) {
        let all: Vec<&NetNs> = [node, &self.client]
            .into_iter()
            .chain(&self.endpoints)
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for ns in all {
            loop {
                let out = std::process::Command::new("ip")
                    .args(["-n", &ns.name, "-6", "addr", "show", "tentative"])
                    .output()
                    .expect("running ip");
                if out.stdout.is_empty() {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "IPv6 addresses in {} still tentative after 10 s",
                    ns.name
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}
