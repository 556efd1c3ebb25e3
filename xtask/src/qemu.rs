//! Boots a kernel under QEMU with this machine's root shared read-only over virtio 9p and
//! one writable shared directory, the serial console on our stdout. TCG only: these
//! machines' CPUs have no VMX, and `-accel kvm` hangs rather than failing.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::debian;

const QEMU: &str = "qemu-system-x86_64";

pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    /// Writable in the guest under the 9p tag `share`.
    pub share: &'a Path,
    /// Read-only in the guest under the 9p tags `host0`, `host1`, …: directories the guest
    /// mounts again at their own paths when its own /tmp or /run hides them.
    pub host_dirs: &'a [PathBuf],
    pub memory_mib: u32,
    pub time_limit: Duration,
}

pub enum Ended {
    /// QEMU exited (the guest powered off, or its kernel panicked: `-no-reboot`).
    Exited(ExitStatus),
    /// Killed after `time_limit`.
    TimedOut,
}

/// The QEMU to run: the host's own if it has one, else Debian's qemu-system-x86 unpacked
/// under target/vm/qemu with those of its dependencies the host lacks. Not installed: on
/// these machines Debian 12's qemu-system-x86 (7.2) can only be installed by removing the
/// preinstalled qemu-utils 10.0 from bookworm-backports, which breaks qemu-system-common
/// before 8.0.
pub struct Qemu {
    binary: PathBuf,
    /// Where the packages were unpacked, when QEMU is not the host's.
    unpacked: Option<PathBuf>,
}

const PACKAGE: &str = "qemu-system-x86";
const COMPLETE: &str = "packages.txt";

pub fn fetch(vm_dir: &Path) -> Result<Qemu> {
    let host = Qemu {
        binary: PathBuf::from(QEMU),
        unpacked: None,
    };
    if host.runs() {
        return Ok(host);
    }
    let root = vm_dir.join("qemu");
    if !root.join(COMPLETE).exists() {
        debian::with_fresh_lists_on_failure(|| unpack(vm_dir, &root))
            .with_context(|| format!("fetching {PACKAGE}"))?;
    }
    let qemu = Qemu {
        binary: root.join("usr/bin").join(QEMU),
        unpacked: Some(root),
    };
    if !qemu.runs() {
        bail!(
            "{} does not run (missing libraries?); remove {} to fetch it again",
            qemu.binary.display(),
            vm_dir.join("qemu").display()
        );
    }
    Ok(qemu)
}

fn unpack(vm_dir: &Path, root: &Path) -> Result<()> {
    let scratch = vm_dir.join(".qemu-download");
    let staging = vm_dir.join(".qemu-staging");
    let clean = || {
        for dir in [&scratch, &staging] {
            let _ = fs::remove_dir_all(dir);
        }
    };
    clean();
    let result = (|| {
        let specs = debian::missing_for(PACKAGE)?;
        for deb in debian::download(&specs, &scratch)? {
            debian::unpack(&deb, &staging)?;
        }
        fs::write(staging.join(COMPLETE), specs.join("\n") + "\n")?;
        let _ = fs::remove_dir_all(root);
        fs::rename(&staging, root)?;
        anyhow::Ok(())
    })();
    clean();
    result
}

impl Qemu {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        if let Some(root) = &self.unpacked {
            let libs: Vec<String> = ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"]
                .iter()
                .map(|dir| root.join(dir))
                .filter(|dir| dir.is_dir())
                .map(|dir| dir.to_string_lossy().into_owned())
                .collect();
            cmd.env("LD_LIBRARY_PATH", libs.join(":"));
            // Firmware (SeaBIOS, the option ROM that boots -kernel) is looked up in these.
            for data in ["usr/share/qemu", "usr/share/seabios"] {
                cmd.arg("-L").arg(root.join(data));
            }
        }
        cmd
    }

    fn runs(&self) -> bool {
        self.command()
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

pub fn run(qemu: &Qemu, boot: &Boot) -> Result<Ended> {
    let cpus = thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
    let mut cmd = qemu.command();
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
        .args(boot.host_dirs.iter().enumerate().flat_map(|(i, dir)| {
            [
                "-virtfs".to_string(),
                virtfs(dir, &format!("host{i}"), true),
            ]
        }))
        // Without this QEMU puts the terminal in raw mode and reads keystrokes for the guest.
        .stdin(Stdio::null());
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", qemu.binary.display()))?;
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
