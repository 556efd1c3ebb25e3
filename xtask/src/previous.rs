//! The previous release of weft, built from git history for the upgrade tests: its source is
//! taken with `git archive` into `target/previous/<commit>` and built there with its own
//! `cargo xtask build` (a debug agent: the agent is not in the data path, and a debug build
//! takes half as long), into that tree's own target directory.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{build, util};

/// The commit of the release before this one: the last one that shipped. Move it forward
/// when a release ships, so the upgrade tests replace what users run.
pub const RELEASE: &str = "b705144cda48313f1da012c73f01defc7d559245";

/// Builds the previous release's agent (once; later calls reuse it) and returns its path.
pub fn build(built: &build::Built) -> Result<PathBuf> {
    let root = util::workspace_root();
    let tree = build::target_dir(&root)
        .join("previous")
        .join(&RELEASE[..12]);
    let agent = tree.join("target/debug/weft");
    let stamp = tree.join(".complete");
    if !stamp.exists() {
        extract(&root, &tree)?;
    }
    eprintln!("previous release {}: building its agent", &RELEASE[..12]);
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&tree)
        .args(["xtask", "build"])
        .env("PATH", &built.path_env)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("WEFT_EBPF_OBJECT");
    util::run(&mut cmd).context("building the previous release")?;
    if !agent.exists() {
        bail!("the previous release's build left no {}", agent.display());
    }
    Ok(agent)
}

/// Writes the release's source into `tree` (anew: a half-written tree is never reused).
fn extract(root: &std::path::Path, tree: &std::path::Path) -> Result<()> {
    let known = Command::new("git")
        .current_dir(root)
        .args(["cat-file", "-e", &format!("{RELEASE}^{{commit}}")])
        .stderr(Stdio::null())
        .status()
        .context("running git")?;
    if !known.success() {
        bail!(
            "the previous release {RELEASE} is not in this clone's history (a shallow clone? `git fetch --unshallow` brings it)"
        );
    }
    let _ = std::fs::remove_dir_all(tree);
    std::fs::create_dir_all(tree).with_context(|| format!("creating {}", tree.display()))?;
    let mut archive = Command::new("git")
        .current_dir(root)
        .args(["archive", "--format=tar", RELEASE])
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let stdout = archive.stdout.take().context("git archive's output")?;
    let untar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(tree)
        .stdin(stdout)
        .status()
        .context("running tar")?;
    let archived = archive.wait().context("waiting for git archive")?;
    if !archived.success() || !untar.success() {
        bail!("extracting {RELEASE} into {} failed", tree.display());
    }
    std::fs::write(tree.join(".complete"), RELEASE)
        .with_context(|| format!("marking {} complete", tree.display()))?;
    Ok(())
}
