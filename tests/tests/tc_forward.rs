//! The TC path end to end: a client namespace sends through the node (the test's
//! namespace, where the agent runs with `--tc-interface`) to endpoints in namespaces of
//! their own. Clients are outside the agent's cgroup, so only the TC programs can
//! translate them; real backends, real connections, real kernel.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use serde_json::Value;
use weft_tests::{
    Env, client,
    tc::topology::{CLIENT_SIDE, Topology, endpoint_address},
};

/// The node with two endpoints, a TCP backend named a and b on each at :8080, a UDP one
/// at :53, and the agent on `config` with the TC programs on the client side.
fn node(test: &str, config: &str) -> Option<(Env, Topology)> {
    node_with(test, config, &[])
}

/// `node`, the agent with extra environment.
fn node_with(test: &str, config: &str, agent_env: &[(&str, &str)]) -> Option<(Env, Topology)> {
    let mut env = weft_tests::setup(test)?;
    let topology = Topology::build(test, &env.netns, 2);
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        for v6 in [false, true] {
            let address = SocketAddr::new(endpoint_address(i, v6), 8080);
            env.backends
                .tcp(&topology.endpoints[i], &address.to_string(), name);
            let address = SocketAddr::new(endpoint_address(i, v6), 53);
            env.backends
                .udp(&topology.endpoints[i], &address.to_string(), name);
        }
    }
    let mut agent = weft_tests::Agent::prepare(&env.netns, &env.cgroup, |dir| {
        let path = dir.join("weft.yaml");
        std::fs::write(&path, config).expect("config");
        path
    });
    agent.tc_interfaces = vec![CLIENT_SIDE.to_string()];
    agent.env = agent_env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    agent.spawn();
    agent.wait_for_log(0, "config applied", Duration::from_secs(60));
    env.agent = Some(agent);
    Some((env, topology))
}

fn web(weights: (u16, u16)) -> String {
    format!(
        "services:
  - name: web
    address: 10.96.0.10
    port: 80
    health: {{ kind: none }}
    endpoints:
      - {{ address: 10.0.2.2, port: 8080, weight: {} }}
      - {{ address: 10.0.3.2, port: 8080, weight: {} }}
  - name: web6
    address: fd96::10
    port: 80
    health: {{ kind: none }}
    endpoints:
      - {{ address: 'fd02::2', port: 8080, weight: {} }}
      - {{ address: 'fd03::2', port: 8080, weight: {} }}
  - name: dns
    address: 10.96.0.53
    port: 53
    protocol: udp
    endpoints:
      - {{ address: 10.0.2.2, port: 53 }}
  - name: dns6
    address: fd96::53
    port: 53
    protocol: udp
    endpoints:
      - {{ address: 'fd03::2', port: 53 }}
",
        weights.0, weights.1, weights.0, weights.1
    )
}

