//! `cargo xtask test --kernel NAME`: the socket-path end-to-end tests on another kernel,
//! booted under QEMU with this machine's root as the guest's userspace. The test binaries
//! are the ones cargo builds on the host; the guest runs them one test at a time and leaves
//! each file's exit status in a shared directory.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    build, initramfs, kernel, qemu,
    test::cargo_command,
    util::{self, shell_quote},
};

/// Test files (tests/tests/*.rs) of the socket path: weights, getpeername, UDP, IPv6 and
/// pass-through (socket_lb); restart adoption and `weft reset` leaving nothing (lifecycle);
/// limits, fault injection and `allow` in the kernel (governance). And the TC path: its programs packet by packet (tc_packets), and forwarded traffic
/// through clsact filters where the kernel has no TCX (tc_forward).
const TEST_FILES: &[&str] = &[
    "socket_lb",
    "lifecycle",
    "governance",
    "tc_packets",
    "tc_forward",
];

/// Tests of those files not run in the guest (file, test, why). Only latency bounds set for
/// native speed belong here, never a test that fails because of the kernel.
const NOT_UNDER_TCG: &[(&str, &str, &str)] = &[(
    "socket_lb",
    "weight_change_applies_within_a_second_and_keeps_open_connections",
    "its 1 s bound includes 50 sequential connects, ~0.4 s alone under TCG; \
     it took 0.44-1.25 s in the guest depending on the host's load",
)];

/// A bound on the whole guest, boot to power-off (QEMU is killed after it): over three times
/// the slowest run measured on the 2-core machines (8.5 min with the governance tests).
const TIME_LIMIT: Duration = Duration::from_secs(30 * 60);
const MEMORY_MIB: u32 = 2048;
const GUEST: &str = include_str!("vm/guest.sh");

/// `started`: when the command began (its build included), for the total it prints.
pub fn run(built: &build::Built, name: &str, filter: Option<&str>, started: Instant) -> Result<()> {
    let recipe = kernel::recipe(name)?;
    let vm_dir = build::target_dir(&util::workspace_root()).join("vm");
    let qemu = qemu::fetch(&vm_dir)?;
    let kernel = kernel::fetch(recipe, &vm_dir)?;
    let busybox = initramfs::busybox(&vm_dir)?;
    let binaries = test_binaries(built)?;

    let run_dir = RunDir::create(&vm_dir)?;
    let guest = run_dir.path.join("guest.sh");
    write(&guest, GUEST.as_bytes())?;
    fs::set_permissions(&guest, fs::Permissions::from_mode(0o755))?;
    write(
        &run_dir.path.join("job.sh"),
        job(built, &binaries, filter).as_bytes(),
    )?;
    // The workspace and its target directory (test binaries, the agent) at their own paths:
    // a clone under /tmp is hidden by the guest's own /tmp otherwise.
    let root = util::workspace_root();
    let mut host_dirs = vec![root.clone(), build::target_dir(&root)];
    host_dirs.dedup();
    let mounts: String = host_dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| format!("host{i} {}\n", dir.display()))
        .collect();
    write(&run_dir.path.join("mounts"), mounts.as_bytes())?;
    let initramfs = run_dir.path.join("initramfs.cpio");
    write(&initramfs, &initramfs::build(&kernel, &busybox, &guest)?)?;

    for (file, test, why) in NOT_UNDER_TCG {
        eprintln!("vm: not run under TCG: {file}::{test}: {why}");
    }
    eprintln!(
        "vm: booting {} ({} {}; {}) under QEMU/TCG",
        recipe.name, kernel.package, kernel.version, recipe.used_by
    );
    let booted = Instant::now();
    let ended = qemu::run(
        &qemu,
        &qemu::Boot {
            vmlinuz: &kernel.vmlinuz,
            initramfs: &initramfs,
            share: &run_dir.path,
            host_dirs: &host_dirs,
            memory_mib: MEMORY_MIB,
            time_limit: TIME_LIMIT,
        },
    )?;
    let in_vm = booted.elapsed();

    let results = read_results(&run_dir.path.join("results"));
    // The console may have stopped mid-line (a killed guest).
    eprintln!();
    eprintln!("vm: {} ({}):", recipe.name, kernel.release);
    for result in &results {
        let verdict = if result.code == 0 {
            "ok".to_string()
        } else {
            format!("FAILED (exit {})", result.code)
        };
        eprintln!(
            "vm:   {:<12} {verdict:<16} {:.0} s",
            result.file, result.seconds
        );
    }
    eprintln!(
        "vm: QEMU ran {:.0} s; the whole `--kernel {}` run took {:.0} s",
        in_vm.as_secs_f64(),
        recipe.name,
        started.elapsed().as_secs_f64()
    );
    let exit = match ended {
        qemu::Ended::TimedOut => bail!(
            "{}: the guest did not power off within {} s; QEMU was killed",
            recipe.name,
            TIME_LIMIT.as_secs()
        ),
        qemu::Ended::Exited(exit) => exit,
    };
    let status = fs::read_to_string(run_dir.path.join("status")).ok();
    match status.as_deref().map(str::trim) {
        Some("0") if results.len() == binaries.len() => Ok(()),
        Some("0") => bail!(
            "{}: the guest reported {} of {} test files",
            recipe.name,
            results.len(),
            binaries.len()
        ),
        Some(_) => {
            let failed: Vec<String> = results
                .iter()
                .filter(|r| r.code != 0)
                .map(|r| format!("{} (exit {})", r.file, r.code))
                .collect();
            bail!(
                "end-to-end tests failed on {}: {}",
                recipe.name,
                failed.join(", ")
            )
        }
        None => bail!(
            "{}: the guest ended without reporting a result (QEMU {exit}); its console is above",
            recipe.name
        ),
    }
}

