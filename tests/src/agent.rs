//! The real `weft` binary, run in the test's network namespace and attached to its cgroup.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Cgroup, NetNs};

pub struct Agent {
    child: Option<Child>,
    /// Whether `--config` is passed (an agent may run on Kubernetes alone).
    pub use_config: bool,
    /// `--kubernetes`, with this kubeconfig and node name.
    pub kubernetes: Option<KubernetesSource>,
    /// `--tc-interface` for each (interfaces of the agent's network namespace).
    pub tc_interfaces: Vec<String>,
    /// Extra environment of the agent process.
    pub env: Vec<(String, String)>,
    /// Extra arguments of `weft agent`.
    pub args: Vec<String>,
    /// The `weft` binary `spawn` starts (the one under test unless a test swaps releases).
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub bpffs_dir: PathBuf,
    cgroup: PathBuf,
    netns_fd: i32,
}

/// The Kubernetes source of an agent: the API server its kubeconfig names.
pub struct KubernetesSource {
    pub kubeconfig: PathBuf,
    pub node_name: String,
}

/// The weft binary under test: `WEFT_BIN` (set by `cargo xtask test`) or the release build.
pub fn weft_bin() -> PathBuf {
    std::env::var_os("WEFT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/weft"))
}

impl Agent {
    pub fn start(netns: &NetNs, cgroup: &Cgroup, config: &str) -> Agent {
        let agent = Agent::prepare(netns, cgroup, |dir| {
            let path = dir.join("weft.yaml");
            fs::write(&path, config).expect("writing config");
            path
        });
        agent.started()
    }

    /// Starts the agent on a config directory holding `files` (name, contents).
    pub fn start_dir(netns: &NetNs, cgroup: &Cgroup, files: &[(&str, &str)]) -> Agent {
        let agent = Agent::prepare(netns, cgroup, |dir| {
            let config = dir.join("conf.d");
            fs::create_dir_all(&config).expect("creating config dir");
            for (name, text) in files {
                fs::write(config.join(name), text).expect("writing config file");
            }
            config
        });
        agent.started()
    }

    /// The agent's directory and config, not yet running: `config` writes the config into
    /// the directory and returns what `--config` names.
    pub fn prepare(
        netns: &NetNs,
        cgroup: &Cgroup,
        config: impl FnOnce(&std::path::Path) -> PathBuf,
    ) -> Agent {
        let dir = std::env::temp_dir().join(format!("{}-agent", netns.name));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating agent dir");
        let config_path = config(&dir);
        Agent {
            child: None,
            use_config: true,
            kubernetes: None,
            tc_interfaces: Vec::new(),
            env: Vec::new(),
            args: Vec::new(),
            bin: weft_bin(),
            log: dir.join("agent.log"),
            config: config_path,
            bpffs_dir: PathBuf::from(format!("/sys/fs/bpf/{}", netns.name)),
            dir,
            cgroup: cgroup.path.clone(),
            netns_fd: netns.raw_fd(),
        }
    }

    fn started(mut self) -> Agent {
        self.spawn();
        self.wait_for_log(0, "config applied", Duration::from_secs(60));
        self
    }

    /// Starts the process (again); the log is appended to.
    pub fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening agent log");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("agent");
        if self.use_config {
            cmd.arg("--config").arg(&self.config);
        }
        if let Some(kubernetes) = &self.kubernetes {
            cmd.args(["--kubernetes", "--node-name", &kubernetes.node_name])
                .env("KUBECONFIG", &kubernetes.kubeconfig)
                // Out of any cluster this test may run in: the kubeconfig decides.
                .env_remove("KUBERNETES_SERVICE_HOST");
        }
        for interface in &self.tc_interfaces {
            cmd.args(["--tc-interface", interface]);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.args(&self.args);
        cmd.arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--bpffs-dir")
            .arg(&self.bpffs_dir)
            .arg("--admin-socket")
            .arg(self.admin_socket())
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        crate::netns::enter_before_exec(&mut cmd, self.netns_fd);
        self.child = Some(cmd.spawn().expect("starting weft agent"));
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// Runs an inspection command (`weft status`, `conns`, ...) against this agent.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(weft_bin())
            .args(args)
            .arg("--admin-socket")
            .arg(self.admin_socket())
            .output()
            .expect("running the weft CLI")
    }

