//! `cargo xtask fuzz [--seconds N] [TARGET...]`: builds the libFuzzer targets in `fuzz/` with
//! coverage instrumentation and runs each for N seconds, starting from its seed corpus in
//! `fuzz/corpus/TARGET/`. Inputs it finds interesting go to `target/fuzz/corpus/TARGET/`
//! (not the repository); an input that crashes a target is saved under
//! `target/fuzz/artifacts/TARGET/` and fails the run: make it a regression test.

use std::{fs, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{build, util};

/// Every target, as `fuzz/Cargo.toml` names its binaries.
pub const TARGETS: &[&str] = &["config", "planner", "events", "kubernetes", "admin"];

/// What cargo-fuzz passes rustc: libFuzzer's coverage feedback (8-bit counters, PC table,
/// compared values), `cfg(fuzzing)`, and the checks a release build drops.
const INSTRUMENTATION: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg=fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
];

#[derive(clap::Args)]
pub struct Options {
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Targets to run (default: all).
    pub targets: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    let targets: Vec<&str> = if opts.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        opts.targets.iter().map(String::as_str).collect()
    };
    if let Some(unknown) = targets.iter().find(|t| !TARGETS.contains(t)) {
        bail!("no fuzz target {unknown:?} (there are {TARGETS:?})");
    }
    run_targets(&targets, opts.seconds)
}

/// Builds and runs `targets` for `seconds` each.
pub fn run_targets(targets: &[&str], seconds: u64) -> Result<()> {
    let root = util::workspace_root();
    let dir = build::target_dir(&root).join("fuzz");
    let host = host_triple()?;
    // An explicit --target keeps the instrumentation off build scripts and proc macros; its
    // own target directory keeps the other builds' artifacts valid.
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "weft-fuzz",
            "--bins",
            "--target",
            &host,
        ])
        .arg("--target-dir")
        .arg(&dir)
        .env("RUSTFLAGS", INSTRUMENTATION.join(" "))
        // The fuzzed code never loads the kernel object; the agent embeds a placeholder.
        .env_remove("WEFT_EBPF_OBJECT");
    util::run(&mut cargo)?;
    for &target in targets {
        let seeds = root.join("fuzz/corpus").join(target);
        let corpus = dir.join("corpus").join(target);
        let artifacts = dir.join("artifacts").join(target);
        for d in [&corpus, &artifacts] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        eprintln!("fuzz: {target} for {seconds} s from {}", seeds.display());
        let mut fuzz = Command::new(dir.join(&host).join("release").join(target));
        fuzz.arg(&corpus)
            .arg(&seeds)
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            // Configs and Kubernetes objects are text of some length.
            .arg("-max_len=16384")
            .arg("-timeout=10")
            .arg("-rss_limit_mb=4096")
            .arg("-print_final_stats=1");
        if util::run(&mut fuzz).is_err() {
            bail!(
                "fuzz target {target} failed; the input is in {} (make it a regression test)",
                artifacts.display()
            );
        }
    }
    Ok(())
}

/// The triple rustc builds for by default (the machine's own).
fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .context("rustc -vV names no host")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_seeds_and_a_binary() {
        let root = util::workspace_root();
        let manifest = fs::read_to_string(root.join("fuzz/Cargo.toml")).unwrap();
        for target in TARGETS {
            let seeds =
                fs::read_dir(root.join("fuzz/corpus").join(target)).map_or(0, |d| d.count());
            assert!(seeds > 0, "fuzz/corpus/{target} is empty");
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "fuzz/Cargo.toml has no binary {target}"
            );
        }
    }
}
