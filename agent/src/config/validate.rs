//! Raw file → validated `Config`, collecting every error with its field path.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use weft_common::maps;

use super::{
    Config, ConfigError, EndpointSpec, FieldError, Frontend, Governance, HealthCheck, Outlier,
    Probe, Protocol, ServiceSpec, StatsSettings, TcSettings, governance,
    raw::{RawConfig, RawEndpoint, RawHealth, RawOutlier, RawService},
};
use crate::layout;

const MAX_NAME_LEN: usize = 253;
/// Endpoint weight when the file gives none (as Envoy's load_balancing_weight).
const DEFAULT_WEIGHT: u16 = 1;
/// Envoy's default healthy-panic threshold, in percent.
const DEFAULT_PANIC_THRESHOLD: u8 = 50;

#[derive(Default)]
pub(super) struct Errors(Vec<FieldError>);

impl Errors {
    pub(super) fn add(&mut self, path: impl AsRef<str>, message: impl AsRef<str>) {
        self.0.push(FieldError::new(path, message));
    }

    pub(super) fn into_result(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(self.0))
        }
    }
}

pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut errors = Errors::default();
    let mut services = Vec::with_capacity(raw.services.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut frontends: HashMap<Frontend, usize> = HashMap::new();
    let mut checks = SharedChecks::default();

    for (index, raw_service) in raw.services.into_iter().enumerate() {
        let path = format!("services[{index}]");
        let name = raw_service.name.clone();
        if let Some(first) = names.insert(name.clone(), index) {
            names.insert(name.clone(), first);
            errors.add(
                format!("{path}.name"),
                format!("duplicate service name {name:?} (first used by services[{first}])"),
            );
        }
        let Some(service) = service(&path, raw_service, &mut checks, &mut errors) else {
            continue;
        };
        if let Some(&first) = frontends.get(&service.frontend) {
            errors.add(
                format!("{path}.address"),
                format!(
                    "{} is already the address of services[{first}]",
                    service.frontend
                ),
            );
        } else {
            frontends.insert(service.frontend, index);
        }
        services.push(Arc::new(service));
    }

    if errors.0.is_empty() {
        check_capacity(&services, &mut errors);
    }
    let tc = raw.tc.map(|raw| tc_settings(raw, &mut errors));
    if errors.0.is_empty() {
        Ok(Config {
            services,
            tc,
            stats: raw.stats.map(|stats| {
                let defaults = StatsSettings::default();
                StatsSettings {
                    connections: stats.connections.unwrap_or(defaults.connections),
                    endpoint_metrics: stats.endpoint_metrics.unwrap_or(defaults.endpoint_metrics),
                }
            }),
        })
    } else {
        Err(ConfigError::Invalid(errors.0))
    }
}

fn tc_settings(raw: super::raw::RawTc, errors: &mut Errors) -> TcSettings {
    let defaults = TcSettings::default();
    let max_flows = match raw.max_flows {
        None => defaults.max_flows,
        Some(n) => match u32::try_from(n) {
            Ok(n @ TcSettings::MIN_MAX_FLOWS..=TcSettings::MAX_MAX_FLOWS) => n,
            _ => {
                errors.add(
                    "tc.max_flows",
                    format!(
                        "{n} is out of range {}..={} (flows in the TC path's conntrack table)",
                        TcSettings::MIN_MAX_FLOWS,
                        TcSettings::MAX_MAX_FLOWS
                    ),
                );
                defaults.max_flows
            }
        },
    };
    TcSettings { max_flows }
}

/// Health checks by value: services with the same check share one.
#[derive(Default)]
struct SharedChecks(HashMap<HealthCheck, Arc<HealthCheck>>);

impl SharedChecks {
    fn share(&mut self, check: HealthCheck) -> Arc<HealthCheck> {
        Arc::clone(
            self.0
                .entry(check.clone())
                .or_insert_with(|| Arc::new(check)),
        )
    }
}

