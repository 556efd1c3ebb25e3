//! Debian packages fetched without installing them: `apt-get download` and `dpkg-deb -x`
//! into a directory of ours, so the host's /boot and package state stay as they were.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::util;

/// The newest package named `{prefix}N{suffix}` (N a number, e.g. the ABI of
/// `linux-image-6.1.0-48-amd64`) that apt knows; the package lists are refreshed once if
/// none is known.
pub fn newest_numbered(prefix: &str, suffix: &str) -> Result<String> {
    if let Some(name) = newest_known(prefix, suffix)? {
        return Ok(name);
    }
    util::run(Command::new("apt-get").args(["update", "-q"]))
        .context("refreshing apt's package lists")?;
    newest_known(prefix, suffix)?.with_context(|| format!("apt knows no package {prefix}N{suffix}"))
}

fn newest_known(prefix: &str, suffix: &str) -> Result<Option<String>> {
    let out = Command::new("apt-cache")
        .args(["pkgnames", prefix])
        .stderr(Stdio::inherit())
        .output()
        .context("running apt-cache pkgnames")?;
    let names = String::from_utf8_lossy(&out.stdout);
    Ok(names
        .lines()
        .filter_map(|name| {
            let middle = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
            let number: u64 = middle.parse().ok()?;
            Some((number, name.to_string()))
        })
        .max()
        .map(|(_, name)| name))
}

/// Downloads `package` into `scratch` and unpacks its files under `dest`; returns the
/// package's version.
pub fn download_unpacked(package: &str, scratch: &Path, dest: &Path) -> Result<String> {
    fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    eprintln!("vm: downloading {package}");
    util::run(
        Command::new("apt-get")
            .current_dir(scratch)
            // apt downloads as the `_apt` user, who cannot write into our root-owned
            // directory (apt then falls back to root with a warning): ask for root at once.
            .args(["-o", "APT::Sandbox::User=root", "download", "-q", package]),
    )
    .with_context(|| format!("downloading the Debian package {package}"))?;
    let deb = fs::read_dir(scratch)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.extension().is_some_and(|e| e == "deb")
                && path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")))
        })
        .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
    util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dest))
        .with_context(|| format!("unpacking {}", deb.display()))?;
    let out = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Version")
        .output()
        .context("running dpkg-deb -f")?;
    if !out.status.success() {
        bail!("dpkg-deb -f {} Version failed", deb.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
