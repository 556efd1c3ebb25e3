//! The config file: its YAML format (`raw`), the validated model (here), and the checks
//! between them (`validate`). A file is accepted whole or rejected whole.

mod error;
pub mod governance;
pub mod limits;
mod raw;
mod validate;

use std::{
    fmt,
    io::Read as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
    time::Duration,
};

pub use error::{ConfigError, FieldError};
pub use governance::Governance;
pub use limits::LimitError;
pub use validate::checks;

/// One validated config file: every value is in range and consistent. (A config directory
/// is many of these; Kubernetes objects map to the same `ServiceSpec`.)
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Config {
    pub services: Vec<Arc<ServiceSpec>>,
    /// The agent-wide `stats:` block, if this file holds it.
    pub stats: Option<StatsSettings>,
    /// The agent-wide `tc:` block, if this file holds it.
    pub tc: Option<TcSettings>,
}

/// Agent-wide settings of the TC path (`tc:`; at most one file of a directory holds them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcSettings {
    /// Flows the conntrack table holds (`max_flows`); two entries each, one per direction.
    /// The table is allocated whole when it is created and keeps its size while pinned.
    pub max_flows: u32,
}

impl TcSettings {
    pub const DEFAULT_MAX_FLOWS: u32 = weft_common::maps::FLOWS_CAPACITY / 2;
    pub const MIN_MAX_FLOWS: u32 = 1_024;
    /// 8 Mi flows: about 2.7 GiB of kernel memory (~170 bytes per entry).
    pub const MAX_MAX_FLOWS: u32 = 1 << 23;

    /// Entries of the flow table: one per direction of each flow.
    pub fn table_entries(self) -> u32 {
        self.max_flows * 2
    }
}

impl Default for TcSettings {
    fn default() -> Self {
        TcSettings {
            max_flows: Self::DEFAULT_MAX_FLOWS,
        }
    }
}

/// Agent-wide statistics switches (`stats:`; at most one file of a directory holds them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatsSettings {
    /// Per-connection records, events and counters (`connections`, default on). Off, the
    /// kernel still reports failed connects, for passive failure detection.
    pub connections: bool,
    /// Metric series per endpoint as well as per service (`endpoint_metrics`, default off:
    /// at 100,000 endpoints they would cost more memory than the rest of the agent).
    pub endpoint_metrics: bool,
}

impl Default for StatsSettings {
    fn default() -> Self {
        StatsSettings {
            connections: true,
            endpoint_metrics: false,
        }
    }
}

/// One service as a source defines it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: Arc<str>,
    pub frontend: Frontend,
    pub endpoints: Vec<EndpointSpec>,
    /// Shared between services whose checks are the same.
    pub health: Arc<HealthCheck>,
    pub outlier: Option<Outlier>,
    /// Percent of configured weight that must be healthy; below it every endpoint gets
    /// traffic by configured weight (Envoy's panic threshold). 0 turns it off.
    pub panic_threshold: u8,
    /// Limits, slow start, fault injection and authorization (none by default).
    pub governance: Governance,
}

/// Where clients reach a service: the service map's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            std::net::SocketAddr::new(self.address, self.port),
            self.protocol.as_str()
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    pub address: SocketAddr,
    /// 0 drains the endpoint: no new connections.
    pub weight: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Probe {
    Tcp,
    Http { path: String },
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outlier {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: u8,
}

/// A service's checks as separate fields, for sources that are not files (see
/// `validate::checks`). Absent fields take the file format's defaults, except that no
/// `health` means no active probe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceSettings {
    pub health: Option<String>,
    pub health_path: Option<String>,
    pub health_interval: Option<String>,
    pub health_timeout: Option<String>,
    pub healthy_threshold: Option<i64>,
    pub unhealthy_threshold: Option<i64>,
    /// Passive failure detection on (with the fields below, or their defaults).
    pub outlier: bool,
    pub consecutive_failures: Option<i64>,
    pub base_ejection: Option<String>,
    pub max_ejection_percent: Option<i64>,
    pub panic_threshold: Option<i64>,
}

/// What `ServiceSettings` validate to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checks {
    pub health: Arc<HealthCheck>,
    pub outlier: Option<Outlier>,
    pub panic_threshold: u8,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::from_bytes(&read_file(path)?)
    }

    /// Parses and validates a file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Config, ConfigError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| ConfigError::single("", format!("the file is not UTF-8 text ({e})")))?;
        Self::parse(text)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw = raw::parse(text)?;
        validate::validate(raw)
    }

    /// Resolves the cgroups the services' governance names to the kernel's ids, under the
    /// cgroup2 mount `cgroup2_root`; the config is rejected whole if one does not exist.
    pub fn resolve_cgroups(&mut self, cgroup2_root: &Path) -> Result<(), ConfigError> {
        let mut errors = validate::Errors::default();
        for (index, service) in self.services.iter_mut().enumerate() {
            // Shared specs are fresh from the parser: nothing else holds them yet.
            let service = Arc::make_mut(service);
            service.governance.resolve_cgroups(
                &format!("services[{index}]"),
                cgroup2_root,
                &mut errors,
            );
        }
        errors.into_result()
    }
}

