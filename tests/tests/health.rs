//! Endpoint health driving the kernel's weights, end to end: real backends that die, come
//! back, fail HTTP checks or black-hole SYNs, with clients connecting all along.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU16, Ordering},
    },
    time::{Duration, Instant},
};

use weft_tests::client::{self, share};

const FAST_TCP: &str = "    health: { kind: tcp, interval: 200ms, timeout: 200ms, healthy_threshold: 2, unhealthy_threshold: 2 }\n";

fn service(name: &str, health: &str, endpoints: &[(&str, u16)]) -> String {
    let mut text = format!(
        "  - name: {name}\n    address: 10.96.0.10\n    port: 80\n{health}    endpoints:\n"
    );
    for (addr, weight) in endpoints {
        text.push_str(&format!(
            "      - {{ address: {addr}, port: 8080, weight: {weight} }}\n"
        ));
    }
    text
}

/// What a client saw while connecting back to back: (time since start, backend or error).
fn load(service: SocketAddr, duration: Duration) -> Vec<(Duration, Result<String, String>)> {
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < duration {
        let outcome = client::connect_once(service)
            .map(|(name, _, _)| name)
            .map_err(|e| e.to_string());
        seen.push((started.elapsed(), outcome));
    }
    seen
}

#[test]
fn killed_backend_stops_getting_connects_within_a_second_and_returns_after_restart() {
    let Some(mut env) = weft_tests::setup("failover") else {
        return;
    };
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "a");
    env.backends.tcp(&env.netns, "127.0.0.3:8080", "b");
    let victim = env.backends.tcp(&env.netns, "127.0.0.4:8080", "c");
    let config = format!(
        "services:\n{}",
        service(
            "web",
            FAST_TCP,
            &[("127.0.0.2", 1), ("127.0.0.3", 1), ("127.0.0.4", 1)]
        )
    );
    env.start_agent(&config);
    let service: SocketAddr = "10.96.0.10:80".parse().unwrap();

    let member = env.cgroup.join();
    let loader = env
        .netns
        .spawn(move || load(service, Duration::from_millis(3000)));
    std::thread::sleep(Duration::from_millis(500));
    let killed_at = Instant::now();
    env.backends.stop(victim);
    let seen = loader.join().expect("load thread");
    drop(member);

    let total = seen.len();
    let rate = total as f64 / 3.0;
    let kill_offset = seen
        .iter()
        .find(|(t, _)| *t >= Duration::from_millis(500))
        .map(|(t, _)| *t)
        .unwrap_or_default();
    let failures: Vec<Duration> = seen
        .iter()
        .filter(|(_, outcome)| outcome.is_err())
        .map(|(t, _)| *t)
        .collect();
    let failover = failures
        .last()
        .map(|t| t.saturating_sub(kill_offset))
        .unwrap_or_default();
    println!(
        "active probes (200 ms interval, unhealthy after 2): {total} connects at {rate:.0}/s, \
         {} failed, last failure {failover:?} after the kill",
        failures.len()
    );
    assert!(rate >= 300.0, "load too slow to measure: {rate:.0}/s");
    assert!(
        failover <= Duration::from_secs(1),
        "failures went on for {failover:?}"
    );
    let late_c = seen
        .iter()
        .filter(|(t, o)| *t > kill_offset + Duration::from_secs(1) && o.as_deref() == Ok("c"))
        .count();
    assert_eq!(late_c, 0);
    let _ = killed_at;

    // Restart it: it gets traffic again once it passed healthy_threshold probes.
    let restarted_at = Instant::now();
    env.backends.tcp(&env.netns, "127.0.0.4:8080", "c");
    let back_after = env.client(move || {
        loop {
            assert!(
                restarted_at.elapsed() < Duration::from_secs(5),
                "c never came back"
            );
            if let Ok((name, _, _)) = client::connect_once(service)
                && name == "c"
            {
                return restarted_at.elapsed();
            }
        }
    });
    println!("restarted backend back in rotation after {back_after:?}");
    assert!(
        back_after >= Duration::from_millis(150),
        "came back before 2 probes: {back_after:?}"
    );
    assert!(
        back_after <= Duration::from_millis(1500),
        "took {back_after:?}"
    );
}