/// The chosen test files' executables, built by cargo as `cargo xtask test` builds them.
fn test_binaries(built: &build::Built) -> Result<Vec<(String, PathBuf)>> {
    let out = cargo_command(
        built,
        &[
            "test",
            "--package",
            "weft-tests",
            "--tests",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ],
    )
    .stderr(Stdio::inherit())
    .output()
    .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the end-to-end tests failed ({})", out.status);
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let target = &message["target"];
        let is_test = target["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(executable)) = (
            is_test,
            target["name"].as_str(),
            message["executable"].as_str(),
        ) && TEST_FILES.contains(&name)
        {
            found.push((name.to_string(), PathBuf::from(executable)));
        }
    }
    // Keep TEST_FILES' order: the guest runs them in it.
    found.sort_by_key(|(name, _)| TEST_FILES.iter().position(|f| f == name));
    if found.len() != TEST_FILES.len() {
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        bail!("cargo built {names:?} of the test files {TEST_FILES:?}");
    }
    Ok(found)
}

/// The guest's job: the environment the tests get on the host, then each file's tests one
/// at a time, each file's exit status and start/end uptime appended to `results`.
fn job(built: &build::Built, binaries: &[(String, PathBuf)], filter: Option<&str>) -> String {
    let mut env = vec![
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ),
        ("HOME", "/root".to_string()),
        ("RUST_BACKTRACE", "1".to_string()),
        ("WEFT_BIN", built.agent.to_string_lossy().into_owned()),
    ];
    // A privileged test that cannot run fails under CI=true: the guest must judge as the host.
    if let Ok(ci) = std::env::var("CI") {
        env.push(("CI", ci));
    }
    let mut script = String::from(
        "# Written by `cargo xtask test --kernel`: the end-to-end tests the guest runs.\n",
    );
    for (key, value) in env {
        script.push_str(&format!("export {key}={}\n", shell_quote(&value)));
    }
    script.push_str(
        "cd /tmp
failed=0
run() {
    file=$1
    shift
    started=$(cut -d' ' -f1 /proc/uptime)
    \"$@\"
    code=$?
    echo \"$file $code $started $(cut -d' ' -f1 /proc/uptime)\" >>/run/weft-vm/results
    [ \"$code\" -eq 0 ] || failed=1
}
",
    );
    for (file, binary) in binaries {
        script.push_str(&format!(
            "run {file} {} --test-threads=1 --nocapture",
            shell_quote(&binary.to_string_lossy())
        ));
        for (_, test, _) in NOT_UNDER_TCG.iter().filter(|(f, _, _)| f == file) {
            script.push_str(&format!(" --skip {}", shell_quote(test)));
        }
        if let Some(filter) = filter {
            script.push_str(&format!(" {}", shell_quote(filter)));
        }
        script.push('\n');
    }
    script.push_str("exit $failed\n");
    script
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

struct FileResult {
    file: String,
    code: i32,
    seconds: f64,
}

fn read_results(path: &Path) -> Vec<FileResult> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let file = words.next()?.to_string();
            let code = words.next()?.parse().ok()?;
            let started: f64 = words.next()?.parse().ok()?;
            let ended: f64 = words.next()?.parse().ok()?;
            Some(FileResult {
                file,
                code,
                seconds: ended - started,
            })
        })
        .collect()
}

/// This run's directory under target/vm, shared writable with the guest; removed when
/// dropped. Directories of runs whose process is gone (killed before cleaning up) are
/// removed on the way in.
struct RunDir {
    path: PathBuf,
}

impl RunDir {
    fn create(vm_dir: &Path) -> Result<RunDir> {
        fs::create_dir_all(vm_dir).with_context(|| format!("creating {}", vm_dir.display()))?;
        for entry in fs::read_dir(vm_dir)?.filter_map(Result::ok) {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("run-")) else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let path = vm_dir.join(format!("run-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(RunDir { path })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
