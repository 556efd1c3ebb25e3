//! Governance in the kernel, end to end: circuit breaking (`limits`), slow start, fault
//! injection and L4 authorization (`allow`), with real programs, backends and clients.

use std::{
    io::{BufRead as _, BufReader, ErrorKind},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use weft_tests::{Env, agent::Follow, client};

const SERVICE: &str = "10.96.0.30:80";

fn service() -> SocketAddr {
    SERVICE.parse().unwrap()
}

/// A service `web` on `SERVICE` with `endpoints` (127.0.0.x:8080 by last octet, weight 1)
/// and the governance lines `extra`.
fn config(endpoints: &[u8], extra: &str) -> String {
    let endpoints: String = endpoints
        .iter()
        .map(|o| format!("      - {{ address: 127.0.0.{o}, port: 8080 }}\n"))
        .collect();
    format!(
        "services:
  - name: web
    address: 10.96.0.30
    port: 80
    health: {{ kind: tcp, interval: 200ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1 }}
    endpoints:
{endpoints}{extra}"
    )
}

fn env(name: &str, endpoints: &[u8], extra: &str) -> Option<Env> {
    let mut env = weft_tests::setup(name)?;
    for o in endpoints {
        env.backends
            .tcp(&env.netns, &format!("127.0.0.{o}:8080"), &format!("b{o}"));
    }
    env.start_agent(&config(endpoints, extra));
    Some(env)
}

/// Holds `count` connections (each answered), or fails on the first that is not.
fn hold(env: &Env, count: usize) -> Vec<(String, TcpStream)> {
    let service = service();
    env.client(move || {
        (0..count)
            .map(|i| {
                let (name, _, stream) = client::connect_once(service)
                    .unwrap_or_else(|e| panic!("connection {i} of {count}: {e}"));
                (name, stream)
            })
            .collect()
    })
}

/// The errno of a connect expected to be refused, and how long the refusal took.
fn refused(env: &Env) -> (ErrorKind, Duration) {
    let service = service();
    env.client(move || {
        let started = Instant::now();
        let kind = client::connect_error_kind(service);
        (kind, started.elapsed())
    })
}

fn u64_of(value: &Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing in {value:#}"))
}

/// `weft endpoints -o json`'s row for `endpoint`.
fn endpoint_row(env: &Env, endpoint: &str) -> Value {
    let rows = env.agent().cli_json(&["endpoints"]);
    rows.as_array()
        .expect("rows")
        .iter()
        .find(|r| format!("{}:{}", r["address"].as_str().unwrap(), r["port"]) == endpoint)
        .cloned()
        .unwrap_or_else(|| panic!("{endpoint} not in {rows:#}"))
}

/// Polls the service's `limited_open` until it is `want` (counts go back when sockets are
/// released, which a killed process's exit does a moment later).
fn wait_for_limited_open(env: &Env, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = u64_of(&env.agent().service_stats("web"), "limited_open");
        if got == want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_full_endpoint_refuses_at_once_and_takes_the_next_connection_after_a_close() {
    let Some(env) = env(
        "gov-limit-one",
        &[2],
        "    limits: { max_connections_per_endpoint: 5 }\n",
    ) else {
        return;
    };
    let mut held = hold(&env, 5);
    let (kind, took) = refused(&env);
    println!("6th connect refused with {kind:?} after {took:?}");
    assert_eq!(kind, ErrorKind::ConnectionRefused);
    // A refusal in the kernel at connect, not a timeout or a SYN answered by a RST.
    assert!(took < Duration::from_millis(100), "refusal took {took:?}");
    held.pop();
    // The close gave its count back: the next connect gets through.
    let mut held_again = hold(&env, 1);
    held.append(&mut held_again);
    assert_eq!(refused(&env).0, ErrorKind::ConnectionRefused);

    let stats = env.agent().service_stats("web");
    assert_eq!(u64_of(&stats, "limited_open"), 5, "{stats:#}");
    assert_eq!(u64_of(&stats, "overflows"), 2, "{stats:#}");
    let row = endpoint_row(&env, "127.0.0.2:8080");
    assert_eq!(u64_of(&row, "limited_open"), 5, "{row:#}");
    assert_eq!(u64_of(&row, "overflows"), 2, "{row:#}");
    let metrics = weft_tests::metrics::scrape(&env.netns);
    assert_eq!(
        metrics.value("weft_service_overflows_total", &[("service", "web")]),
        2.0
    );
    drop(held);
    assert_eq!(wait_for_limited_open(&env, 0), 0);
}

#[test]
fn overflow_goes_to_the_endpoint_with_room_and_the_service_limit_caps_both() {
    let Some(env) = env(
        "gov-limit-two",
        &[3, 4],
        "    limits: { max_connections_per_endpoint: 5, max_connections: 8 }\n",
    ) else {
        return;
    };
    // Eight connections: whichever endpoint fills first, the rest go to the other.
    let held = hold(&env, 8);
    let on = |name: &str| held.iter().filter(|(n, _)| n == name).count();
    println!("8 held: b3 {}, b4 {}", on("b3"), on("b4"));
    assert!(
        on("b3") <= 5 && on("b4") <= 5,
        "b3 {} b4 {}",
        on("b3"),
        on("b4")
    );
    // The service's own limit: the ninth is refused though an endpoint has room.
    assert_eq!(refused(&env).0, ErrorKind::ConnectionRefused);
    let stats = env.agent().service_stats("web");
    assert_eq!(u64_of(&stats, "limited_open"), 8, "{stats:#}");
    assert_eq!(u64_of(&stats, "overflows"), 1, "{stats:#}");
    drop(held);
    assert_eq!(wait_for_limited_open(&env, 0), 0);

    // Per endpoint only: ten fit exactly (five each), whatever the draws.
    env.agent().write_config(&config(
        &[3, 4],
        "    limits: { max_connections_per_endpoint: 5 }\n",
    ));
    std::thread::sleep(Duration::from_millis(500));
    let held = hold(&env, 10);
    let on = |name: &str| held.iter().filter(|(n, _)| n == name).count();
    assert_eq!((on("b3"), on("b4")), (5, 5));
    assert_eq!(refused(&env).0, ErrorKind::ConnectionRefused);
    // The admin API's kernel sample may be up to a second old.
    let deadline = Instant::now() + Duration::from_secs(3);
    let drawn_full = loop {
        let drawn_full = u64_of(&endpoint_row(&env, "127.0.0.3:8080"), "overflows")
            + u64_of(&endpoint_row(&env, "127.0.0.4:8080"), "overflows");
        if drawn_full >= 1 || Instant::now() > deadline {
            break drawn_full;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(drawn_full >= 1, "the refused connect drew a full endpoint");
}

#[test]
fn counts_return_to_zero_after_resets_killed_clients_and_an_agent_restart() {
    let Some(mut env) = env(
        "gov-limit-abrupt",
        &[2],
        "    limits: { max_connections_per_endpoint: 2000 }\n",
    ) else {
        return;
    };
    // 500 connections closed with a RST (SO_LINGER 0), 50 open at a time.
    let service = service();
    env.client(move || {
        for _ in 0..10 {
            let streams: Vec<TcpStream> = (0..50)
                .map(|_| client::connect_once(service).expect("connect").2)
                .collect();
            for stream in streams {
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: a valid socket and a linger struct of the size given.
                unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&stream),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&raw const linger).cast(),
                        size_of::<libc::linger>() as u32,
                    );
                }
            }
        }
    });
    assert_eq!(wait_for_limited_open(&env, 0), 0, "after 500 resets");

    // 500 connections held by a client that is killed.
    let mut holder = env.client(move || {
        Command::new(env!("CARGO_BIN_EXE_weft-tcp-holder"))
            .args([SERVICE, "500"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting weft-tcp-holder")
    });
    let mut ready = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut ready)
        .expect("holder output");
    assert_eq!(ready.trim(), "ready 500 0");
    assert_eq!(wait_for_limited_open(&env, 500), 500);
    // SAFETY: our own child's pid.
    unsafe { libc::kill(holder.id() as i32, libc::SIGKILL) };
    let _ = holder.wait();
    assert_eq!(wait_for_limited_open(&env, 0), 0, "after SIGKILL");

    // Counts live in pinned maps: an agent restart keeps them, and closes after it give
    // them back.
    let held = hold(&env, 3);
    let agent = env.agent_mut();
    assert!(agent.signal(libc::SIGTERM).success());
    let mark = agent.log_mark();
    agent.spawn();
    agent.wait_for_log(mark, "config applied", Duration::from_secs(30));
    assert_eq!(wait_for_limited_open(&env, 3), 3, "after restart");
    drop(held);
    assert_eq!(wait_for_limited_open(&env, 0), 0, "closed after restart");
}

#[test]
fn an_endpoint_back_from_unhealthy_ramps_up_over_the_slow_start_window() {
    let Some(mut env) = env(
        "gov-slow-start",
        &[2, 3],
        "    slow_start: { window: 6s }\n",
    ) else {
        return;
    };
    // Take b3 down until the agent sees it unhealthy, then bring it back.
    let b3 = 1;
    env.backends.stop(b3);
    let mark = env.agent().log_mark();
    env.agent_mut()
        .wait_for_log(mark, "\"to\":\"unhealthy\"", Duration::from_secs(5));
    let mark = env.agent().log_mark();
    env.backends.tcp(&env.netns, "127.0.0.3:8080", "b3");
    env.agent_mut()
        .wait_for_log(mark, "\"to\":\"healthy\"", Duration::from_secs(5));
    let back = Instant::now();
    let services = env.agent().cli_json(&["services"]);
    let ramping = &services[0]["endpoints"][1];
    assert!(
        ramping["slow_start_percent"].as_u64().is_some(),
        "b3 shows its ramp: {services:#}"
    );

    // Its share of new connects, measured in three windows of the ramp and after it.
    let service = service();
    let share_until = |until: Duration| -> f64 {
        let tally = env.client(move || {
            let mut tally = std::collections::BTreeMap::new();
            while back.elapsed() < until {
                for _ in 0..20 {
                    let (name, _, _) = client::connect_once(service).expect("connect");
                    *tally.entry(name).or_insert(0usize) += 1;
                }
            }
            tally
        });
        client::share(&tally, "b3")
    };
    let early = share_until(Duration::from_millis(1500));
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(back.elapsed()));
    let middle = {
        std::thread::sleep(Duration::from_millis(2700).saturating_sub(back.elapsed()));
        share_until(Duration::from_millis(3600))
    };
    let late = {
        std::thread::sleep(Duration::from_millis(4800).saturating_sub(back.elapsed()));
        share_until(Duration::from_millis(5700))
    };
    std::thread::sleep(Duration::from_millis(6500).saturating_sub(back.elapsed()));
    let after = env.client(move || client::tally_tcp(service, 1000));
    let after = client::share(&after, "b3");
    println!(
        "b3's share: {early:.1}% (0-1.5 s), {middle:.1}% (2.7-3.6 s), {late:.1}% (4.8-5.7 s), {after:.1}% after"
    );
    // Thousandths of its weight: 100-200 early, 400-500 in the middle, 800-900 late; its
    // share is p / (1000 + p) against b2's whole weight.
    assert!(early < 20.0, "early {early:.1}%");
    assert!(middle > early && late > middle, "{early} {middle} {late}");
    assert!((after - 50.0).abs() < 6.0, "after the window: {after:.1}%");
    let services = env.agent().cli_json(&["services"]);
    assert!(services[0]["endpoints"][1]["slow_start_percent"].is_null());
    assert_eq!(services[0]["endpoints"][1]["effective_weight"], 1);
}

#[test]
fn fault_injection_refuses_its_share_only_in_the_named_cgroup() {
    let Some(mut env) = weft_tests::setup("gov-fault") else {
        return;
    };
    let experiment = env.cgroup.child("experiment");
    let others = env.cgroup.child("others");
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "b2");
    env.start_agent(&config(
        &[2],
        &format!(
            "    fault: {{ abort_percent: 20, errno: ECONNRESET, cgroup: {} }}\n",
            experiment.config_path()
        ),
    ));
    let service = service();
    // A connect from outside the experiment is never aborted: its events only confirm the
    // follower listens.
    let follow = Follow::start_confirmed(env.agent(), || {
        let _member = others.join();
        env.netns.run(move || drop(client::connect_once(service)));
    });
    let attempts = |cgroup: &weft_tests::Cgroup| {
        let _member = cgroup.join();
        env.netns.run(move || {
            let mut refused = 0;
            let mut other = Vec::new();
            for i in 0..2000 {
                // Each answered before it closes (as `tally_tcp`): both ends closing at once
                // would leave the server's side in TIME_WAIT for a later reuse of the port.
                match client::connect_once(service) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => refused += 1,
                    Err(e) => other.push(format!("#{i}: {e}")),
                }
            }
            assert!(
                other.is_empty(),
                "{refused} refused; other errors: {other:?}"
            );
            refused
        })
    };
    let in_experiment = attempts(&experiment);
    let elsewhere = attempts(&others);
    println!("refused: {in_experiment} of 2000 in the experiment, {elsewhere} of 2000 elsewhere");
    assert!(
        (340..=460).contains(&in_experiment),
        "20 % ± 3 of 2000: {in_experiment}"
    );
    assert_eq!(elsewhere, 0);
    let stats = env.agent().service_stats("web");
    assert_eq!(u64_of(&stats, "fault_aborts"), in_experiment, "{stats:#}");
    let events = follow.events(usize::MAX, Duration::from_secs(3));
    let aborted = events.iter().filter(|e| e["event"] == "aborted").count();
    assert_eq!(aborted as u64, in_experiment, "aborted events");
    drop(experiment);
    drop(others);
}

