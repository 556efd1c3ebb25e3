//! Debian packages fetched without installing them: `apt-get download` and `dpkg-deb -x`
//! into a directory of ours, so the host's /boot and package state stay as they were.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::util;

/// Runs `f`, and once more after refreshing apt's package lists if it fails: where the
/// lists are missing or stale apt knows no such package, or names versions the mirror has
/// dropped since.
pub fn with_fresh_lists_on_failure<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    match f() {
        Ok(value) => Ok(value),
        Err(error) => {
            eprintln!("vm: {error:#}; refreshing apt's package lists and trying again");
            util::run(Command::new("apt-get").args(["update", "-q"]))
                .context("refreshing apt's package lists")?;
            f()
        }
    }
}

/// The newest package named `{prefix}N{suffix}` (N a number, e.g. the ABI of
/// `linux-image-6.1.0-48-amd64`) that apt knows.
pub fn newest_numbered(prefix: &str, suffix: &str) -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["pkgnames", prefix])
        .stderr(Stdio::inherit())
        .output()
        .context("running apt-cache pkgnames")?;
    let names = String::from_utf8_lossy(&out.stdout);
    names
        .lines()
        .filter_map(|name| {
            let middle = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
            let number: u64 = middle.parse().ok()?;
            Some((number, name.to_string()))
        })
        .max()
        .map(|(_, name)| name)
        .with_context(|| format!("apt knows no package {prefix}N{suffix}"))
}

/// What `apt-get install PACKAGE` would add to this host (the package and whichever of its
/// dependencies are missing), as `name=version`, found by simulating the install.
pub fn missing_for(package: &str) -> Result<Vec<String>> {
    let out = Command::new("apt-get")
        .args(["install", "--simulate", "--no-install-recommends", "-q"])
        .arg(package)
        .stderr(Stdio::inherit())
        .output()
        .context("running apt-get install --simulate")?;
    if !out.status.success() {
        bail!("apt cannot resolve {package} on this host");
    }
    // "Inst NAME [OLD] (VERSION SUITE [ARCH])"
    let specs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("Inst ")?;
            let name = rest.split_whitespace().next()?;
            let version = rest.split_once('(')?.1.split_whitespace().next()?;
            Some(format!("{name}={version}"))
        })
        .collect();
    Ok(specs)
}

/// Downloads `specs` (package names, or `name=version`) into `scratch`; returns the .deb files.
pub fn download(specs: &[String], scratch: &Path) -> Result<Vec<PathBuf>> {
    let _ = fs::remove_dir_all(scratch);
    fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    eprintln!("vm: downloading {}", specs.join(" "));
    util::run(
        Command::new("apt-get")
            .current_dir(scratch)
            // apt downloads as the `_apt` user, who cannot write into our root-owned
            // directory (apt then falls back to root with a warning): ask for root at once.
            .args(["-o", "APT::Sandbox::User=root", "download", "-q"])
            .args(specs),
    )
    .with_context(|| format!("downloading the Debian packages {}", specs.join(" ")))?;
    let debs: Vec<PathBuf> = fs::read_dir(scratch)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "deb"))
        .collect();
    if debs.len() != specs.len() {
        bail!(
            "apt-get download left {} .deb files for {} packages",
            debs.len(),
            specs.len()
        );
    }
    Ok(debs)
}

/// Unpacks a .deb's files under `dest`; returns the package's version.
pub fn unpack(deb: &Path, dest: &Path) -> Result<String> {
    util::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest))
        .with_context(|| format!("unpacking {}", deb.display()))?;
    let out = Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .arg("Version")
        .output()
        .context("running dpkg-deb -f")?;
    if !out.status.success() {
        bail!("dpkg-deb -f {} Version failed", deb.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One package downloaded into `scratch` and unpacked under `dest`; returns its version.
pub fn download_unpacked(package: &str, scratch: &Path, dest: &Path) -> Result<String> {
    let debs = download(&[package.to_string()], scratch)?;
    let [deb] = debs.as_slice() else {
        bail!("apt-get download {package} left {} .deb files", debs.len());
    };
    unpack(deb, dest)
}
