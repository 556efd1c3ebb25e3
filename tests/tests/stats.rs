//! Every connection visible: per-connection records, exact byte counts, Prometheus metrics,
//! the admin API and the CLI, against real backends and the real kernel programs.

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use weft_tests::{
    Env,
    agent::{Follow, weft_bin},
    client,
    metrics::{self, Scrape},
};

const SERVICE: &str = "10.96.0.10:80";

fn config(health: &str, endpoints: &[&str]) -> String {
    let mut text = format!(
        "services:\n  - name: web\n    address: 10.96.0.10\n    port: 80\n    health: {health}\n    outlier: {{ consecutive_failures: 100000 }}\n    endpoints:\n"
    );
    for addr in endpoints {
        text.push_str(&format!("      - {{ address: {addr}, port: 8080 }}\n"));
    }
    // Per-endpoint series too: these tests check counts per endpoint.
    text.push_str("stats: { endpoint_metrics: true }\n");
    text
}

fn env_with_backend(name: &str) -> Option<Env> {
    let mut env = weft_tests::setup(name)?;
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "a");
    env.start_agent(&config("{ kind: none }", &["127.0.0.2"]));
    Some(env)
}

fn web_a() -> [(&'static str, &'static str); 2] {
    [("service", "web"), ("endpoint", "127.0.0.2:8080")]
}

/// Scrapes until `done` holds (events reach the agent asynchronously), at most 10 s.
fn scrape_until(env: &Env, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    metrics::scrape_until(&env.netns, Duration::from_secs(10), what, done)
}

#[test]
fn exact_bytes_show_live_and_in_the_metrics_after_close() {
    let Some(env) = env_with_backend("stats-bytes") else {
        return;
    };
    const SENT: usize = 100_000;
    // The echo backend answers with its name line ("a\n"), then echoes what it reads.
    const RECEIVED: usize = SENT + 2;
    let labels = web_a();
    let before = metrics::scrape(&env.netns);
    let service: SocketAddr = SERVICE.parse().unwrap();
    let (stream, local) = env.client(move || {
        let (_, _, mut stream) = client::connect_once(service).expect("connect");
        stream.write_all(&vec![7u8; SENT]).expect("send");
        let mut echoed = vec![0u8; SENT];
        stream.read_exact(&mut echoed).expect("echo");
        let local = stream.local_addr().unwrap();
        (stream, local)
    });

    // Open: the live table lists it with the contract's fields.
    let conns = env.agent().cli_json(&["conns"]);
    let list = conns.as_array().expect("conns is an array");
    let live = list
        .iter()
        .find(|c| c["src"] == local.to_string())
        .unwrap_or_else(|| panic!("{local} not among live connections: {conns:#}"));
    for field in [
        "service",
        "endpoint",
        "src",
        "dst",
        "state",
        "bytes_sent",
        "bytes_received",
        "srtt_us",
        "retransmits",
        "age_ms",
    ] {
        assert!(live.get(field).is_some(), "no {field} in {live:#}");
    }
    assert_eq!(live["service"], "web");
    assert_eq!(live["endpoint"], "127.0.0.2:8080");
    assert_eq!(live["dst"], "127.0.0.2:8080");
    assert_eq!(live["state"], "established");
    assert_eq!(
        live["bytes_sent"], SENT as u64,
        "all sent data is acknowledged"
    );
    let live_received = live["bytes_received"].as_u64().unwrap();
    assert!(
        live_received <= RECEIVED as u64 && live_received > 0,
        "live bytes_received {live_received}"
    );
    println!("live record: {live}");

    // Closed: the metrics moved by exactly what went over the wire.
    drop(stream);
    let after = scrape_until(&env, "the close event", |s| {
        s.value("weft_endpoint_tcp_connections_closed_total", &labels)
            > before.value("weft_endpoint_tcp_connections_closed_total", &labels)
    });
    let delta = |name: &str| after.value(name, &labels) - before.value(name, &labels);
    assert_eq!(delta("weft_endpoint_tcp_sent_bytes_total"), SENT as f64);
    assert_eq!(
        delta("weft_endpoint_tcp_received_bytes_total"),
        RECEIVED as f64
    );
    assert_eq!(delta("weft_endpoint_tcp_connections_opened_total"), 1.0);
    assert_eq!(delta("weft_endpoint_tcp_connections_closed_total"), 1.0);
    let web = [("service", "web")];
    assert_eq!(
        after.value("weft_tcp_connection_duration_seconds_count", &web)
            - before.value("weft_tcp_connection_duration_seconds_count", &web),
        1.0,
        "one duration observed"
    );
    assert!(after.value("weft_tcp_srtt_seconds_sum", &web) > 0.0);
    // The service's own series moved by the same amounts.
    assert_eq!(
        after.value("weft_tcp_sent_bytes_total", &web)
            - before.value("weft_tcp_sent_bytes_total", &web),
        SENT as f64
    );
}