#[test]
fn allow_rules_let_in_the_named_cgroup_and_uid_and_refuse_everyone_else() {
    let Some(mut env) = weft_tests::setup("gov-allow") else {
        return;
    };
    let frontend = env.cgroup.child("frontend");
    let sibling = env.cgroup.child("sibling");
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "b2");
    env.start_agent(&config(
        &[2],
        &format!(
            "    allow:\n      - {{ cgroup: {} }}\n      - {{ uid: 4321 }}\n",
            frontend.config_path()
        ),
    ));
    let service = service();
    // An allowed connect: its events only confirm the follower listens.
    let follow = Follow::start_confirmed(env.agent(), || {
        let _member = frontend.join();
        env.netns.run(move || drop(client::connect_once(service)));
    });
    let connect_from = |cgroup: &weft_tests::Cgroup, uid: Option<u32>| {
        let _member = cgroup.join();
        env.netns.run(move || {
            if let Some(uid) = uid {
                // This thread only (the raw syscall, not libc's process-wide wrapper): the
                // programs see the connecting thread's credentials.
                // SAFETY: plain syscall; the thread ends after this closure.
                let r = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
                assert_eq!(r, 0, "setresuid");
            }
            match client::connect_once(service) {
                Ok((name, _, _)) => Ok(name),
                Err(e) => Err(e.kind()),
            }
        })
    };
    assert_eq!(connect_from(&frontend, None), Ok("b2".to_string()));
    assert_eq!(
        connect_from(&sibling, None),
        Err(ErrorKind::PermissionDenied),
        "EACCES for a client no rule names"
    );
    assert_eq!(connect_from(&sibling, Some(4321)), Ok("b2".to_string()));
    assert_eq!(
        connect_from(&sibling, Some(4322)),
        Err(ErrorKind::PermissionDenied)
    );
    let stats = env.agent().service_stats("web");
    assert_eq!(u64_of(&stats, "denials"), 2, "{stats:#}");
    let events = follow.events(usize::MAX, Duration::from_secs(3));
    let denied: Vec<&Value> = events.iter().filter(|e| e["event"] == "denied").collect();
    assert_eq!(denied.len(), 2, "{events:#?}");
    assert_eq!(denied[0]["service"], "web");
    assert_eq!(denied[0]["dst"], SERVICE);
    drop(frontend);
    drop(sibling);
}

