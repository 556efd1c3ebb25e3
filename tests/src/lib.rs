//! Helpers for weft's privileged end-to-end tests: each test builds its own network
//! namespace and child cgroup, starts real backends and the real `weft` binary, and every
//! guard removes what it created when dropped — also when the test fails.

pub mod agent;
pub mod backend;
pub mod bench;
pub mod bpf;
pub mod cgroup;
pub mod client;
pub mod configs;
pub mod kubernetes;
pub mod metrics;
pub mod netns;
pub mod soak;
pub mod tc;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub use agent::Agent;
pub use backend::Backends;
pub use cgroup::Cgroup;
pub use netns::NetNs;

static SERIAL: Mutex<()> = Mutex::new(());

/// Everything a test needs, torn down in reverse order of creation.
pub struct Env {
    pub agent: Option<Agent>,
    pub backends: Backends,
    pub cgroup: Cgroup,
    pub netns: NetNs,
    _serial: MutexGuard<'static, ()>,
}

/// Checks privileges and serializes tests (they share cgroups and BPF state). Without root a
/// test fails under CI=true and is skipped (loudly) elsewhere; never passes silently in CI.
pub fn setup(name: &str) -> Option<Env> {
    if !privileged(name) {
        return None;
    }
    let serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let netns = NetNs::create(name);
    let cgroup = Cgroup::create(name);
    Some(Env {
        agent: None,
        backends: Backends::default(),
        cgroup,
        netns,
        _serial: serial,
    })
}

/// Whether the test may load BPF programs (root). Without root a test fails under CI=true
/// and is skipped (loudly) elsewhere; it never passes silently in CI.
pub fn privileged(name: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{name}: this test needs root (CI=true, so this is a failure)");
    }
    eprintln!("SKIPPED {name}: needs root and BPF; run `cargo xtask test` as root");
    false
}

/// Something `cargo xtask test` prepares for a test (the OCI image, the previous release):
/// the path in `var`. If xtask could not prepare it (`{var}_ERROR` holds why), the test
/// fails with the reason; without it, the test fails under CI=true and is skipped (loudly)
/// elsewhere. `what` names it and `hint` says how to get it.
pub fn prepared(test: &str, var: &str, what: &str, hint: &str) -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(path.into());
    }
    if let Ok(error) = std::env::var(format!("{var}_ERROR")) {
        panic!("{test}: preparing {what} failed: {error}");
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {var} is not set (CI=true, so this is a failure); {hint}");
    }
    eprintln!("SKIPPED {test}: needs {what}; {hint}");
    None
}

impl Env {
    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent started")
    }

    pub fn agent_mut(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("agent started")
    }

    /// Starts the agent on `config` and waits until it applied it.
    pub fn start_agent(&mut self, config: &str) -> &mut Agent {
        let agent = Agent::start(&self.netns, &self.cgroup, config);
        self.agent = Some(agent);
        self.agent_mut()
    }

    /// Starts the agent on a config directory of `files` and waits until it applied them.
    pub fn start_agent_dir(&mut self, files: &[(&str, &str)]) -> &mut Agent {
        let agent = Agent::start_dir(&self.netns, &self.cgroup, files);
        self.agent = Some(agent);
        self.agent_mut()
    }

    /// Runs `f` inside the test's network namespace and cgroup, as a client the kernel
    /// programs see.
    pub fn client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let _member = self.cgroup.join();
        self.netns.run(f)
    }
}

/// Connects made in a loop while a test does something else.
pub struct Load {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<LoadOutcome>,
    _member: cgroup::Membership,
}

pub struct LoadOutcome {
    pub ok: u64,
    /// What went wrong with each connect that failed or was answered wrongly.
    pub failures: Vec<String>,
}

impl Env {
    /// Connects to `service` one after another (as a client the kernel programs see) until
    /// `finish`, or `limit` whatever happens; each must be answered by a backend through the
    /// service address.
    pub fn load(&self, service: SocketAddr, limit: Duration) -> Load {
        let member = self.cgroup.join();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = Arc::clone(&stop);
            self.netns.spawn(move || {
                let (mut ok, mut failures) = (0, Vec::new());
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                    match client::connect_once(service) {
                        Ok((name, peer, _)) if peer == service && !name.is_empty() => ok += 1,
                        Ok((name, peer, _)) => {
                            failures.push(format!("answered {name:?} as {peer}"));
                        }
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                LoadOutcome { ok, failures }
            })
        };
        Load {
            stop,
            handle,
            _member: member,
        }
    }
}

impl Load {
    pub fn finish(self) -> LoadOutcome {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("load thread")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Agent first (it holds the pins), then backends; cgroup and netns drop afterwards.
        self.agent.take();
        self.backends.stop_all();
    }
}
