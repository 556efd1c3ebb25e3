//! `cargo xtask image`: the agent as a static binary (x86_64 musl, kernel programs embedded)
//! in an OCI image `FROM scratch` holding nothing else, written as an OCI archive under
//! target/. buildah builds it without a daemon and without network (vfs storage in a
//! directory of our own, removed afterwards; chroot isolation, though a COPY-only recipe
//! runs nothing). Everything it needs is installed here when missing: the musl target of the
//! pinned toolchain and the Debian packages musl-tools, buildah, skopeo and umoci.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{build, setup, util};

const TARGET: &str = "x86_64-unknown-linux-musl";
/// The image's name, as `ctr images import` and `podman load` will call it.
const REPOSITORY: &str = "localhost/weft";
const ARCHIVE: &str = "weft-image.oci.tar";

pub struct Image {
    pub archive: PathBuf,
    pub reference: String,
}

pub fn run() -> Result<()> {
    // The host build makes the kernel object the static binary embeds (and is the build
    // `cargo xtask test` makes anyway, so there it costs nothing more).
    let built = build::run(&build::Options { release: true })?;
    let image = build_from(&built)?;
    println!("{} ({})", image.archive.display(), image.reference);
    Ok(())
}

/// Builds the image with the kernel object and PATH of an earlier `build::run`.
pub fn build_from(built: &build::Built) -> Result<Image> {
    let started = Instant::now();
    let root = util::workspace_root();
    let target = build::target_dir(&root);
    let archive = target.join(ARCHIVE);
    // An earlier image must not pass for this one if this build fails.
    let _ = fs::remove_file(&archive);
    ensure_musl_target(&root)?;
    for (binary, package) in [
        // For C compiled for the target (ring, under the Kubernetes client's TLS).
        ("x86_64-linux-musl-gcc", "musl-tools"),
        ("buildah", "buildah"),
        ("skopeo", "skopeo"),
        ("umoci", "umoci"),
    ] {
        setup::ensure_debian_tool(binary, package)?;
    }
    let binary = build_static_agent(&root, built)?;
    let reference = format!("{REPOSITORY}:{}", agent_version(&root)?);
    let work = Scratch::create(target.join("image-build"))?;
    let context = work.0.join("context");
    fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    // The context holds the binary alone, so nothing else of the tree can reach the image.
    fs::copy(&binary, context.join("weft")).context("copying the agent into the context")?;
    let buildah = |args: &[&str]| {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(work.0.join("storage"))
            .arg("--runroot")
            .arg(work.0.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        cmd
    };
    let recipe = root.join("deploy/Containerfile");
    util::run(
        buildah(&["bud", "--isolation", "chroot", "--pull-never", "--quiet"])
            .arg("--file")
            .arg(&recipe)
            .args(["--tag", &reference])
            .arg(&context)
            // It prints the image id, which nothing here needs.
            .stdout(Stdio::null()),
    )
    .context("building the image")?;
    util::run(
        buildah(&["push", "--quiet", &reference])
            .arg(format!("oci-archive:{}:{reference}", archive.display())),
    )
    .context("writing the OCI archive")?;
    check_config(&archive)?;
    eprintln!(
        "image: {} ({reference}, {} KiB) in {:.1} s",
        archive.display(),
        fs::metadata(&archive)?.len() / 1024,
        started.elapsed().as_secs_f64()
    );
    Ok(Image { archive, reference })
}

/// The target's standard library, added to the pinned toolchain if it lacks it. rustup run
/// in the workspace resolves the toolchain from rust-toolchain.toml.
fn ensure_musl_target(root: &Path) -> Result<()> {
    let out = Command::new("rustc")
        .current_dir(root)
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    if sysroot
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
    {
        return Ok(());
    }
    eprintln!("image: adding the {TARGET} target to the pinned toolchain");
    util::run(
        Command::new("rustup")
            .current_dir(root)
            .args(["target", "add", TARGET]),
    )
}

fn build_static_agent(root: &Path, built: &build::Built) -> Result<PathBuf> {
    util::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "--release", "--package", "weft", "--bin", "weft"])
            .args(["--target", TARGET])
            .env("WEFT_EBPF_OBJECT", &built.object)
            .env("PATH", &built.path_env)
            .env("CC_x86_64_unknown_linux_musl", "x86_64-linux-musl-gcc"),
    )
    .context("building the static agent")?;
    let binary = build::target_dir(root)
        .join(TARGET)
        .join("release")
        .join("weft");
    if has_interpreter(&binary)? {
        bail!(
            "{} asks for a dynamic loader; a FROM scratch image has none",
            binary.display()
        );
    }
    Ok(binary)
}

/// Whether an ELF64 file has a PT_INTERP program header, i.e. needs a dynamic loader.
fn has_interpreter(path: &Path) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    let elf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let field = |at: usize, len: usize| -> Result<u64> {
        let bytes = elf
            .get(at..at + len)
            .with_context(|| format!("{} is not an ELF64 file", path.display()))?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        bail!("{} is not an ELF64 file", path.display());
    }
    let (phoff, phentsize, phnum) = (field(0x20, 8)?, field(0x36, 2)?, field(0x38, 2)?);
    for i in 0..phnum {
        let at = usize::try_from(phoff + i * phentsize)?;
        if field(at, 4)? == u64::from(PT_INTERP) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The agent crate's version, the image's tag.
fn agent_version(root: &Path) -> Result<String> {
    let path = root.join("agent/Cargo.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|line| {
            let value = line
                .trim()
                .strip_prefix("version")?
                .trim()
                .strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_string())
        })
        .with_context(|| format!("no version in {}", path.display()))
}

/// What a runtime will run: an amd64 image whose entrypoint is the agent.
fn check_config(archive: &Path) -> Result<()> {
    let out = Command::new("skopeo")
        .args(["inspect", "--config", "--format"])
        .arg("{{.Architecture}} {{.OS}} {{.Config.Entrypoint}}")
        .arg(format!("oci-archive:{}", archive.display()))
        .output()
        .context("running skopeo inspect")?;
    let summary = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || summary != "amd64 linux [/weft]" {
        bail!(
            "skopeo inspect of {}: expected `amd64 linux [/weft]`, got `{summary}` {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A working directory (buildah's storage and the build context) removed when dropped, also
/// when the build fails.
struct Scratch(PathBuf);

impl Scratch {
    fn create(path: PathBuf) -> Result<Scratch> {
        // A leftover of a killed run.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("image: could not remove {}: {e}", self.0.display());
        }
    }
}