const WEB: &str = "10.96.0.10:80";
const WEB6: &str = "[fd96::10]:80";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn conns(env: &Env) -> Vec<Value> {
    env.agent()
        .cli_json(&["conns"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn forwarded_connects_follow_the_weights_and_only_see_the_service_address() {
    let Some((env, topology)) = node("tc-weights", &web((1, 3))) else {
        return;
    };
    for service in [WEB, WEB6] {
        let service = addr(service);
        // tally_tcp checks that getpeername shows the service address on every connect.
        let tally = topology
            .client
            .run(move || client::tally_tcp(service, 2000));
        let b = client::share(&tally, "b");
        println!("{service}: weights 1:3 over 2000 forwarded connects → {tally:?}");
        assert!(
            (72.0..=78.0).contains(&b),
            "b should take 75 % ± 3: {tally:?}"
        );
    }
    // UDP: every reply comes from the service address (tally_udp checks), both families.
    for service in ["10.96.0.53:53", "[fd96::53]:53"] {
        let service = addr(service);
        let any: SocketAddr = if service.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let tally = topology
            .client
            .run(move || client::tally_udp_from(any, service, 50));
        assert_eq!(tally.values().sum::<usize>(), 50, "{tally:?}");
    }
    // The flows are the TC path's, and the socket path saw none of them.
    let shown = conns(&env);
    assert!(!shown.is_empty(), "no flow shown");
    assert!(
        shown.iter().all(|c| c["path"] == "tc"),
        "{}",
        serde_json::to_string_pretty(&shown).unwrap()
    );
}

/// A connection through the service address that stays open, reading its backend's name.
fn open(topology: &Topology, service: SocketAddr) -> (String, TcpStream) {
    topology.client.run(move || {
        let stream = TcpStream::connect_timeout(&service, Duration::from_secs(2)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).expect("name");
        (line.trim().to_string(), stream)
    })
}

/// Sends `bytes` over the connection and reads them echoed back.
fn echo(mut stream: &TcpStream, bytes: usize) -> std::io::Result<()> {
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let mut reader = stream.try_clone()?;
    let expected = data.clone();
    let read = std::thread::spawn(move || {
        let mut got = vec![0u8; expected.len()];
        reader.read_exact(&mut got).map(|_| got == expected)
    });
    stream.write_all(&data)?;
    match read.join().expect("reader") {
        Ok(true) => Ok(()),
        Ok(false) => Err(std::io::Error::other("echoed bytes differ")),
        Err(e) => Err(e),
    }
}

#[test]
fn a_weight_change_moves_new_flows_and_keeps_established_ones() {
    let Some((env, topology)) = node("tc-sticky", &web((1, 0))) else {
        return;
    };
    let (name, stream) = open(&topology, addr(WEB));
    assert_eq!(name, "a");
    env.agent().write_config(&web((0, 1)));
    let service = addr(WEB);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tally = topology.client.run(move || client::tally_tcp(service, 20));
        if tally.keys().collect::<Vec<_>>() == ["b"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new flows never followed the weights: {tally:?}"
        );
    }
    // The established connection still reaches a, byte for byte.
    echo(&stream, 100_000).expect("the established flow kept its endpoint");
    let shown = conns(&env);
    let flow = shown
        .iter()
        .find(|c| {
            c["path"] == "tc" && c["endpoint"] == "10.0.2.2:8080" && c["state"] == "established"
        })
        .unwrap_or_else(|| panic!("the flow to a is not shown: {shown:?}"));
    assert!(
        flow["bytes_sent"].as_u64().unwrap_or(0) >= 100_000,
        "{flow}"
    );
    assert!(
        flow["bytes_received"].as_u64().unwrap_or(0) >= 100_000,
        "{flow}"
    );
}

#[test]
fn an_endpoint_killed_under_forwarded_load_is_out_within_a_second() {
    let config = "services:
  - name: web
    address: 10.96.0.10
    port: 80
    health: { kind: tcp, interval: 200ms, timeout: 200ms, unhealthy_threshold: 2 }
    endpoints:
      - { address: 10.0.2.2, port: 8080 }
      - { address: 10.0.3.2, port: 8080 }
";
    let Some((mut env, topology)) = node("tc-failover", config) else {
        return;
    };
    let service = addr(WEB);
    // Both healthy first.
    let deadline = Instant::now() + Duration::from_secs(10);
    while topology
        .client
        .run(move || client::tally_tcp(service, 40))
        .len()
        < 2
    {
        assert!(Instant::now() < deadline, "both endpoints never served");
    }
    let load = topology.client.spawn(move || {
        let started = Instant::now();
        let mut failures: Vec<Duration> = Vec::new();
        let mut ok = 0;
        while started.elapsed() < Duration::from_secs(4) {
            match client::connect_once(service) {
                Ok(_) => ok += 1,
                Err(_) => failures.push(started.elapsed()),
            }
        }
        (ok, failures)
    });
    std::thread::sleep(Duration::from_millis(800));
    // Kill b's listeners (the indexes of its TCP backends: 2 and 3).
    env.backends.stop(2);
    env.backends.stop(3);
    let killed_at = Duration::from_millis(800);
    let (ok, failures) = load.join().expect("load");
    let last = failures.iter().max().copied();
    println!(
        "forwarded load: {ok} connects, {} failed, the last {:?} after the kill",
        failures.len(),
        last.map(|l| l.saturating_sub(killed_at))
    );
    if let Some(last) = last {
        assert!(
            last.saturating_sub(killed_at) < Duration::from_secs(1),
            "connects still failed {:?} after the kill",
            last - killed_at
        );
    }
    assert!(ok > 100);
}

#[test]
fn the_agent_sigkilled_and_restarted_under_forwarded_load_loses_no_connect_and_no_flow() {
    let Some((mut env, topology)) = node("tc-restart", &web((1, 1))) else {
        return;
    };
    let service = addr(WEB);
    let (_, stream) = open(&topology, service);
    let load = topology.client.spawn(move || {
        let started = Instant::now();
        let (mut ok, mut failures) = (0, Vec::new());
        while started.elapsed() < Duration::from_secs(3) {
            match client::connect_once(service) {
                Ok((_, peer, _)) if peer == service => ok += 1,
                Ok((_, peer, _)) => failures.push(format!("peer {peer}")),
                Err(e) => failures.push(e.to_string()),
            }
        }
        (ok, failures)
    });
    std::thread::sleep(Duration::from_millis(500));
    let status = env.agent_mut().signal(libc::SIGKILL);
    assert!(!status.success());
    std::thread::sleep(Duration::from_millis(700));
    let mark = env.agent().log_mark();
    env.agent_mut().spawn();
    env.agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(30));
    let (ok, failures) = load.join().expect("load");
    println!(
        "restart under forwarded load: {ok} connects, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
    echo(&stream, 10_000).expect("the established flow survived the restart");
}

#[test]
fn path_mtu_discovery_works_through_the_service_address() {
    let Some((env, topology)) = node("tc-pmtu", &web((1, 0))) else {
        return;
    };
    // The node can reach endpoint a only with 1280-byte packets: it answers the client's
    // full-size segments with "fragmentation needed", quoting the translated packet.
    env.netns.ip(&[
        "route",
        "replace",
        "10.0.2.2/32",
        "dev",
        "vethe1",
        "mtu",
        "lock",
        "1280",
    ]);
    env.netns.ip(&[
        "-6",
        "route",
        "replace",
        "fd02::2/128",
        "dev",
        "vethe1",
        "mtu",
        "lock",
        "1280",
    ]);
    for service in [WEB, WEB6] {
        let (name, stream) = open(&topology, addr(service));
        assert_eq!(name, "a");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let started = Instant::now();
        echo(&stream, 1 << 20)
            .unwrap_or_else(|e| panic!("{service}: 1 MiB through a 1280-byte hop: {e}"));
        println!(
            "{service}: 1 MiB echoed through a 1280-byte hop in {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_client_in_the_cgroup_is_translated_once_by_the_socket_path() {
    let Some((env, topology)) = node("tc-once", &web((1, 1))) else {
        return;
    };
    let service = addr(WEB);
    // Outside the cgroup: TC.
    let (_, outside) = open(&topology, service);
    // Inside: the socket hooks translate at connect; the packets carry the endpoint.
    let member = env.cgroup.join();
    let (_, inside) = open(&topology, service);
    drop(member);
    let local = |s: &TcpStream| s.local_addr().unwrap().to_string();
    let shown = conns(&env);
    let paths: BTreeMap<String, Vec<String>> = [local(&outside), local(&inside)]
        .into_iter()
        .map(|src| {
            let paths = shown
                .iter()
                .filter(|c| c["src"] == src.as_str())
                .map(|c| c["path"].as_str().unwrap_or("?").to_string())
                .collect();
            (src, paths)
        })
        .collect();
    assert_eq!(paths[&local(&outside)], ["tc"], "{shown:?}");
    assert_eq!(paths[&local(&inside)], ["socket"], "{shown:?}");
    echo(&outside, 1000).unwrap();
    echo(&inside, 1000).unwrap();
}

#[test]
fn reset_leaves_no_tc_program_qdisc_or_map_behind() {
    let Some((mut env, _topology)) = node("tc-reset", &web((1, 1))) else {
        return;
    };
    let status = env.agent_mut().signal(libc::SIGTERM);
    assert!(status.success());
    let output = env.agent().reset();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let show = |args: &[&str]| show(&env, args);
    assert_eq!(
        show(&["tc", "filter", "show", "dev", CLIENT_SIDE, "ingress"]),
        ""
    );
    assert_eq!(
        show(&["tc", "filter", "show", "dev", CLIENT_SIDE, "egress"]),
        ""
    );
    let qdiscs = show(&["tc", "qdisc", "show", "dev", CLIENT_SIDE]);
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
    let programs = weft_tests::bpf::tcx_programs(&env.netns, CLIENT_SIDE);
    assert!(programs.is_empty(), "TCX programs left: {programs:?}");
    assert!(
        !env.agent().bpffs_dir.exists(),
        "pins left under {}",
        env.agent().bpffs_dir.display()
    );
}

/// Output of `ip netns exec <the node> <args>`.
fn show(env: &Env, args: &[&str]) -> String {
    let mut full = vec!["netns", "exec", env.netns.name.as_str()];
    full.extend_from_slice(args);
    let out = std::process::Command::new("ip")
        .args(&full)
        .output()
        .expect("run");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// weft's filters on the client-side interface in one direction, as `tc` lists them.
fn clsact_filters(env: &Env, direction: &str) -> usize {
    show(
        env,
        &["tc", "filter", "show", "dev", CLIENT_SIDE, direction],
    )
    .lines()
    .filter(|l| l.contains("weft_tc_"))
    .count()
}

/// Kernels before 6.6 have no TCX: the agent attaches clsact filters instead (forced here
/// on a newer kernel). They translate the same, a restarted agent replaces its filters in
/// place (never a second copy), and `weft reset` removes them.
#[test]
fn without_tcx_clsact_filters_translate_are_replaced_in_place_and_reset_removes_them() {
    let Some((mut env, topology)) =
        node_with("tc-clsact", &web((1, 1)), &[("WEFT_TC_MODE", "clsact")])
    else {
        return;
    };
    assert_eq!(clsact_filters(&env, "ingress"), 1);
    assert_eq!(clsact_filters(&env, "egress"), 1);
    assert!(
        weft_tests::bpf::tcx_programs(&env.netns, CLIENT_SIDE).is_empty(),
        "clsact mode attached TCX programs"
    );
    let service = addr(WEB);
    let (name, stream) = open(&topology, service);
    let tally = topology.client.run(move || client::tally_tcp(service, 200));
    assert_eq!(tally.values().sum::<usize>(), 200, "{tally:?}");

    let status = env.agent_mut().signal(libc::SIGKILL);
    assert!(!status.success());
    let mark = env.agent().log_mark();
    env.agent_mut().spawn();
    env.agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(30));
    assert_eq!(
        clsact_filters(&env, "ingress"),
        1,
        "a second filter after restart"
    );
    assert_eq!(
        clsact_filters(&env, "egress"),
        1,
        "a second filter after restart"
    );
    // The flow opened before the restart still reaches its endpoint.
    echo(&stream, 1000).expect("the flow opened before the restart");
    let again = topology.client.run(move || client::tally_tcp(service, 100));
    assert_eq!(again.values().sum::<usize>(), 100, "{again:?}");
    println!("clsact: {tally:?} before, {again:?} after a restart; open flow on {name} kept");

    let status = env.agent_mut().signal(libc::SIGTERM);
    assert!(status.success());
    let output = env.agent().reset();
    assert!(output.status.success());
    assert_eq!(clsact_filters(&env, "ingress"), 0);
    assert_eq!(clsact_filters(&env, "egress"), 0);
    let qdiscs = show(&env, &["tc", "qdisc", "show", "dev", CLIENT_SIDE]);
    assert!(!qdiscs.contains("clsact"), "weft's qdisc is left: {qdiscs}");

    // Another tool's filter on the qdisc: reset removes only weft's, the qdisc stays.
    let mark = env.agent().log_mark();
    env.agent_mut().spawn();
    env.agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(30));
    show(
        &env,
        &[
            "tc",
            "filter",
            "add",
            "dev",
            CLIENT_SIDE,
            "ingress",
            "prio",
            "9",
            "protocol",
            "all",
            "u32",
            "match",
            "u32",
            "0",
            "0",
        ],
    );
    let before = show(
        &env,
        &["tc", "filter", "show", "dev", CLIENT_SIDE, "ingress"],
    );
    assert!(before.contains("u32"), "the other tool's filter: {before}");
    assert!(env.agent_mut().signal(libc::SIGTERM).success());
    assert!(env.agent().reset().status.success());
    assert_eq!(clsact_filters(&env, "ingress"), 0);
    let left = show(
        &env,
        &["tc", "filter", "show", "dev", CLIENT_SIDE, "ingress"],
    );
    assert!(left.contains("u32"), "the other tool's filter: {left}");
    let qdiscs = show(&env, &["tc", "qdisc", "show", "dev", CLIENT_SIDE]);
    assert!(
        qdiscs.contains("clsact"),
        "the qdisc another filter uses: {qdiscs}"
    );
}

/// Forwarded traffic shows in the per-service and per-endpoint statistics like the socket
/// path's: a TCP flow opens once its endpoint answered (the flow expiry reports it, every
/// 5 s), and closes with its bytes when it is removed (10 s after its FINs); a UDP flow
/// opens the same way.
#[test]
fn forwarded_flows_are_counted_per_service_and_endpoint() {
    let config = web((1, 0)).replace("services:", "stats: { endpoint_metrics: true }\nservices:");
    let Some((env, topology)) = node("tc-stats", &config) else {
        return;
    };
    const FLOWS: usize = 10;
    const BYTES: usize = 10_000;
    let web = [("service", "web")];
    let endpoint = [("service", "web"), ("endpoint", "10.0.2.2:8080")];
    for _ in 0..FLOWS {
        let (name, stream) = open(&topology, addr(WEB));
        assert_eq!(name, "a");
        echo(&stream, BYTES).expect("echo");
    }
    let dns = addr("10.96.0.53:53");
    topology.client.run(move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        for _ in 0..3 {
            socket.send_to(b"query", dns).expect("send");
            let mut answer = [0u8; 16];
            let (_, from) = socket.recv_from(&mut answer).expect("answer");
            assert_eq!(from, dns);
        }
    });
    let opened = weft_tests::metrics::scrape_until(
        &env.netns,
        Duration::from_secs(8),
        "the flows reported",
        |s| {
            s.value("weft_tcp_connections_opened_total", &web) >= FLOWS as f64
                && s.value("weft_udp_sockets_opened_total", &[("service", "dns")]) >= 1.0
        },
    );
    assert_eq!(
        opened.value("weft_tcp_connections_opened_total", &web),
        FLOWS as f64
    );
    assert_eq!(
        opened.value("weft_endpoint_tcp_connections_opened_total", &endpoint),
        FLOWS as f64
    );
    assert_eq!(
        opened.value("weft_udp_sockets_opened_total", &[("service", "dns")]),
        1.0
    );
    // The live UDP flow is a UDP gauge's, never in the TCP one.
    let dns = [("service", "dns")];
    let active = weft_tests::metrics::scrape_until(
        &env.netns,
        Duration::from_secs(3),
        "the UDP flow active",
        |s| s.find("weft_udp_flows_active", &dns) == Some(1.0),
    );
    assert_eq!(active.find("weft_udp_flows_active", &dns), Some(1.0));
    assert_eq!(active.find("weft_tcp_connections_open", &dns), None);
    assert_eq!(active.find("weft_udp_flows_active", &web), None);
    let closed = weft_tests::metrics::scrape_until(
        &env.netns,
        Duration::from_secs(25),
        "the flows closed",
        |s| s.value("weft_tcp_connections_closed_total", &web) >= FLOWS as f64,
    );
    assert_eq!(
        closed.value("weft_tcp_connections_closed_total", &web),
        FLOWS as f64
    );
    assert_eq!(closed.value("weft_tcp_connect_failures_total", &web), 0.0);
    // IP bytes as the interface saw them: the payload plus headers, each way.
    let payload = (FLOWS * BYTES) as f64;
    for (series, at_most) in [
        ("weft_endpoint_tcp_sent_bytes_total", 1.2),
        ("weft_endpoint_tcp_received_bytes_total", 1.2),
    ] {
        let bytes = closed.value(series, &endpoint);
        assert!(
            bytes >= payload && bytes <= payload * at_most,
            "{series}: {bytes} for {payload} payload bytes"
        );
    }
    let row = env.agent().service_stats("web");
    assert_eq!(row["connections_closed"], FLOWS as u64, "{row:#}");
    assert_eq!(
        row["mean_srtt_us"],
        Value::Null,
        "TC flows have no RTT: {row:#}"
    );
}

/// Entries the pinned flow table was created with, and what `weft status` says it holds
/// at most (sampled at most once a second: waited for, up to 3 s).
fn flow_table(env: &Env, want: u64) -> (u64, u64) {
    let pin = env.agent().bpffs_dir.join("maps/WEFT_FLOWS_V1");
    let pinned = aya::maps::MapInfo::from_pin(&pin)
        .map(|info| u64::from(info.max_entries()))
        .unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let status = env.agent().cli_json(&["status"]);
        let shown = status["maps"]
            .as_array()
            .expect("maps")
            .iter()
            .find(|m| m["name"] == "WEFT_FLOWS_V1")
            .and_then(|m| m["capacity"].as_u64())
            .unwrap_or(0);
        if shown == want || Instant::now() >= deadline {
            return (pinned, shown);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_flow_table_is_sized_by_tc_max_flows_and_resized_only_when_created_anew() {
    let config = |flows: u32| format!("tc: {{ max_flows: {flows} }}\n{}", web((1, 1)));
    let Some((mut env, topology)) = node("tc-size", &config(4096)) else {
        return;
    };
    assert_eq!(flow_table(&env, 8192), (8192, 8192), "two entries per flow");
    let (_, stream) = open(&topology, addr(WEB));

    // A new size: the table in use keeps its flows and its size, and the log says why.
    let mark = env.agent().log_mark();
    env.agent().write_config(&config(2048));
    let line = env
        .agent_mut()
        .wait_for_log(mark, "tc.max_flows changed", Duration::from_secs(5));
    assert!(line.contains("weft reset"), "{line}");
    assert_eq!(flow_table(&env, 8192), (8192, 8192));
    echo(&stream, 10_000).expect("the established flow is kept");

    // Restarted on the same pins: still the old size, said again.
    assert!(env.agent_mut().signal(libc::SIGTERM).success());
    let mark = env.agent().log_mark();
    env.agent_mut().spawn();
    env.agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(30));
    assert!(
        env.agent().log_text()[mark..].contains("keeps the size it was created with"),
        "{}",
        &env.agent().log_text()[mark..]
    );
    assert_eq!(flow_table(&env, 8192), (8192, 8192));

    // `weft reset` under the running agent: it recreates the table at the configured size.
    let mark = env.agent().log_mark();
    let output = env.agent().reset();
    assert!(output.status.success(), "{output:?}");
    env.agent_mut()
        .wait_for_log(mark, "datapath back in place", Duration::from_secs(10));
    assert_eq!(flow_table(&env, 4096), (4096, 4096));
    let (endpoint, _) = open(&topology, addr(WEB));
    assert!(["a", "b"].contains(&endpoint.as_str()), "{endpoint}");
}

/// A TCP connect from the client namespace: the name its endpoint sends, or how the
/// connect failed (a dropped SYN is retransmitted until the timeout).
fn connect_from_client(
    topology: &Topology,
    service: SocketAddr,
    timeout: Duration,
) -> Result<String, std::io::ErrorKind> {
    topology.client.run(move || {
        let stream = TcpStream::connect_timeout(&service, timeout).map_err(|e| e.kind())?;
        stream.set_read_timeout(Some(timeout)).unwrap();
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .map_err(|e| e.kind())?;
        Ok(line.trim().to_string())
    })
}

#[test]
fn cidr_allow_rules_let_in_named_sources_and_drop_the_first_packet_of_anyone_else() {
    let rules = |v4: &str, v6: &str| {
        format!(
            "services:
  - name: open
    address: 10.96.0.10
    port: 80
    health: {{ kind: none }}
    allow: [{{ cidr: 10.0.1.0/24 }}, {{ cidr: 'fd01::/64' }}]
    endpoints: [{{ address: 10.0.2.2, port: 8080 }}]
  - name: closed
    address: 10.96.0.11
    port: 80
    health: {{ kind: none }}
    allow: [{{ cidr: {v4} }}]
    endpoints: [{{ address: 10.0.2.2, port: 8080 }}]
  - name: closed6
    address: fd96::11
    port: 80
    health: {{ kind: none }}
    allow: [{{ cidr: '{v6}' }}]
    endpoints: [{{ address: 'fd02::2', port: 8080 }}]
"
        )
    };
    let Some((mut env, topology)) = node("tc-allow", &rules("192.0.2.0/24", "2001:db8::/32"))
    else {
        return;
    };
    let open = addr("10.96.0.10:80");
    let closed = [addr("10.96.0.11:80"), addr("[fd96::11]:80")];
    let refusal = Duration::from_millis(1500);
    assert_eq!(
        connect_from_client(&topology, open, refusal),
        Ok("a".into())
    );
    for service in closed {
        assert_eq!(
            connect_from_client(&topology, service, refusal),
            Err(std::io::ErrorKind::TimedOut),
            "{service}: a source no rule names is dropped"
        );
    }
    let denials = |s: &weft_tests::metrics::Scrape, service: &str| {
        s.value("weft_service_denials_total", &[("service", service)])
    };
    let refused = weft_tests::metrics::scrape_until(
        &env.netns,
        Duration::from_secs(5),
        "the drops counted",
        |s| denials(s, "closed") >= 1.0 && denials(s, "closed6") >= 1.0,
    );
    assert_eq!(denials(&refused, "open"), 0.0);
    // Every SYN the client sent (its retransmissions too) was a new flow refused; none of
    // them made a flow entry.
    assert!(
        conns(&env).iter().all(|c| c["service"] == "open"),
        "{:#?}",
        conns(&env)
    );
    // Naming the client lets it in from the next connect.
    let mark = env.agent().log_mark();
    env.agent().write_config(&rules("10.0.1.0/24", "fd01::/64"));
    env.agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(5));
    for service in closed {
        assert_eq!(
            connect_from_client(&topology, service, Duration::from_secs(2)),
            Ok("a".into()),
            "{service}"
        );
    }
}
