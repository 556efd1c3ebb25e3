//! `cargo xtask bench [--quick]`: builds the agent, installs the peers it is measured against
//! (iptables, nftables, HAProxy) and ethtool (the forwarded section compares interface
//! offloads), and runs the bench binary, which writes
//! `docs/benchmarks.md` and `docs/benchmarks.svg` (`--quick`: under target/, numbers only
//! checked to exist).

use anyhow::Result;

use crate::{build, setup, test::tests_binary, util};

#[derive(clap::Args)]
pub struct Options {
    /// Every contender briefly: a smoke run that only checks each produced numbers.
    #[arg(long)]
    pub quick: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    let built = build::run(&build::Options { release: true })?;
    run_built(&built, opts)
}

/// Runs the bench on an agent `cargo xtask test` or `run` already built.
pub fn run_built(built: &build::Built, opts: &Options) -> Result<()> {
    for (binary, package) in [
        ("iptables-restore", "iptables"),
        ("nft", "nftables"),
        ("haproxy", "haproxy"),
        ("ethtool", "ethtool"),
    ] {
        setup::ensure_debian_tool(binary, package)?;
    }
    let root = util::workspace_root();
    let out = if opts.quick {
        build::target_dir(&root).join("bench-quick/benchmarks.md")
    } else {
        root.join("docs/benchmarks.md")
    };
    let mut cmd = tests_binary(built, "weft-bench");
    cmd.args(opts.quick.then_some("--quick"))
        .arg("--out")
        .arg(&out);
    util::run(&mut cmd)
}