/// A config file's bytes, refusing files over `MAX_FILE_BYTES` without reading them (and
/// stopping at the limit if one grows while it is read).
pub fn read_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let file = std::fs::File::open(path).map_err(ConfigError::Read)?;
    let too_large = |bytes| Err(LimitError::TooLarge { bytes }.into());
    let size = file.metadata().map_err(ConfigError::Read)?.len();
    if size > limits::MAX_FILE_BYTES {
        return too_large(size);
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limits::MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(ConfigError::Read)?;
    if bytes.len() as u64 > limits::MAX_FILE_BYTES {
        return too_large(bytes.len() as u64);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn every_bad_config_is_rejected_naming_its_field() {
        let cases = weft_tests::configs::bad_configs();
        assert!(cases.len() >= 20, "only {} bad configs", cases.len());
        for case in cases {
            let error = Config::parse(&case.text)
                .expect_err(&format!("{} was accepted", case.name))
                .to_string();
            assert!(
                error.contains(&case.expect),
                "{}: error does not name {:?}:\n{error}",
                case.name,
                case.expect
            );
        }
    }

    #[test]
    fn all_errors_are_listed_at_once() {
        let error = Config::parse(
            "services:
  - name: a
    address: 10.96.0.1
    port: 0
    endpoints:
      - { address: 10.1.0.1, port: 80, weight: 70000 }
  - name: a
    address: nope
    port: 80
",
        )
        .unwrap_err()
        .to_string();
        for expect in [
            "4 errors",
            "services[0].port: 0",
            "services[0].endpoints[0].weight: 70000 exceeds 65535",
            "services[1].name: duplicate service name",
            "services[1].address: \"nope\" is not an IPv4 or IPv6 address",
        ] {
            assert!(error.contains(expect), "missing {expect:?} in:\n{error}");
        }
    }

    #[test]
    fn identical_health_checks_are_shared() {
        let config = Config::parse(
            "services:\n  - { name: a, address: 10.96.0.1, port: 80, health: { kind: tcp, interval: 2s } }\n  - { name: b, address: 10.96.0.2, port: 80, health: { kind: tcp, interval: 2s } }\n",
        )
        .unwrap();
        assert!(Arc::ptr_eq(
            &config.services[0].health,
            &config.services[1].health
        ));
    }

    #[test]
    fn shipped_default_config_is_valid() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../weft.yaml");
        let config = Config::load(&path).expect("weft.yaml");
        assert_eq!(config.services.len(), 1);
    }

    #[test]
    fn defaults_fill_in() {
        let config = Config::parse(
            "services:\n  - { name: dns, address: 10.96.0.53, port: 53, protocol: udp, endpoints: [ { address: 10.1.0.1, port: 53 } ] }\n",
        )
        .unwrap();
        let service = &config.services[0];
        assert_eq!(service.endpoints[0].weight, 1);
        assert_eq!(
            service.health.probe,
            Probe::None,
            "UDP has no default connect probe"
        );
        assert_eq!(service.outlier, None);
        assert_eq!(config.stats, None, "no stats block");
    }

    #[test]
    fn a_huge_value_is_quoted_as_a_short_excerpt() {
        let text = format!("services: \"{}\"\n", "x".repeat(1_000_000));
        let error = Config::parse(&text).unwrap_err().to_string();
        assert!(error.len() < 400, "{} bytes of error", error.len());
        assert!(error.contains("more bytes"), "{error}");
    }

    #[test]
    fn a_parse_error_names_its_path_once() {
        let error =
            Config::parse("services:\n  - { name: a, address: 10.0.0.1, port: 80, limitz: 3 }\n")
                .unwrap_err()
                .to_string();
        assert_eq!(error.matches("services[0]").count(), 1, "{error}");
        assert!(error.contains("unknown field `limitz`"), "{error}");
    }

    #[test]
    fn only_the_first_errors_are_listed() {
        let services: String = (0..100)
            .map(|i| {
                format!(
                    "  - {{ name: s{i}, address: 10.96.0.{}, port: 0 }}\n",
                    i + 1
                )
            })
            .collect();
        let error = Config::parse(&format!("services:\n{services}"))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("100 errors"), "{error}");
        assert_eq!(
            error.lines().count(),
            1 + limits::MAX_LISTED_ERRORS + 1,
            "{error}"
        );
        assert!(error.ends_with("… and 80 more"), "{error}");
    }

    #[test]
    fn connection_stats_can_be_turned_off() {
        let config = Config::parse("services: []\nstats: { connections: false }\n").unwrap();
        assert_eq!(
            config.stats,
            Some(StatsSettings {
                connections: false,
                endpoint_metrics: false
            })
        );
        let error = Config::parse("services: []\nstats: { connection: false }\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("stats"), "{error}");
    }

    #[test]
    fn the_flow_table_is_sized_in_flows_within_bounds() {
        let config = Config::parse("tc: { max_flows: 1000000 }\n").unwrap();
        assert_eq!(
            config.tc,
            Some(TcSettings {
                max_flows: 1_000_000
            })
        );
        assert_eq!(config.tc.map(TcSettings::table_entries), Some(2_000_000));
        assert_eq!(
            Config::parse("tc: {}\n").unwrap().tc,
            Some(TcSettings::default())
        );
        assert_eq!(Config::parse("services: []\n").unwrap().tc, None);
        for bad in ["-1", "0", "1023", "8388609", "99999999999"] {
            let error = Config::parse(&format!("tc: {{ max_flows: {bad} }}\n"))
                .unwrap_err()
                .to_string();
            assert_eq!(error.matches("tc.max_flows").count(), 1, "{error}");
            assert!(error.contains(&format!("{bad} is out of range")), "{error}");
        }
        let error = Config::parse("tc: { max_flow: 5000 }\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `max_flow`"), "{error}");
    }
}
