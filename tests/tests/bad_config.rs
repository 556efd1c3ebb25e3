//! Bad config files written to a running agent: each is rejected naming the field, and the
//! running datapath stays exactly as it was, still serving.

use std::{net::SocketAddr, time::Duration};

use weft_tests::{client, configs};

const GOOD: &str = "services:
  - name: web
    address: 10.96.0.10
    port: 80
    endpoints:
      - { address: 127.0.0.2, port: 8080, weight: 1 }
      - { address: 127.0.0.3, port: 8080, weight: 0 }
";

/// GOOD with the weights swapped: all traffic to `b`.
const SWAPPED: &str = "services:
  - name: web
    address: 10.96.0.10
    port: 80
    endpoints:
      - { address: 127.0.0.2, port: 8080, weight: 0 }
      - { address: 127.0.0.3, port: 8080, weight: 1 }
";

#[test]
fn bad_configs_are_rejected_and_the_running_datapath_keeps_serving() {
    let Some(mut env) = weft_tests::setup("badconfig") else {
        return;
    };
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "a");
    env.backends.tcp(&env.netns, "127.0.0.3:8080", "b");
    env.start_agent(GOOD);
    let service: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let cases = configs::bad_configs();
    assert!(cases.len() >= 20);
    for configs::BadConfig { name, text, expect } in &cases {
        let mark = env.agent().log_mark();
        env.agent().write_config(text);
        let line = env
            .agent_mut()
            .wait_for_log(mark, "config rejected", Duration::from_secs(10));
        // JSON escapes quotes in the message; compare on the unescaped line.
        let line = line.replace("\\\"", "\"");
        assert!(
            line.contains(expect.as_str()),
            "{name}: rejection does not name {expect:?}: {line}"
        );
        let tally = env.client(move || client::tally_tcp(service, 20));
        assert_eq!(
            tally.get("a"),
            Some(&20),
            "{name}: datapath changed: {tally:?}"
        );
    }
    let log = env.agent().log_text();
    assert_eq!(
        log.matches("config applied").count(),
        1,
        "a bad config was applied:\n{log}"
    );
    // And a good config after all that is still taken.
    let mark = env.agent().log_mark();
    env.agent().write_config(SWAPPED);
    env.agent_mut()
        .wait_for_log(mark, "config applied", Duration::from_secs(2));
    let tally = env.client(move || client::tally_tcp(service, 20));
    assert_eq!(
        tally.get("b"),
        Some(&20),
        "good config after bad ones not applied: {tally:?}"
    );
}

#[test]
fn a_bad_config_at_start_refuses_to_start() {
    let Some(env) = weft_tests::setup("badstart") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("weft-badstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("weft.yaml");
    std::fs::write(
        &config,
        "services:\n  - { name: web, address: 10.96.0.10, port: 0 }\n",
    )
    .unwrap();
    let bpffs = format!("/sys/fs/bpf/{}", env.netns.name);
    let output = std::process::Command::new(weft_tests::agent::weft_bin())
        .arg("agent")
        .arg("--config")
        .arg(&config)
        .arg("--cgroup")
        .arg(&env.cgroup.path)
        .args(["--bpffs-dir", &bpffs])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("services[0].port: 0 is out of range 1..=65535"),
        "{stderr}"
    );
    assert!(
        !std::path::Path::new(&bpffs).exists(),
        "a rejected start pinned something"
    );
}
