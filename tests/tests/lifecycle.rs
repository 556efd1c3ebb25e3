//! The agent's lifecycle against the real kernel: SIGKILL and restart under load, SIGTERM
//! leaving traffic flowing, and `weft reset` leaving nothing behind.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use weft_tests::{bpf, client};

const CONFIG: &str = "services:
  - name: web
    address: 10.96.0.10
    port: 80
    endpoints:
      - { address: 127.0.0.2, port: 8080, weight: 1 }
      - { address: 127.0.0.3, port: 8080, weight: 1 }
";

fn env(name: &str) -> Option<weft_tests::Env> {
    let mut env = weft_tests::setup(name)?;
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "a");
    env.backends.tcp(&env.netns, "127.0.0.3:8080", "b");
    env.start_agent(CONFIG);
    Some(env)
}

fn assert_attached_once(cgroup: &std::path::Path) {
    for (attach_type, hook) in bpf::SOCKET_HOOKS {
        let (programs, _) = bpf::attached(cgroup, attach_type);
        assert_eq!(
            programs.len(),
            1,
            "{hook}: {} programs attached",
            programs.len()
        );
    }
}

#[test]
fn sigkill_and_restart_under_load_loses_no_connect() {
    let Some(mut env) = env("restart") else {
        return;
    };
    let service: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let member = env.cgroup.join();
    let load = {
        let stop = Arc::clone(&stop);
        env.netns.spawn(move || {
            let (mut ok, mut failures) = (0u64, Vec::new());
            let started = Instant::now();
            // Bounded: stops when told, or after 60 s whatever happens.
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                match client::connect_once(service) {
                    Ok((name, peer, _)) if peer == service && !name.is_empty() => ok += 1,
                    Ok((name, peer, _)) => failures.push(format!("answered {name:?} as {peer}")),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (ok, failures)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let status = env.agent_mut().signal(libc::SIGKILL);
    assert!(!status.success());
    std::thread::sleep(Duration::from_millis(700)); // traffic while no agent runs
    let mark = env.agent().log_mark();
    env.agent_mut().spawn();
    let applied = env
        .agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = load.join().expect("load thread");
    drop(member);
    println!(
        "restart under load: {ok} connects, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "connects failed: {:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 100, "only {ok} connects made");
    // The restarted agent adopted the pinned links and rewrote nothing.
    let log = env.agent().log_text();
    let after = &log[mark..];
    assert!(
        after.contains("\"adopted\":true"),
        "links not adopted:\n{after}"
    );
    assert!(
        !after.contains("\"adopted\":false"),
        "a link was attached anew:\n{after}"
    );
    assert!(
        applied.contains("\"written\":0"),
        "unchanged tables were rewritten: {applied}"
    );
    assert_attached_once(&env.cgroup.path);
}

#[test]
fn sigterm_leaves_traffic_flowing_and_reset_removes_everything() {
    let Some(mut env) = env("reset") else { return };
    let cgroup = env.cgroup.path.clone();
    assert_attached_once(&cgroup);
    let mut programs = Vec::new();
    let mut links = Vec::new();
    for (attach_type, _) in bpf::SOCKET_HOOKS {
        let (p, l) = bpf::attached(&cgroup, attach_type);
        programs.extend(p);
        links.extend(l);
    }
    // Each program came with its link: the check after reset must not pass by finding none.
    assert_eq!(
        links.len(),
        programs.len(),
        "links {links:?} for programs {programs:?}"
    );
    let bpffs = env.agent().bpffs_dir.clone();
    let maps = bpf::pinned_map_ids(&bpffs.join("maps"));
    // services, backends, maglev, revnat, events, conns, lost, settings, socknat, counters,
    // sockudp, policy, govcnt, sockgov
    assert_eq!(maps.len(), 14, "pinned maps: {maps:?}");

    let status = env.agent_mut().signal(libc::SIGTERM);
    assert!(status.success(), "SIGTERM exit: {status}");
    let service: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let tally = env.client(move || client::tally_tcp(service, 100));
    assert_eq!(
        tally.values().sum::<usize>(),
        100,
        "traffic after SIGTERM: {tally:?}"
    );

    let output = env.agent().reset();
    assert!(output.status.success(), "weft reset: {output:?}");
    assert!(!bpffs.exists(), "{} still exists", bpffs.display());
    for (attach_type, hook) in bpf::SOCKET_HOOKS {
        let (p, _) = bpf::attached(&cgroup, attach_type);
        assert!(
            p.is_empty(),
            "{hook} still has programs attached after reset"
        );
    }
    // The kernel frees objects asynchronously once the last reference is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = programs
            .iter()
            .filter(|&&id| bpf::program_exists(id))
            .map(|id| format!("program {id}"))
            .chain(
                links
                    .iter()
                    .filter(|&&id| bpf::link_exists(id))
                    .map(|id| format!("link {id}")),
            )
            .chain(
                maps.iter()
                    .filter(|&&id| bpf::map_exists(id))
                    .map(|id| format!("map {id}")),
            )
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still in the kernel after reset: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // With nothing attached, the service address is just an unroutable address again.
    let error = env.client(move || client::connect_error_kind(service));
    assert_eq!(error, std::io::ErrorKind::NetworkUnreachable);
}
