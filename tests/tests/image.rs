//! The OCI image `cargo xtask image` builds (`cargo xtask test` passes it in WEFT_IMAGE): an
//! amd64 image whose entrypoint is the agent and which holds nothing else; the binary
//! unpacked from it runs in an empty root, and serves the socket path.

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use support::{CONFIG, Launched};

/// The archive under test (see `weft_tests::prepared`).
fn archive(test: &str) -> Option<PathBuf> {
    weft_tests::prepared(
        test,
        "WEFT_IMAGE",
        "the image",
        "run `cargo xtask test image`",
    )
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn inspect(archive: &Path, config: bool) -> serde_json::Value {
    let mut cmd = Command::new("skopeo");
    cmd.arg("inspect");
    if config {
        cmd.arg("--config");
    }
    cmd.arg(format!("oci-archive:{}", archive.display()));
    serde_json::from_str(&run(&mut cmd)).expect("skopeo prints JSON")
}

/// The image's root filesystem, unpacked by umoci (from an OCI layout skopeo copies the
/// archive into); removed when dropped.
struct Unpacked {
    dir: PathBuf,
}

impl Unpacked {
    fn new(archive: &Path, label: &str) -> Unpacked {
        let dir = std::env::temp_dir().join(format!("weft-image-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating unpack dir");
        let unpacked = Unpacked { dir };
        let layout = unpacked.dir.join("layout");
        run(Command::new("skopeo")
            .arg("copy")
            .arg("--quiet")
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("oci:{}:weft", layout.display())));
        run(Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:weft", layout.display()))
            .arg(unpacked.dir.join("bundle")));
        unpacked
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.join("bundle/rootfs")
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn image_is_amd64_runs_the_agent_and_holds_nothing_else() {
    let Some(archive) = archive("image_is_amd64_runs_the_agent_and_holds_nothing_else") else {
        return;
    };
    let config = inspect(&archive, true);
    assert_eq!(config["architecture"], "amd64", "{config:#}");
    assert_eq!(config["os"], "linux", "{config:#}");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/weft"]),
        "{config:#}"
    );
    let manifest = inspect(&archive, false);
    let layers = manifest["Layers"].as_array().map_or(0, Vec::len);
    assert_eq!(layers, 1, "one layer, the binary: {manifest:#}");
    if let Some(reference) = std::env::var_os("WEFT_IMAGE_REFERENCE") {
        // The name `ctr images import` and `podman load` give it: the DaemonSet's image.
        let daemonset = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/30-daemonset.yaml");
        let text = fs::read_to_string(daemonset).expect("reading the DaemonSet");
        let line = format!("image: {}", reference.to_string_lossy());
        assert!(text.contains(&line), "{daemonset} must use `{line}`");
    }

    let unpacked = Unpacked::new(&archive, "files");
    let mut entries: Vec<String> = fs::read_dir(unpacked.rootfs())
        .expect("listing rootfs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    entries.sort();
    assert_eq!(entries, ["weft"], "the image holds the agent alone");
    // Static: it runs in a root that has nothing else, no loader, no libc.
    let version = run(Command::new("chroot")
        .arg(unpacked.rootfs())
        .args(["/weft", "--version"]));
    println!("from the image: {}", version.trim());
    assert!(version.starts_with("weft "), "{version}");
}

#[test]
fn image_binary_serves_the_socket_path() {
    let Some(archive) = archive("image_binary_serves_the_socket_path") else {
        return;
    };
    let Some(mut env) = weft_tests::setup("image") else {
        return;
    };
    let unpacked = Unpacked::new(&archive, "e2e");
    support::start_backends(&mut env);
    let binary = unpacked.rootfs().join("weft");
    let mut agent = Launched::start(&env, "image", &binary, None, CONFIG);
    agent
        .wait_for_log(0, "config applied", Duration::from_secs(60))
        .unwrap_or_else(|log| panic!("the image's agent: {log}"));
    support::check_socket_path(&env);
}
