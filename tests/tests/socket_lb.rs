//! Weighted service translation at the socket layer, end to end: real kernel programs, real
//! backends, real clients in the agent's cgroup.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    time::{Duration, Instant},
};

use weft_tests::client::{self, share};

const SERVICE: &str = "10.96.0.10:80";

fn three_backends(weights: [u16; 3]) -> String {
    format!(
        "services:
  - name: web
    address: 10.96.0.10
    port: 80
    endpoints:
      - {{ address: 127.0.0.2, port: 8080, weight: {} }}
      - {{ address: 127.0.0.3, port: 8080, weight: {} }}
      - {{ address: 127.0.0.4, port: 8080, weight: {} }}
",
        weights[0], weights[1], weights[2]
    )
}

fn env_with_backends(name: &str, weights: [u16; 3]) -> Option<weft_tests::Env> {
    let mut env = weft_tests::setup(name)?;
    for (i, backend) in ["a", "b", "c"].iter().enumerate() {
        let addr = format!("127.0.0.{}:8080", i + 2);
        env.backends.tcp(&env.netns, &addr, backend);
    }
    env.start_agent(&three_backends(weights));
    Some(env)
}

#[test]
fn weights_one_two_seven_over_5000_connects() {
    let Some(env) = env_with_backends("weights", [1, 2, 7]) else {
        return;
    };
    let service: SocketAddr = SERVICE.parse().unwrap();
    let tally = env.client(move || client::tally_tcp(service, 5000));
    println!("weights 1:2:7 over 5000 connects: {tally:?}");
    for (name, want) in [("a", 10.0), ("b", 20.0), ("c", 70.0)] {
        let got = share(&tally, name);
        assert!(
            (got - want).abs() <= 2.0,
            "{name}: {got:.1}% vs {want}% ({tally:?})"
        );
    }
}

#[test]
fn weight_change_applies_within_a_second_and_keeps_open_connections() {
    let Some(mut env) = env_with_backends("reweight", [1, 0, 0]) else {
        return;
    };
    let service: SocketAddr = SERVICE.parse().unwrap();
    // Connections opened before the change: all on `a`.
    let mut open: Vec<std::net::TcpStream> = env.client(move || {
        (0..20)
            .map(|_| {
                let (name, _, stream) = client::connect_once(service).expect("connect");
                assert_eq!(name, "a");
                stream
            })
            .collect()
    });
    let mark = env.agent().log_mark();
    let changed_at = Instant::now();
    env.agent().write_config(&three_backends([0, 1, 0]));
    // New connects follow the new weights: 50 in a row on `b`.
    let followed_after = env.client(move || {
        let mut streak = 0;
        while streak < 50 {
            assert!(
                changed_at.elapsed() < Duration::from_secs(5),
                "new weights not used after 5 s"
            );
            let (name, _, _) = client::connect_once(service).expect("connect");
            streak = if name == "b" { streak + 1 } else { 0 };
        }
        changed_at.elapsed()
    });
    env.agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(1));
    println!("weight change used by new connects after {followed_after:?}");
    assert!(
        followed_after < Duration::from_secs(1),
        "took {followed_after:?}"
    );
    // The connections opened before still exchange data with `a`.
    for (i, stream) in open.iter_mut().enumerate() {
        let message = format!("still here {i}\n");
        stream
            .write_all(message.as_bytes())
            .expect("write on old connection");
        let mut echo = String::new();
        BufReader::new(&*stream)
            .read_line(&mut echo)
            .expect("read on old connection");
        assert_eq!(echo, message);
    }
}

#[test]
fn weight_zero_gets_nothing_and_all_zero_refuses_at_once() {
    let Some(mut env) = env_with_backends("drain", [1, 0, 1]) else {
        return;
    };
    let service: SocketAddr = SERVICE.parse().unwrap();
    let tally = env.client(move || client::tally_tcp(service, 1000));
    assert_eq!(
        tally.get("b"),
        None,
        "drained endpoint got connections: {tally:?}"
    );
    assert!(
        share(&tally, "a") > 35.0 && share(&tally, "c") > 35.0,
        "{tally:?}"
    );

    let mark = env.agent().log_mark();
    env.agent().write_config(&three_backends([0, 0, 0]));
    env.agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(2));
    let (error, elapsed) = env.client(move || {
        let started = Instant::now();
        let error = std::net::TcpStream::connect_timeout(&service, Duration::from_secs(3))
            .expect_err("a service without usable endpoints must refuse");
        (error, started.elapsed())
    });
    println!("all-zero service: {error} after {elapsed:?}");
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{error}"
    );
    assert!(
        elapsed < Duration::from_millis(100),
        "refusal took {elapsed:?}"
    );
}

