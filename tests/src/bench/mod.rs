//! `cargo xtask bench`: weft against a direct connection, kube-proxy's iptables and nftables
//! rule shapes and HAProxy, measured back to back in one run on the same machine. Every
//! contender gets its own network namespace with the same two backends, so one contender's
//! netfilter hooks never tax another's packets. Then traffic forwarded through a node
//! (`forward`): weft's TC path against routing and the same rule shapes at PREROUTING.
//! Everything is removed afterwards by guards, also when the bench fails.

mod applies;
mod chart;
mod config_dir;
mod forward;
mod kubernetes;
mod lab;
pub mod load;
mod report;
pub mod rules;

use std::time::Duration;

pub use applies::Apply;
pub use lab::{Contender, Failover, HealthChange, HealthFlip, WeftChange};
use lab::{FailoverTiming, Lab};
pub use report::Report;

pub struct Options {
    /// Every contender briefly: a smoke run CI can afford.
    pub quick: bool,
}

/// How long and how often: the full run stays within 10 minutes on 2 cores.
struct Plan {
    rounds: usize,
    duration: Duration,
    workers: usize,
    idle: Duration,
    failover: FailoverTiming,
    /// Services installed for the second set of rounds and the programming times.
    many: usize,
    /// EndpointSlice changes timed.
    slice_changes: usize,
    /// Traffic forwarded through a node.
    forward: forward::Plan,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                rounds: 1,
                duration: Duration::from_millis(300),
                workers: 2,
                idle: Duration::from_millis(500),
                failover: FailoverTiming {
                    workers: 2,
                    before: Duration::from_millis(300),
                    after: Duration::from_millis(1500),
                },
                // `nft -f` alone takes ~100 s for 10,000 services here.
                many: 1_000,
                slice_changes: 5,
                forward: forward::Plan {
                    rounds: 1,
                    duration: Duration::from_millis(300),
                    stream: Duration::from_millis(300),
                    max_stream_bytes: 4 << 30,
                    workers: 2,
                    many: 1_000,
                },
            }
        } else {
            Plan {
                rounds: 5,
                duration: Duration::from_secs(2),
                workers: 2,
                idle: Duration::from_secs(5),
                failover: FailoverTiming {
                    workers: 2,
                    before: Duration::from_millis(500),
                    after: Duration::from_secs(3),
                },
                many: 10_000,
                slice_changes: 21,
                // More, shorter rounds than above: a burst of other work on this shared
                // machine then spoils fewer of the paired rounds the ratios come from.
                forward: forward::Plan {
                    rounds: 8,
                    duration: Duration::from_secs(1),
                    stream: Duration::from_millis(750),
                    max_stream_bytes: 16 << 30,
                    workers: 2,
                    many: 10_000,
                },
            }
        }
    }
}

pub fn run(options: &Options) -> Report {
    let plan = Plan::new(options.quick);
    let mut report = Report::new(options.quick, plan.rounds, plan.duration, plan.workers);
    report.many = plan.many;
    let mut lab = Lab::create();
    report.iptables_variant = lab::iptables_variant();

    for scale in [1, plan.many] {
        eprintln!("bench: installing {scale} service(s) in every contender");
        let install = lab.install(scale);
        print_install(&install);
        if scale == plan.many {
            report.install = install;
            report.footprint_many = Some(lab.weft_footprint(plan.idle));
        } else {
            report.footprint_one = Some(lab.weft_footprint(plan.idle));
        }
        // A B C D E, A B C D E, ...: drift on this shared machine hits every contender alike.
        for round in 0..plan.rounds {
            for contender in Contender::ALL {
                if !contender.serves(scale) {
                    continue;
                }
                let sample = lab.drive(contender, plan.workers, plan.duration);
                eprintln!(
                    "bench: {scale:>5} services, round {round}, {:<9} {:>8.0} conn/s  p50 {:>5.0} µs  p99 {:>6.0} µs  failed {}",
                    contender.name(),
                    sample.per_second,
                    sample.p50_us,
                    sample.p99_us,
                    sample.failures
                );
                report.add_sample(scale, contender, sample);
            }
        }
        if scale == 1 {
            eprintln!("bench: the socket path with connection statistics on and off");
            report.stats_on_off = lab.stats_on_and_off(plan.rounds, plan.workers, plan.duration);
            eprintln!("bench: the socket path with governance configured but not triggered");
            report.governed = lab.governed_and_plain(plan.rounds, plan.workers, plan.duration);
        }
    }
    measure_changes(&lab, &mut report, plan.many);
    eprintln!("bench: killing a backend under load");
    report.failover = lab.failover(plan.failover);
    for f in &report.failover {
        eprintln!(
            "bench: {}: {} connects, {} failed after the kill, recovered after {:?}",
            f.setup, f.connects, f.failed, f.recovered_after
        );
    }
    // Its agent and namespaces would only idle from here on.
    drop(lab);
    eprintln!(
        "bench: Kubernetes: {} Services with a slice each from a fake API server",
        plan.many
    );
    let k = kubernetes::measure(plan.many, plan.slice_changes, plan.idle);
    if let Some((total, apply)) = k.change_medians() {
        eprintln!(
            "bench: Kubernetes: sync {:?} (agent {:.1} ms), one slice → kernel {total:?} median (agent {apply:.2} ms)",
            k.sync,
            k.sync_apply_ms()
        );
    }
    report.kubernetes = Some(k);
    report.forwarded = Some(forward::measure(&plan.forward));
    report
}

fn print_install(install: &lab::Install) {
    eprintln!(
        "bench: weft: {} file(s) written → {} services in force after {:?} (agent: {:.1} ms in {} applies); iptables-restore {:?}, nft -f {:?}",
        install.weft.files,
        install.services,
        install.weft.to_kernel,
        install.weft.apply_ms(),
        install.weft.applies.len(),
        install.iptables,
        install.nftables
    );
}

/// One service's weights, then one endpoint's health, changed among `many` services. The
/// health change comes last: from there on the agent probes the measured service.
fn measure_changes(lab: &Lab, report: &mut Report, many: usize) {
    eprintln!("bench: changing one endpoint's weight among {many} services");
    report.weight_change = lab.weight_change();
    let w = &report.weight_change;
    eprintln!(
        "bench: weight change: weft {:?} (agent: {:.2} ms), iptables {:?}, nftables {:?}",
        w.weft.to_kernel,
        w.weft.apply_ms(),
        w.iptables,
        w.nftables
    );
    eprintln!("bench: one endpoint's health flipping among {many} services");
    let health = lab.health_change();
    eprintln!(
        "bench: health change: up {:.2} ms, down {:.2} ms of agent work (observed after {:?} and {:?})",
        health.up.apply.elapsed_ms,
        health.down.apply.elapsed_ms,
        health.up.observed,
        health.down.observed
    );
    report.health_change = Some(health);
}
