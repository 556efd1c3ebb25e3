//! deploy/*.yaml against Kubernetes' own OpenAPI schemas, offline, with kubernetes-validate
//! `--strict` (without it a misspelled field passes): for the oldest release weft supports,
//! 1.33 (the oldest its Kubernetes client, k8s-openapi 0.29, speaks), and the newest the
//! validator knows. `cargo xtask test` installs the validator and passes it in
//! WEFT_KUBERNETES_VALIDATE.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

const VERSIONS: [&str; 2] = ["1.33.0", "1.37.0"];

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(deploy_dir())
        .expect("listing deploy/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

/// The validator; without one, fails under CI=true and is skipped (loudly) elsewhere.
fn validator(test: &str) -> Option<PathBuf> {
    let tool = std::env::var_os("WEFT_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kubernetes-validate"));
    if Command::new(&tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some(tool);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: kubernetes-validate is missing (CI=true, so this is a failure)");
    }
    eprintln!("SKIPPED {test}: kubernetes-validate is missing; run `cargo xtask test manifests`");
    None
}

/// (passed, output) of one strict validation.
fn validate(tool: &Path, version: &str, file: &Path) -> (bool, String) {
    let out = Command::new(tool)
        .args(["--strict", "-k", version])
        .arg(file)
        .output()
        .expect("running kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn manifests_validate_strictly_against_kubernetes_schemas() {
    let Some(tool) = validator("manifests_validate_strictly_against_kubernetes_schemas") else {
        return;
    };
    let files = manifests();
    assert!(files.len() >= 4, "deploy/ holds the manifests: {files:?}");
    for version in VERSIONS {
        for file in &files {
            let (passed, output) = validate(&tool, version, file);
            assert!(
                passed,
                "{} against Kubernetes {version}:\n{output}",
                file.display()
            );
        }
    }
    println!(
        "{} manifests valid against Kubernetes {VERSIONS:?}",
        files.len()
    );
}

/// Guards the guard: the validator as called must reject a misspelled field.
#[test]
fn manifests_validation_catches_a_misspelled_field() {
    let Some(tool) = validator("manifests_validation_catches_a_misspelled_field") else {
        return;
    };
    let daemonset = fs::read_to_string(deploy_dir().join("30-daemonset.yaml")).expect("reading");
    let broken = daemonset.replacen("hostNetwork: true", "hostNetwrok: true", 1);
    assert_ne!(broken, daemonset);
    let path = std::env::temp_dir().join(format!("weft-misspelled-{}.yaml", std::process::id()));
    fs::write(&path, broken).expect("writing");
    let (passed, output) = validate(&tool, VERSIONS[0], &path);
    let _ = fs::remove_file(&path);
    assert!(!passed, "a misspelled field passed validation:\n{output}");
    assert!(output.contains("hostNetwrok"), "{output}");
}

/// The agent reads Services and EndpointSlices with list and watch, and may do nothing else.
#[test]
fn manifests_grant_only_list_and_watch_on_services_and_endpointslices() {
    let rbac = fs::read_to_string(deploy_dir().join("10-rbac.yaml")).expect("reading");
    let rules: Vec<&str> = rbac
        .lines()
        .skip_while(|l| !l.starts_with("rules:"))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .map(str::trim)
        .collect();
    assert_eq!(
        rules,
        [
            "- apiGroups: [\"\"]",
            "resources: [services]",
            "verbs: [list, watch]",
            "- apiGroups: [discovery.k8s.io]",
            "resources: [endpointslices]",
            "verbs: [list, watch]",
        ],
        "the ClusterRole's rules"
    );
}