#[test]
fn non_service_traffic_is_untouched() {
    let Some(mut env) = env_with_backends("passthru", [1, 1, 1]) else {
        return;
    };
    env.backends.tcp(&env.netns, "127.0.0.9:9000", "direct");
    // Same port as the service, different address; and the service address on another port.
    env.backends.tcp(&env.netns, "127.0.0.9:80", "direct-80");
    let (name, peer, name80) = env.client(|| {
        let target: SocketAddr = "127.0.0.9:9000".parse().unwrap();
        let (name, peer, _) = client::connect_once(target).expect("direct connect");
        let (name80, _, _) =
            client::connect_once("127.0.0.9:80".parse().unwrap()).expect("direct connect :80");
        (name, peer, name80)
    });
    assert_eq!(name, "direct");
    assert_eq!(peer, "127.0.0.9:9000".parse::<SocketAddr>().unwrap());
    assert_eq!(name80, "direct-80");
    // Nothing serves 10.96.0.10:81 in the test namespace.
    let other_port = env.client(|| client::connect_error_kind("10.96.0.10:81".parse().unwrap()));
    // Untranslated: the namespace has no route to 10.96.0.0/16.
    assert_eq!(other_port, std::io::ErrorKind::NetworkUnreachable);
}

#[test]
fn udp_datagrams_spread_by_weight_and_replies_come_from_the_service() {
    let Some(mut env) = weft_tests::setup("udp") else {
        return;
    };
    env.backends.udp(&env.netns, "127.0.0.2:5353", "a");
    env.backends.udp(&env.netns, "127.0.0.3:5353", "b");
    env.start_agent(
        "services:
  - name: dns
    address: 10.96.0.53
    port: 53
    protocol: udp
    endpoints:
      - { address: 127.0.0.2, port: 5353, weight: 1 }
      - { address: 127.0.0.3, port: 5353, weight: 3 }
",
    );
    let service: SocketAddr = "10.96.0.53:53".parse().unwrap();
    let tally = env.client(move || client::tally_udp(service, 2000));
    println!("UDP weights 1:3 over 2000 sockets: {tally:?}");
    assert!((share(&tally, "a") - 25.0).abs() <= 4.0, "{tally:?}");
    assert!((share(&tally, "b") - 75.0).abs() <= 4.0, "{tally:?}");
    // A socket is a session: all its datagrams reach the same endpoint.
    env.client(move || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..20 {
            socket.send_to(b"hi", service).unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = socket.recv_from(&mut buf).expect("reply");
            assert_eq!(from, service);
            names.insert(buf[..n].to_vec());
        }
        assert_eq!(
            names.len(),
            1,
            "one socket's datagrams went to several endpoints"
        );
    });
}

#[test]
fn ipv6_service_behaves_like_ipv4() {
    let Some(mut env) = weft_tests::setup("ipv6") else {
        return;
    };
    env.backends.tcp(&env.netns, "[fd00::2]:8080", "a");
    env.backends.tcp(&env.netns, "[fd00::3]:8080", "b");
    env.backends.udp(&env.netns, "[fd00::2]:5353", "ua");
    env.start_agent(
        "services:
  - name: web6
    address: fd00:96::10
    port: 80
    endpoints:
      - { address: 'fd00::2', port: 8080, weight: 1 }
      - { address: 'fd00::3', port: 8080, weight: 3 }
  - name: dns6
    address: fd00:96::53
    port: 53
    protocol: udp
    endpoints:
      - { address: 'fd00::2', port: 5353, weight: 1 }
",
    );
    let service: SocketAddr = "[fd00:96::10]:80".parse().unwrap();
    let tally = env.client(move || client::tally_tcp(service, 2000));
    println!("IPv6 weights 1:3 over 2000 connects: {tally:?}");
    assert!((share(&tally, "a") - 25.0).abs() <= 3.0, "{tally:?}");
    let udp: SocketAddr = "[fd00:96::53]:53".parse().unwrap();
    let udp_tally = env.client(move || client::tally_udp(udp, 50));
    assert_eq!(udp_tally.get("ua"), Some(&50));
}

#[test]
fn ipv6_socket_reaches_ipv4_service_through_its_v4_mapped_address() {
    let Some(env) = env_with_backends("v4mapped", [1, 0, 3]) else {
        return;
    };
    let service: SocketAddr = "[::ffff:10.96.0.10]:80".parse().unwrap();
    let tally = env.client(move || client::tally_tcp(service, 1000));
    println!("dual-stack socket, weights 1:0:3 over 1000 connects: {tally:?}");
    assert_eq!(tally.get("b"), None, "{tally:?}");
    assert!((share(&tally, "a") - 25.0).abs() <= 4.0, "{tally:?}");
}
