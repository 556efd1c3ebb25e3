//! The bench's world: one network namespace per contender with the same two backends, the
//! weft agent attached to a cgroup of its own, kube-proxy-shaped rules, an HAProxy process.
//! Dropping the lab removes all of it.

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    applies::{self, Apply, CONFIG_APPLIED, LogCursor},
    config_dir,
    load::{self, Backend, Sample},
    rules::{Hook, MEASURED_FILE, NO_PROBES, Services},
};
use crate::{Env, NetNs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Contender {
    Direct,
    Weft,
    Iptables,
    Nftables,
    Haproxy,
}

impl Contender {
    pub const ALL: [Contender; 5] = [
        Contender::Direct,
        Contender::Weft,
        Contender::Iptables,
        Contender::Nftables,
        Contender::Haproxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::Weft => "weft",
            Contender::Iptables => "iptables",
            Contender::Nftables => "nftables",
            Contender::Haproxy => "haproxy",
        }
    }

    /// HAProxy has one listener per service; the kernel's socket lookup, not HAProxy,
    /// would pick among 10,000 of them, so it runs at one service only.
    pub fn serves(self, scale: usize) -> bool {
        self != Contender::Haproxy || scale == 1
    }

    fn frontend_base(self) -> [u8; 2] {
        match self {
            Contender::Iptables => [10, 97],
            Contender::Nftables => [10, 98],
            _ => [10, 96],
        }
    }
}

const HAPROXY_BIND: &str = "127.0.0.1:18000";

/// The endpoint the failover runs kill; started only for them.
const VICTIM: (Ipv4Addr, u16) = (Ipv4Addr::new(127, 0, 0, 4), 8080);

/// The endpoint whose health flips among all the services: probed by the agent, and
/// listened on only while the bench wants it healthy.
const PROBED: (Ipv4Addr, u16) = (Ipv4Addr::new(127, 0, 0, 5), 8080);

/// The measured service's detection for the health change: one probe result flips a state,
/// so the time from a listener opening to the apply is one probe interval at most.
const FAST_PROBES: &str = "    health: { kind: tcp, interval: 200ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1 }\n";

/// Services per file of weft's config directory (the measured service has a file of its
/// own): a change to one service re-reads its file only.
const BULK_FILE: usize = 1_000;

/// The config file holding `stats:` while the socket path runs without connection
/// statistics; removed to turn them back on.
const STATS_FILE: &str = "stats.yaml";

fn real_backends() -> Vec<(Ipv4Addr, u16)> {
    vec![
        (Ipv4Addr::new(127, 0, 0, 2), 8080),
        (Ipv4Addr::new(127, 0, 0, 3), 8080),
    ]
}

/// A config change through weft's config directory, as the bench and the agent saw it.
#[derive(Clone, Debug, Default)]
pub struct WeftChange {
    /// Files written for it.
    pub files: usize,
    /// First file written → the agent logged every service in place (install), or → new
    /// connects follow the change (weight change).
    pub to_kernel: Duration,
    /// The applies that carried it, in order; empty if none was seen.
    pub applies: Vec<Apply>,
}

impl WeftChange {
    /// The agent's own time for the change: its applies' `elapsed_ms`, summed.
    pub fn apply_ms(&self) -> f64 {
        if self.applies.is_empty() {
            return f64::NAN;
        }
        applies::elapsed_ms(&self.applies)
    }

    pub fn failures(&self) -> u64 {
        self.applies.iter().map(|a| a.failures).sum()
    }
}

/// How long installing a rule set took, per contender.
#[derive(Clone, Debug, Default)]
pub struct Install {
    pub services: usize,
    pub endpoints: usize,
    pub weft: WeftChange,
    pub iptables: Duration,
    pub nftables: Duration,
}

/// One endpoint of the measured service drained (weight 0), until clients only reach the
/// other one.
#[derive(Clone, Debug, Default)]
pub struct WeightChange {
    pub weft: WeftChange,
    pub iptables: Duration,
    pub nftables: Duration,
}

