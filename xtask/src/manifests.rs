//! The validator the manifest test runs on deploy/: kubernetes-validate, which checks each
//! object against the OpenAPI schemas of a given Kubernetes release offline. Pinned, and kept
//! in a virtualenv of its own under target/, so neither the system's Python (externally
//! managed on Debian: a bare `pip install` is refused) nor the user's packages are touched.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{build, setup, util};

const VERSION: &str = "1.37.0";

/// The validator's path, installed first if missing (idempotent: a working install is reused).
pub fn ensure_validator() -> Result<PathBuf> {
    let venv = build::target_dir(&util::workspace_root())
        .join("tools")
        .join(format!("kubernetes-validate-{VERSION}"));
    let tool = venv.join("bin/kubernetes-validate");
    if runs(&tool) {
        return Ok(tool);
    }
    // What an interrupted install left behind.
    let _ = fs::remove_dir_all(&venv);
    setup::ensure_debian_tool("python3", "python3")?;
    if !python_has_venv() {
        // Debian's python3 ships the venv module without ensurepip.
        eprintln!("setup: installing python3-venv");
        util::run(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .arg("python3-venv")
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    eprintln!(
        "setup: installing kubernetes-validate {VERSION} into {}",
        venv.display()
    );
    util::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    util::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("kubernetes-validate=={VERSION}")),
    )
    .context("pip install kubernetes-validate")?;
    if !runs(&tool) {
        bail!("{} was installed but does not run", tool.display());
    }
    Ok(tool)
}

fn runs(tool: &std::path::Path) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

fn python_has_venv() -> bool {
    Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .output()
        .is_ok_and(|out| out.status.success())
}
