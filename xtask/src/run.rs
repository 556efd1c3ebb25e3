//! `cargo xtask run [-- ARGS]`: build, then run `weft agent` as root. Without `--config` in
//! ARGS it uses weft.yaml at the repository root.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{build, setup, util};

#[derive(clap::Args)]
pub struct Options {
    /// Build the agent in release mode.
    #[arg(long)]
    release: bool,
    /// Arguments for `weft agent`.
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    let built = build::run(&build::Options {
        release: opts.release,
    })?;
    let mut args = vec!["agent".to_string()];
    if !opts
        .args
        .iter()
        .any(|a| a == "--config" || a.starts_with("--config="))
    {
        let config = util::workspace_root().join("weft.yaml");
        args.push("--config".into());
        args.push(config.display().to_string());
    }
    args.extend(opts.args.iter().cloned());
    let mut cmd = if setup::is_root() {
        Command::new(&built.agent)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(&built.agent);
        sudo
    };
    cmd.args(&args);
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status()?;
    if !status.success() {
        bail!("weft agent exited with {status}");
    }
    Ok(())
}