/// An endpoint's health flipping among all the services.
#[derive(Clone, Copy, Debug)]
pub struct HealthChange {
    /// A listener opened at the endpoint → its state change applied.
    pub up: HealthFlip,
    /// The listener closed → its state change applied.
    pub down: HealthFlip,
}

#[derive(Clone, Copy, Debug)]
pub struct HealthFlip {
    /// As the bench saw it: includes the wait for the next probe (one interval at most).
    pub observed: Duration,
    /// The apply the state change caused, with the agent's own time for it.
    pub apply: Apply,
}

/// A backend killed under load: how long until clients stopped failing.
#[derive(Clone, Debug)]
pub struct Failover {
    pub setup: &'static str,
    pub connects: u64,
    /// Failed connection attempts after the kill.
    pub failed: u64,
    /// Failed attempts before the kill: must be 0, or the setup was not ready.
    pub failed_before: u64,
    /// From the kill to the last failure; None if clients were still failing at the end.
    pub recovered_after: Option<Duration>,
    /// How long the load ran after the kill.
    pub window: Duration,
}

/// How a failover run is timed.
#[derive(Clone, Copy, Debug)]
pub struct FailoverTiming {
    pub workers: usize,
    /// Load before the kill.
    pub before: Duration,
    /// Load after the kill; the last third must be free of failures to count as recovered.
    pub after: Duration,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Footprint {
    pub rss_kb: u64,
    pub cpu_percent: f64,
}

/// Field order is drop order: processes and backends go before their namespaces.
pub struct Lab {
    haproxy: Option<Child>,
    backends: Vec<Backend>,
    services: Services,
    dir: PathBuf,
    weft: Env,
    direct: NetNs,
    iptables: NetNs,
    nftables: NetNs,
    haproxy_ns: NetNs,
}

impl Lab {
    pub fn create() -> Lab {
        let weft = crate::setup("bench").expect("the bench needs root (run `cargo xtask bench`)");
        let dir = std::env::temp_dir().join(format!("weft-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("bench dir");
        let mut lab = Lab {
            haproxy: None,
            backends: Vec::new(),
            services: services(1),
            dir,
            weft,
            direct: NetNs::create("bench-direct"),
            iptables: NetNs::create("bench-ipt"),
            nftables: NetNs::create("bench-nft"),
            haproxy_ns: NetNs::create("bench-haproxy"),
        };
        for ns in [
            &lab.weft.netns,
            &lab.direct,
            &lab.iptables,
            &lab.nftables,
            &lab.haproxy_ns,
        ] {
            let pair = ns.run(|| {
                let [a, b] = [0, 1].map(|i| {
                    let (addr, port) = real_backends()[i];
                    Backend::start(SocketAddr::from((addr, port)), ["a", "b"][i])
                });
                (a, b)
            });
            lab.backends.extend([pair.0, pair.1]);
        }
        // kube-proxy's service addresses are routed to the node; here, to loopback.
        lab.iptables.ip(&[
            "route",
            "add",
            "10.97.0.0/16",
            "dev",
            "lo",
            "src",
            "127.0.0.1",
        ]);
        lab.nftables.ip(&[
            "route",
            "add",
            "10.98.0.0/16",
            "dev",
            "lo",
            "src",
            "127.0.0.1",
        ]);
        // An empty config directory: `install` times the first real apply.
        lab.weft.start_agent_dir(&[]);
        lab.start_haproxy();
        lab
    }

    fn start_haproxy(&mut self) {
        let cfg = self.dir.join("haproxy.cfg");
        std::fs::write(&cfg, self.services.haproxy_cfg(HAPROXY_BIND)).expect("haproxy.cfg");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.haproxy_ns.name,
                "haproxy",
                "-db",
                "-f",
            ])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting haproxy (Debian package haproxy; `cargo xtask bench` installs it)");
        self.haproxy = Some(child);
        let bind: SocketAddr = HAPROXY_BIND.parse().unwrap();
        let up = self.haproxy_ns.run(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if load::one_request(bind).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        });
        assert!(up, "haproxy did not start serving {HAPROXY_BIND}");
    }

