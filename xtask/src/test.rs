//! `cargo xtask test`: style checks, unit and property tests, then the privileged
//! end-to-end tests against the real kernel (one at a time: they share the machine's
//! cgroups and BPF state), then the bench's smoke run, a one-minute soak and each fuzz
//! target for 20 s, and last the kernel end-to-end tests on Debian 12's 6.1 under QEMU. The
//! upgrade tests get the previous release (built from git history), the image tests the OCI
//! image (`cargo xtask image`) and the manifest test its validator, all prepared here. With `--kernel NAME`, only the
//! kernel end-to-end tests, on that kernel under QEMU (see vm_test.rs).

use std::{process::Command, time::Instant};

use anyhow::Result;

use crate::{bench, build, fuzz, image, kernel, manifests, previous, setup, soak, util, vm_test};

#[derive(clap::Args)]
pub struct Options {
    /// Only run tests whose name contains this.
    filter: Option<String>,
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Run the socket-path end-to-end tests on this kernel under QEMU instead (e.g.
    /// `debian-6.1`); no lint, unit tests or bench.
    #[arg(long, value_name = "NAME")]
    kernel: Option<String>,
    /// Run the Kubernetes scenarios against the real cluster KUBECONFIG (or ~/.kube/config)
    /// names instead (needs kubectl); no lint, unit tests or bench.
    #[arg(long, conflicts_with = "kernel")]
    cluster: bool,
}

/// The opt-in suite: the Kubernetes scenarios against a real cluster.
fn real_cluster(built: &build::Built, filter: Option<&str>) -> Result<()> {
    // KUBECONFIG may list several files (colon-separated), as kubectl merges them.
    let kubeconfig = std::env::var_os("KUBECONFIG")
        .filter(|v| std::env::split_paths(v).any(|p| p.exists()))
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::Path::new(&h).join(".kube/config").into_os_string())
                .filter(|p| std::path::Path::new(p).exists())
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--cluster: set KUBECONFIG (or write ~/.kube/config) to name the cluster to test against"
            )
        })?;
    let found = Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output();
    if !found.is_ok_and(|o| o.status.success()) {
        anyhow::bail!("--cluster: kubectl is not on PATH");
    }
    let mut e2e = cargo_command(
        built,
        &[
            "test",
            "--package",
            "weft-tests",
            "--test",
            "kubernetes_cluster",
        ],
    );
    // Asked for explicitly: a test that cannot run (not root, say) fails, never skips.
    e2e.env("KUBECONFIG", kubeconfig)
        .env("CI", "true")
        .arg("--")
        .args(filter)
        .args(["--ignored", "--test-threads=1", "--nocapture"]);
    util::run(&mut e2e)
}

/// `cargo run` of one of weft-tests' binaries (release), against the built agent; the
/// binary's own arguments follow.
pub fn tests_binary(built: &build::Built, name: &str) -> Command {
    cargo_command(
        built,
        &["run", "--release", "-p", "weft-tests", "--bin", name, "--"],
    )
}

/// cargo in the workspace with the environment the tests build and run with.
pub fn cargo_command(built: &build::Built, args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(util::workspace_root())
        .args(args)
        .env("PATH", &built.path_env)
        .env("WEFT_BIN", &built.agent)
        .env("WEFT_EBPF_OBJECT", &built.object);
    cmd
}

pub fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    let built = build::run(&build::Options { release: true })?;
    if let Some(kernel) = &opts.kernel {
        return vm_test::run(&built, kernel, opts.filter.as_deref(), started);
    }
    if opts.cluster {
        return real_cluster(&built, opts.filter.as_deref());
    }
    setup::ensure_debian_tool("promtool", "prometheus")?;
    // Without it the manifest test fails under CI=true and is skipped loudly elsewhere.
    let validator = manifests::ensure_validator()
        .inspect_err(|e| eprintln!("test: no kubernetes-validate: {e:#}"))
        .ok();
    // The image costs a second release build (musl), so only when its tests will run. If it
    // cannot be built, its tests fail with the reason and the rest of the suite still runs.
    let wanted = opts.filter.as_deref().is_none_or(|f| f.contains("image"));
    let image = wanted.then(|| image::build_from(&built).map_err(|e| format!("{e:#}")));
    // The previous release, for the upgrade tests (its build ≈ 3 min from scratch); if it
    // cannot be built, those tests fail with the reason.
    let wanted = opts.filter.as_deref().is_none_or(|f| f.contains("upgrade"));
    let previous = wanted.then(|| previous::build(&built).map_err(|e| format!("{e:#}")));
    let cargo = |args: &[&str]| cargo_command(&built, args);
    if !opts.no_lint {
        util::run(&mut cargo(&["fmt", "--all", "--", "--check"]))?;
        // Not the kernel crate: it builds for the BPF target alone. The fuzz targets are
        // linted here too (they build instrumented only under `cargo xtask fuzz`).
        util::run(&mut cargo(&[
            "clippy",
            "--workspace",
            "--exclude",
            "weft-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    let filter: Vec<&str> = opts.filter.as_deref().into_iter().collect();
    let mut unit = cargo(&["test", "-p", "weft", "-p", "weft-common", "-p", "xtask"]);
    unit.arg("--").args(&filter);
    util::run(&mut unit)?;
    // `--tests`: no doc-test run (there are none), so the log closes on the real suite.
    let mut e2e = cargo(&["test", "--package", "weft-tests", "--tests"]);
    if let Some(validator) = &validator {
        e2e.env("WEFT_KUBERNETES_VALIDATE", validator);
    }
    match &image {
        Some(Ok(image)) => {
            e2e.env("WEFT_IMAGE", &image.archive)
                .env("WEFT_IMAGE_REFERENCE", &image.reference);
        }
        Some(Err(error)) => {
            e2e.env("WEFT_IMAGE_ERROR", error);
        }
        None => {}
    }
    match &previous {
        Some(Ok(agent)) => {
            e2e.env("WEFT_PREVIOUS_BIN", agent);
        }
        Some(Err(error)) => {
            e2e.env("WEFT_PREVIOUS_BIN_ERROR", error);
        }
        None => {}
    }
    e2e.arg("--")
        .args(&filter)
        .args(["--test-threads=1", "--nocapture"]);
    util::run(&mut e2e)?;
    if opts.filter.is_none() {
        // Every contender of `cargo xtask bench` must still produce numbers (about 1 min).
        bench::run_built(&built, &bench::Options { quick: true })?;
        soak::run_built(&built, 1.0)?;
        // Each fuzz target briefly (its build ≈ 3 min, then 20 s each).
        fuzz::run_targets(fuzz::TARGETS, 20)?;
        // The kernel end-to-end tests again on each other kernel, under QEMU/TCG (Debian
        // 12's 6.1: about 10.5 min on these 2-core machines).
        for recipe in kernel::RECIPES {
            vm_test::run(&built, recipe.name, None, Instant::now())?;
        }
    }
    Ok(())
}