fn service(
    path: &str,
    raw: RawService,
    checks: &mut SharedChecks,
    errors: &mut Errors,
) -> Option<ServiceSpec> {
    let before = errors.0.len();
    check_name(&format!("{path}.name"), &raw.name, errors);
    let address = address(&format!("{path}.address"), &raw.address, errors);
    let port = port(&format!("{path}.port"), raw.port, errors);
    let protocol = match raw.protocol.as_deref() {
        None | Some("tcp") => Protocol::Tcp,
        Some("udp") => Protocol::Udp,
        Some(other) => {
            errors.add(
                format!("{path}.protocol"),
                format!("unknown protocol {other:?}: expected tcp or udp"),
            );
            Protocol::Tcp
        }
    };
    let mut endpoints = Vec::with_capacity(raw.endpoints.len());
    let mut seen = HashMap::new();
    for (index, raw_endpoint) in raw.endpoints.into_iter().enumerate() {
        let path = format!("{path}.endpoints[{index}]");
        if let Some(endpoint) = endpoint(&path, raw_endpoint, address, errors) {
            if let Some(first) = seen.insert(endpoint.address, index) {
                errors.add(
                    path,
                    format!(
                        "duplicate endpoint {} port {} (also endpoints[{first}])",
                        endpoint.address.ip(),
                        endpoint.address.port()
                    ),
                );
            }
            endpoints.push(endpoint);
        }
    }
    let health = health(&format!("{path}.health"), raw.health, protocol, errors);
    let panic_threshold = match raw.panic_threshold {
        None => DEFAULT_PANIC_THRESHOLD,
        Some(p @ 0..=100) => p as u8,
        Some(p) => {
            errors.add(
                format!("{path}.panic_threshold"),
                format!("{p} is out of range 0..=100 (percent; 0 turns it off)"),
            );
            DEFAULT_PANIC_THRESHOLD
        }
    };
    let outlier = raw
        .outlier
        .and_then(|raw| outlier(&format!("{path}.outlier"), raw, errors));
    let governance = Governance {
        limits: governance::limits(&format!("{path}.limits"), raw.limits, errors),
        slow_start: governance::slow_start(&format!("{path}.slow_start"), raw.slow_start, errors),
        fault: governance::fault(&format!("{path}.fault"), raw.fault, errors),
        allow: governance::allow(&format!("{path}.allow"), raw.allow, errors),
    };
    if protocol == Protocol::Udp && governance.limits != Default::default() {
        errors.add(
            format!("{path}.limits"),
            "counts connections, which a UDP service does not have: limits apply to tcp services",
        );
    }
    if errors.0.len() != before {
        return None;
    }
    Some(ServiceSpec {
        name: raw.name.into(),
        frontend: Frontend {
            address: address?,
            port: port?,
            protocol,
        },
        endpoints,
        health: checks.share(health?),
        outlier,
        panic_threshold,
        governance,
    })
}

fn check_name(path: &str, name: &str, errors: &mut Errors) {
    if name.is_empty() {
        errors.add(path, "must not be empty");
    } else if name.len() > MAX_NAME_LEN {
        errors.add(path, format!("longer than {MAX_NAME_LEN} characters"));
    } else if let Some(bad) = name
        .chars()
        // `/` and `:` as in the names the Kubernetes source gives (`namespace/name:port`).
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':')))
    {
        errors.add(
            path,
            format!("{name:?} contains {bad:?}: use letters, digits, '-', '_', '.', '/', ':'"),
        );
    }
}

fn address(path: &str, text: &str, errors: &mut Errors) -> Option<IpAddr> {
    match text.parse::<IpAddr>() {
        Ok(addr) if addr.is_unspecified() => {
            errors.add(path, format!("{text} is the unspecified address"));
            None
        }
        Ok(addr) if addr.is_multicast() => {
            errors.add(path, format!("{text} is a multicast address"));
            None
        }
        Ok(addr) => Some(addr),
        Err(_) => {
            errors.add(path, format!("{text:?} is not an IPv4 or IPv6 address"));
            None
        }
    }
}

fn port(path: &str, value: i64, errors: &mut Errors) -> Option<u16> {
    match u16::try_from(value) {
        Ok(0) | Err(_) => {
            errors.add(path, format!("{value} is out of range 1..=65535"));
            None
        }
        Ok(port) => Some(port),
    }
}