    /// Installs `scale` services (10 endpoints each, but the measured one) everywhere.
    pub fn install(&mut self, scale: usize) -> Install {
        self.services = services(scale);
        let weft = self.install_weft();
        let s = &self.services;
        let iptables = timed(
            &self.iptables,
            &["iptables-restore"],
            &s.iptables_restore([10, 97], Hook::Output),
        );
        let nftables = timed(
            &self.nftables,
            &["nft", "-f", "-"],
            &s.nft_ruleset([10, 98], Hook::Output),
        );
        Install {
            services: scale,
            endpoints: (0..scale).map(|i| s.endpoints(i).len()).sum(),
            weft,
            iptables,
            nftables,
        }
    }

    /// Empties weft's config directory, then writes every file of the current services and
    /// times until the agent has every service in place.
    fn install_weft(&self) -> WeftChange {
        // Made before the clock starts: the text is the bench's work, not the agent's.
        let files = self.services.weft_files([10, 96], BULK_FILE);
        config_dir::install(self.weft.agent(), &files, self.services.count)
    }

    pub fn drive(&self, contender: Contender, workers: usize, duration: Duration) -> Sample {
        let target = self.target(contender);
        self.as_client_of(contender, move || load::drive(target, workers, duration))
    }

    /// Where a client of this contender connects: the measured service's frontend.
    fn target(&self, contender: Contender) -> SocketAddr {
        match contender {
            Contender::Direct => SocketAddr::from(real_backends()[0]),
            Contender::Haproxy => HAPROXY_BIND.parse().unwrap(),
            frontend => SocketAddr::from((
                Services::address(frontend.frontend_base(), self.services.measured_index()),
                80,
            )),
        }
    }