#[test]
fn an_unknown_cgroup_is_rejected_by_its_field_path_and_the_running_config_keeps_serving() {
    let Some(mut env) = env("gov-bad-cgroup", &[2], "") else {
        return;
    };
    let mark = env.agent().log_mark();
    env.agent().write_config(&config(
        &[2],
        "    allow: [{ uid: 0 }, { cgroup: /weft-no-such-cgroup/x }]\n",
    ));
    let line = env
        .agent_mut()
        .wait_for_log(mark, "config rejected", Duration::from_secs(5));
    assert!(
        line.contains("services[0].allow[1].cgroup") && line.contains("no such cgroup"),
        "{line}"
    );
    // Still open to everyone: the rejected rules never applied.
    let tally = env.client(|| client::tally_tcp(service(), 20));
    assert_eq!(tally.get("b2"), Some(&20));
}

/// The entries of the kernel's governance counts (`WEFT_GOVCNT_V1`): (endpoint or whole
/// service, open connections).
fn kernel_counts(env: &Env) -> Vec<(u32, i64)> {
    let pin = env.agent().bpffs_dir.join("maps/WEFT_GOVCNT_V1");
    let map = aya::maps::MapData::from_pin(&pin)
        .unwrap_or_else(|e| panic!("opening {}: {e}", pin.display()));
    let counts: aya::maps::HashMap<_, weft_common::GovernKey, weft_common::GovernCount> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(map)).expect("a hash map");
    counts
        .iter()
        .filter_map(Result::ok)
        .map(|(key, count)| (key.backend_id, count.open))
        .collect()
}

