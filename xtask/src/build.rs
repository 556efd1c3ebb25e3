//! `cargo xtask build`: the kernel object (always release: a debug BPF build fails the
//! verifier) and the agent with that object embedded.

use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::{setup, util};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Build the agent in release mode.
    #[arg(long)]
    pub release: bool,
}

pub struct Built {
    pub agent: PathBuf,
    /// The kernel object, for cargo calls that rebuild the agent crate.
    pub object: PathBuf,
    /// The PATH with bpf-linker's directory in front, for later cargo calls.
    pub path_env: std::ffi::OsString,
}

pub fn run(opts: &Options) -> Result<Built> {
    let tools = setup::run()?;
    let root = util::workspace_root();
    let mut path = std::ffi::OsString::from(&tools.bin_dir);
    if let Some(old) = env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    let object = build_ebpf(&root, &path)?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args(["build", "--package", "weft", "--bin", "weft"])
        .env("WEFT_EBPF_OBJECT", &object)
        .env("PATH", &path);
    if opts.release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)?;
    let profile = if opts.release { "release" } else { "debug" };
    Ok(Built {
        agent: target_dir(&root).join(profile).join("weft"),
        object,
        path_env: path,
    })
}

pub fn target_dir(root: &std::path::Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn build_ebpf(root: &std::path::Path, path: &std::ffi::OsStr) -> Result<PathBuf> {
    // A separate target dir: the BPF rustflags would otherwise invalidate the host build.
    let target_dir = target_dir(root).join("bpf");
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
        // BPF ISA v3 (Linux >= 5.1; its atomics with fetch, Linux >= 5.12): circuit breaking
        // takes a connection count and reads what it was in one atomic add.
        "-Ctarget-cpu=v3",
    ]
    .join("\x1f");
    util::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "--package", "weft-ebpf", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .arg("--target-dir")
            .arg(&target_dir)
            // Scoped to this one command: build-std needs it on a stable toolchain.
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
            .env_remove("RUSTFLAGS")
            .env("PATH", path),
    )
    .context("building the kernel programs")?;
    Ok(target_dir.join("bpfel-unknown-none/release/weft-ebpf"))
}