fn endpoint(
    path: &str,
    raw: RawEndpoint,
    service_address: Option<IpAddr>,
    errors: &mut Errors,
) -> Option<EndpointSpec> {
    let address = address(&format!("{path}.address"), &raw.address, errors);
    if let (Some(endpoint), Some(service)) = (address, service_address)
        && endpoint.is_ipv4() != service.is_ipv4()
    {
        errors.add(
            format!("{path}.address"),
            format!("{endpoint} is not of the service address's family ({service})"),
        );
    }
    let port = port(&format!("{path}.port"), raw.port, errors);
    let weight = match raw.weight {
        None => Some(DEFAULT_WEIGHT),
        Some(w) if w < 0 => {
            errors.add(format!("{path}.weight"), format!("{w} is negative"));
            None
        }
        Some(w) => match u16::try_from(w) {
            Ok(w) => Some(w),
            Err(_) => {
                errors.add(format!("{path}.weight"), format!("{w} exceeds 65535"));
                None
            }
        },
    };
    Some(EndpointSpec {
        address: SocketAddr::new(address?, port?),
        weight: weight?,
    })
}

pub(super) fn duration(
    path: &str,
    text: Option<&str>,
    default: Duration,
    errors: &mut Errors,
) -> Duration {
    let Some(text) = text else {
        return default;
    };
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => {
            errors.add(path, "must be greater than zero");
            default
        }
        Ok(d) => d,
        Err(e) => {
            errors.add(
                path,
                format!("{text:?} is not a duration like 500ms or 2s ({e})"),
            );
            default
        }
    }
}

fn threshold(path: &str, value: Option<i64>, default: u32, errors: &mut Errors) -> u32 {
    match value.map(u32::try_from) {
        None => default,
        Some(Ok(v)) if v >= 1 => v,
        Some(_) => {
            errors.add(
                path,
                format!("{} must be at least 1", value.unwrap_or_default()),
            );
            default
        }
    }
}

