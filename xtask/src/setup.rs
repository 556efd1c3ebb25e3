//! `cargo xtask setup`: everything a fresh machine lacks, installed idempotently.
//!
//! The pinned toolchain itself must exist before cargo can even start in this workspace
//! (rust-toolchain.toml + RUSTUP_AUTO_INSTALL=0), which is why the README's commands begin
//! with `rustup toolchain install`; here we only make sure its components are present.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util;

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_FEATURE: &str = "llvm-22";
const BPFFS: &str = "/sys/fs/bpf";

/// What later steps need from setup.
pub struct Tools {
    /// Directory holding `bpf-linker`; prepended to PATH for the kernel build.
    pub bin_dir: PathBuf,
}

pub fn run() -> Result<Tools> {
    let toolchain = pinned_toolchain()?;
    ensure_components(&toolchain)?;
    let bin_dir = ensure_bpf_linker(&toolchain)?;
    ensure_bpffs()?;
    Ok(Tools { bin_dir })
}

/// The channel named in rust-toolchain.toml.
fn pinned_toolchain() -> Result<String> {
    let path = util::workspace_root().join("rust-toolchain.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|line| {
            let rest = line.trim().strip_prefix("channel")?;
            let value = rest.trim().strip_prefix('=')?.trim().trim_matches('"');
            Some(value.to_string())
        })
        .with_context(|| format!("no channel in {}", path.display()))
}

fn ensure_components(toolchain: &str) -> Result<()> {
    let sysroot = toolchain_sysroot(toolchain)?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!("setup: installing rust-src for {toolchain}");
    util::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        toolchain,
    ]))
}

fn toolchain_sysroot(toolchain: &str) -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args([&format!("+{toolchain}"), "--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    if !out.status.success() {
        bail!(
            "toolchain {toolchain} is not installed; run `rustup toolchain install` in the repository first: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// Where setup keeps what it builds: outside the repository and /tmp, because bpf-linker's
/// RUNPATH points at the LLVM prefix and must outlive this process.
fn tools_home() -> Result<PathBuf> {
    if let Some(dir) = env::var_os("WEFT_TOOLS_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let data = match env::var_os("XDG_DATA_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env::var_os("HOME").context("HOME is not set")?).join(".local/share"),
    };
    Ok(data.join("weft"))
}

/// bpf-linker must link the same LLVM as the rustc that emits the bitcode: build it against
/// the pinned toolchain's own libLLVM.
fn ensure_bpf_linker(toolchain: &str) -> Result<PathBuf> {
    let home = tools_home()?;
    let root = home.join(format!("bpf-linker-{BPF_LINKER_VERSION}-rust-{toolchain}"));
    let bin_dir = root.join("bin");
    let linker = bin_dir.join("bpf-linker");
    if linker_works(&linker) {
        return Ok(bin_dir);
    }
    let sysroot = toolchain_sysroot(toolchain)?;
    let llvm = find_libllvm(&sysroot.join("lib"))?;
    let prefix = home.join(format!("llvm-rust-{toolchain}"));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let soname = llvm.file_name().context("libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(soname)] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(&llvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {}",
        llvm.display()
    );
    util::run(
        Command::new("cargo")
            .args([
                &format!("+{toolchain}"),
                "install",
                "bpf-linker",
                "--locked",
            ])
            .args(["--version", BPF_LINKER_VERSION, "--no-default-features"])
            .args(["--features", LLVM_FEATURE, "--root"])
            .arg(&root)
            .env("LLVM_PREFIX", &prefix)
            .env("LLVM_SYS_221_PREFIX", &prefix),
    )?;
    if !linker_works(&linker) {
        bail!("{} was installed but does not run", linker.display());
    }
    Ok(bin_dir)
}

fn linker_works(linker: &Path) -> bool {
    Command::new(linker)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

fn find_libllvm(lib_dir: &Path) -> Result<PathBuf> {
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("listing {}", lib_dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("libLLVM.so.") {
            return Ok(path);
        }
    }
    bail!("no libLLVM.so.* in {}", lib_dir.display())
}

/// The BPF filesystem holds weft's pins; mount it if the machine has not.
fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let mounted = mounts.lines().any(|line| {
        line.split(" - ")
            .nth(1)
            .is_some_and(|rest| rest.starts_with("bpf "))
    });
    if mounted {
        return Ok(());
    }
    if !is_root() {
        eprintln!("setup: no bpffs mounted and not root; `weft agent` will need one at {BPFFS}");
        return Ok(());
    }
    fs::create_dir_all(BPFFS).ok();
    eprintln!("setup: mounting bpffs at {BPFFS}");
    util::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions; avoiding a libc dependency for one call.
    unsafe extern "C" {
        fn geteuid() -> u32;
    }
    unsafe { geteuid() == 0 }
}

/// A Debian package's tool the tests or the bench need (`promtool` from `prometheus`,
/// `haproxy`, `iptables`, `nft` from `nftables`). Installed when missing and we are root;
/// otherwise whatever needs it says so.
pub fn ensure_debian_tool(binary: &str, package: &str) -> Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Ok(());
    }
    if !is_root() {
        eprintln!("setup: {binary} missing and not root; install the Debian package {package}");
        return Ok(());
    }
    eprintln!("setup: installing {binary} (Debian package {package})");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if install() {
        return Ok(());
    }
    // Package lists may be missing or stale on a fresh machine.
    util::run(Command::new("apt-get").args(["update", "-q"]))?;
    if !install() {
        bail!("apt-get install {package} failed (needed for {binary})");
    }
    Ok(())
}