#[test]
fn http_probe_503_takes_a_backend_out_and_200_brings_it_back() {
    let Some(mut env) = weft_tests::setup("http") else {
        return;
    };
    let status_a = Arc::new(AtomicU16::new(200));
    let status_b = Arc::new(AtomicU16::new(200));
    env.backends
        .http(&env.netns, "127.0.0.2:8080", "a", Arc::clone(&status_a));
    env.backends
        .http(&env.netns, "127.0.0.3:8080", "b", Arc::clone(&status_b));
    let health = "    health: { kind: http, path: /healthz, interval: 200ms, timeout: 200ms, healthy_threshold: 2, unhealthy_threshold: 2 }\n";
    env.start_agent(&format!(
        "services:\n{}",
        service("web", health, &[("127.0.0.2", 1), ("127.0.0.3", 1)])
    ));
    let service: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let tally = |n| env.client(move || client::tally_http(service, n));
    let both = tally(200);
    assert!(share(&both, "b") > 30.0, "{both:?}");

    status_b.store(503, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1000));
    let without_b = tally(200);
    assert_eq!(
        without_b.get("b"),
        None,
        "503 backend still used: {without_b:?}"
    );

    status_b.store(200, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1000));
    let with_b = tally(200);
    println!("http probes: both {both:?}, b=503 {without_b:?}, b=200 again {with_b:?}");
    assert!(share(&with_b, "b") > 30.0, "{with_b:?}");
}

#[test]
fn panic_spreads_over_all_endpoints_by_weight_and_can_be_turned_off() {
    let Some(mut env) = weft_tests::setup("panic") else {
        return;
    };
    let failing = Arc::new(AtomicU16::new(503));
    env.backends
        .http(&env.netns, "127.0.0.2:8080", "a", Arc::clone(&failing));
    env.backends
        .http(&env.netns, "127.0.0.3:8080", "b", Arc::clone(&failing));
    let health = "    health: { kind: http, path: /healthz, interval: 200ms, timeout: 200ms, healthy_threshold: 2, unhealthy_threshold: 2 }\n";
    let config = format!(
        "services:\n{}",
        service("web", health, &[("127.0.0.2", 1), ("127.0.0.3", 3)])
    );
    env.start_agent(&config);
    env.agent_mut()
        .wait_for_log(0, "panic mode", Duration::from_secs(3));
    let service: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let tally = env.client(move || client::tally_http(service, 1000));
    println!("panic (all endpoints unhealthy), weights 1:3: {tally:?}");
    assert!((share(&tally, "a") - 25.0).abs() <= 4.0, "{tally:?}");

    let mark = env.agent().log_mark();
    env.agent()
        .write_config(&config.replace("    health:", "    panic_threshold: 0\n    health:"));
    env.agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(2));
    // No healthy endpoint and no panic: refuse.
    let error = env.client(move || client::connect_error_kind(service));
    assert_eq!(error, std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn black_holed_endpoint_is_taken_out_by_probe_timeouts() {
    let Some(mut env) = weft_tests::setup("blackhole") else {
        return;
    };
    env.netns.ip(&["addr", "add", "10.200.0.4/32", "dev", "lo"]);
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "a");
    env.backends.tcp(&env.netns, "10.200.0.4:8080", "c");
    let config = format!(
        "services:\n{}",
        service("web", FAST_TCP, &[("127.0.0.2", 1), ("10.200.0.4", 1)])
    );
    env.start_agent(&config);
    let service: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let before = env.client(move || client::tally_tcp(service, 200));
    assert!(share(&before, "c") > 30.0, "{before:?}");
    // Black-hole it: the address leaves loopback and routes into a veth whose peer is down,
    // where SYNs vanish without an answer (the link goes away with the namespace).
    env.netns.ip(&["addr", "del", "10.200.0.4/32", "dev", "lo"]);
    env.netns
        .ip(&["link", "add", "bh0", "type", "veth", "peer", "name", "bh1"]);
    env.netns.ip(&["link", "set", "bh0", "up"]);
    env.netns
        .ip(&["route", "add", "10.200.0.4/32", "dev", "bh0"]);
    let mark = env.agent().log_mark();
    let line = env
        .agent_mut()
        .wait_for_log(mark, "\"to\":\"unhealthy\"", Duration::from_secs(3));
    assert!(line.contains("10.200.0.4"), "{line}");
    let after = env.client(move || client::tally_tcp(service, 200));
    assert_eq!(after.get("c"), None, "{after:?}");
}

