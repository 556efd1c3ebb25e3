//! Upgrades and downgrades while traffic flows: the previous release of weft (built from git
//! history by `cargo xtask test`) serves, this release replaces it, and it comes back; maps
//! new to a node are filled before the programs that read them go in; and a pinned map of a
//! layout this release does not know stops the agent, not the traffic.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    time::Duration,
};

use serde_json::Value;
use weft_tests::{Env, LoadOutcome, agent, bpf, client};

const SERVICE: &str = "10.96.0.40:80";

/// Health probes whose first round takes a while (the timeout): an agent that swapped its
/// programs in before filling its maps would be caught failing connects meanwhile.
const CONFIG: &str = "services:
  - name: web
    address: 10.96.0.40
    port: 80
    health: { kind: tcp, interval: 1s, timeout: 800ms }
    endpoints:
      - { address: 127.0.0.2, port: 8080, weight: 1 }
      - { address: 127.0.0.3, port: 8080, weight: 1 }
";

fn service() -> SocketAddr {
    SERVICE.parse().unwrap()
}

/// The previous release's binary, which `cargo xtask test` builds from git history.
fn previous(test: &str) -> Option<PathBuf> {
    weft_tests::prepared(
        test,
        "WEFT_PREVIOUS_BIN",
        "the previous release",
        "run `cargo xtask test upgrade`",
    )
}

fn env(name: &str, bin: PathBuf) -> Option<Env> {
    let mut env = weft_tests::setup(name)?;
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "a");
    env.backends.tcp(&env.netns, "127.0.0.3:8080", "b");
    let mut agent = weft_tests::Agent::prepare(&env.netns, &env.cgroup, |dir| {
        let path = dir.join("weft.yaml");
        std::fs::write(&path, CONFIG).expect("writing config");
        path
    });
    agent.bin = bin;
    agent.spawn();
    agent.wait_for_log(0, "config applied", Duration::from_secs(60));
    env.agent = Some(agent);
    Some(env)
}

/// Stops the running agent (SIGTERM: programs and maps stay pinned) and starts `bin` in its
/// place, under whatever load runs; returns the new agent's log from its start.
fn swap(env: &mut Env, bin: PathBuf) -> String {
    let agent = env.agent_mut();
    assert!(agent.signal(libc::SIGTERM).success());
    // Traffic while no agent runs at all.
    std::thread::sleep(Duration::from_millis(300));
    agent.bin = bin;
    let mark = agent.log_mark();
    agent.spawn();
    agent.wait_for_log(mark, "config applied", Duration::from_secs(60));
    // And under the new agent.
    std::thread::sleep(Duration::from_millis(500));
    agent.log_text()[mark..].to_string()
}

fn report(what: &str, outcome: &LoadOutcome) {
    println!(
        "{what}: {} connects made, {} failed",
        outcome.ok + outcome.failures.len() as u64,
        outcome.failures.len()
    );
    assert!(
        outcome.failures.is_empty(),
        "{what}: connects failed: {:?}",
        &outcome.failures[..outcome.failures.len().min(5)]
    );
    assert!(outcome.ok > 50, "{what}: only {} connects made", outcome.ok);
}

/// The live record of the connection from `local`.
fn live(env: &Env, local: SocketAddr) -> Value {
    let conns = env.agent().cli_json(&["conns"]);
    conns
        .as_array()
        .expect("conns is an array")
        .iter()
        .find(|c| c["src"] == local.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("{local} not among live connections: {conns:#}"))
}

/// Sends `bytes` on the connection and reads their echo.
fn exchange(env: &Env, stream: TcpStream, bytes: usize) -> TcpStream {
    env.client(move || {
        let mut stream = stream;
        stream.write_all(&vec![7u8; bytes]).expect("send");
        let mut echoed = vec![0u8; bytes];
        stream.read_exact(&mut echoed).expect("echo");
        stream
    })
}

