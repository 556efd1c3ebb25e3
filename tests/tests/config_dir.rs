//! `--config DIR`: a directory of `*.yaml` files, each holding `services:`, as a Kubernetes
//! ConfigMap mounted as a volume is (one file per key, swapped at once through `..data`).
//! A change to one file re-reads that file and hands on only the services that changed; a
//! service defined in two files is an error naming both while everything else serves; and
//! nothing written while the agent starts is missed.

use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::symlink,
    path::Path,
    time::{Duration, Instant},
};

use weft_tests::{Env, client};

fn service(name: &str, address: &str, endpoints: &[(&str, u16)]) -> String {
    let mut text = format!(
        "  - name: {name}\n    address: {address}\n    port: 80\n    health: {{ kind: none }}\n    endpoints:\n"
    );
    for (endpoint, weight) in endpoints {
        text.push_str(&format!(
            "      - {{ address: {endpoint}, port: 8080, weight: {weight} }}\n"
        ));
    }
    text
}

fn file(services: &[String]) -> String {
    format!("services:\n{}", services.concat())
}

fn env(name: &str) -> Option<Env> {
    let mut env = weft_tests::setup(name)?;
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "a");
    env.backends.tcp(&env.netns, "127.0.0.3:8080", "b");
    Some(env)
}

fn tally(env: &Env, target: &str, count: usize) -> std::collections::BTreeMap<String, usize> {
    let target: SocketAddr = target.parse().unwrap();
    env.client(move || client::tally_tcp(target, count))
}

fn field(line: &str, name: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(line).ok()?[name].as_u64()
}

/// One generation of a ConfigMap volume: the files under `..<name>`, then `..data` swapped
/// to point at it in one rename, as the kubelet does.
fn configmap_generation(dir: &Path, generation: &str, files: &[(&str, String)]) {
    let data = dir.join(generation);
    fs::create_dir_all(&data).expect("generation dir");
    for (name, text) in files {
        fs::write(data.join(name), text).expect("writing a key");
    }
    let tmp = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp);
    symlink(generation, &tmp).expect("..data_tmp");
    fs::rename(&tmp, dir.join("..data")).expect("swapping ..data");
    for (name, _) in files {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{name}"), &link).expect("key symlink");
        }
    }
}