#[test]
fn flapping_backend_changes_the_table_no_faster_than_thresholds_allow() {
    let Some(mut env) = weft_tests::setup("flap") else {
        return;
    };
    let status = Arc::new(AtomicU16::new(200));
    env.backends.http(
        &env.netns,
        "127.0.0.2:8080",
        "a",
        Arc::new(AtomicU16::new(200)),
    );
    env.backends
        .http(&env.netns, "127.0.0.3:8080", "b", Arc::clone(&status));
    let health = "    health: { kind: http, path: /healthz, interval: 100ms, timeout: 100ms, healthy_threshold: 3, unhealthy_threshold: 3 }\n";
    env.start_agent(&format!(
        "services:\n{}",
        service("web", health, &[("127.0.0.2", 1), ("127.0.0.3", 1)])
    ));
    let mark = env.agent().log_mark();
    let flip_for = Duration::from_secs(3);
    let started = Instant::now();
    let mut up = true;
    while started.elapsed() < flip_for {
        std::thread::sleep(Duration::from_millis(100));
        up = !up;
        status.store(if up { 200 } else { 503 }, Ordering::Relaxed);
    }
    let log = env.agent().log_text();
    let changes = log[mark..].matches("health change applied").count();
    // A change needs 3 agreeing probes, at least 3 × 90 ms (jitter) apart from the last.
    let allowed = (flip_for.as_millis() / 270) as usize;
    println!(
        "flapping every 100 ms for {flip_for:?}: {changes} table changes (at most {allowed} allowed)"
    );
    assert!(changes <= allowed, "{changes} changes > {allowed}");
}

/// Connects back to back for `duration`; returns (connects, failures).
fn count_failures(env: &weft_tests::Env, duration: Duration) -> (usize, usize) {
    let service: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let seen = env.client(move || load(service, duration));
    (seen.len(), seen.iter().filter(|(_, o)| o.is_err()).count())
}

#[test]
fn passive_detection_alone_stops_failures_after_consecutive_failures() {
    let Some(mut env) = weft_tests::setup("passive") else {
        return;
    };
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "a");
    env.backends.tcp(&env.netns, "127.0.0.3:8080", "b");
    let victim = env.backends.tcp(&env.netns, "127.0.0.4:8080", "c");
    let passive = "    health: { kind: none }\n    outlier: { consecutive_failures: 3, base_ejection: 30s, max_ejection_percent: 50 }\n";
    env.start_agent(&format!(
        "services:\n{}",
        service(
            "web",
            passive,
            &[("127.0.0.2", 1), ("127.0.0.3", 1), ("127.0.0.4", 1)]
        )
    ));
    let (warm, warm_failed) = count_failures(&env, Duration::from_millis(300));
    assert_eq!(warm_failed, 0, "failures before the kill ({warm} connects)");
    env.backends.stop(victim);
    let (total, failed) = count_failures(&env, Duration::from_millis(2000));
    println!("passive detection only (consecutive_failures 3): {total} connects, {failed} failed");
    let line = env
        .agent_mut()
        .wait_for_log(0, "\"to\":\"ejected\"", Duration::from_secs(1));
    assert!(line.contains("127.0.0.4:8080"), "{line}");
    // Events reach the agent asynchronously: a connect or two may start before the table
    // changes, but failures must stop right after the third.
    assert!(failed >= 3, "only {failed} failures: was c ever chosen?");
    assert!(failed <= 6, "{failed} failed connects, expected about 3");
    let (after, after_failed) = count_failures(&env, Duration::from_millis(500));
    assert_eq!(
        after_failed, 0,
        "failures after ejection ({after} connects)"
    );
}

#[test]
fn ejection_cap_keeps_at_most_half_of_the_endpoints_ejected() {
    let Some(mut env) = weft_tests::setup("ejectcap") else {
        return;
    };
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "a");
    let mut victims = Vec::new();
    for i in 3..=5 {
        victims.push(
            env.backends
                .tcp(&env.netns, &format!("127.0.0.{i}:8080"), "dead"),
        );
    }
    let passive = "    health: { kind: none }\n    outlier: { consecutive_failures: 2, base_ejection: 30s, max_ejection_percent: 50 }\n";
    let endpoints = [
        ("127.0.0.2", 1),
        ("127.0.0.3", 1),
        ("127.0.0.4", 1),
        ("127.0.0.5", 1),
    ];
    env.start_agent(&format!(
        "services:\n{}",
        service("web", passive, &endpoints)
    ));
    victims.into_iter().for_each(|v| env.backends.stop(v));
    let (total, failed) = count_failures(&env, Duration::from_millis(1500));
    let log = env.agent().log_text();
    let ejected = log.matches("\"to\":\"ejected\"").count();
    println!(
        "3 of 4 endpoints dead, max_ejection_percent 50: {ejected} ejected, {failed} of {total} connects failed"
    );
    assert_eq!(ejected, 2, "{log}");
    // The third dead endpoint stays in rotation: failures go on, about half of all connects.
    assert!(failed * 4 > total, "{failed} of {total}");
}
