//! The guest's initramfs: a static busybox, the kernel's 9p modules and an init that mounts
//! the host's root and switches to a script on it. Everything after that runs the host's own
//! binaries, so the tests see the same userspace as on the host.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::{cpio, debian, kernel::Kernel, util::shell_quote};

const INIT: &str = include_str!("vm/init.sh");
const BUSYBOX_PACKAGE: &str = "busybox-static";

/// Builds the initramfs for `kernel` whose init ends in `guest` (a path on the host's root).
pub fn build(kernel: &Kernel, busybox: &Path, guest: &Path) -> Result<Vec<u8>> {
    let mut archive = cpio::Archive::new();
    archive.dir("bin");
    let busybox_bytes =
        fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    archive.file("bin/busybox", 0o755, &busybox_bytes);
    archive.dir("modules");
    for module in &kernel.modules {
        let name = module
            .file_name()
            .and_then(|n| n.to_str())
            .context("module file without a name")?;
        let bytes = fs::read(module).with_context(|| format!("reading {}", module.display()))?;
        archive.file(&format!("modules/{name}"), 0o644, &bytes);
    }
    let init = format!(
        "#!/bin/busybox sh\nGUEST={}\n{INIT}",
        shell_quote(&guest.to_string_lossy())
    );
    archive.file("init", 0o755, init.as_bytes());
    Ok(archive.finish())
}

/// A statically linked busybox under `vm_dir`, taken from Debian's busybox-static package
/// without installing it (installing it would replace a host's dynamic busybox).
pub fn busybox(vm_dir: &Path) -> Result<PathBuf> {
    let home = vm_dir.join("busybox");
    let binary = home.join("busybox");
    if binary.exists() {
        return Ok(binary);
    }
    let scratch = vm_dir.join(".busybox-download");
    let unpacked = vm_dir.join(".busybox-unpacked");
    let result = debian::with_fresh_lists_on_failure(|| {
        let _ = fs::remove_dir_all(&unpacked);
        debian::download_unpacked(BUSYBOX_PACKAGE, &scratch, &unpacked)?;
        let found = unpacked.join("bin/busybox");
        if !found.exists() {
            bail!("{BUSYBOX_PACKAGE} has no bin/busybox");
        }
        fs::create_dir_all(&home)?;
        // Copied under a temporary name first: `binary` existing means it is complete.
        let partial = home.join("busybox.partial");
        fs::copy(&found, &partial)?;
        fs::rename(&partial, &binary)?;
        Ok(())
    });
    for dir in [&scratch, &unpacked] {
        let _ = fs::remove_dir_all(dir);
    }
    result.with_context(|| format!("fetching {BUSYBOX_PACKAGE}"))?;
    Ok(binary)
}