#[test]
fn a_configmap_volume_is_followed_through_its_data_swap() {
    let Some(mut env) = env("cfgdir-configmap") else {
        return;
    };
    let web = |weights: (u16, u16)| {
        file(&[service(
            "web",
            "10.96.0.10",
            &[("127.0.0.2", weights.0), ("127.0.0.3", weights.1)],
        )])
    };
    let dns = file(&[service("api", "10.96.0.11", &[("127.0.0.3", 1)])]);
    // Start on an empty directory, then mount the first generation like the kubelet.
    env.start_agent_dir(&[]);
    let dir = env.agent().config.clone();
    let mark = env.agent().log_mark();
    configmap_generation(
        &dir,
        "..2026_11_21_10_00_00.1",
        &[("web.yaml", web((1, 0))), ("api.yaml", dns.clone())],
    );
    env.agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    while env
        .agent()
        .cli_json(&["services"])
        .as_array()
        .unwrap()
        .len()
        < 2
    {
        assert!(Instant::now() < deadline, "both keys applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(tally(&env, "10.96.0.10:80", 20).get("a"), Some(&20));
    assert_eq!(tally(&env, "10.96.0.11:80", 20).get("b"), Some(&20));
    let services = env.agent().cli_json(&["services"]);
    let web_view = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap();
    assert_eq!(
        web_view["origin"],
        dir.join("web.yaml").display().to_string(),
        "the origin is the file"
    );

    // The next generation changes one key: one service is handed on and written.
    let mark = env.agent().log_mark();
    configmap_generation(
        &dir,
        "..2026_11_21_10_05_00.2",
        &[("web.yaml", web((0, 1))), ("api.yaml", dns)],
    );
    fs::remove_dir_all(dir.join("..2026_11_21_10_00_00.1")).expect("old generation");
    let line = env
        .agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(10));
    println!("ConfigMap swap applied: {line}");
    assert_eq!(field(&line, "changed"), Some(1), "{line}");
    assert_eq!(field(&line, "written"), Some(1), "{line}");
    assert_eq!(tally(&env, "10.96.0.10:80", 20).get("b"), Some(&20));
    assert_eq!(tally(&env, "10.96.0.11:80", 20).get("b"), Some(&20));
}

#[test]
fn a_service_defined_in_two_files_names_both_and_everything_else_serves() {
    let Some(mut env) = env("cfgdir-dup") else {
        return;
    };
    let a = file(&[service("web", "10.96.0.10", &[("127.0.0.2", 1)])]);
    let b = file(&[
        service("web", "10.96.0.12", &[("127.0.0.3", 1)]),
        service("api", "10.96.0.11", &[("127.0.0.3", 1)]),
    ]);
    env.start_agent_dir(&[("a.yaml", &a), ("b.yaml", &b)]);
    let log = env.agent().log_text();
    let conflict = log
        .lines()
        .find(|l| l.contains("is defined by"))
        .expect("the conflict is logged");
    println!("{conflict}");
    assert!(
        conflict.contains("a.yaml") && conflict.contains("b.yaml"),
        "{conflict}"
    );
    let status = env.agent().cli_json(&["status"]);
    assert_eq!(status["conflicts"].as_array().unwrap().len(), 1, "{status}");
    // The first definition serves; the other file's other service too.
    assert_eq!(tally(&env, "10.96.0.10:80", 20).get("a"), Some(&20));
    assert_eq!(tally(&env, "10.96.0.11:80", 20).get("b"), Some(&20));
    let unserved: SocketAddr = "10.96.0.12:80".parse().unwrap();
    assert!(
        env.client(move || client::connect_once(unserved)).is_err(),
        "the second definition is not in force"
    );

    // The first file lets go: the second definition comes into force.
    let mark = env.agent().log_mark();
    env.agent().write_config_file("a.yaml", "services: []\n");
    env.agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(10));
    assert_eq!(tally(&env, "10.96.0.12:80", 20).get("b"), Some(&20));
    assert!(
        env.agent().cli_json(&["status"])["conflicts"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_change_written_while_the_agent_starts_is_applied() {
    let Some(mut env) = env("cfgdir-startup") else {
        return;
    };
    // Probes make the start take a while (the first probe round waits for every endpoint,
    // here one whose SYNs vanish, until its timeout), which is the window a change used to
    // be lost in. 10.200.0.4 routes into a veth whose peer is down.
    env.netns
        .ip(&["link", "add", "bh0", "type", "veth", "peer", "name", "bh1"]);
    env.netns.ip(&["link", "set", "bh0", "up"]);
    env.netns
        .ip(&["route", "add", "10.200.0.4/32", "dev", "bh0"]);
    let probed = |weights: (u16, u16)| {
        format!(
            "services:\n  - name: web\n    address: 10.96.0.10\n    port: 80\n    health: {{ kind: tcp, interval: 1s, timeout: 500ms }}\n    endpoints:\n      - {{ address: 127.0.0.2, port: 8080, weight: {} }}\n      - {{ address: 10.200.0.4, port: 8080, weight: {} }}\n",
            weights.0, weights.1
        )
    };
    let mut agent = weft_tests::Agent::prepare(&env.netns, &env.cgroup, |dir| {
        let path = dir.join("conf.d");
        fs::create_dir_all(&path).expect("config dir");
        fs::write(path.join("web.yaml"), probed((0, 1))).expect("config");
        path
    });
    agent.spawn();
    // The black-holed endpoint's probe times out after 500 ms, so the start takes at least
    // that. The change goes in meanwhile.
    std::thread::sleep(Duration::from_millis(100));
    let before_applied = !agent.log_text().contains("config applied");
    agent.write_config_file("web.yaml", &probed((1, 0)));
    agent.wait_for_log(0, "config applied", Duration::from_secs(10));
    env.agent = Some(agent);
    println!("change written before the first apply: {before_applied}");
    assert!(before_applied, "the change must land in the startup window");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = tally(&env, "10.96.0.10:80", 20);
        if t.get("a") == Some(&20) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the startup change was lost: {t:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A small deterministic generator: the histories are random but the same every run.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A service as `weft services -o json` shows it: name, address, and (endpoint, weight)s.
type Expected = (String, String, Vec<(String, u64)>);

/// One file's random contents: services `f<file>-<n>` at frontends of their own (no two
/// files claim the same name or address, so the final state does not depend on history);
/// and what the agent should show for them.
fn random_file(random: &mut Random, file: u64) -> (String, Vec<Expected>) {
    let mut text = String::from("services:\n");
    let mut expected = Vec::new();
    for n in 0..random.below(4) {
        if random.below(3) == 0 {
            continue;
        }
        let mut endpoints: Vec<(String, u16)> = Vec::new();
        for _ in 0..random.below(6) {
            let endpoint = format!("10.1.{file}.{}", random.below(8) + 1);
            if endpoints.iter().all(|(e, _)| *e != endpoint) {
                endpoints.push((endpoint, random.below(4) as u16));
            }
        }
        let list: Vec<(&str, u16)> = endpoints.iter().map(|(e, w)| (e.as_str(), *w)).collect();
        let address = format!("10.96.{file}.{}", random.below(5) + 1);
        if !text.contains(&format!("address: {address}\n")) {
            let name = format!("f{file}-{n}");
            text.push_str(&service(&name, &address, &list));
            let mut endpoints: Vec<(String, u64)> = endpoints
                .into_iter()
                .map(|(e, w)| (e, u64::from(w)))
                .collect();
            endpoints.sort();
            expected.push((name, address, endpoints));
        }
    }
    (text, expected)
}

/// What the agent shows now, in the shape of `Expected`.
fn shown(env: &Env) -> Vec<Expected> {
    let services = env.agent().cli_json(&["services"]);
    let mut shown: Vec<Expected> = services
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let mut endpoints: Vec<(String, u64)> = s["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["address"].as_str().unwrap().to_string(),
                        e["weight"].as_u64().unwrap(),
                    )
                })
                .collect();
            endpoints.sort();
            (
                s["name"].as_str().unwrap().to_string(),
                s["address"].as_str().unwrap().to_string(),
                endpoints,
            )
        })
        .collect();
    shown.sort();
    shown
}

#[test]
fn random_histories_leave_the_kernel_maps_an_install_from_scratch_would() {
    let Some(mut env) = env("cfgdir-history") else {
        return;
    };
    env.start_agent_dir(&[]);
    let maps = env.agent().bpffs_dir.join("maps");
    for seed in [
        0x9e37_79b9_7f4a_7c15u64,
        0x2545_f491_4f6c_dd1d,
        0xdead_beef_cafe_f00d,
    ] {
        let mut random = Random(seed);
        let mut files: Vec<Vec<Expected>> = vec![Vec::new(); 3];
        for _ in 0..15 {
            let file = random.below(3);
            let (text, expected) = random_file(&mut random, file);
            files[file as usize] = expected;
            env.agent()
                .write_config_file(&format!("{file}.yaml"), &text);
            // Changes follow each other closely, as they would from a busy source.
            std::thread::sleep(Duration::from_millis(random.below(100)));
        }
        // Done once the agent shows exactly what the files say.
        let mut want: Vec<Expected> = files.concat();
        want.sort();
        let deadline = Instant::now() + Duration::from_secs(10);
        while shown(&env) != want {
            assert!(Instant::now() < deadline, "the agent never showed {want:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let incremental = weft_tests::bpf::kernel_tables(&maps);

        // The same files installed at once by a fresh agent into empty maps.
        let agent = env.agent.as_mut().unwrap();
        let status = agent.signal(libc::SIGTERM);
        assert!(status.success());
        assert!(agent.reset().status.success());
        let mark = agent.log_mark();
        agent.spawn();
        agent.wait_for_log(mark, "config applied", Duration::from_secs(30));
        let from_scratch = weft_tests::bpf::kernel_tables(&maps);
        println!(
            "history {seed:#x}: {} services, {} endpoints, the same as from scratch: {}",
            incremental.tables.len(),
            incremental.backends.len(),
            incremental == from_scratch
        );
        assert_eq!(incremental.tables, from_scratch.tables, "tables differ");
        assert_eq!(
            incremental.backends, from_scratch.backends,
            "endpoints differ"
        );
    }
}