#[test]
fn a_thousand_connections_are_counted_exactly_and_leave_the_table() {
    let Some(env) = env_with_backend("stats-thousand") else {
        return;
    };
    let labels = web_a();
    let before = metrics::scrape(&env.netns);
    let service: SocketAddr = SERVICE.parse().unwrap();
    let tally = env.client(move || client::tally_tcp(service, 1000));
    assert_eq!(tally.values().sum::<usize>(), 1000);
    let after = scrape_until(&env, "1,000 closes", |s| {
        s.value("weft_endpoint_tcp_connections_closed_total", &labels)
            - before.value("weft_endpoint_tcp_connections_closed_total", &labels)
            >= 1000.0
    });
    let delta = |name: &str| after.value(name, &labels) - before.value(name, &labels);
    assert_eq!(delta("weft_endpoint_tcp_connections_opened_total"), 1000.0);
    assert_eq!(delta("weft_endpoint_tcp_connections_closed_total"), 1000.0);
    assert_eq!(delta("weft_endpoint_tcp_connect_failures_total"), 0.0);
    assert_eq!(
        after.value("weft_endpoint_tcp_connections_open", &labels),
        0.0
    );
    assert_eq!(after.value("weft_events_lost_total", &[]), 0.0);
    let conns = env.agent().cli_json(&["conns"]);
    assert_eq!(conns, Value::Array(vec![]), "the live table is empty again");
    let entries = after.value("weft_datapath_map_entries", &[("map", "WEFT_CONNS_V1")]);
    assert_eq!(entries, 0.0);
    assert_eq!(
        after.value("weft_datapath_map_entries", &[("map", "WEFT_REVNAT_V1")]),
        0.0,
        "closed TCP sockets leave no reverse-NAT entry behind"
    );
}

#[test]
fn refused_connects_are_counted_per_endpoint() {
    let Some(mut env) = weft_tests::setup("stats-refused") else {
        return;
    };
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "a");
    // 127.0.0.5:8080 has no listener: every connect the kernel sends there is refused.
    env.start_agent(&config("{ kind: none }", &["127.0.0.2", "127.0.0.5"]));
    let service: SocketAddr = SERVICE.parse().unwrap();
    let refused = env.client(move || {
        (0..300)
            .filter(|_| client::connect_once(service).is_err())
            .count()
    });
    assert!(
        refused > 50,
        "about half the connects are refused: {refused}"
    );
    let dead = [("service", "web"), ("endpoint", "127.0.0.5:8080")];
    // Failures wake the agent at once, opened connections reach it on its next poll: wait
    // for both.
    let after = scrape_until(&env, "the failures and the opened counted", |s| {
        s.value("weft_endpoint_tcp_connect_failures_total", &dead) >= refused as f64
            && s.value("weft_endpoint_tcp_connections_opened_total", &web_a())
                >= (300 - refused) as f64
    });
    assert_eq!(
        after.value("weft_endpoint_tcp_connect_failures_total", &dead),
        refused as f64
    );
    assert_eq!(
        after.value("weft_endpoint_tcp_connect_failures_total", &web_a()),
        0.0
    );
    assert_eq!(
        after.value("weft_endpoint_tcp_connections_opened_total", &web_a()),
        (300 - refused) as f64
    );
    let endpoints = env.agent().cli_json(&["endpoints", "web"]);
    let dead_row = endpoints
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == "127.0.0.5")
        .expect("dead endpoint listed");
    assert_eq!(dead_row["connect_failures"], refused as u64);
}

