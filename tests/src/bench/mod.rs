//! `cargo xtask bench`: weft against a direct connection, kube-proxy's iptables and nftables
//! rule shapes and HAProxy, measured back to back in one run on the same machine. Every
//! contender gets its own network namespace with the same two backends, so one contender's
//! netfilter hooks never tax another's packets. Everything is removed afterwards by guards,
//! also when the bench fails.

mod lab;
pub mod load;
mod report;
pub mod rules;

use std::time::Duration;

pub use lab::Contender;
use lab::Lab;
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
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                rounds: 1,
                duration: Duration::from_millis(300),
                workers: 2,
                idle: Duration::from_millis(500),
            }
        } else {
            Plan {
                rounds: 5,
                duration: Duration::from_secs(2),
                workers: 2,
                idle: Duration::from_secs(5),
            }
        }
    }
}

pub const MANY: usize = 10_000;

pub fn run(options: &Options) -> Report {
    let plan = Plan::new(options.quick);
    let mut report = Report::new(options.quick, plan.rounds, plan.duration, plan.workers);
    let mut lab = Lab::create();
    report.iptables_variant = lab::iptables_variant();

    for scale in [1, MANY] {
        eprintln!("bench: installing {scale} service(s) in every contender");
        let install = lab.install(scale);
        if scale == MANY {
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
    }
    eprintln!("bench: changing one endpoint's weight among {MANY} services");
    report.weight_change = lab.weight_change();
    report
}
