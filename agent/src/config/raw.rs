//! The file format as written, with loose types (integers as i64, addresses and durations as
//! strings) so that range and syntax errors are reported by `validate` with their path
//! instead of as an opaque parse failure.

use serde::Deserialize;

use super::{ConfigError, limits};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub services: Vec<RawService>,
    pub stats: Option<RawStats>,
    pub tc: Option<RawTc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTc {
    pub max_flows: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStats {
    pub connections: Option<bool>,
    pub endpoint_metrics: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    pub address: String,
    pub port: i64,
    pub protocol: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<RawEndpoint>,
    pub health: Option<RawHealth>,
    pub outlier: Option<RawOutlier>,
    pub panic_threshold: Option<i64>,
    pub limits: Option<RawLimits>,
    pub slow_start: Option<RawSlowStart>,
    pub fault: Option<RawFault>,
    pub allow: Option<Vec<RawAllow>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections_per_endpoint: Option<i64>,
    pub max_connections: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlowStart {
    pub window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    pub abort_percent: Option<i64>,
    pub errno: Option<String>,
    pub cgroup: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAllow {
    pub cgroup: Option<String>,
    pub uid: Option<i64>,
    pub gid: Option<i64>,
    pub cidr: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub address: String,
    pub port: i64,
    pub weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub kind: Option<String>,
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<i64>,
    pub unhealthy_threshold: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_failures: Option<i64>,
    pub base_ejection: Option<String>,
    pub max_ejection_percent: Option<i64>,
}

/// The YAML parser names the path in its message too (the field's parent, for an unknown
/// field): say it once.
fn without_path<'a>(message: &'a str, path: &str) -> &'a str {
    match message.split_once(": ") {
        Some((prefix, rest))
            if !prefix.is_empty() && !prefix.contains(' ') && path.starts_with(prefix) =>
        {
            rest
        }
        _ => message,
    }
}

pub fn parse(text: &str) -> Result<RawConfig, ConfigError> {
    limits::check_aliases(text)?;
    let has_content = text
        .lines()
        .map(str::trim)
        .any(|line| !line.is_empty() && !line.starts_with('#') && line != "---");
    if !has_content {
        return Err(ConfigError::single(
            "",
            "the file is empty: expected a mapping with a `services` list",
        ));
    }
    let deserializer = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        // serde_path_to_error renders the root as ".".
        let path = if path == "." { String::new() } else { path };
        let message = error.into_inner().to_string();
        ConfigError::single(&path, without_path(&message, &path))
    })
}