#[test]
fn connection_stats_off_keeps_no_records_but_still_reports_failed_connects() {
    let Some(mut env) = weft_tests::setup("stats-off") else {
        return;
    };
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "a");
    let off = config("{ kind: none }", &["127.0.0.2", "127.0.0.5"]).replace(
        "stats: { endpoint_metrics: true }",
        "stats: { endpoint_metrics: true, connections: false }",
    );
    env.start_agent(&off);
    assert_eq!(env.agent().cli_json(&["status"])["connection_stats"], false);
    let before = metrics::scrape(&env.netns);
    let service: SocketAddr = SERVICE.parse().unwrap();
    // Connections held open: with statistics on each would have a live record by now.
    let (held, refused) = env.client(move || {
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..200 {
            match client::connect_once(service) {
                Ok(connection) if held.len() < 40 => held.push(connection),
                Ok(_) => {}
                Err(_) => refused += 1,
            }
        }
        (held, refused)
    });
    assert!(
        held.len() > 5 && refused > 30,
        "{} held, {refused} refused",
        held.len()
    );
    let dead = [("service", "web"), ("endpoint", "127.0.0.5:8080")];
    let after = scrape_until(&env, "the refused connects counted", |s| {
        s.value("weft_endpoint_tcp_connect_failures_total", &dead) >= refused as f64
    });
    assert_eq!(
        after.value("weft_endpoint_tcp_connect_failures_total", &dead),
        refused as f64,
        "passive failure detection still sees every refused connect"
    );
    assert_eq!(env.agent().cli_json(&["conns"]), Value::Array(vec![]));
    assert_eq!(
        after.value("weft_datapath_map_entries", &[("map", "WEFT_CONNS_V1")]),
        0.0
    );
    assert_eq!(
        after.value("weft_endpoint_tcp_connections_opened_total", &web_a()),
        before.value("weft_endpoint_tcp_connections_opened_total", &web_a()),
        "no opened events"
    );
    // Closing still removes each socket's reverse-NAT entry.
    drop(held);
    scrape_until(&env, "the reverse-NAT entries removed", |s| {
        s.value("weft_datapath_map_entries", &[("map", "WEFT_REVNAT_V1")]) == 0.0
    });

    // Turned back on by a reload: new connections are followed again.
    let agent = env.agent_mut();
    let mark = agent.log_mark();
    agent.write_config(&config("{ kind: none }", &["127.0.0.2"]));
    agent.wait_for_log(mark, "config applied", Duration::from_secs(10));
    assert_eq!(env.agent().cli_json(&["status"])["connection_stats"], true);
    let opened = env.client(move || client::tally_tcp(service, 10).values().sum::<usize>());
    scrape_until(&env, "ten opened connections counted", |s| {
        s.value("weft_endpoint_tcp_connections_opened_total", &web_a())
            - after.value("weft_endpoint_tcp_connections_opened_total", &web_a())
            == opened as f64
    });
}

#[test]
fn a_burst_that_overruns_the_ring_is_counted_as_lost_and_the_agent_carries_on() {
    let Some(env) = env_with_backend("stats-overrun") else {
        return;
    };
    let labels = web_a();
    let before = metrics::scrape(&env.netns);
    // A stopped agent reads nothing, so the 1 MiB ring (~9,300 records) fills up: 6,000
    // connections make 12,000 events.
    const CONNECTIONS: usize = 6000;
    let pid = env.agent().pid() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let service: SocketAddr = SERVICE.parse().unwrap();
    let tally = env.client(move || client::tally_tcp(service, CONNECTIONS));
    // Every close has happened in the kernel before the agent wakes up.
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(tally.values().sum::<usize>(), CONNECTIONS);

    let events = |s: &Scrape| {
        s.value("weft_endpoint_tcp_connections_opened_total", &labels)
            + s.value("weft_endpoint_tcp_connections_closed_total", &labels)
            + s.value("weft_events_lost_total", &[])
    };
    let expected = events(&before) + 2.0 * CONNECTIONS as f64;
    let after = scrape_until(&env, "every event delivered or counted lost", |s| {
        events(s) >= expected
    });
    let lost = after.value("weft_events_lost_total", &[]);
    println!("ring overrun: {CONNECTIONS} connections, {lost} events lost");
    assert!(lost > 0.0, "the ring must have overrun");
    assert_eq!(
        events(&after),
        expected,
        "delivered + lost = emitted, exactly"
    );

    // Still running, still counting, memory bounded.
    let more_before = after.value("weft_endpoint_tcp_connections_opened_total", &labels);
    env.client(move || client::tally_tcp(service, 10));
    scrape_until(&env, "new connections counted after the overrun", |s| {
        s.value("weft_endpoint_tcp_connections_opened_total", &labels) >= more_before + 10.0
    });
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    println!("agent RSS after the overrun: {} MiB", rss_kb / 1024);
    assert!(rss_kb < 100 * 1024, "agent RSS {rss_kb} kB");
    let status = env.agent().cli_json(&["status"]);
    assert_eq!(status["events_lost"], lost as u64);
}

