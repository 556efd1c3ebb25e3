//! Defects found by real clients and hostile inputs, each reproduced end to end: UDP
//! reverse-NAT entries that outlived their sockets, admin and metrics bursts stalling the
//! control loop, a full service map losing a moved service, rejected configs copied into the
//! log, YAML alias bombs, a running agent not noticing `weft reset`, and probes failing for
//! want of a local port.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, UdpSocket},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use weft_tests::Env;

const DNS: &str = "10.96.0.53:53";

fn dns_config() -> String {
    "services:
  - name: dns
    address: 10.96.0.53
    port: 53
    protocol: udp
    endpoints:
      - { address: 127.0.0.2, port: 5353 }
      - { address: 127.0.0.3, port: 5353 }
"
    .to_string()
}

fn revnat_entries(env: &Env) -> u64 {
    let status = env.agent().cli_json(&["status"]);
    status["maps"]
        .as_array()
        .expect("maps")
        .iter()
        .find(|m| m["name"] == "WEFT_REVNAT_V1")
        .and_then(|m| m["entries"].as_u64())
        .expect("WEFT_REVNAT_V1 entries")
}

/// Waits until the reverse-NAT map holds `want` entries (the agent samples kernel tables at
/// most once a second), at most 5 s.
fn wait_for_revnat(env: &Env, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let entries = revnat_entries(env);
        if entries == want || Instant::now() > deadline {
            return entries;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What UDP clients saw: replies from the service address, from anywhere else, and none.
#[derive(Debug, Default, PartialEq, Eq)]
struct Replies {
    from_service: usize,
    from_elsewhere: usize,
    missing: usize,
}

impl Replies {
    fn add(&mut self, service: SocketAddr, reply: std::io::Result<SocketAddr>) {
        match reply {
            Ok(from) if from == service => self.from_service += 1,
            Ok(_) => self.from_elsewhere += 1,
            Err(_) => self.missing += 1,
        }
    }
}

fn udp_socket() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("client bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    socket
}

/// Processes of `weft-udp-clients`, each holding its share of the sockets open.
struct UdpClients(Vec<(Child, BufReader<ChildStdout>)>);

impl UdpClients {
    /// Starts `processes` clients of `each` sockets, querying `burst` sockets before reading
    /// their answers; they inherit the caller's network namespace and cgroup, so call it from
    /// inside `Env::client`. Returns once every socket is open and has had its first answer,
    /// with the tally of those answers.
    fn start(
        service: SocketAddr,
        processes: usize,
        each: usize,
        burst: usize,
    ) -> (UdpClients, Replies) {
        let mut clients = Vec::new();
        for i in 0..processes {
            let mut child = Command::new(env!("CARGO_BIN_EXE_weft-udp-clients"))
                .arg(service.to_string())
                .arg(each.to_string())
                .arg(format!("127.0.1.{}", i + 1))
                .arg(burst.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("starting weft-udp-clients");
            let stdout = BufReader::new(child.stdout.take().expect("stdout"));
            clients.push((child, stdout));
        }
        let mut clients = UdpClients(clients);
        let replies = clients.collect("ready");
        (clients, replies)
    }

    /// Every client queries once more on each of its sockets.
    fn query_again(&mut self) -> Replies {
        for (child, _) in &mut self.0 {
            let stdin = child.stdin.as_mut().expect("stdin");
            stdin.write_all(b"go\n").expect("telling a client to go");
            stdin.flush().expect("flush");
        }
        self.collect("done")
    }

    fn collect(&mut self, word: &str) -> Replies {
        let mut total = Replies::default();
        for (_, stdout) in &mut self.0 {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("a client's tally");
            let numbers: Vec<usize> = line
                .strip_prefix(word)
                .unwrap_or_else(|| panic!("expected {word:?}, a client said {line:?}"))
                .split_whitespace()
                .map(|n| n.parse().expect("a count"))
                .collect();
            total.from_service += numbers[0];
            total.from_elsewhere += numbers[1];
            total.missing += numbers[2];
        }
        total
    }
}

impl Drop for UdpClients {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn udp_reverse_nat_entries_live_as_long_as_their_sockets() {
    let Some(mut env) = weft_tests::setup("harden-udp") else {
        return;
    };
    env.backends.udp(&env.netns, "127.0.0.2:5353", "a");
    env.backends.udp(&env.netns, "127.0.0.3:5353", "b");
    env.start_agent(&dns_config());
    let service: SocketAddr = DNS.parse().unwrap();

    // 100,000 one-query sockets, each closed after its answer (a DNS client's life).
    const ONE_SHOT: usize = 100_000;
    let started = Instant::now();
    let one_shot = env.client(move || {
        let mut replies = Replies::default();
        for _ in 0..ONE_SHOT {
            let socket = udp_socket();
            socket.send_to(b"q", service).expect("send_to the service");
            let mut buf = [0u8; 64];
            replies.add(service, socket.recv_from(&mut buf).map(|(_, from)| from));
        }
        replies
    });
    println!(
        "{ONE_SHOT} one-query sockets in {:.1} s: {one_shot:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(one_shot.from_service, ONE_SHOT, "{one_shot:?}");
    let left = wait_for_revnat(&env, 0);
    println!("reverse-NAT entries after {ONE_SHOT} sockets closed: {left}");
    assert_eq!(left, 0, "closed sockets left reverse-NAT entries behind");

    // 60,000 sockets open at once: each queries once as it opens, and again once all are
    // open, so every entry must still be there when the second answer arrives.
    const CONCURRENT: usize = 60_000;
    // One process may hold 20,000 descriptors here (no CAP_SYS_RESOURCE to raise it).
    const PROCESSES: usize = 4;
    // Every socket queries before any answer is read: a least-recently-used map that still
    // held the closed sockets' entries would evict live ones first.
    let (mut clients, first) = env
        .client(move || UdpClients::start(service, PROCESSES, CONCURRENT / PROCESSES, usize::MAX));
    let second = clients.query_again();
    drop(clients);
    println!("{CONCURRENT} concurrent sockets, first queries: {first:?}");
    println!(
        "{CONCURRENT} concurrent sockets, second queries: {second:?} \
         (wrong-source replies: {})",
        second.from_elsewhere
    );
    for replies in [&first, &second] {
        assert_eq!(
            replies.from_elsewhere, 0,
            "replies from an endpoint address"
        );
        assert_eq!(replies.missing, 0, "queries without an answer");
    }
    let left = wait_for_revnat(&env, 0);
    assert_eq!(
        left, 0,
        "{left} reverse-NAT entries after every socket closed"
    );
    let scrape = weft_tests::metrics::scrape(&env.netns);
    assert_eq!(
        scrape.value("weft_reverse_nat_evictions_total", &[]),
        0.0,
        "no entry should be evicted with fewer sockets open than the map holds"
    );
    env.agent.take();
}

#[test]
fn beyond_the_reverse_nat_capacity_replies_still_show_the_service_and_evictions_are_counted() {
    let Some(mut env) = weft_tests::setup("harden-udp-full") else {
        return;
    };
    env.backends.udp(&env.netns, "127.0.0.2:5353", "a");
    env.backends.udp(&env.netns, "127.0.0.3:5353", "b");
    env.start_agent(&dns_config());
    let service: SocketAddr = DNS.parse().unwrap();
    // More sockets open at once than WEFT_REVNAT_V1 holds (131,072): the map must evict.
    const PROCESSES: usize = 8;
    const EACH: usize = 17_000;
    let started = Instant::now();
    let (mut clients, first) =
        env.client(move || UdpClients::start(service, PROCESSES, EACH, 1024));
    let second = clients.query_again();
    drop(clients);
    println!(
        "{} sockets open at once, in {:.1} s: first {first:?}, second {second:?}",
        PROCESSES * EACH,
        started.elapsed().as_secs_f64()
    );
    for replies in [&first, &second] {
        assert_eq!(
            replies.from_elsewhere, 0,
            "replies from an endpoint address"
        );
        assert_eq!(replies.missing, 0, "queries without an answer");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let (evicted, recovered) = loop {
        let scrape = weft_tests::metrics::scrape(&env.netns);
        let evicted = scrape.value("weft_reverse_nat_evictions_total", &[]);
        let recovered = scrape.value("weft_reverse_nat_recovered_total", &[]);
        if evicted > 0.0 || Instant::now() > deadline {
            break (evicted, recovered);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "reverse-NAT evictions counted: {evicted}, replies recovered from the socket: {recovered}"
    );
    assert!(evicted > 0.0, "evictions beyond capacity are counted");
    assert_eq!(
        wait_for_revnat(&env, 0),
        0,
        "every entry left with its socket"
    );
    env.agent.take();
}

const WEB: &str = "10.96.0.10:80";

fn web_config(weights: (u16, u16)) -> String {
    format!(
        "services:
  - name: web
    address: 10.96.0.10
    port: 80
    health: {{ kind: none }}
    endpoints:
      - {{ address: 127.0.0.2, port: 8080, weight: {} }}
      - {{ address: 127.0.0.3, port: 8080, weight: {} }}
",
        weights.0, weights.1
    )
}

fn env_with_web(name: &str, weights: (u16, u16)) -> Option<Env> {
    let mut env = weft_tests::setup(name)?;
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "a");
    env.backends.tcp(&env.netns, "127.0.0.3:8080", "b");
    env.start_agent(&web_config(weights));
    Some(env)
}

/// Time from now until `streak` connects in a row reach `backend` (at most `limit`).
fn until_connects_reach(env: &Env, backend: &'static str, limit: Duration) -> Duration {
    let service: SocketAddr = WEB.parse().unwrap();
    let started = Instant::now();
    env.client(move || {
        let mut streak = 0;
        while streak < 20 {
            assert!(
                started.elapsed() < limit,
                "connects did not reach {backend} within {limit:?}"
            );
            match weft_tests::client::connect_once(service) {
                Ok((name, _, _)) if name == backend => streak += 1,
                _ => streak = 0,
            }
        }
        started.elapsed()
    })
}

/// A reverse-NAT map filled to capacity with entries of sockets that do not exist, so that
/// anything walking it per request is slow.
fn fill_revnat(env: &Env) {
    let path = env.agent().bpffs_dir.join("maps/WEFT_REVNAT_V1");
    let mut map = weft_tests::bpf::RawMap::<32, 28>::open(&path);
    for cookie in 1..=131_072u64 {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&(u64::MAX - cookie).to_ne_bytes());
        map.insert(key, [0u8; 28]).expect("filling WEFT_REVNAT_V1");
    }
}

#[test]
fn a_burst_of_admin_and_metrics_requests_does_not_delay_a_weight_change() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let Some(env) = env_with_web("harden-burst", (1, 0)) else {
        return;
    };
    fill_revnat(&env);
    // The same change without a burst, for comparison.
    env.agent().write_config(&web_config((0, 1)));
    let quiet = until_connects_reach(&env, "b", Duration::from_secs(30));
    env.agent().write_config(&web_config((1, 0)));
    until_connects_reach(&env, "a", Duration::from_secs(30));

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    const CLIENTS: usize = 1000;
    let socket = env.agent().admin_socket();
    // Mostly status, and a share of each request that reads the kernel's tables.
    let paths = [
        "/v1/status",
        "/v1/status",
        "/v1/conns",
        "/v1/endpoints",
        "/v1/stats",
    ];
    let mut burst: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (stop, answered, socket) =
                (Arc::clone(&stop), Arc::clone(&answered), socket.clone());
            let path = paths[i % paths.len()];
            std::thread::spawn(move || {
                let started = Instant::now();
                // Bounded: until told, or 60 s whatever happens.
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                    if weft_tests::agent::admin_get(&socket, path).is_ok() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // And scrapers, every 10 ms each.
    for _ in 0..10 {
        let stop = Arc::clone(&stop);
        burst.push(env.netns.spawn(move || {
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                let _ = std::net::TcpStream::connect(weft_tests::metrics::METRICS_ADDR).and_then(
                    |mut s| {
                        use std::io::{Read as _, Write as _};
                        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
                        s.read_to_end(&mut Vec::new())
                    },
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let in_flight_before = answered.load(Ordering::Relaxed);
    env.agent().write_config(&web_config((0, 1)));
    let weight_change = until_connects_reach(&env, "b", Duration::from_secs(30));
    let scrape_started = Instant::now();
    let (status, body) = weft_tests::metrics::get(&env.netns, "/metrics");
    let scrape = scrape_started.elapsed();
    let answered_during = answered.load(Ordering::Relaxed) - in_flight_before;
    stop.store(true, Ordering::Relaxed);
    burst
        .into_iter()
        .for_each(|t| t.join().expect("burst client"));
    println!(
        "{CLIENTS} concurrent admin requests and 10 scrapers with WEFT_REVNAT_V1 full: weight \
         change used after {:.0} ms (without the burst: {:.0} ms), a scrape answered in {:.0} ms \
         ({answered_during} admin answers meanwhile)",
        weight_change.as_secs_f64() * 1000.0,
        quiet.as_secs_f64() * 1000.0,
        scrape.as_secs_f64() * 1000.0,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        weight_change < Duration::from_secs(1),
        "weight change took {weight_change:?}"
    );
    assert!(scrape < Duration::from_secs(1), "scrape took {scrape:?}");
    assert!(answered_during > 0, "the burst got no answers");
}

/// Services `s0..` at 10.100.0.0 + i, each with one endpoint; `moved` puts service 7 at
/// 10.200.0.7 instead, `late` adds one more service at 10.200.1.1.
fn many_services(count: usize, moved: bool, late: bool) -> String {
    use std::fmt::Write as _;
    let mut text = String::from("services:\n");
    for i in 0..count {
        let address = if moved && i == 7 {
            "10.200.0.7".to_string()
        } else {
            format!("10.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 255, i & 255)
        };
        let _ = writeln!(
            text,
            "  - {{ name: s{i}, address: {address}, port: 80, health: {{ kind: none }}, endpoints: [ {{ address: 127.0.0.2, port: 8080 }} ] }}"
        );
    }
    if late {
        text.push_str("  - { name: late, address: 10.200.1.1, port: 80, health: { kind: none }, endpoints: [ { address: 127.0.0.2, port: 8080 } ] }\n");
    }
    text
}

fn connect_kind(env: &Env, target: &str) -> Result<String, std::io::ErrorKind> {
    let target: SocketAddr = target.parse().unwrap();
    env.client(move || {
        weft_tests::client::connect_once(target)
            .map(|(name, _, _)| name)
            .map_err(|e| e.kind())
    })
}

#[test]
fn a_full_service_map_never_loses_a_service_and_what_could_not_be_installed_is_retried() {
    let Some(mut env) = weft_tests::setup("harden-full") else {
        return;
    };
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "a");
    const CAPACITY: usize = 65_536;
    env.start_agent(&many_services(CAPACITY, false, false));
    let services_map = env.agent().bpffs_dir.join("maps/WEFT_SERVICE_V1");
    assert_eq!(connect_kind(&env, "10.100.0.7:80"), Ok("a".into()));

    // Moving one service with the map full: the old entry makes room for the new one.
    let mark = env.agent().log_mark();
    env.agent()
        .write_config(&many_services(CAPACITY, true, false));
    let applied = env
        .agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(60));
    assert!(applied.contains("\"failures\":0"), "{applied}");
    assert_eq!(
        connect_kind(&env, "10.200.0.7:80"),
        Ok("a".into()),
        "moved service"
    );
    assert!(
        connect_kind(&env, "10.100.0.7:80").is_err(),
        "the old address is no service any more"
    );
    let status = env.agent().cli_json(&["status"]);
    assert_eq!(status["services_installed"], CAPACITY as u64, "{status}");
    let in_kernel = weft_tests::bpf::RawMap::<20, 16>::open(&services_map).len();
    assert_eq!(in_kernel, CAPACITY, "entries in WEFT_SERVICE_V1");

    // One service fewer, then a foreign entry fills the map: a new service cannot be written.
    let mark = env.agent().log_mark();
    env.agent()
        .write_config(&many_services(CAPACITY - 1, true, false));
    env.agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(60));
    let mut foreign_key = [0u8; 20];
    foreign_key[..4].copy_from_slice(&[192, 0, 2, 1]);
    foreign_key[16..].copy_from_slice(&[0, 9, 6, 4]);
    weft_tests::bpf::RawMap::<20, 16>::open(&services_map)
        .insert(foreign_key, [0u8; 16])
        .expect("a foreign entry fills the map");
    let failures_before = weft_tests::metrics::scrape(&env.netns)
        .value("weft_config_reloads_total", &[("result", "failure")]);
    let mark = env.agent().log_mark();
    env.agent()
        .write_config(&many_services(CAPACITY - 1, true, true));
    let applied = env
        .agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(60));
    assert!(applied.contains("\"failures\":1"), "{applied}");
    let status = env.agent().cli_json(&["status"]);
    println!("map full, a new service waits: {}", status["not_installed"]);
    assert_eq!(status["services"], CAPACITY as u64);
    assert_eq!(status["services_installed"], (CAPACITY - 1) as u64);
    let not_installed = status["not_installed"].to_string();
    assert!(
        not_installed.contains("service late: map WEFT_SERVICE_V1 is full"),
        "{not_installed}"
    );
    let services = env.agent().cli_json(&["services"]);
    let late = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "late")
        .expect("late is configured");
    assert_eq!(late["installed"], false, "{late}");
    let scrape = weft_tests::metrics::scrape(&env.netns);
    assert_eq!(scrape.value("weft_services_not_installed", &[]), 1.0);
    assert_eq!(
        scrape.value("weft_config_reloads_total", &[("result", "failure")]),
        failures_before + 1.0,
        "a reload that could not be installed is not a success"
    );

    // Room again: the agent's retry installs it without any config change.
    let mark = env.agent().log_mark();
    weft_tests::bpf::RawMap::<20, 16>::open(&services_map).remove(&foreign_key);
    let retried = Instant::now();
    let line = env
        .agent_mut()
        .wait_for_log(mark, "retry applied", Duration::from_secs(30));
    println!(
        "installed by a retry {:.1} s after room was made: {line}",
        retried.elapsed().as_secs_f64()
    );
    assert!(line.contains("\"failures\":0"), "{line}");
    assert_eq!(connect_kind(&env, "10.200.1.1:80"), Ok("a".into()));
    let status = env.agent().cli_json(&["status"]);
    assert_eq!(status["services_installed"], CAPACITY as u64);
    assert_eq!(status["not_installed"], serde_json::json!([]));
}

/// The agent's log lines after `mark` that mention a rejected config.
fn rejections(env: &Env, mark: usize) -> Vec<String> {
    env.agent().log_text()[mark..]
        .lines()
        .filter(|l| l.contains("config rejected"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_rejected_config_is_quoted_in_a_short_excerpt() {
    let Some(mut env) = env_with_web("harden-excerpt", (1, 0)) else {
        return;
    };
    // 50 MB of text: over the size limit, refused without reading it.
    let mark = env.agent().log_mark();
    env.agent().write_config(&"x".repeat(50 << 20));
    env.agent_mut()
        .wait_for_log(mark, "config rejected", Duration::from_secs(30));
    // A 10 MB value under the limit: the parser's message quotes it, cut short.
    env.agent()
        .write_config(&format!("services: \"{}\"\n", "y".repeat(10 << 20)));
    let deadline = Instant::now() + Duration::from_secs(30);
    while rejections(&env, mark).len() < 2 {
        assert!(Instant::now() < deadline, "second rejection not logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = rejections(&env, mark);
    for line in &lines {
        println!("rejection logged in {} bytes: {line}", line.len());
        assert!(line.len() < 2000, "a {} byte log line", line.len());
    }
    assert!(
        lines[0].contains("over the limit of 33554432 bytes"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("more bytes"), "{}", lines[1]);
    let peak = env.agent().peak_rss_mib();
    println!("agent peak RSS {peak:.1} MiB");
    assert!(peak < 150.0, "peak RSS {peak:.1} MiB");
    // The running config still serves.
    until_connects_reach(&env, "a", Duration::from_secs(5));
}

/// The longest /healthz answer while `work` runs, polling every 10 ms.
fn slowest_healthz_during(env: &mut Env, work: impl FnOnce(&mut Env)) -> Duration {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = Arc::clone(&stop);
        env.netns.spawn(move || {
            let mut slowest = Duration::ZERO;
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                let asked = Instant::now();
                let ok = std::net::TcpStream::connect(weft_tests::metrics::METRICS_ADDR)
                    .and_then(|mut s| {
                        use std::io::{Read as _, Write as _};
                        s.set_read_timeout(Some(Duration::from_secs(20)))?;
                        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
                        let mut out = String::new();
                        s.read_to_string(&mut out)?;
                        Ok(out.contains(" 200 "))
                    })
                    .unwrap_or(false);
                assert!(ok, "/healthz did not answer 200");
                slowest = slowest.max(asked.elapsed());
                std::thread::sleep(Duration::from_millis(10));
            }
            slowest
        })
    };
    work(env);
    stop.store(true, Ordering::Relaxed);
    poller.join().expect("healthz poller")
}

#[test]
fn a_yaml_alias_bomb_is_refused_before_it_costs_anything() {
    let Some(mut env) = env_with_web("harden-alias", (1, 0)) else {
        return;
    };
    // One service's 1,000 endpoints anchored, and 10,000 services aliasing them: 10 million
    // endpoints from a file of about a hundred kilobytes.
    let mut bomb = String::from(
        "services:\n  - name: s0\n    address: 10.97.0.1\n    port: 80\n    endpoints: &s\n",
    );
    for i in 0..1000 {
        bomb.push_str(&format!(
            "      - {{ address: 10.1.{}.{}, port: 80 }}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    for i in 1..10_000 {
        bomb.push_str(&format!(
            "  - {{ name: s{i}, address: 10.98.{}.{}, port: 80, endpoints: *s }}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    println!("alias file: {} KB", bomb.len() / 1000);
    let mark = env.agent().log_mark();
    let mut took = Duration::ZERO;
    let slowest = slowest_healthz_during(&mut env, |env| {
        let written = Instant::now();
        env.agent().write_config(&bomb);
        while rejections(env, mark).is_empty() {
            assert!(written.elapsed() < Duration::from_secs(60), "no rejection");
            std::thread::sleep(Duration::from_millis(5));
        }
        took = written.elapsed();
    });
    let line = &rejections(&env, mark)[0];
    let peak = env.agent().peak_rss_mib();
    println!(
        "alias bomb rejected {:.0} ms after the write, peak RSS {peak:.1} MiB, slowest /healthz {:.0} ms, log line {} bytes",
        took.as_secs_f64() * 1000.0,
        slowest.as_secs_f64() * 1000.0,
        line.len()
    );
    assert!(
        line.contains("YAML aliases would expand the file"),
        "{line}"
    );
    assert!(line.len() < 2000);
    assert!(took < Duration::from_secs(2), "rejection took {took:?}");
    assert!(peak < 150.0, "peak RSS {peak:.1} MiB");
    assert!(
        slowest < Duration::from_millis(500),
        "/healthz took {slowest:?}"
    );

    // A large legitimate config (10,000 services): health checks answer while it parses.
    use std::fmt::Write as _;
    let mut large = web_config((1, 0));
    for s in 0..10_000 {
        let _ = writeln!(
            large,
            "  - {{ name: bulk-{s}, address: 10.99.{}.{}, port: 80, health: {{ kind: none }}, endpoints: [ {{ address: 10.2.{}.{}, port: 80 }}, {{ address: 10.3.{}.{}, port: 80 }} ] }}",
            s / 250,
            s % 250 + 1,
            s / 250,
            s % 250 + 1,
            s / 250,
            s % 250 + 1
        );
    }
    let mark = env.agent().log_mark();
    let slowest = slowest_healthz_during(&mut env, |env| {
        env.agent().write_config(&large);
        env.agent_mut()
            .wait_for_log(mark, "config applied", Duration::from_secs(60));
    });
    println!(
        "slowest /healthz while a {:.1} MB config parsed and applied: {:.0} ms",
        large.len() as f64 / 1e6,
        slowest.as_secs_f64() * 1000.0
    );
    assert!(
        slowest < Duration::from_millis(500),
        "/healthz took {slowest:?}"
    );
}

#[test]
fn a_reset_under_a_running_agent_is_noticed_and_repaired() {
    let Some(mut env) = env_with_web("harden-reset", (1, 0)) else {
        return;
    };
    let mark = env.agent().log_mark();
    let reset_at = Instant::now();
    let output = env.agent().reset();
    assert!(output.status.success(), "weft reset: {output:?}");
    env.agent_mut()
        .wait_for_log(mark, "reinstalling the datapath", Duration::from_secs(5));
    let noticed = reset_at.elapsed();
    env.agent_mut()
        .wait_for_log(mark, "datapath back in place", Duration::from_secs(10));
    let repaired = reset_at.elapsed();
    let traffic = reset_at.elapsed() + until_connects_reach(&env, "a", Duration::from_secs(10));
    println!(
        "weft reset under a running agent: noticed after {:.2} s, reinstalled after {:.2} s, traffic back after {:.2} s",
        noticed.as_secs_f64(),
        repaired.as_secs_f64(),
        traffic.as_secs_f64()
    );
    assert!(
        noticed < Duration::from_secs(3),
        "noticed after {noticed:?}"
    );
    let scrape = weft_tests::metrics::scrape(&env.netns);
    assert_eq!(scrape.value("weft_datapath_reinstalls_total", &[]), 1.0);

    // While it cannot reinstall (a pinned object where its maps directory belongs), it is
    // not ready.
    let bpffs = env.agent().bpffs_dir.clone();
    let pid = env.agent().pid() as i32;
    let obstacle = Obstacle {
        pid,
        kept: format!("/sys/fs/bpf/weft-harden-blocker-{pid}").into(),
        blocker: bpffs.join("maps"),
    };
    // SAFETY: plain kill(2) on our own child: stopped, it cannot race the test.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // Any map will do as the obstacle: one of the agent's, kept pinned outside its directory.
    weft_tests::bpf::pin_again(&bpffs.join("maps/WEFT_SETTINGS_V1"), &obstacle.kept);
    let output = env.agent().reset();
    std::fs::create_dir_all(&bpffs).expect("recreating the bpffs directory");
    weft_tests::bpf::pin_again(&obstacle.kept, &obstacle.blocker);
    let _ = std::fs::remove_file(&obstacle.kept);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let not_ready = wait_for_readyz(&env, 503, Duration::from_secs(5));
    println!("while it cannot reinstall, /readyz: {not_ready}");
    assert!(output.status.success());
    assert!(not_ready.contains("datapath missing"), "{not_ready}");
    assert_eq!(env.agent().cli_json(&["status"])["ready"], false);
    drop(obstacle);
    wait_for_readyz(&env, 200, Duration::from_secs(5));
    until_connects_reach(&env, "a", Duration::from_secs(5));
}

/// What the reset test puts in the agent's way, removed (and the agent resumed) however the
/// test ends.
struct Obstacle {
    pid: i32,
    kept: std::path::PathBuf,
    blocker: std::path::PathBuf,
}

impl Drop for Obstacle {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kept);
        let _ = std::fs::remove_file(&self.blocker);
        // SAFETY: plain kill(2) on the test's own child.
        unsafe { libc::kill(self.pid, libc::SIGCONT) };
    }
}

/// Polls /readyz until it answers `code`; returns its body.
fn wait_for_readyz(env: &Env, code: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = weft_tests::metrics::get(&env.netns, "/readyz");
        if status == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz answered {status} ({body}), not {code}, for {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn probes_that_cannot_get_a_local_port_say_so_and_leave_the_endpoint_alone() {
    let Some(mut env) = weft_tests::setup("harden-ports") else {
        return;
    };
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "a");
    env.start_agent(
        "services:
  - name: web
    address: 10.96.0.10
    port: 80
    health: { kind: tcp, interval: 100ms, timeout: 100ms, unhealthy_threshold: 2 }
    endpoints:
      - { address: 127.0.0.2, port: 8080 }
",
    );
    // Two local ports in this namespace, both held by connections to the endpoint: the
    // agent's probes to it cannot get one.
    let held = env.netns.run(|| {
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "40000 40001")
            .expect("narrowing the local port range");
        let target: SocketAddr = "127.0.0.2:8080".parse().unwrap();
        // A probe may hold one of the two ports for a moment: keep trying until both are ours.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut held = Vec::new();
        while held.len() < 2 {
            match std::net::TcpStream::connect(target) {
                Ok(stream) => held.push(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            assert!(Instant::now() < deadline, "could not take both local ports");
        }
        held
    });
    let mark = env.agent().log_mark();
    let line = env
        .agent_mut()
        .wait_for_log(mark, "health probe not sent", Duration::from_secs(5));
    println!("{line}");
    assert!(line.contains("EADDRNOTAVAIL"), "{line}");
    std::thread::sleep(Duration::from_millis(1000));
    let services = env.agent().cli_json(&["services"]);
    assert_eq!(
        services[0]["endpoints"][0]["state"], "healthy",
        "a probe that was never sent says nothing about the endpoint"
    );
    drop(held);
}

/// Two one-endpoint UDP services per test below, plus four more for the many-endpoints case.
fn udp_services(count: usize) -> String {
    let mut text = String::from("services:\n");
    for i in 0..count {
        text.push_str(&format!(
            "  - {{ name: u{i}, address: 10.96.1.{}, port: 53, protocol: udp, endpoints: [ {{ address: 127.0.0.{}, port: 5353 }} ] }}\n",
            i + 1,
            i + 2
        ));
    }
    text.push_str("  - { name: u6, address: fd00::53, port: 53, protocol: udp, endpoints: [ { address: \"fd00::2\", port: 5353 } ] }\n");
    text
}

fn revnat(env: &Env) -> weft_tests::bpf::RawMap<32, 28> {
    weft_tests::bpf::RawMap::open(&env.agent().bpffs_dir.join("maps/WEFT_REVNAT_V1"))
}

/// Sends one query to `service` and waits for its answer; where it came from.
fn ask(socket: &UdpSocket, service: SocketAddr) -> SocketAddr {
    socket.send_to(b"q", service).expect("send_to");
    let mut buf = [0u8; 64];
    socket.recv_from(&mut buf).expect("an answer").1
}

#[test]
fn every_kind_of_translated_socket_leaves_no_reverse_nat_entry_behind() {
    let Some(mut env) = weft_tests::setup("harden-revnat") else {
        return;
    };
    for i in 0..6 {
        env.backends.udp(
            &env.netns,
            &format!("127.0.0.{}:5353", i + 2),
            &format!("b{i}"),
        );
    }
    env.backends.udp(&env.netns, "[fd00::2]:5353", "b6");
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "t");
    let mut config = udp_services(6);
    config.push_str("  - { name: tcp, address: 10.96.2.1, port: 80, health: { kind: none }, endpoints: [ { address: 127.0.0.2, port: 8080 } ] }\n");
    env.start_agent(&config);
    let service = |i: usize| -> SocketAddr { format!("10.96.1.{}:53", i + 1).parse().unwrap() };

    // Connected UDP: replies and getpeername show the service.
    env.client(move || {
        let socket = udp_socket();
        socket.connect(service(0)).expect("connect");
        assert_eq!(socket.peer_addr().unwrap(), service(0));
        socket.send(b"q").expect("send");
        let mut buf = [0u8; 64];
        let (_, from) = socket.recv_from(&mut buf).expect("answer");
        assert_eq!(from, service(0), "connected UDP reply");
    });
    assert_eq!(wait_for_revnat(&env, 0), 0, "connected UDP");

    // IPv6, and a dual-stack socket reaching an IPv4 service by its v4-mapped address.
    env.client(move || {
        let v6: SocketAddr = "[fd00::53]:53".parse().unwrap();
        let socket = UdpSocket::bind("[::1]:0").expect("bind v6");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        assert_eq!(ask(&socket, v6), v6, "IPv6 reply");
        let mapped: SocketAddr = "[::ffff:10.96.1.1]:53".parse().unwrap();
        let dual = UdpSocket::bind("[::]:0").expect("bind dual-stack");
        dual.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert_eq!(ask(&dual, mapped), mapped, "v4-mapped reply");
    });
    assert_eq!(wait_for_revnat(&env, 0), 0, "IPv6 and v4-mapped UDP");

    // One socket, six services: at most four entries at a time, none left after.
    env.client(move || {
        let socket = udp_socket();
        for i in 0..6 {
            assert_eq!(ask(&socket, service(i)), service(i), "service {i}");
        }
    });
    assert_eq!(
        wait_for_revnat(&env, 0),
        0,
        "a socket that talked to six services"
    );

    // A socket whose entry is already there (written by an earlier release of weft, which
    // kept no record per socket): its release still removes it.
    let first = udp_socket_in(&env);
    let observed = {
        assert_eq!(
            env.client({
                let first = first.try_clone().unwrap();
                move || ask(&first, service(0))
            }),
            service(0)
        );
        revnat(&env).entries()
    };
    assert_eq!(observed.len(), 1, "one entry for the first socket");
    let second = udp_socket_in(&env);
    let mut key = observed[0].0;
    key[..8].copy_from_slice(&weft_tests::bpf::socket_cookie(&second).to_ne_bytes());
    revnat(&env)
        .insert(key, observed[0].1)
        .expect("an old agent's entry");
    let second_for_client = second.try_clone().unwrap();
    assert_eq!(
        env.client(move || ask(&second_for_client, service(0))),
        service(0)
    );
    drop((first, second));
    assert_eq!(
        wait_for_revnat(&env, 0),
        0,
        "entries that predate their socket's record"
    );

    // Evicted between a query and its answer: the socket's own record answers.
    let recovered_before =
        weft_tests::metrics::scrape(&env.netns).value("weft_reverse_nat_recovered_total", &[]);
    let socket = udp_socket_in(&env);
    let query = socket.try_clone().unwrap();
    env.client(move || query.send_to(b"q", service(1)).expect("send_to"));
    std::thread::sleep(Duration::from_millis(100));
    revnat(&env).clear();
    let mut buf = [0u8; 64];
    let (_, from) = socket.recv_from(&mut buf).expect("an answer");
    assert_eq!(from, service(1), "answer after its entry was evicted");
    drop(socket);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let recovered =
            weft_tests::metrics::scrape(&env.netns).value("weft_reverse_nat_recovered_total", &[]);
        if recovered > recovered_before {
            println!("replies recovered from the socket's record: {recovered}");
            break;
        }
        assert!(Instant::now() < deadline, "the recovery was not counted");
        std::thread::sleep(Duration::from_millis(200));
    }

    // TCP connects that fail before their SYN (no local port left): no entry leaks.
    let held = env.netns.run(|| {
        std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "40000 40000")
            .expect("narrowing the local port range");
        let endpoint: SocketAddr = "127.0.0.2:8080".parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // The agent's probes (none here) or anything else may hold the port a moment.
            if let Ok(stream) = std::net::TcpStream::connect(endpoint) {
                break stream;
            }
            assert!(
                Instant::now() < deadline,
                "could not take the one local port"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let failed = env.client(move || {
        let tcp: SocketAddr = "10.96.2.1:80".parse().unwrap();
        (0..100)
            .filter(|_| {
                matches!(
                    std::net::TcpStream::connect(tcp),
                    Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL)
                )
            })
            .count()
    });
    assert_eq!(failed, 100, "every connect lacked a local port");
    drop(held);
    assert_eq!(
        wait_for_revnat(&env, 0),
        0,
        "TCP connects that failed before their SYN"
    );
    let evicted =
        weft_tests::metrics::scrape(&env.netns).value("weft_reverse_nat_evictions_total", &[]);
    assert_eq!(
        evicted, 1.0,
        "only the entry the test removed counts as evicted; every other left with its socket"
    );
}

/// A UDP socket created inside the test's network namespace (and so its cgroup's programs
/// see it when the test's client thread uses it).
fn udp_socket_in(env: &Env) -> UdpSocket {
    env.client(udp_socket)
}
