//! `cargo xtask soak [--minutes N]`: builds the agent and runs the soak binary against it
//! (connection churn, config changes every 100 ms, a flapping endpoint, `--follow`),
//! which fails if the agent's memory, descriptors or map entries keep growing or
//! connection events are lost.

use anyhow::{Result, bail};

use crate::{build, test::tests_binary, util};

#[derive(clap::Args)]
pub struct Options {
    /// How long to soak.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
}

pub fn run(opts: &Options) -> Result<()> {
    if !(opts.minutes > 0.0 && opts.minutes.is_finite()) {
        bail!("--minutes {}: expected a number above 0", opts.minutes);
    }
    let built = build::run(&build::Options { release: true })?;
    run_built(&built, opts.minutes)
}

/// Soaks an agent `cargo xtask test` already built.
pub fn run_built(built: &build::Built, minutes: f64) -> Result<()> {
    let mut cmd = tests_binary(built, "weft-soak");
    cmd.arg("--minutes").arg(minutes.to_string());
    util::run(&mut cmd)
}
