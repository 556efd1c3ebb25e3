//! Config files the tests share: the bad ones under `tests/bad-configs/` (each declares on its
//! first line the text its rejection must contain) and generated ones too large to keep.

use std::{fmt::Write as _, path::PathBuf};

pub struct BadConfig {
    pub name: String,
    pub text: String,
    /// Text the rejection must contain (the field path and what is wrong).
    pub expect: String,
}

/// Every bad config file plus the generated over-capacity one.
pub fn bad_configs() -> Vec<BadConfig> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bad-configs");
    let mut cases: Vec<BadConfig> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let text = std::fs::read_to_string(&path).expect("reading bad config");
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()))
                .to_string();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            BadConfig { name, text, expect }
        })
        .collect();
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases.push(BadConfig {
        name: "too-many-endpoints (generated)".into(),
        text: too_many_endpoints(),
        expect:
            "262145 distinct endpoints exceed the datapath's capacity of 262144 (WEFT_BACKEND_V1)"
                .into(),
    });
    cases
}

/// One distinct endpoint more than the backend map holds, over services of 1,000 each.
pub fn too_many_endpoints() -> String {
    const ENDPOINTS: usize = 262_145;
    let mut text = String::from("services:\n");
    for service in 0..ENDPOINTS.div_ceil(1000) {
        let _ = write!(
            text,
            "  - name: s{service}\n    address: 10.97.{}.{}\n    port: 80\n    endpoints:\n",
            service / 250,
            service % 250 + 1
        );
        for i in (service * 1000)..((service + 1) * 1000).min(ENDPOINTS) {
            let _ = writeln!(
                text,
                "      - {{ address: 10.{}.{}.{}, port: 80 }}",
                i >> 16,
                (i >> 8) & 255,
                i & 255
            );
        }
    }
    text
}
