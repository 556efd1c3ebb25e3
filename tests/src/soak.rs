//! The soak: the agent under everything at once for a while — connection churn, a config
//! change every 100 ms (weights and a varying set of services), an endpoint flapping,
//! UDP sessions and `weft conns --follow` attached — sampled for what could leak: resident
//! memory, open file descriptors, kernel map entries and connection events lost.
//!
//! A leak shows as growth that does not level off. The first third of the run is warm-up
//! (allocator pools, map entries of the live connections); the last third must stay
//! within a margin of the middle third's highs.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Env, agent::Follow, client};

const WEB: &str = "10.96.0.40:80";
const DNS: &str = "10.96.0.53:53";
/// Endpoints of `web`, by last octet; the last one flaps.
const ENDPOINTS: [u8; 4] = [2, 3, 4, 5];
const CONFIG_EVERY: Duration = Duration::from_millis(100);
const FLAP_EVERY: Duration = Duration::from_secs(2);
const UDP_EVERY: Duration = Duration::from_secs(1);
/// Services besides `web` and `dns` come and go with the config: 0 to this many.
const EXTRA_SERVICES: usize = 8;

/// One look at the agent.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Duration,
    pub rss_kib: u64,
    pub fds: u64,
    /// Entries of every hash and LRU map, summed.
    pub map_entries: u64,
    pub events_lost: u64,
    /// Config versions applied so far.
    pub generation: u64,
    /// `--follow` events received so far.
    pub followed: u64,
}

pub struct Report {
    pub samples: Vec<Sample>,
    pub connects_ok: u64,
    pub connects_failed: usize,
    pub udp_answered: usize,
    /// What grew without levelling off, or broke; empty when the soak passed.
    pub problems: Vec<String>,
}

/// The config of version `version`: `web` with weights that move, `dns`, and `version % 9`
/// extra services.
fn config(version: u64) -> String {
    let mut out = String::from("services:\n");
    let endpoints: String = ENDPOINTS
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let weight = 1 + (version + i as u64) % 4;
            format!("      - {{ address: 127.0.0.{o}, port: 8080, weight: {weight} }}\n")
        })
        .collect();
    let _ = write!(
        out,
        "  - name: web
    address: 10.96.0.40
    port: 80
    health: {{ kind: tcp, interval: 200ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1 }}
    endpoints:
{endpoints}  - name: dns
    address: 10.96.0.53
    port: 53
    protocol: udp
    health: {{ kind: none }}
    endpoints:
      - {{ address: 127.0.0.2, port: 53 }}
"
    );
    for k in 0..(version as usize % (EXTRA_SERVICES + 1)) {
        let _ = write!(
            out,
            "  - name: extra-{k}
    address: 10.96.1.{}
    port: 80
    health: {{ kind: none }}
    endpoints:
      - {{ address: 127.0.0.2, port: 8080 }}
",
            k + 1
        );
    }
    out
}

fn status(env: &Env) -> Value {
    env.agent().cli_json(&["status"])
}

fn sample(env: &Env, started: Instant, followed: u64) -> Sample {
    let pid = env.agent().pid();
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let status = status(env);
    let map_entries = status["maps"]
        .as_array()
        .map(|maps| maps.iter().filter_map(|m| m["entries"].as_u64()).sum())
        .unwrap_or(0);
    Sample {
        at: started.elapsed(),
        rss_kib,
        fds,
        map_entries,
        events_lost: status["events_lost"].as_u64().unwrap_or(0),
        generation: status["generation"].as_u64().unwrap_or(0),
        followed,
    }
}