#[test]
fn upgrade_from_the_previous_release_and_back_under_load_fails_no_connect() {
    let test = "upgrade";
    let Some(previous) = previous(test) else {
        return;
    };
    let Some(mut env) = env(test, previous.clone()) else {
        return;
    };
    // A connection established under the previous release, with traffic.
    let service = service();
    let (stream, local) = env.client(move || {
        let (_, _, stream) = client::connect_once(service).expect("connect");
        let local = stream.local_addr().unwrap();
        (stream, local)
    });
    let stream = exchange(&env, stream, 10_000);
    assert_eq!(live(&env, local)["bytes_sent"], 10_000);

    // Upgrade under load.
    let load = env.load(service, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let log = swap(&mut env, agent::weft_bin());
    report("upgrade from the previous release", &load.finish());
    assert!(
        log.contains("\"adopted\":true"),
        "links not adopted:\n{log}"
    );
    assert!(
        !log.contains("\"adopted\":false"),
        "a link was attached anew:\n{log}"
    );

    // The established connection kept its record, and its counts go on from there.
    let record = live(&env, local);
    assert_eq!(record["bytes_sent"], 10_000, "{record:#}");
    assert_eq!(record["service"], "web", "{record:#}");
    let stream = exchange(&env, stream, 5_000);
    assert_eq!(live(&env, local)["bytes_sent"], 15_000);

    // Downgrade under load: the previous release takes over the same way.
    let load = env.load(service, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let log = swap(&mut env, previous);
    report("downgrade to the previous release", &load.finish());
    assert!(
        log.contains("\"adopted\":true"),
        "links not adopted:\n{log}"
    );
    let stream = exchange(&env, stream, 5_000);
    assert_eq!(live(&env, local)["bytes_sent"], 20_000);
    drop(stream);
}

#[test]
fn upgrade_fills_maps_new_to_the_node_before_the_programs_that_read_them_go_in() {
    let Some(mut env) = env("upgrade-fresh", agent::weft_bin()) else {
        return;
    };
    let service = service();
    let load = env.load(service, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    // As if the running release named its tables otherwise (their layout changed): the
    // programs in place keep using their maps, but the new agent finds no pins of them.
    let agent = env.agent_mut();
    assert!(agent.signal(libc::SIGTERM).success());
    let maps = agent.bpffs_dir.join("maps");
    for name in ["WEFT_SERVICE_V1", "WEFT_BACKEND_V1", "WEFT_MAGLEV_V1"] {
        std::fs::remove_file(maps.join(name)).expect("unpinning");
    }
    let mark = agent.log_mark();
    agent.spawn();
    agent.wait_for_log(mark, "config applied", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    report("restart onto new maps", &load.finish());
    let swapped = agent.wait_for_log(mark, "programs swapped in", Duration::from_secs(5));
    let log = agent.log_text()[mark..].to_string();
    assert!(
        log.contains("the programs in place keep serving until this agent has filled them"),
        "{log}"
    );
    assert!(swapped.contains("maps filled"), "{swapped}");
    assert!(
        log.contains("\"adopted\":true"),
        "links not adopted:\n{log}"
    );
}

#[test]
fn upgrade_refuses_a_pinned_map_of_an_unknown_layout_and_traffic_flows_on() {
    let Some(mut env) = env("upgrade-layout", agent::weft_bin()) else {
        return;
    };
    let agent = env.agent_mut();
    assert!(agent.signal(libc::SIGTERM).success());
    // What a release with another settings layout would have left under the same name.
    let pin = agent.bpffs_dir.join("maps/WEFT_SETTINGS_V1");
    std::fs::remove_file(&pin).expect("unpinning");
    bpf::pin_array_map(&pin, 8).expect("pinning a map of another layout");
    let mark = agent.log_mark();
    agent.spawn();
    let status = agent.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "the agent started on a foreign layout");
    let log = agent.log_text()[mark..].to_string();
    assert!(
        log.contains("pinned map WEFT_SETTINGS_V1 has layout type 2, key 4 B, value 8 B, 1 entries, this agent needs type 2, key 4 B, value 4 B, 1 entries"),
        "{log}"
    );
    assert!(log.contains("the programs in place keep serving"), "{log}");
    assert_eq!(
        log.matches("WEFT_SETTINGS_V1").count(),
        1,
        "named once: {log}"
    );
    // The programs in place still serve.
    let service = service();
    let answered = env.client(move || {
        (0..20)
            .map(|_| client::connect_once(service).map(|(name, _, _)| name))
            .collect::<Result<Vec<_>, _>>()
    });
    assert_eq!(answered.expect("connects after the refusal").len(), 20);
}
