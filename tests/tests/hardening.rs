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
