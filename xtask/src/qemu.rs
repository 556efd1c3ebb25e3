//! Boots a kernel under QEMU with this machine's root shared read-only over virtio 9p and
//! one writable shared directory, the serial console on our stdout. TCG only: these
//! machines' CPUs have no VMX, and `-accel kvm` hangs rather than failing.

use std::{
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::setup;

const QEMU: &str = "qemu-system-x86_64";

pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    /// Writable in the guest under the 9p tag `share`.
    pub share: &'a Path,
    pub memory_mib: u32,
    pub time_limit: Duration,
}

pub enum Ended {
    /// QEMU exited (the guest powered off, or its kernel panicked: `-no-reboot`).
    Exited(ExitStatus),
    /// Killed after `time_limit`.
    TimedOut,
}

/// QEMU itself, installed from Debian if missing.
pub fn ensure_installed() -> Result<()> {
    setup::ensure_debian_tool(QEMU, "qemu-system-x86")?;
    let found = Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        anyhow::bail!("{QEMU} is not installed and could not be (Debian package qemu-system-x86)");
    }
    Ok(())
}

pub fn run(boot: &Boot) -> Result<Ended> {
    let cpus = thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
    let mut cmd = Command::new(QEMU);
    cmd.args(["-machine", "q35", "-accel", "tcg", "-cpu", "max"])
        .args(["-smp", &cpus.to_string()])
        .args(["-m", &boot.memory_mib.to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(boot.vmlinuz)
        .arg("-initrd")
        .arg(boot.initramfs)
        // panic=-1 with -no-reboot: a guest whose PID 1 dies ends QEMU at once.
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .arg("-virtfs")
        .arg(virtfs(Path::new("/"), "root", true))
        .arg("-virtfs")
        .arg(virtfs(boot.share, "share", false))
        // Without this QEMU puts the terminal in raw mode and reads keystrokes for the guest.
        .stdin(Stdio::null());
    let child = cmd.spawn().with_context(|| format!("starting {QEMU}"))?;
    let mut qemu = Running(Some(child));
    let deadline = Instant::now() + boot.time_limit;
    loop {
        if let Some(status) = qemu.try_wait()? {
            return Ok(Ended::Exited(status));
        }
        if Instant::now() >= deadline {
            qemu.kill();
            return Ok(Ended::TimedOut);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// A `-virtfs` value. `multidevs=remap`: the host's root spans several filesystems, whose
/// inode numbers would otherwise collide in the guest.
fn virtfs(path: &Path, tag: &str, readonly: bool) -> String {
    // QEMU option values escape a comma by doubling it.
    let path = path.to_string_lossy().replace(',', ",,");
    let mut value =
        format!("local,path={path},mount_tag={tag},security_model=none,multidevs=remap");
    if readonly {
        value.push_str(",readonly=on");
    }
    value
}

/// QEMU killed when dropped unless it already exited: an error or panic on our side never
/// leaves a VM running.
struct Running(Option<Child>);

impl Running {
    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let Some(child) = self.0.as_mut() else {
            anyhow::bail!("QEMU was already reaped");
        };
        let status = child.try_wait().context("waiting for QEMU")?;
        if status.is_some() {
            self.0 = None;
        }
        Ok(status)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}
