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

use std::sync::{Mutex, MutexGuard};

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
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{name}: end-to-end tests need root (CI=true, so this is a failure)");
        }
        eprintln!("SKIPPED {name}: needs root and BPF; run `cargo xtask test` as root");
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

impl Drop for Env {
    fn drop(&mut self) {
        // Agent first (it holds the pins), then backends; cgroup and netns drop afterwards.
        self.agent.take();
        self.backends.stop_all();
    }
}
