//! `cargo xtask soak --minutes N` runs this: the agent under connection churn, config
//! changes every 100 ms, a flapping endpoint and `weft conns --follow` for N minutes,
//! sampled for resident memory, file descriptors, map entries and events lost; fails if
//! any keeps growing. Needs root.

use std::{process::ExitCode, time::Duration};

fn main() -> ExitCode {
    let mut minutes = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--minutes", Some(value)) => match value.parse::<f64>() {
                Ok(m) if m > 0.0 && m.is_finite() => minutes = Some(m),
                _ => {
                    eprintln!("weft-soak: --minutes {value:?}: expected a number above 0");
                    return ExitCode::FAILURE;
                }
            },
            (other, _) => {
                eprintln!("weft-soak: unknown argument {other:?} (expected --minutes N)");
                return ExitCode::FAILURE;
            }
        }
    }
    let Some(minutes) = minutes else {
        eprintln!("weft-soak: --minutes N is required");
        return ExitCode::FAILURE;
    };
    let report = weft_tests::soak::run(Duration::from_secs_f64(minutes * 60.0));
    let (first, last) = (
        &report.samples[0],
        &report.samples[report.samples.len() - 1],
    );
    eprintln!(
        "soak: {:.0} s: {} connects ({} failed), {} UDP answers, {} config versions applied, {} events followed",
        last.at.as_secs_f64(),
        report.connects_ok + report.connects_failed as u64,
        report.connects_failed,
        report.udp_answered,
        last.generation,
        last.followed
    );
    eprintln!(
        "soak: first → last sample: rss {} → {} KiB, fds {} → {}, map entries {} → {}, events lost {}",
        first.rss_kib,
        last.rss_kib,
        first.fds,
        last.fds,
        first.map_entries,
        last.map_entries,
        last.events_lost
    );
    if report.problems.is_empty() {
        eprintln!("soak: passed");
        ExitCode::SUCCESS
    } else {
        for p in &report.problems {
            eprintln!("soak: FAILED: {p}");
        }
        ExitCode::FAILURE
    }
}