    /// Runs `f` where this contender's clients run.
    fn as_client_of<T: Send + 'static>(
        &self,
        contender: Contender,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        match contender {
            // Only weft's client sits in the agent's cgroup.
            Contender::Weft => self.weft.client(f),
            other => self.namespace_of(other).run(f),
        }
    }

    /// Drains the measured service's first endpoint and times until clients only reach the
    /// second: weft through the measured service's own file, kube-proxy's shapes through a
    /// one-service restore (what kube-proxy itself does on an endpoint change).
    pub fn weight_change(&self) -> WeightChange {
        WeightChange {
            weft: self.weft_weight_change(),
            iptables: self.until_only_b(Contender::Iptables, || {
                run_with_input(
                    &self.iptables,
                    &["iptables-restore", "--noflush"],
                    &self.services.iptables_drain_first_but_one(),
                )
            }),
            nftables: self.until_only_b(Contender::Nftables, || {
                run_with_input(
                    &self.nftables,
                    &["nft", "-f", "-"],
                    &self.services.nft_drain_first_but_one(),
                )
            }),
        }
    }

    /// Rewrites `measured.yaml` only, and reads the agent's time for the apply it caused.
    fn weft_weight_change(&self) -> WeftChange {
        let text = self.services.weft_measured([10, 96], &[0, 1], NO_PROBES);
        let agent = self.weft.agent();
        let mut log = LogCursor::at_end(agent);
        let to_kernel = self.until_only_b(Contender::Weft, || {
            agent.write_config_file(MEASURED_FILE, &text)
        });
        let applies = log.applies_until(CONFIG_APPLIED, self.services.count as u64);
        WeftChange {
            files: 1,
            to_kernel,
            applies,
        }
    }

    /// Makes `change`, then times until the contender's clients only reach backend "b".
    fn until_only_b(&self, contender: Contender, change: impl FnOnce()) -> Duration {
        let started = Instant::now();
        change();
        let probe = self.target(contender);
        self.as_client_of(contender, move || only_b(probe));
        started.elapsed()
    }

    /// An endpoint of the measured service flips health among all the installed services.
    /// It joins the service probed (so do the service's other endpoints: health checking is
    /// per service) while nothing listens at its address, so it goes unhealthy; then a
    /// listener opens there, and closes again. Runs after the other measurements of the
    /// socket path: from here on the agent probes, and its clients could reach the endpoint.
    pub fn health_change(&self) -> HealthChange {
        let probed = Services {
            real_backends: [real_backends(), vec![PROBED]].concat(),
            ..services(self.services.count)
        };
        let agent = self.weft.agent();
        let mut log = LogCursor::at_end(agent);
        agent.write_config_file(
            MEASURED_FILE,
            &probed.weft_measured([10, 96], &[], FAST_PROBES),
        );
        let endpoint = SocketAddr::from(PROBED);
        log.transition_applied(endpoint, "unhealthy");
        self.wait_until_settled(&probed);
        let opened = Instant::now();
        let mut listener = self
            .weft
            .netns
            .run(move || Backend::start(endpoint, "probed"));
        let up = log.transition_applied(endpoint, "healthy");
        let up = HealthFlip {
            observed: opened.elapsed(),
            apply: up,
        };
        let closed = Instant::now();
        listener.stop();
        let down = log.transition_applied(endpoint, "unhealthy");
        HealthChange {
            up,
            down: HealthFlip {
                observed: closed.elapsed(),
                apply: down,
            },
        }
    }

    /// Waits until the measured service's real endpoints are healthy and the probed one is
    /// not: the flip measured next is then the only change in flight.
    fn wait_until_settled(&self, probed: &Services) {
        let service = format!("s{}", probed.measured_index());
        let mut wanted: Vec<(String, &str)> = probed
            .real_backends
            .iter()
            .map(|&endpoint| {
                let state = if endpoint == PROBED {
                    "unhealthy"
                } else {
                    "healthy"
                };
                (endpoint.0.to_string(), state)
            })
            .collect();
        wanted.sort();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let rows = self.weft.agent().cli_json(&["endpoints", &service]);
            let mut states: Vec<(String, &str)> = rows
                .as_array()
                .into_iter()
                .flatten()
                .map(|row| {
                    (
                        row["address"].as_str().unwrap_or_default().to_string(),
                        row["state"].as_str().unwrap_or_default(),
                    )
                })
                .collect();
            states.sort();
            if states == wanted {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{service}'s endpoints are {states:?} after 10 s, expected {wanted:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The socket path with per-connection statistics on, then off, `rounds` times; the
    /// switch is a config file of its own, written and removed between the two.
    pub fn stats_on_and_off(
        &mut self,
        rounds: usize,
        workers: usize,
        duration: Duration,
    ) -> (Vec<Sample>, Vec<Sample>) {
        let (mut with_stats, mut without) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            with_stats.push(self.drive(Contender::Weft, workers, duration));
            self.set_connection_stats(false);
            without.push(self.drive(Contender::Weft, workers, duration));
            self.set_connection_stats(true);
        }
        (with_stats, without)
    }

    /// The socket path with the measured service governed — a per-endpoint limit, slow
    /// start, fault injection for another cgroup and an `allow` list the clients pass, none
    /// of which refuses anything — against the same service plain and a direct connection,
    /// `rounds` times each, alternating. Returns (direct, plain, governed).
    pub fn governed_and_plain(
        &mut self,
        rounds: usize,
        workers: usize,
        duration: Duration,
    ) -> [Vec<Sample>; 3] {
        let elsewhere = self.weft.cgroup.child("fault-only");
        let fault_only = elsewhere.config_path();
        let governance = [
            NO_PROBES.to_string(),
            "    limits: { max_connections_per_endpoint: 1000000, max_connections: 10000000 }\n"
                .to_string(),
            "    slow_start: { window: 30s }\n".to_string(),
            format!("    fault: {{ abort_percent: 50, cgroup: {fault_only} }}\n"),
            format!("    allow: [{{ cgroup: {fault_only} }}, {{ uid: 0 }}]\n"),
        ]
        .concat();
        let governed = self.services.weft_measured([10, 96], &[], &governance);
        let plain = self.services.weft_measured([10, 96], &[], NO_PROBES);
        let mut samples: [Vec<Sample>; 3] = Default::default();
        for round in 0..rounds {
            // Every other round in reverse (governed, plain, direct), so neither weft setup
            // always runs last, furthest from its direct baseline and just after a reload.
            let mut order = [0, 1, 2];
            if round % 2 == 1 {
                order.reverse();
            }
            for setup in order {
                if setup == 2 {
                    self.apply_measured(&governed);
                }
                let contender = if setup == 0 {
                    Contender::Direct
                } else {
                    Contender::Weft
                };
                samples[setup].push(self.drive(contender, workers, duration));
                if setup == 2 {
                    self.apply_measured(&plain);
                }
            }
        }
        samples
    }

    /// Switches per-connection statistics and waits until the agent reports the switch
    /// (it changes no service, so the agent logs no apply for it).
    fn set_connection_stats(&self, on: bool) {
        let agent = self.weft.agent();
        let file = agent.config.join(STATS_FILE);
        if on {
            std::fs::remove_file(&file)
                .unwrap_or_else(|e| panic!("removing {}: {e}", file.display()));
        } else {
            agent.write_config_file(STATS_FILE, "stats: { connections: false }\n");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while agent.cli_json(&["status"])["connection_stats"].as_bool() != Some(on) {
            assert!(
                Instant::now() < deadline,
                "connection statistics not switched {} within 10 s",
                if on { "on" } else { "off" }
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Writes the measured service's file and waits for the agent's apply of it.
    fn apply_measured(&self, text: &str) {
        let agent = self.weft.agent();
        let mut log = LogCursor::at_end(agent);
        agent.write_config_file(MEASURED_FILE, text);
        log.next_apply(CONFIG_APPLIED);
    }

    /// One service with two endpoints, the second killed under load: weft with active
    /// probes, weft with passive detection only, and kube-proxy's iptables shape (which has
    /// no health checking of its own). Replaces the installed services, so it runs last.
    pub fn failover(&mut self, timing: FailoverTiming) -> Vec<Failover> {
        const PROBES: &str =
            "    health: { kind: tcp, interval: 200ms, timeout: 200ms, unhealthy_threshold: 2 }\n";
        const PASSIVE: &str =
            "    health: { kind: none }\n    outlier: { consecutive_failures: 3 }\n";
        let service = Services {
            count: 1,
            endpoints_each: 0,
            real_backends: vec![real_backends()[0], VICTIM],
            second_port: None,
        };
        self.services = service;
        // One service in force, as in the tests that set the failover targets.
        config_dir::clear(self.weft.agent());
        let mut results = Vec::new();
        for (setup, detection) in [
            (
                "weft, active probes (every 200 ms, down after 2 failures)",
                PROBES,
            ),
            ("weft, passive detection only (3 failed connects)", PASSIVE),
        ] {
            let yaml = self.services.weft_measured([10, 96], &[], detection);
            results.push(self.kill_under_load(Contender::Weft, setup, timing, |lab| {
                lab.apply_measured(&yaml);
            }));
        }
        let rules = self.services.iptables_restore([10, 97], Hook::Output);
        results.push(self.kill_under_load(
            Contender::Iptables,
            "iptables, kube-proxy's shape (no health checking)",
            timing,
            |lab| run_with_input(&lab.iptables, &["iptables-restore"], &rules),
        ));
        results
    }

    /// Starts the victim backend, programs the contender, waits until both endpoints answer,
    /// then kills the victim while clients run.
    fn kill_under_load(
        &mut self,
        contender: Contender,
        setup: &'static str,
        timing: FailoverTiming,
        program: impl FnOnce(&mut Lab),
    ) -> Failover {
        let mut victim = self
            .namespace_of(contender)
            .run(|| Backend::start(SocketAddr::from(VICTIM), "victim"));
        program(self);
        let target = self.target(contender);
        let both = self.as_client_of(contender, move || reaches_both(target));
        assert!(
            both,
            "{setup}: {target} did not reach both endpoints within 10 s"
        );
        let lab = &*self;
        let (run, killed) = std::thread::scope(|scope| {
            let load = scope.spawn(|| {
                lab.as_client_of(contender, move || {
                    load::run_workers(target, timing.workers, timing.before + timing.after)
                })
            });
            std::thread::sleep(timing.before);
            let killed = Instant::now();
            victim.stop();
            (load.join().expect("failover load"), killed)
        });
        let after: Vec<Instant> = run
            .failures
            .iter()
            .copied()
            .filter(|&t| t >= killed)
            .collect();
        let end = run.started + run.elapsed;
        let window = end.saturating_duration_since(killed);
        let last = after.last().map(|&t| t - killed);
        Failover {
            setup,
            connects: run.latencies_us.len() as u64 + run.failures.len() as u64,
            failed: after.len() as u64,
            failed_before: (run.failures.len() - after.len()) as u64,
            recovered_after: match last {
                Some(last) if last > window * 2 / 3 => None,
                Some(last) => Some(last),
                None => Some(Duration::ZERO),
            },
            window,
        }
    }

    fn namespace_of(&self, contender: Contender) -> &NetNs {
        match contender {
            Contender::Weft => &self.weft.netns,
            Contender::Direct => &self.direct,
            Contender::Iptables => &self.iptables,
            Contender::Nftables => &self.nftables,
            Contender::Haproxy => &self.haproxy_ns,
        }
    }

    /// The agent's resident memory, and its CPU use while idle for `window`.
    pub fn weft_footprint(&self, window: Duration) -> Footprint {
        footprint(self.weft.agent().pid(), window)
    }
}

/// A process's resident memory, and its CPU use over `window`.
pub fn footprint(pid: u32, window: Duration) -> Footprint {
    let before = cpu_time(pid);
    std::thread::sleep(window);
    let used = cpu_time(pid).saturating_sub(before);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Footprint {
        rss_kb,
        cpu_percent: used.as_secs_f64() / window.as_secs_f64() * 100.0,
    }
}

/// CPU time a process has used: its threads' run time in nanoseconds from schedstat (clock
/// ticks, 10 ms each, are too coarse for a 0.5 % target over seconds), or from the ticks of
/// /proc/PID/stat where schedstat is missing.
fn cpu_time(pid: u32) -> Duration {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    let nanos: Option<u64> = threads
        .filter_map(Result::ok)
        .map(|task| {
            let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            text.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    nanos.map_or_else(|| cpu_ticks(pid), Duration::from_nanos)
}

fn cpu_ticks(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name: state is 3rd, utime 14th, stime 15th overall.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = field(14).unwrap_or(0) + field(15).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.haproxy.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn services(count: usize) -> Services {
    Services {
        count,
        endpoints_each: 10,
        real_backends: real_backends(),
        second_port: None,
    }
}

/// Waits until 20 answers in a row come from backend "b" (at most 10 s).
fn only_b(target: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut streak = 0;
    while streak < 20 {
        assert!(
            Instant::now() < deadline,
            "{target} still reaches the drained endpoint after 10 s"
        );
        match load::one_request_named(target) {
            Ok(name) if name == "b" => streak += 1,
            _ => streak = 0,
        }
    }
}

/// Whether both the first real backend and the victim answer within 10 s.
fn reaches_both(target: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut first, mut victim) = (false, false);
    while Instant::now() < deadline && !(first && victim) {
        match load::one_request_named(target).as_deref() {
            Ok("a") => first = true,
            Ok("victim") => victim = true,
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    first && victim
}

/// Runs a command in the namespace with `input` on stdin; panics with its stderr on failure.
pub(super) fn run_with_input(ns: &NetNs, command: &[&str], input: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("writing rules");
    let out = child.wait_with_output().expect("waiting");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn timed(ns: &NetNs, command: &[&str], input: &str) -> Duration {
    let started = Instant::now();
    run_with_input(ns, command, input);
    started.elapsed()
}

/// `iptables -V`: legacy or nf_tables backend, for the report.
pub fn iptables_variant() -> String {
    Command::new("iptables")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "iptables (version unknown)".into())
}
