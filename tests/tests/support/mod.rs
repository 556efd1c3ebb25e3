//! Shared by the privilege and image tests: an agent started from any binary, optionally with
//! only some capabilities (as a container runtime would start it: uid 0, bounding, permitted
//! and effective sets reduced, nothing inheritable), in the test's network namespace and
//! cgroup; and the socket-path check both run against it.
// Each test file uses part of this module.
#![allow(dead_code)]

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use weft_tests::{Env, agent::weft_bin, client};

pub const SERVICE: &str = "10.96.0.10:80";

/// Two backends behind one service: connects through the service address reach one of them.
pub const CONFIG: &str = "services:
  - name: web
    address: 10.96.0.10
    port: 80
    endpoints:
      - { address: 127.0.0.2, port: 8080, weight: 1 }
      - { address: 127.0.0.3, port: 8080, weight: 1 }
";

pub fn start_backends(env: &mut Env) {
    env.backends.tcp(&env.netns, "127.0.0.2:8080", "a");
    env.backends.tcp(&env.netns, "127.0.0.3:8080", "b");
}

/// 200 connects to the service address: each must reach a backend, and both backends must
/// answer (getpeername showing the service address is checked by `tally_tcp`).
pub fn check_socket_path(env: &Env) {
    let service: SocketAddr = SERVICE.parse().expect("service address");
    let tally = env.client(move || client::tally_tcp(service, 200));
    assert_eq!(
        tally.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "b"],
        "{tally:?}"
    );
}

/// A `weft agent` process of a test; killed, and everything it pinned removed, when dropped.
pub struct Launched {
    child: Option<Child>,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub bpffs_dir: PathBuf,
}

impl Launched {
    /// Starts `binary agent` on `config` with only `capabilities` (setpriv names: `bpf`,
    /// `net_admin`), or with all of this process's when `None`. Does not wait.
    pub fn start(
        env: &Env,
        label: &str,
        binary: &Path,
        capabilities: Option<&[&str]>,
        config: &str,
    ) -> Launched {
        let dir = std::env::temp_dir().join(format!("{}-{label}", env.netns.name));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating agent dir");
        fs::write(dir.join("weft.yaml"), config).expect("writing config");
        let mut launched = Launched {
            child: None,
            log: dir.join("agent.log"),
            bpffs_dir: PathBuf::from(format!("/sys/fs/bpf/{}-{label}", env.netns.name)),
            dir,
        };
        launched.spawn(env, binary, capabilities);
        launched
    }

    /// Starts the process (again, after `stop`); the log is appended to.
    pub fn spawn(&mut self, env: &Env, binary: &Path, capabilities: Option<&[&str]>) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening agent log");
        let mut cmd = match capabilities {
            Some(caps) => {
                // Root keeps its uid but gets, across exec, only what the bounding set
                // allows; an empty inheritable set is what container runtimes give.
                let bounding: String = caps.iter().map(|c| format!(",+{c}")).collect();
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--bounding-set=-all{bounding}"))
                    .arg("--inh-caps=-all")
                    .arg("--")
                    .arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        cmd.arg("agent")
            .arg("--config")
            .arg(self.dir.join("weft.yaml"))
            .arg("--cgroup")
            .arg(&env.cgroup.path)
            .arg("--bpffs-dir")
            .arg(&self.bpffs_dir)
            .arg("--admin-socket")
            .arg(self.admin_socket())
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        // Entering happens before setpriv drops capabilities (setns needs CAP_SYS_ADMIN).
        weft_tests::netns::enter_before_exec(&mut cmd, env.netns.raw_fd());
        self.child = Some(cmd.spawn().expect("starting weft agent"));
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// Waits until the log (after byte `mark`) says `needle`: Ok, or Err with the log if the
    /// agent exited first or the time ran out.
    pub fn wait_for_log(
        &mut self,
        mark: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_text();
            if text.get(mark..).unwrap_or_default().contains(needle) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "agent exited ({status}) before {needle:?}:\n{text}"
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("no {needle:?} within {timeout:?}:\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The process's effective capability set (CapEff), as /proc shows it.
    pub fn effective_capabilities(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .expect("CapEff line");
        u64::from_str_radix(hex.trim(), 16).expect("CapEff is hex")
    }

    /// SIGTERM, as the kubelet stops a container: the agent exits and leaves its pins.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("waiting for agent")
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // With the test's own, fully privileged binary: removal must not depend on the
        // binary or the capabilities under test.
        let _ = Command::new(weft_bin())
            .arg("reset")
            .arg("--bpffs-dir")
            .arg(&self.bpffs_dir)
            .output();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