/// Runs the soak for `duration`, sampling every `duration / 12` (at most every 30 s).
pub fn run(duration: Duration) -> Report {
    let mut env = crate::setup("soak").expect("the soak needs root and BPF");
    let mut flapper = None;
    for o in ENDPOINTS {
        let index = env
            .backends
            .tcp(&env.netns, &format!("127.0.0.{o}:8080"), &format!("b{o}"));
        flapper = Some(index);
    }
    env.backends.udp(&env.netns, "127.0.0.2:53", "dns");
    let mut generation = 0;
    env.start_agent(&config(generation));
    let follow = Follow::start(env.agent());
    let web: SocketAddr = WEB.parse().unwrap();
    let dns: SocketAddr = DNS.parse().unwrap();
    // Bounded by itself too: the soak's own time and a margin.
    let load = env.load(web, duration + Duration::from_secs(30));

    let every = (duration / 12).min(Duration::from_secs(30));
    let started = Instant::now();
    let (mut next_config, mut next_flap, mut next_udp, mut next_sample) =
        (started, started + FLAP_EVERY, started, started);
    let mut samples = Vec::new();
    let mut followed = 0u64;
    let mut udp_answered = 0;
    let last = format!("127.0.0.{}:8080", ENDPOINTS[ENDPOINTS.len() - 1]);
    while started.elapsed() < duration {
        let now = Instant::now();
        if now >= next_config {
            generation += 1;
            env.agent().write_config(&config(generation));
            next_config = now + CONFIG_EVERY;
        }
        if now >= next_flap {
            flapper = match flapper.take() {
                Some(index) => {
                    env.backends.stop(index);
                    None
                }
                None => Some(env.backends.tcp(&env.netns, &last, "flapper")),
            };
            next_flap = now + FLAP_EVERY;
        }
        if now >= next_udp {
            udp_answered += env
                .client(move || client::tally_udp(dns, 4))
                .values()
                .sum::<usize>();
            next_udp = now + UDP_EVERY;
        }
        followed += follow.drain() as u64;
        if now >= next_sample {
            let s = sample(&env, started, followed);
            eprintln!(
                "soak: {:>5.0} s  rss {:>7} KiB  fds {:>4}  map entries {:>6}  events lost {:>4}  generation {:>5}  followed {:>7}",
                s.at.as_secs_f64(),
                s.rss_kib,
                s.fds,
                s.map_entries,
                s.events_lost,
                s.generation,
                s.followed
            );
            samples.push(s);
            next_sample = now + every;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let outcome = load.finish();
    followed += follow.drain() as u64;
    let end = sample(&env, started, followed);
    samples.push(end.clone());

    let mut problems = judge(&samples);
    if !status(&env)["ready"].as_bool().unwrap_or(false) {
        problems.push("the agent is not ready at the end".to_string());
    }
    if outcome.ok == 0 {
        problems.push("no connect succeeded".to_string());
    }
    // Connects to the flapping endpoint fail until passive detection or a probe takes it
    // out: a few per flap, never most of them.
    if outcome.failures.len() as u64 > outcome.ok / 20 {
        problems.push(format!(
            "{} of {} connects failed (first: {:?})",
            outcome.failures.len(),
            outcome.ok + outcome.failures.len() as u64,
            outcome.failures.first()
        ));
    }
    if end.followed == 0 {
        problems.push("`weft conns --follow` received no event".to_string());
    }
    if end.generation < generation / 2 {
        problems.push(format!(
            "only {} config versions applied of {generation} written",
            end.generation
        ));
    }
    Report {
        samples,
        connects_ok: outcome.ok,
        connects_failed: outcome.failures.len(),
        udp_answered,
        problems,
    }
}

/// How far a figure may rise in the last third over the middle third's high: by `factor`,
/// then `slack` more (noise: allocator pools, the live connections' entries).
struct Bound {
    what: &'static str,
    value: fn(&Sample) -> u64,
    factor: f64,
    slack: u64,
}

const BOUNDS: [Bound; 3] = [
    Bound {
        what: "resident memory (KiB)",
        value: |s| s.rss_kib,
        factor: 1.15,
        slack: 2048,
    },
    Bound {
        what: "open file descriptors",
        value: |s| s.fds,
        factor: 1.0,
        // Health probes (four endpoints every 200 ms) and API clients hold a few for moments.
        slack: 16,
    },
    Bound {
        what: "map entries",
        value: |s| s.map_entries,
        factor: 1.25,
        slack: 64,
    },
];

/// What grew through the last third of the run beyond the middle third's highs (plus a
/// margin for noise), and events lost at all.
pub fn judge(samples: &[Sample]) -> Vec<String> {
    let mut problems = Vec::new();
    let n = samples.len();
    if n < 6 {
        problems.push(format!("only {n} samples: run longer"));
        return problems;
    }
    let (middle, last) = (&samples[n / 3..2 * n / 3], &samples[2 * n / 3..]);
    let high =
        |part: &[Sample], value: fn(&Sample) -> u64| part.iter().map(value).max().unwrap_or(0);
    for bound in BOUNDS {
        let middle_high = high(middle, bound.value);
        let limit = (middle_high as f64 * bound.factor) as u64 + bound.slack;
        let reached = high(last, bound.value);
        if reached > limit {
            problems.push(format!(
                "{} kept growing: {reached} in the last third, over {limit} (the middle third's high {middle_high} with margin)",
                bound.what
            ));
        }
    }
    let lost = samples[n - 1].events_lost;
    if lost > 0 {
        problems.push(format!("{lost} connection events lost"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(rss: impl Fn(u64) -> u64) -> Vec<Sample> {
        (0..12)
            .map(|i| Sample {
                at: Duration::from_secs(i * 5),
                rss_kib: rss(i),
                fds: 20,
                map_entries: 100,
                events_lost: 0,
                generation: i * 50,
                followed: i * 100,
            })
            .collect()
    }

    #[test]
    fn memory_that_levels_off_passes_and_memory_that_keeps_growing_fails() {
        // Warm-up growth, then flat.
        assert!(judge(&series(|i| 20_000 + 1_000 * i.min(4))).is_empty());
        // 2 MiB more every sample: a leak.
        let problems = judge(&series(|i| 20_000 + 2_048 * i));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("resident memory"), "{problems:?}");
    }

    #[test]
    fn lost_events_and_short_runs_are_problems() {
        let mut samples = series(|_| 20_000);
        samples[11].events_lost = 3;
        assert_eq!(judge(&samples), ["3 connection events lost"]);
        assert_eq!(judge(&samples[..4]), ["only 4 samples: run longer"]);
    }
}
