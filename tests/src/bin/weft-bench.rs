//! `cargo xtask bench [--quick]` runs this: every contender measured back to back, the
//! report written as markdown with an SVG chart. Needs root, iptables, nft, haproxy and
//! ethtool (`cargo xtask bench` installs them).

use std::{path::PathBuf, process::ExitCode};

use weft_tests::bench::{self, Options};

fn main() -> ExitCode {
    let mut quick = false;
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--out" => out = args.next().map(PathBuf::from),
            other => {
                eprintln!("weft-bench: unknown argument {other:?} (expected --quick, --out FILE)");
                return ExitCode::FAILURE;
            }
        }
    }
    let Some(out) = out else {
        eprintln!("weft-bench: --out FILE is required");
        return ExitCode::FAILURE;
    };
    let report = bench::run(&Options { quick });
    if let Err(e) = report.write(&out) {
        eprintln!("weft-bench: writing {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    println!("{}", report.markdown("(chart)"));
    eprintln!("weft-bench: report written to {}", out.display());
    let problems = report.problems();
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        for p in &problems {
            eprintln!("weft-bench: {p}");
        }
        ExitCode::FAILURE
    }
}