fn health(
    path: &str,
    raw: Option<RawHealth>,
    protocol: Protocol,
    errors: &mut Errors,
) -> Option<HealthCheck> {
    let before = errors.0.len();
    let raw = raw.unwrap_or(RawHealth {
        // UDP has no connect handshake to probe; a UDP service probes only when told how.
        kind: Some(
            if protocol == Protocol::Udp {
                "none"
            } else {
                "tcp"
            }
            .into(),
        ),
        path: None,
        interval: None,
        timeout: None,
        healthy_threshold: None,
        unhealthy_threshold: None,
    });
    let probe = match (raw.kind.as_deref().unwrap_or("tcp"), raw.path) {
        ("http", path) => {
            let path = path.unwrap_or_else(|| "/".into());
            Probe::Http { path }
        }
        (kind @ ("tcp" | "none"), Some(_)) => {
            errors.add(
                format!("{path}.path"),
                format!("only an http probe has a path (kind is {kind})"),
            );
            Probe::None
        }
        ("tcp", None) => Probe::Tcp,
        ("none", None) => Probe::None,
        (other, _) => {
            errors.add(
                format!("{path}.kind"),
                format!("unknown probe kind {other:?}: expected tcp, http or none"),
            );
            Probe::None
        }
    };
    if let Probe::Http { path: http_path } = &probe
        && !http_path.starts_with('/')
    {
        errors.add(
            format!("{path}.path"),
            format!("{http_path:?} must start with '/'"),
        );
    }
    let interval = duration(
        &format!("{path}.interval"),
        raw.interval.as_deref(),
        Duration::from_secs(1),
        errors,
    );
    let timeout = duration(
        &format!("{path}.timeout"),
        raw.timeout.as_deref(),
        Duration::from_millis(500).min(interval),
        errors,
    );
    if timeout > interval {
        errors.add(
            format!("{path}.timeout"),
            format!(
                "{} is longer than the interval {}",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        );
    }
    let healthy_threshold = threshold(
        &format!("{path}.healthy_threshold"),
        raw.healthy_threshold,
        2,
        errors,
    );
    let unhealthy_threshold = threshold(
        &format!("{path}.unhealthy_threshold"),
        raw.unhealthy_threshold,
        2,
        errors,
    );
    (errors.0.len() == before).then_some(HealthCheck {
        probe,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
    })
}

fn outlier(path: &str, raw: RawOutlier, errors: &mut Errors) -> Option<Outlier> {
    let before = errors.0.len();
    let consecutive_failures = threshold(
        &format!("{path}.consecutive_failures"),
        raw.consecutive_failures,
        5,
        errors,
    );
    let base_ejection = duration(
        &format!("{path}.base_ejection"),
        raw.base_ejection.as_deref(),
        Duration::from_secs(30),
        errors,
    );
    let max_ejection_percent = match raw.max_ejection_percent {
        None => 50,
        Some(p @ 0..=100) => p as u8,
        Some(p) => {
            errors.add(
                format!("{path}.max_ejection_percent"),
                format!("{p} is out of range 0..=100"),
            );
            50
        }
    };
    (errors.0.len() == before).then_some(Outlier {
        consecutive_failures,
        base_ejection,
        max_ejection_percent,
    })
}

/// The kernel maps have fixed capacities; a file that cannot fit on its own is rejected here,
/// naming the limit. (Several files or sources together can still overflow a map: the
/// datapath then reports what it could not install and retries.)
fn check_capacity(services: &[Arc<ServiceSpec>], errors: &mut Errors) {
    if services.len() > maps::SERVICES_CAPACITY as usize {
        errors.add(
            "services",
            format!(
                "{} services exceed the datapath's capacity of {} ({})",
                services.len(),
                maps::SERVICES_CAPACITY,
                maps::SERVICES
            ),
        );
    }
    let distinct: HashSet<SocketAddr> = services
        .iter()
        .flat_map(|s| s.endpoints.iter().map(|e| e.address))
        .collect();
    if distinct.len() > maps::BACKENDS_CAPACITY as usize {
        errors.add(
            "services[*].endpoints",
            format!(
                "{} distinct endpoints exceed the datapath's capacity of {} ({})",
                distinct.len(),
                maps::BACKENDS_CAPACITY,
                maps::BACKENDS
            ),
        );
    }
    let chunks = |s: &Arc<ServiceSpec>| layout::chunks(layout::table_size(s.endpoints.len()));
    let total: u64 = services.iter().map(|s| u64::from(chunks(s))).sum();
    // A reconcile builds one service's new table before it frees the old one.
    let spare = services.iter().map(chunks).max().unwrap_or(0);
    if total + u64::from(spare) > u64::from(maps::MAGLEV_CAPACITY) {
        errors.add(
            "services[*].endpoints",
            format!(
                "the services' lookup tables need {} entries (plus {spare} spare), over the datapath's capacity of {} ({})",
                total,
                maps::MAGLEV_CAPACITY,
                maps::MAGLEV
            ),
        );
    }
}

/// A service's checks given field by field (Kubernetes annotations, say), validated as a
/// file's `health:`, `outlier:` and `panic_threshold` are. Errors are located by the same
/// field paths (`health.interval`, `outlier.base_ejection`, `panic_threshold`).
pub fn checks(
    settings: super::ServiceSettings,
    protocol: Protocol,
) -> Result<super::Checks, ConfigError> {
    let mut errors = Errors::default();
    let health = health(
        "health",
        Some(RawHealth {
            kind: settings.health.or_else(|| Some("none".into())),
            path: settings.health_path,
            interval: settings.health_interval,
            timeout: settings.health_timeout,
            healthy_threshold: settings.healthy_threshold,
            unhealthy_threshold: settings.unhealthy_threshold,
        }),
        protocol,
        &mut errors,
    );
    let outlier = settings
        .outlier
        .then(|| {
            outlier(
                "outlier",
                RawOutlier {
                    consecutive_failures: settings.consecutive_failures,
                    base_ejection: settings.base_ejection,
                    max_ejection_percent: settings.max_ejection_percent,
                },
                &mut errors,
            )
        })
        .flatten();
    let panic_threshold = match settings.panic_threshold {
        None => DEFAULT_PANIC_THRESHOLD,
        Some(p @ 0..=100) => p as u8,
        Some(p) => {
            errors.add(
                "panic_threshold",
                format!("{p} is out of range 0..=100 (percent; 0 turns it off)"),
            );
            DEFAULT_PANIC_THRESHOLD
        }
    };
    match health {
        Some(health) if errors.0.is_empty() => Ok(super::Checks {
            health: SharedChecks::default().share(health),
            outlier,
            panic_threshold,
        }),
        _ => Err(ConfigError::Invalid(errors.0)),
    }
}