    /// `cli` with `-o json`, parsed; panics with stderr if the command fails.
    /// One service's row of `weft stats -o json`.
    pub fn service_stats(&self, service: &str) -> serde_json::Value {
        let stats = self.cli_json(&["stats"]);
        stats["services"]
            .as_array()
            .expect("services")
            .iter()
            .find(|s| s["service"] == service)
            .cloned()
            .unwrap_or_else(|| panic!("{service} not in {stats:#}"))
    }

    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "weft {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "weft {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// GET `path` from the admin API over its unix socket: (status code, body).
    pub fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        admin_get(&self.admin_socket(), path)
    }

    /// The agent's peak resident memory (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Byte offset of the log's end, to wait for lines written after it.
    pub fn log_mark(&self) -> usize {
        self.log_text().len()
    }

    /// Waits until a log line after `mark` contains `needle`; panics with the log on timeout.
    pub fn wait_for_log(&mut self, mark: usize, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_text();
            if let Some(line) = text
                .get(mark..)
                .unwrap_or_default()
                .lines()
                .find(|l| l.contains(needle))
            {
                return line.to_string();
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("weft agent exited ({status}) before logging {needle:?}:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the agent log within {timeout:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Rewrites the config file the way an editor or ConfigMap update would: atomically.
    pub fn write_config(&self, config: &str) {
        let tmp = self.dir.join(".weft.yaml.tmp");
        fs::write(&tmp, config).expect("writing config");
        fs::rename(&tmp, &self.config).expect("replacing config");
    }

    /// Rewrites one file of a config directory atomically (an editor's save).
    pub fn write_config_file(&self, name: &str, text: &str) {
        let tmp = self.config.join(format!(".{name}.tmp"));
        fs::write(&tmp, text).expect("writing config file");
        fs::rename(&tmp, self.config.join(name)).expect("replacing config file");
    }

    pub fn signal(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().expect("waiting for agent")
    }

    /// Waits for the agent to exit by itself (it is killed after `timeout`, failing the test).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("agent running");
            if let Some(status) = child.try_wait().expect("waiting for agent") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                self.signal(libc::SIGKILL);
                panic!(
                    "the agent did not exit within {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `weft reset` in the agent's network namespace (where its TC filters are).
    pub fn reset(&self) -> std::process::Output {
        let mut cmd = Command::new(weft_bin());
        cmd.arg("reset").arg("--bpffs-dir").arg(&self.bpffs_dir);
        crate::netns::enter_before_exec(&mut cmd, self.netns_fd);
        cmd.output().expect("running weft reset")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGKILL);
        }
        let _ = self.reset();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One HTTP/1.0 GET over a unix socket: (status code, body).
pub fn admin_get(socket: &std::path::Path, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: weft\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status code"))?;
    Ok((status, body.to_string()))
}

/// `weft conns --follow -o json` running against an agent: its events, one JSON object per
/// line, collected on a thread.
pub struct Follow {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follow {
    pub fn start(agent: &Agent) -> Follow {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(weft_bin())
            .args(["conns", "--follow", "-o", "json", "--admin-socket"])
            .arg(agent.admin_socket())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("weft conns --follow");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // The follower subscribes when its request arrives; give it that moment.
        std::thread::sleep(Duration::from_millis(300));
        Follow { child, lines }
    }

    /// Events until `enough` of them or `timeout`.
    pub fn events(&self, enough: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        while events.len() < enough && Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                events.push(
                    serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("--follow line is not JSON ({e}): {line}")),
                );
            }
        }
        events
    }
}

impl Follow {
    /// `start`, returning only once the follower has seen an event: `trigger` makes one (a
    /// connection the test does not count) and is repeated until one arrives. The fixed
    /// wait of `start` is not enough where the CLI starts slowly (a kernel under
    /// emulation): the test's first events would go out before it subscribed.
    pub fn start_confirmed(agent: &Agent, trigger: impl Fn()) -> Follow {
        let follow = Follow::start(agent);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            trigger();
            if follow
                .lines
                .recv_timeout(Duration::from_millis(500))
                .is_ok()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "`weft conns --follow` saw no event within 30 s"
            );
        }
        // The rest of the trigger's events (its close), so the test starts from nothing.
        std::thread::sleep(Duration::from_millis(500));
        follow.drain();
        follow
    }

    /// How many events arrived since the last look, without waiting.
    pub fn drain(&self) -> usize {
        self.lines.try_iter().count()
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