#[test]
fn counts_of_limits_removed_stay_while_held_and_go_at_the_next_apply_after_the_close() {
    let Some(mut env) = env(
        "gov-limit-removed",
        &[2],
        "    limits: { max_connections_per_endpoint: 5, max_connections: 5 }\n",
    ) else {
        return;
    };
    let held = hold(&env, 2);
    // The endpoint's count and the capped service's.
    let mut counts = kernel_counts(&env);
    counts.sort();
    assert_eq!(counts.iter().map(|c| c.1).collect::<Vec<_>>(), [2, 2]);
    let applied = |env: &mut Env, endpoints: &[u8]| {
        let mark = env.agent().log_mark();
        env.agent().write_config(&config(endpoints, ""));
        env.agent_mut()
            .wait_for_log(mark, "config applied", Duration::from_secs(5));
    };
    // Limits removed while two connections hold counts: the counts stay for their releases.
    applied(&mut env, &[2]);
    let mut counts = kernel_counts(&env);
    counts.sort();
    assert_eq!(counts.iter().map(|c| c.1).collect::<Vec<_>>(), [2, 2]);
    // An ungoverned connect takes no count.
    drop(hold(&env, 1));
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while kernel_counts(&env).iter().any(|c| c.1 != 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(kernel_counts(&env).iter().all(|c| c.1 == 0), "released");
    // The next apply (any change) drops them.
    env.backends.tcp(&env.netns, "127.0.0.3:8080", "b3");
    applied(&mut env, &[2, 3]);
    assert_eq!(kernel_counts(&env), []);
}

/// The kernel lines `weft agent` logs for this test (`--log-format json`): their messages.
fn kernel_lines(env: &Env, mark: usize) -> Vec<String> {
    env.agent().log_text()[mark..]
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "weft::kernel")
        .map(|line| line["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn kernel_log_tells_why_a_connection_was_refused_and_switches_on_a_live_agent() {
    let Some(mut env) = env("gov-klog", &[2], "    allow:\n      - { uid: 4321 }\n") else {
        return;
    };
    let refused_as_root = |env: &Env| {
        assert_eq!(refused(env).0, ErrorKind::PermissionDenied);
    };
    // Off by default: a refusal writes nothing.
    let mark = env.agent().log_mark();
    refused_as_root(&env);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(kernel_lines(&env, mark), Vec::<String>::new());

    // --kernel-log info at start (a restart: the programs are swapped in place).
    let agent = env.agent_mut();
    assert!(agent.signal(libc::SIGTERM).success());
    agent.args = vec!["--kernel-log".into(), "info".into()];
    let mark = agent.log_mark();
    agent.spawn();
    agent.wait_for_log(mark, "config applied", Duration::from_secs(30));
    let mark = env.agent().log_mark();
    let started = Instant::now();
    refused_as_root(&env);
    let line = env.agent_mut().wait_for_log(
        mark,
        "refused: no allow rule of the service matches the client",
        Duration::from_secs(5),
    );
    println!("kernel line {:?} after {:?}", line, started.elapsed());
    assert!(
        line.contains(&format!("connect to {SERVICE} by uid 0 refused")),
        "{line}"
    );
    assert!(line.contains("\"level\":\"INFO\""), "{line}");
    // Info does not say where each connect went.
    let allowed = |env: &Env| {
        env.client(|| {
            // SAFETY: plain syscall on this thread only (see the allow test).
            let r = unsafe { libc::syscall(libc::SYS_setresuid, 4321, 4321, 4321) };
            assert_eq!(r, 0, "setresuid");
            client::connect_once(service())
                .expect("uid 4321 is allowed")
                .0
        })
    };
    let mark = env.agent().log_mark();
    assert_eq!(allowed(&env), "b2");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(kernel_lines(&env, mark), Vec::<String>::new());

    // `weft kernel-log debug` on the live agent: each connect's endpoint too.
    let agent = env.agent_mut();
    let out = agent.cli(&["kernel-log", "debug"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "kernel log: debug"
    );
    assert_eq!(agent.cli_json(&["status"])["kernel_log"], "debug");
    let mark = env.agent().log_mark();
    assert_eq!(allowed(&env), "b2");
    let line = env.agent_mut().wait_for_log(
        mark,
        "sent to endpoint 127.0.0.2:8080",
        Duration::from_secs(5),
    );
    assert!(line.contains(&format!("connect to {SERVICE}")), "{line}");

    // And off again.
    let agent = env.agent_mut();
    let mark = agent.log_mark();
    let out = agent.cli(&["kernel-log", "off"]);
    assert!(out.status.success(), "{out:?}");
    agent.wait_for_log(mark, "kernel log level set", Duration::from_secs(5));
    let mark = env.agent().log_mark();
    refused_as_root(&env);
    assert_eq!(allowed(&env), "b2");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(kernel_lines(&env, mark), Vec::<String>::new());
}