#[test]
fn metrics_pass_promtool_and_health_endpoints_answer() {
    let Some(env) = env_with_backend("stats-promtool") else {
        return;
    };
    // Before any traffic: every configured service (and, with the switch, endpoint) is
    // exported with its counters at 0, so rate() and absence alerts work from the start.
    let fresh = metrics::scrape(&env.netns);
    for (name, labels) in [
        (
            "weft_tcp_connections_opened_total",
            &[("service", "web")][..],
        ),
        ("weft_tcp_connect_failures_total", &[("service", "web")][..]),
        ("weft_endpoint_tcp_connections_opened_total", &web_a()[..]),
        ("weft_endpoint_tcp_connect_failures_total", &web_a()[..]),
    ] {
        assert_eq!(fresh.find(name, labels), Some(0.0), "{name}:\n{}", fresh.0);
    }
    let service: SocketAddr = SERVICE.parse().unwrap();
    env.client(move || client::tally_tcp(service, 5));
    let scrape = scrape_until(&env, "five closes", |s| {
        s.value("weft_endpoint_tcp_connections_closed_total", &web_a()) >= 5.0
    });
    for name in [
        "weft_endpoint_tcp_connections_opened_total",
        "weft_endpoint_tcp_connections_closed_total",
        "weft_endpoint_tcp_sent_bytes_total",
        "weft_endpoint_tcp_received_bytes_total",
        "weft_endpoint_tcp_connections_open",
        "weft_endpoint_effective_weight",
    ] {
        assert!(
            scrape.find(name, &web_a()).is_some(),
            "{name} missing:\n{}",
            scrape.0
        );
    }
    for name in [
        "weft_tcp_connections_opened_total",
        "weft_tcp_connections_closed_total",
        "weft_tcp_connect_failures_total",
        "weft_tcp_sent_bytes_total",
        "weft_tcp_received_bytes_total",
        "weft_tcp_connections_open",
        "weft_tcp_connection_duration_seconds_count",
        "weft_tcp_srtt_seconds_count",
        "weft_service_panic",
        "weft_service_endpoints",
        "weft_service_endpoints_usable",
    ] {
        assert!(
            scrape.find(name, &[("service", "web")]).is_some(),
            "{name} missing:\n{}",
            scrape.0
        );
    }
    let healthy = [
        ("service", "web"),
        ("endpoint", "127.0.0.2:8080"),
        ("state", "healthy"),
    ];
    assert_eq!(scrape.value("weft_endpoint_state", &healthy), 1.0);
    assert_eq!(
        scrape.value("weft_datapath_map_capacity", &[("map", "WEFT_SERVICE_V1")]),
        65536.0
    );
    assert_eq!(
        scrape.value("weft_datapath_map_entries", &[("map", "WEFT_SERVICE_V1")]),
        1.0
    );
    assert!(scrape.find("weft_events_lost_total", &[]).is_some());

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask test` installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.0.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        scrape.0
    );

    let (status, openmetrics) = metrics::get_accepting(
        &env.netns,
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
    );
    assert_eq!(status, 200);
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    assert!(openmetrics.contains("# TYPE weft_tcp_connections_opened counter"));

    assert_eq!(metrics::get(&env.netns, "/healthz").0, 200);
    assert_eq!(metrics::get(&env.netns, "/readyz").0, 200);
}

#[test]
fn config_reloads_are_counted_by_result() {
    let Some(mut env) = env_with_backend("stats-reloads") else {
        return;
    };
    let agent = env.agent_mut();
    let mark = agent.log_mark();
    agent.write_config("services: [ { name: web } ]\n");
    agent.wait_for_log(mark, "config rejected", Duration::from_secs(5));
    let mark = agent.log_mark();
    agent.write_config(&config("{ kind: none }", &["127.0.0.2", "127.0.0.3"]));
    agent.wait_for_log(mark, "config applied", Duration::from_secs(5));
    let scrape = metrics::scrape(&env.netns);
    assert_eq!(
        scrape.value("weft_config_reloads_total", &[("result", "failure")]),
        1.0
    );
    assert_eq!(
        scrape.value("weft_config_reloads_total", &[("result", "success")]),
        1.0
    );
    let status = env.agent().cli_json(&["status"]);
    assert_eq!(status["generation"], 2);
    assert_eq!(status["config_reloads_failed"], 1);
    assert_eq!(status["endpoints"], 2);
}

#[test]
fn every_json_output_parses_and_follow_prints_one_event_per_line() {
    let Some(mut env) = weft_tests::setup("stats-json") else {
        return;
    };
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "a");
    // 127.0.0.3 never answers its probe: unhealthy, effective weight 0.
    let probe = "{ kind: tcp, interval: 200ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1 }";
    env.start_agent(&config(probe, &["127.0.0.2", "127.0.0.3"]));
    let agent = env.agent();

    let services = agent.cli_json(&["services"]);
    let web = &services[0];
    for field in ["name", "address", "port", "protocol", "endpoints"] {
        assert!(web.get(field).is_some(), "no {field} in {web:#}");
    }
    assert_eq!(web["name"], "web");
    assert_eq!(web["address"], "10.96.0.10");
    assert_eq!(web["port"], 80);
    assert_eq!(web["protocol"], "tcp");
    let endpoint = |addr: &str| {
        web["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == addr)
            .cloned()
            .unwrap_or_else(|| panic!("{addr} not in {web:#}"))
    };
    let (up, down) = (endpoint("127.0.0.2"), endpoint("127.0.0.3"));
    assert_eq!(
        (&up["state"], &up["weight"], &up["effective_weight"]),
        (&Value::from("healthy"), &Value::from(1), &Value::from(1))
    );
    assert_eq!(
        (&down["state"], &down["effective_weight"]),
        (&Value::from("unhealthy"), &Value::from(0))
    );
    assert_eq!(down["port"], 8080);

    let status = agent.cli_json(&["status"]);
    assert_eq!(status["ready"], true);
    assert_eq!(status["programs"].as_array().unwrap().len(), 12);
    assert!(status["maps"].as_array().unwrap().len() >= 6);
    assert_eq!(agent.cli_json(&["endpoints"]).as_array().unwrap().len(), 2);
    assert_eq!(agent.cli_json(&["stats"])["services"][0]["service"], "web");
    assert!(agent.cli_json(&["conns", "--service", "web"]).is_array());

    // --follow: one JSON object per line per event.
    let follow = Follow::start(agent);
    let service: SocketAddr = SERVICE.parse().unwrap();
    env.client(move || client::tally_tcp(service, 5));
    let events = follow.events(10, Duration::from_secs(10));
    drop(follow);
    let count = |kind: &str| events.iter().filter(|e| e["event"] == kind).count();
    assert_eq!(
        (count("opened"), count("closed")),
        (5, 5),
        "events: {events:#?}"
    );
    for e in &events {
        assert_eq!(e["service"], "web");
        assert_eq!(e["endpoint"], "127.0.0.2:8080");
    }
    let closed = events.iter().find(|e| e["event"] == "closed").unwrap();
    assert_eq!(closed["bytes_received"], 2, "the name line");
    assert_eq!(closed["bytes_sent"], 0);
}

#[test]
fn the_cli_names_the_socket_it_tried_when_no_agent_runs() {
    let socket = std::env::temp_dir().join("weft-no-agent-here.sock");
    for command in ["status", "services", "endpoints", "conns", "stats"] {
        let out = Command::new(weft_bin())
            .args([command, "--admin-socket"])
            .arg(&socket)
            .output()
            .expect("running weft");
        assert!(!out.status.success(), "weft {command} without an agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&*socket.to_string_lossy()),
            "weft {command}: {stderr}"
        );
    }
    let out = Command::new(weft_bin())
        .args(["completions", "bash"])
        .output()
        .expect("running weft");
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("conns") && script.contains("--follow"),
        "{script}"
    );
}

/// UDP has no connection for sock_ops to follow: a translated socket's traffic with each
/// endpoint is counted instead (sockets at their first datagram, datagrams and payload bytes
/// both ways when the socket is released), in the metrics and `weft stats`.
#[test]
fn udp_sockets_are_counted_with_their_datagrams_and_bytes() {
    let Some(mut env) = weft_tests::setup("stats-udp") else {
        return;
    };
    env.backends.udp(&env.netns, "127.0.0.2:5353", "a");
    env.start_agent(
        "services:\n  - name: dns\n    address: 10.96.0.53\n    port: 53\n    protocol: udp\n    health: { kind: none }\n    endpoints:\n      - { address: 127.0.0.2, port: 5353 }\nstats: { endpoint_metrics: true }\n",
    );
    const QUERIES: usize = 20;
    const QUERY: usize = 100;
    // The backend answers every datagram with its name: one byte.
    const ANSWER: usize = 1;
    let service: SocketAddr = "10.96.0.53:53".parse().unwrap();
    let labels = [("service", "dns"), ("endpoint", "127.0.0.2:5353")];
    let before = metrics::scrape(&env.netns);
    env.client(move || {
        // One connected socket (send/recv: no sendmsg hook runs after the connect) and one
        // unconnected (send_to each time): both are counted.
        let connected = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        connected.connect(service).expect("connect");
        let unconnected = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        for socket in [&connected, &unconnected] {
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
        }
        let mut answer = [0u8; 64];
        for _ in 0..QUERIES {
            connected.send(&[1u8; QUERY]).expect("send");
            assert_eq!(connected.recv(&mut answer).expect("answer"), ANSWER);
            unconnected
                .send_to(&[2u8; QUERY], service)
                .expect("send_to");
            let (n, from) = unconnected.recv_from(&mut answer).expect("answer");
            assert_eq!((n, from), (ANSWER, service));
        }
    });
    let after = scrape_until(&env, "both sockets released", |s| {
        s.value("weft_endpoint_udp_sockets_closed_total", &labels)
            >= before.value("weft_endpoint_udp_sockets_closed_total", &labels) + 2.0
    });
    let delta = |name: &str| after.value(name, &labels) - before.value(name, &labels);
    assert_eq!(delta("weft_endpoint_udp_sockets_opened_total"), 2.0);
    assert_eq!(delta("weft_endpoint_udp_sockets_closed_total"), 2.0);
    assert_eq!(
        delta("weft_endpoint_udp_datagrams_sent_total"),
        (2 * QUERIES) as f64
    );
    assert_eq!(
        delta("weft_endpoint_udp_datagrams_received_total"),
        (2 * QUERIES) as f64
    );
    assert_eq!(
        delta("weft_endpoint_udp_sent_bytes_total"),
        (2 * QUERIES * QUERY) as f64
    );
    assert_eq!(
        delta("weft_endpoint_udp_received_bytes_total"),
        (2 * QUERIES * ANSWER) as f64
    );
    // UDP traffic is not counted as TCP, and the service is in `weft stats` too.
    assert_eq!(
        after.find("weft_tcp_connections_opened_total", &[("service", "dns")]),
        None
    );
    let dns = env.agent().service_stats("dns");
    assert_eq!(dns["connections_opened"], 2, "{dns:#}");
    assert_eq!(dns["bytes_sent"], (2 * QUERIES * QUERY) as u64, "{dns:#}");
    assert_eq!(
        dns["mean_srtt_us"],
        Value::Null,
        "UDP has no round trip: {dns:#}"
    );
}
