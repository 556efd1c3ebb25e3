//! A Kubernetes Service and its EndpointSlices → weft services. Pure: the watch feeds it
//! objects, it returns specs (and the problems it found in annotations, which are reported
//! and never fatal).
//!
//! Objects are first reduced to their facts (`ServiceFacts`, `SliceFacts`): what weft uses
//! of them, a few dozen bytes per endpoint instead of the API object, so the watch can keep
//! every Service and EndpointSlice of a large cluster and recompute one Service when one of
//! its objects changes.
//!
//! - Frontends: the cluster IPs (both families), `externalIPs` and
//!   `status.loadBalancer.ingress` IPs of ClusterIP, NodePort and LoadBalancer services, for
//!   every TCP or UDP port. Headless and ExternalName services have none.
//! - Endpoints, as kube-proxy picks them: ready ones; if a port has none, its serving and
//!   terminating ones (graceful termination); never unready. `internalTrafficPolicy: Local`
//!   keeps only this node's endpoints for the cluster IPs. External and load-balancer IPs
//!   reached from this node use every endpoint whatever `externalTrafficPolicy` says, as
//!   kube-proxy does for traffic from inside the cluster. The endpoint's port is the
//!   EndpointSlice port of the same name as the Service port (so named `targetPort`s
//!   resolve as the controller did).
//! - Weights: `weft.io/weight` on an EndpointSlice weighs all its endpoints (default 1), so
//!   a canary is two slices at 90/10.
//! - Checks: `weft.io/health*`, `weft.io/outlier-*` and `weft.io/panic-threshold` on the
//!   Service (no active probe unless asked: readiness already gates endpoints).
//!
//! One weft service per frontend address and port, named `namespace/name:port` (the port's
//! name, or its number) for the first cluster IP, with `@address` for every other frontend.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, LazyLock},
};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::config::{self, Checks, EndpointSpec, Frontend, Protocol, ServiceSettings, ServiceSpec};

/// The annotation weighing an EndpointSlice's endpoints.
pub const WEIGHT: &str = "weft.io/weight";
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// A Service's annotations that set its checks, and the field each sets.
const CHECKS: [(&str, &str); 11] = [
    ("weft.io/health", "health.kind"),
    ("weft.io/health-path", "health.path"),
    ("weft.io/health-interval", "health.interval"),
    ("weft.io/health-timeout", "health.timeout"),
    (
        "weft.io/health-healthy-threshold",
        "health.healthy_threshold",
    ),
    (
        "weft.io/health-unhealthy-threshold",
        "health.unhealthy_threshold",
    ),
    (
        "weft.io/outlier-consecutive-failures",
        "outlier.consecutive_failures",
    ),
    ("weft.io/outlier-base-ejection", "outlier.base_ejection"),
    (
        "weft.io/outlier-max-ejection-percent",
        "outlier.max_ejection_percent",
    ),
    ("weft.io/panic-threshold", "panic_threshold"),
    ("weft.io/outlier", "outlier"),
];

/// The checks of a Service without check annotations, shared by all of them.
static DEFAULT_CHECKS: LazyLock<Checks> = LazyLock::new(|| {
    config::checks(ServiceSettings::default(), Protocol::Tcp)
        .expect("the checks' defaults are valid")
});

/// `namespace/name` of an object: a Service's key, and the origin of its weft services.
pub fn object_key(meta: &ObjectMeta) -> Arc<str> {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default()
    )
    .into()
}

/// What weft uses of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceFacts {
    pub key: Arc<str>,
    cluster_ips: Vec<IpAddr>,
    external_ips: Vec<IpAddr>,
    /// `internalTrafficPolicy: Local`: the cluster IPs lead only to this node's endpoints.
    node_local: bool,
    ports: Vec<PortFacts>,
    checks: Checks,
    /// Annotations that could not be used, naming the object: reported, then ignored.
    pub problems: Vec<String>,
}

/// A port of a Service or of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PortFacts {
    /// Absent and empty are the same name: a Service's only port may be unnamed.
    name: Option<Box<str>>,
    number: u16,
    protocol: Protocol,
}

/// What weft uses of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceFacts {
    /// The key of the Service it belongs to, if it is labelled with one.
    pub service: Option<Arc<str>>,
    ipv4: bool,
    ports: Vec<PortFacts>,
    endpoints: Vec<SliceEndpoint>,
    weight: u16,
    pub problems: Vec<String>,
}

/// An EndpointSlice endpoint (its first address), with its conditions (the API's defaults for
/// absent ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SliceEndpoint {
    address: IpAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    on_this_node: bool,
}

fn port_name(name: Option<&str>) -> Option<Box<str>> {
    name.filter(|n| !n.is_empty()).map(Box::from)
}

fn protocol(name: Option<&str>) -> Option<Protocol> {
    match name.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        // SCTP: the socket hooks weft uses do not see it.
        _ => None,
    }
}

impl ServiceFacts {
    /// Every frontend address: cluster IPs, then external and load-balancer IPs.
    pub fn addresses(&self) -> impl Iterator<Item = &IpAddr> {
        self.cluster_ips.iter().chain(&self.external_ips)
    }

    /// The facts of a Service that has frontends; `None` for those weft leaves alone
    /// (headless, ExternalName, no TCP or UDP port).
    pub fn of(service: &Service) -> Option<ServiceFacts> {
        let meta = &service.metadata;
        let key = object_key(meta);
        let spec = service.spec.as_ref()?;
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if !matches!(kind, "ClusterIP" | "NodePort" | "LoadBalancer") {
            return None;
        }
        let cluster_ips: Vec<IpAddr> = match &spec.cluster_ips {
            Some(ips) => ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
            None => spec
                .cluster_ip
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .collect(),
        };
        // Headless (clusterIP: None): clients resolve the endpoints themselves.
        if cluster_ips.is_empty() {
            return None;
        }
        let ingress = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            // `ipMode: Proxy`: the load balancer must see the traffic (it may add the PROXY
            // protocol header the backends expect), so connects to it are left alone.
            .filter(|ingress| ingress.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|ingress| ingress.ip.as_deref()?.parse::<IpAddr>().ok());
        let families: HashSet<bool> = cluster_ips.iter().map(IpAddr::is_ipv4).collect();
        let mut seen: HashSet<IpAddr> = cluster_ips.iter().copied().collect();
        let external_ips: Vec<IpAddr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .chain(ingress)
            // An address of a family the Service has no cluster IP in would have no
            // endpoints and refuse connects that should reach it: kube-proxy skips it too.
            .filter(|ip| families.contains(&ip.is_ipv4()))
            // One frontend per address, however many fields name it.
            .filter(|ip| seen.insert(*ip))
            .collect();
        let mut ports: Vec<PortFacts> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|port| {
                Some(PortFacts {
                    name: port_name(port.name.as_deref()),
                    number: u16::try_from(port.port).ok()?,
                    protocol: protocol(port.protocol.as_deref())?,
                })
            })
            .collect();
        let mut problems = Vec::new();
        // The API server refuses a Service whose ports repeat a number and protocol; if one
        // reaches weft anyway, the first of them is served (two services on one frontend
        // would only conflict), as a config file repeating a frontend is refused.
        let mut numbers = HashSet::new();
        ports.retain(|port| {
            let first = numbers.insert((port.number, port.protocol));
            if !first {
                problems.push(format!(
                    "Service {key}: port {}/{} repeats an earlier port; only the first is served",
                    port.number,
                    port.protocol.as_str()
                ));
            }
            first
        });
        if ports.is_empty() {
            return None;
        }
        let checks = match meta.annotations.as_ref() {
            Some(annotations) if CHECKS.iter().any(|(a, _)| annotations.contains_key(*a)) => {
                if annotations.contains_key("weft.io/health")
                    && ports.iter().any(|p| p.protocol == Protocol::Udp)
                {
                    problems.push(format!(
                        "Service {key}: annotation weft.io/health: active probes apply to TCP ports; its UDP ports are not probed"
                    ));
                }
                checks_of(annotations, &key, &mut problems)
            }
            _ => DEFAULT_CHECKS.clone(),
        };
        Some(ServiceFacts {
            cluster_ips,
            external_ips,
            node_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            ports,
            checks,
            problems,
            key,
        })
    }
}

impl SliceFacts {
    /// The facts of an EndpointSlice, seen from the node `node`.
    pub fn of(slice: &EndpointSlice, node: &str) -> SliceFacts {
        let meta = &slice.metadata;
        let service = meta
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME))
            .map(|service| {
                format!(
                    "{}/{service}",
                    meta.namespace.as_deref().unwrap_or("default")
                )
                .into()
            });
        let mut problems = Vec::new();
        let weight = match meta.annotations.as_ref().and_then(|a| a.get(WEIGHT)) {
            None => 1,
            Some(value) => value.trim().parse::<u16>().unwrap_or_else(|_| {
                problems.push(format!(
                    "EndpointSlice {}: annotation {WEIGHT}: {value:?} is not a weight 0..=65535; the default 1 is used",
                    object_key(meta)
                ));
                1
            }),
        };
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|port| {
                Some(PortFacts {
                    name: port_name(port.name.as_deref()),
                    number: u16::try_from(port.port?).ok()?,
                    protocol: protocol(port.protocol.as_deref())?,
                })
            })
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .filter_map(|endpoint| {
                let c = endpoint.conditions.as_ref();
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                let on_this_node = endpoint.node_name.as_deref() == Some(node);
                // The addresses of one endpoint are the same pod; the API lets consumers use
                // the first only, and kube-proxy does.
                Some(SliceEndpoint {
                    address: endpoint.addresses.first()?.parse().ok()?,
                    ready,
                    serving,
                    terminating,
                    on_this_node,
                })
            })
            .collect();
        SliceFacts {
            service,
            // "IPv6", or "FQDN" (whose addresses are names: none parses, no endpoint).
            ipv4: slice.address_type == "IPv4",
            ports,
            endpoints,
            weight,
            problems,
        }
    }
}

/// The weft services of a Service, given the facts of the EndpointSlices that belong to it
/// (in a stable order: where two slices hold one address, the first one's copy counts).
pub fn specs(service: &ServiceFacts, slices: &[&SliceFacts]) -> Vec<Arc<ServiceSpec>> {
    let frontends: Vec<(IpAddr, bool)> = service
        .cluster_ips
        .iter()
        .map(|ip| (*ip, service.node_local))
        .chain(service.external_ips.iter().map(|ip| (*ip, false)))
        .collect();
    let mut specs = Vec::with_capacity(service.ports.len() * frontends.len());
    for port in &service.ports {
        // Probes and connect outcomes are TCP's: UDP ports rely on readiness alone.
        let checks = match port.protocol {
            Protocol::Tcp => &service.checks,
            Protocol::Udp => &*DEFAULT_CHECKS,
        };
        let label = port
            .name
            .as_deref()
            .map_or_else(|| port.number.to_string(), str::to_string);
        for (index, &(address, node_local)) in frontends.iter().enumerate() {
            let name = if index == 0 {
                format!("{}:{label}", service.key)
            } else {
                format!("{}:{label}@{address}", service.key)
            };
            specs.push(Arc::new(ServiceSpec {
                name: name.into(),
                frontend: Frontend {
                    address,
                    port: port.number,
                    protocol: port.protocol,
                },
                endpoints: endpoints(slices, port, address.is_ipv4(), node_local),
                health: Arc::clone(&checks.health),
                outlier: checks.outlier.clone(),
                panic_threshold: checks.panic_threshold,
                // Kubernetes objects carry no governance (no annotation for it yet).
                governance: Default::default(),
            }));
        }
    }
    specs
}

/// What one Service maps to, straight from the API objects (the tests' view).
#[cfg(test)]
#[derive(Debug, Default, PartialEq)]
pub struct Mapped {
    pub specs: Vec<Arc<ServiceSpec>>,
    pub problems: Vec<String>,
}

/// The weft services of `service`, given the EndpointSlices that belong to it and the node
/// the agent runs on.
#[cfg(test)]
pub fn map(service: &Service, slices: &[&EndpointSlice], node: &str) -> Mapped {
    let Some(facts) = ServiceFacts::of(service) else {
        return Mapped::default();
    };
    let slices: Vec<SliceFacts> = slices.iter().map(|s| SliceFacts::of(s, node)).collect();
    let mut problems = facts.problems.clone();
    problems.extend(slices.iter().flat_map(|s| s.problems.iter().cloned()));
    Mapped {
        specs: specs(&facts, &slices.iter().collect::<Vec<_>>()),
        problems,
    }
}

/// The checks the annotations set. An annotation whose value does not validate is reported
/// and ignored (its field takes its default); the others still apply.
fn checks_of(
    annotations: &BTreeMap<String, String>,
    object: &str,
    problems: &mut Vec<String>,
) -> Checks {
    let mut settings = settings(annotations, object, problems);
    // Each round clears at least one field, so this ends.
    for _ in 0..=CHECKS.len() {
        let errors = match config::checks(settings.clone(), Protocol::Tcp) {
            Ok(checks) => return checks,
            Err(config::ConfigError::Invalid(errors)) => errors,
            Err(other) => {
                problems.push(format!(
                    "Service {object}: {other}; the checks' defaults are used"
                ));
                break;
            }
        };
        let mut cleared = false;
        for e in &errors {
            let annotation = CHECKS
                .iter()
                .find(|(_, field)| *field == e.path)
                .map_or(e.path.as_str(), |(annotation, _)| annotation);
            problems.push(format!(
                "Service {object}: annotation {annotation}: {}; ignored",
                e.message
            ));
            cleared |= clear(&mut settings, &e.path);
        }
        if !cleared {
            break;
        }
    }
    DEFAULT_CHECKS.clone()
}

/// Unsets the field a validation error names; false if it was not set.
fn clear(settings: &mut ServiceSettings, path: &str) -> bool {
    fn take<T>(field: &mut Option<T>) -> bool {
        field.take().is_some()
    }
    match path {
        "health.kind" => take(&mut settings.health),
        "health.path" => take(&mut settings.health_path),
        "health.interval" => take(&mut settings.health_interval),
        "health.timeout" => take(&mut settings.health_timeout),
        "health.healthy_threshold" => take(&mut settings.healthy_threshold),
        "health.unhealthy_threshold" => take(&mut settings.unhealthy_threshold),
        "outlier.consecutive_failures" => take(&mut settings.consecutive_failures),
        "outlier.base_ejection" => take(&mut settings.base_ejection),
        "outlier.max_ejection_percent" => take(&mut settings.max_ejection_percent),
        "panic_threshold" => take(&mut settings.panic_threshold),
        _ => false,
    }
}
/// The Service's check annotations as settings; unparseable numbers are reported.
fn settings(
    annotations: &BTreeMap<String, String>,
    object: &str,
    problems: &mut Vec<String>,
) -> ServiceSettings {
    // Any outlier setting turns passive detection on, unless `weft.io/outlier: "false"`;
    // `weft.io/outlier: "true"` turns it on with its defaults.
    let any_outlier_setting = CHECKS
        .iter()
        .any(|(key, field)| field.starts_with("outlier.") && annotations.contains_key(*key));
    let outlier = match annotations.get("weft.io/outlier") {
        None => any_outlier_setting,
        Some(value) => match value.trim().to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => {
                problems.push(format!(
                    "Service {object}: annotation weft.io/outlier: {value:?} is not true or false; ignored"
                ));
                any_outlier_setting
            }
        },
    };
    let text = |key: &str| annotations.get(key).cloned();
    let mut number = |key: &str| {
        let value = annotations.get(key)?;
        match value.trim().parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => {
                problems.push(format!(
                    "Service {object}: annotation {key}: {value:?} is not a number; ignored"
                ));
                None
            }
        }
    };
    ServiceSettings {
        health: text("weft.io/health"),
        health_path: text("weft.io/health-path"),
        health_interval: text("weft.io/health-interval"),
        health_timeout: text("weft.io/health-timeout"),
        healthy_threshold: number("weft.io/health-healthy-threshold"),
        unhealthy_threshold: number("weft.io/health-unhealthy-threshold"),
        outlier,
        consecutive_failures: number("weft.io/outlier-consecutive-failures"),
        base_ejection: text("weft.io/outlier-base-ejection"),
        max_ejection_percent: number("weft.io/outlier-max-ejection-percent"),
        panic_threshold: number("weft.io/panic-threshold"),
    }
}

/// The endpoints of one Service port in one family, kube-proxy's way.
fn endpoints(
    slices: &[&SliceFacts],
    port: &PortFacts,
    ipv4: bool,
    node_local: bool,
) -> Vec<EndpointSpec> {
    let mut candidates: Vec<(EndpointSpec, SliceEndpoint)> = Vec::new();
    let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
    for slice in slices.iter().filter(|s| s.ipv4 == ipv4) {
        // The slice's port of the same name (unnamed matches unnamed) and protocol.
        let Some(target) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            if node_local && !endpoint.on_this_node {
                continue;
            }
            let address = SocketAddr::new(endpoint.address, target.number);
            let spec = EndpointSpec {
                address,
                weight: slice.weight,
            };
            // An endpoint in two slices (the controller moving it): a ready copy counts
            // over one that is not.
            match seen.get(&address) {
                None => {
                    seen.insert(address, candidates.len());
                    candidates.push((spec, *endpoint));
                }
                Some(&i) if endpoint.ready && !candidates[i].1.ready => {
                    candidates[i] = (spec, *endpoint);
                }
                Some(_) => {}
            }
        }
    }
    let any_ready = candidates.iter().any(|(_, e)| e.ready);
    let mut chosen: Vec<EndpointSpec> = candidates
        .iter()
        // None ready: those still serving while they terminate (graceful termination).
        .filter(|(_, e)| {
            if any_ready {
                e.ready
            } else {
                e.serving && e.terminating
            }
        })
        .map(|(spec, _)| *spec)
        .collect();
    // By address: the controller moving endpoints between slices changes nothing.
    chosen.sort_unstable_by_key(|e| e.address);
    chosen
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).expect("a Service")
    }

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).expect("an EndpointSlice")
    }

    fn reviews() -> Service {
        service(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "namespace": "shop", "name": "reviews" },
            "spec": {
                "type": "ClusterIP",
                "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                "ipFamilies": ["IPv4", "IPv6"],
                "ports": [
                    { "name": "http", "port": 9080, "protocol": "TCP", "targetPort": "web" },
                    { "name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353 }
                ]
            }
        }))
    }

    fn v4_slice(name: &str, weight: Option<&str>, endpoints: serde_json::Value) -> EndpointSlice {
        let mut annotations = serde_json::Map::new();
        if let Some(w) = weight {
            annotations.insert(WEIGHT.into(), w.into());
        }
        slice(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "namespace": "shop", "name": name,
                "labels": { "kubernetes.io/service-name": "reviews" },
                "annotations": annotations
            },
            "addressType": "IPv4",
            "ports": [
                { "name": "http", "port": 8080, "protocol": "TCP" },
                { "name": "dns", "port": 5353, "protocol": "UDP" }
            ],
            "endpoints": endpoints
        }))
    }

    fn endpoint(
        ip: &str,
        ready: bool,
        serving: bool,
        terminating: bool,
        node: &str,
    ) -> serde_json::Value {
        json!({
            "addresses": [ip],
            "conditions": { "ready": ready, "serving": serving, "terminating": terminating },
            "nodeName": node
        })
    }

    fn named<'a>(mapped: &'a Mapped, name: &str) -> &'a ServiceSpec {
        mapped
            .specs
            .iter()
            .find(|s| &*s.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no {name} in {:?}",
                    mapped.specs.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            })
    }

    fn addresses(spec: &ServiceSpec) -> Vec<String> {
        spec.endpoints
            .iter()
            .map(|e| format!("{}/{}", e.address, e.weight))
            .collect()
    }

    #[test]
    fn every_port_and_family_is_a_service_named_after_the_object() {
        let ready = v4_slice(
            "reviews-a",
            None,
            json!([endpoint("10.1.0.5", true, true, false, "n1")]),
        );
        let mapped = map(&reviews(), &[&ready], "n1");
        let names: Vec<&str> = mapped.specs.iter().map(|s| &*s.name).collect();
        assert_eq!(
            names,
            [
                "shop/reviews:http",
                "shop/reviews:http@fd00:96::10",
                "shop/reviews:dns",
                "shop/reviews:dns@fd00:96::10"
            ]
        );
        let http = named(&mapped, "shop/reviews:http");
        assert_eq!(http.frontend.to_string(), "10.96.0.10:9080/tcp");
        // The named targetPort resolved as the controller did: the slice's port "http".
        assert_eq!(addresses(http), ["10.1.0.5:8080/1"]);
        assert_eq!(
            addresses(named(&mapped, "shop/reviews:dns")),
            ["10.1.0.5:5353/1"]
        );
        assert!(
            named(&mapped, "shop/reviews:http@fd00:96::10")
                .endpoints
                .is_empty(),
            "no IPv6 slice"
        );
        assert_eq!(
            http.health.probe,
            crate::config::Probe::None,
            "no probe unless asked"
        );

        // Dual stack: the IPv6 cluster IP gets the IPv6 slice's endpoints, and only those.
        let v6 = slice(json!({
            "metadata": {
                "namespace": "shop", "name": "reviews-v6",
                "labels": { "kubernetes.io/service-name": "reviews" }
            },
            "addressType": "IPv6",
            "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
            "endpoints": [{ "addresses": ["fd00:1::5"], "conditions": { "ready": true } }]
        }));
        let mapped = map(&reviews(), &[&ready, &v6], "n1");
        assert_eq!(
            addresses(named(&mapped, "shop/reviews:http@fd00:96::10")),
            ["[fd00:1::5]:8080/1"]
        );
        assert_eq!(
            addresses(named(&mapped, "shop/reviews:http")),
            ["10.1.0.5:8080/1"]
        );
        // The IPv6 slice has no "dns" port: no endpoints there.
        assert!(
            named(&mapped, "shop/reviews:dns@fd00:96::10")
                .endpoints
                .is_empty()
        );
    }

    #[test]
    fn an_unnamed_port_matches_the_unnamed_slice_port() {
        let plain = service(json!({
            "metadata": { "namespace": "web", "name": "site" },
            "spec": { "clusterIP": "10.96.0.30", "ports": [{ "port": 80, "targetPort": 8080 }] }
        }));
        let slice_a = slice(json!({
            "metadata": { "namespace": "web", "name": "site-x", "labels": { "kubernetes.io/service-name": "site" } },
            "addressType": "IPv4",
            "ports": [{ "name": "", "port": 8080, "protocol": "TCP" }],
            "endpoints": [{ "addresses": ["10.1.0.9"] }]
        }));
        let mapped = map(&plain, &[&slice_a], "n1");
        assert_eq!(
            addresses(named(&mapped, "web/site:80")),
            ["10.1.0.9:8080/1"]
        );
    }

    /// Found by the `kubernetes` fuzz target: two ports with one number and protocol made
    /// two services on one frontend.
    #[test]
    fn a_port_repeating_a_number_and_protocol_is_reported_and_only_the_first_served() {
        let repeated = service(json!({
            "metadata": { "namespace": "web", "name": "site" },
            "spec": { "clusterIP": "10.96.0.30", "ports": [
                { "name": "http", "port": 80, "targetPort": 8080 },
                { "name": "again", "port": 80, "protocol": "TCP", "targetPort": 9090 },
                { "name": "dns", "port": 80, "protocol": "UDP", "targetPort": 53 }
            ] }
        }));
        let mapped = map(&repeated, &[], "n1");
        let names: Vec<&str> = mapped.specs.iter().map(|s| &*s.name).collect();
        assert_eq!(names, ["web/site:http", "web/site:dns"]);
        assert_eq!(
            mapped.problems,
            ["Service web/site: port 80/tcp repeats an earlier port; only the first is served"]
        );
    }

    #[test]
    fn ready_endpoints_else_serving_terminating_ones_never_unready() {
        let slice_a = v4_slice(
            "reviews-a",
            None,
            json!([
                endpoint("10.1.0.5", true, true, false, "n1"),
                endpoint("10.1.0.6", false, false, false, "n1"),
                endpoint("10.1.0.7", false, true, true, "n1"),
            ]),
        );
        let mapped = map(&reviews(), &[&slice_a], "n1");
        assert_eq!(
            addresses(named(&mapped, "shop/reviews:http")),
            ["10.1.0.5:8080/1"]
        );
        // The ready one goes: the terminating one still serving takes the traffic.
        let slice_b = v4_slice(
            "reviews-a",
            None,
            json!([
                endpoint("10.1.0.6", false, false, false, "n1"),
                endpoint("10.1.0.7", false, true, true, "n1"),
            ]),
        );
        let mapped = map(&reviews(), &[&slice_b], "n1");
        assert_eq!(
            addresses(named(&mapped, "shop/reviews:http")),
            ["10.1.0.7:8080/1"]
        );
        // Absent conditions mean ready; of an endpoint's addresses the first is used.
        let plain = v4_slice(
            "reviews-a",
            None,
            json!([{ "addresses": ["10.1.0.8", "10.1.0.9"] }]),
        );
        let mapped = map(&reviews(), &[&plain], "n1");
        assert_eq!(
            addresses(named(&mapped, "shop/reviews:http")),
            ["10.1.0.8:8080/1"]
        );
        // Moving between slices, an endpoint is in two: its ready copy counts.
        let old = v4_slice(
            "reviews-a",
            None,
            json!([endpoint("10.1.0.5", false, false, false, "n1")]),
        );
        let new = v4_slice(
            "reviews-b",
            None,
            json!([endpoint("10.1.0.5", true, true, false, "n1")]),
        );
        let mapped = map(&reviews(), &[&old, &new], "n1");
        assert_eq!(
            addresses(named(&mapped, "shop/reviews:http")),
            ["10.1.0.5:8080/1"]
        );
    }

    #[test]
    fn a_canary_is_two_slices_weighed_by_annotation() {
        let stable = v4_slice(
            "reviews-v1",
            Some("90"),
            json!([endpoint("10.1.0.5", true, true, false, "n1")]),
        );
        let canary = v4_slice(
            "reviews-v2",
            Some("10"),
            json!([endpoint("10.1.0.6", true, true, false, "n1")]),
        );
        let bad = v4_slice(
            "reviews-v3",
            Some("heavy"),
            json!([endpoint("10.1.0.7", true, true, false, "n1")]),
        );
        let mapped = map(&reviews(), &[&stable, &canary, &bad], "n1");
        assert_eq!(
            addresses(named(&mapped, "shop/reviews:http")),
            ["10.1.0.5:8080/90", "10.1.0.6:8080/10", "10.1.0.7:8080/1"]
        );
        assert_eq!(mapped.problems.len(), 1);
        assert!(
            mapped.problems[0].contains("shop/reviews-v3") && mapped.problems[0].contains("heavy"),
            "{:?}",
            mapped.problems
        );
    }

    #[test]
    fn internal_traffic_policy_local_keeps_this_nodes_endpoints() {
        let mut local = reviews();
        local.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
        let slice_a = v4_slice(
            "reviews-a",
            None,
            json!([
                endpoint("10.1.0.5", true, true, false, "n1"),
                endpoint("10.1.0.6", true, true, false, "n2"),
            ]),
        );
        let mapped = map(&local, &[&slice_a], "n2");
        assert_eq!(
            addresses(named(&mapped, "shop/reviews:http")),
            ["10.1.0.6:8080/1"]
        );
        // None on this node: none at all, never another node's.
        let mapped = map(&local, &[&slice_a], "n3");
        assert!(named(&mapped, "shop/reviews:http").endpoints.is_empty());
    }

    #[test]
    fn external_traffic_policy_local_still_uses_every_endpoint_from_this_node() {
        let lb = service(json!({
            "metadata": { "namespace": "shop", "name": "reviews" },
            "spec": {
                "type": "LoadBalancer", "clusterIP": "10.96.0.10",
                "externalTrafficPolicy": "Local",
                "ports": [{ "name": "http", "port": 9080 }]
            },
            "status": { "loadBalancer": { "ingress": [{ "ip": "198.51.100.1" }] } }
        }));
        let slice_a = v4_slice(
            "reviews-a",
            None,
            json!([
                endpoint("10.1.0.5", true, true, false, "n1"),
                endpoint("10.1.0.6", true, true, false, "n2"),
            ]),
        );
        let mapped = map(&lb, &[&slice_a], "n2");
        assert_eq!(
            addresses(named(&mapped, "shop/reviews:http@198.51.100.1")),
            ["10.1.0.5:8080/1", "10.1.0.6:8080/1"]
        );
    }

    #[test]
    fn external_and_load_balancer_addresses_are_frontends_too() {
        let lb = service(json!({
            "metadata": { "namespace": "shop", "name": "front" },
            "spec": {
                "type": "LoadBalancer", "clusterIP": "10.96.0.20",
                "externalIPs": ["192.0.2.7"],
                "ports": [{ "port": 80 }]
            },
            "status": { "loadBalancer": { "ingress": [{ "ip": "198.51.100.1" }, { "hostname": "lb.example" }] } }
        }));
        let mapped = map(&lb, &[], "n1");
        let names: Vec<&str> = mapped.specs.iter().map(|s| &*s.name).collect();
        assert_eq!(
            names,
            [
                "shop/front:80",
                "shop/front:80@192.0.2.7",
                "shop/front:80@198.51.100.1"
            ]
        );

        // An address named twice (an external IP that is also the load balancer's) is one
        // frontend.
        let mut twice = lb.clone();
        twice.spec.as_mut().unwrap().external_ips =
            Some(vec!["198.51.100.1".into(), "10.96.0.20".into()]);
        let mapped = map(&twice, &[], "n1");
        let names: Vec<&str> = mapped.specs.iter().map(|s| &*s.name).collect();
        assert_eq!(names, ["shop/front:80", "shop/front:80@198.51.100.1"]);

        // Left alone: a load balancer in `ipMode: Proxy` (it must see the traffic) and an
        // address of a family the Service has no cluster IP in.
        let mut proxied = lb.clone();
        proxied.status = Some(
            serde_json::from_value(json!({ "loadBalancer": { "ingress": [
                { "ip": "198.51.100.1", "ipMode": "Proxy" },
                { "ip": "198.51.100.2", "ipMode": "VIP" },
                { "ip": "2001:db8::1" }
            ] } }))
            .unwrap(),
        );
        proxied.spec.as_mut().unwrap().external_ips = None;
        let mapped = map(&proxied, &[], "n1");
        let names: Vec<&str> = mapped.specs.iter().map(|s| &*s.name).collect();
        assert_eq!(names, ["shop/front:80", "shop/front:80@198.51.100.2"]);
    }

    #[test]
    fn headless_and_external_name_services_are_skipped() {
        let headless = service(json!({
            "metadata": { "namespace": "shop", "name": "db" },
            "spec": { "clusterIP": "None", "ports": [{ "port": 5432 }] }
        }));
        assert!(map(&headless, &[], "n1").specs.is_empty());
        let external = service(json!({
            "metadata": { "namespace": "shop", "name": "ext" },
            "spec": { "type": "ExternalName", "externalName": "example.com" }
        }));
        assert!(map(&external, &[], "n1").specs.is_empty());
    }

    #[test]
    fn checks_come_from_service_annotations_and_bad_ones_are_reported() {
        let mut probed = reviews();
        probed.metadata.annotations = Some(BTreeMap::from([
            ("weft.io/health".to_string(), "http".to_string()),
            ("weft.io/health-path".to_string(), "/healthz".to_string()),
            ("weft.io/health-interval".to_string(), "200ms".to_string()),
            ("weft.io/health-timeout".to_string(), "100ms".to_string()),
            (
                "weft.io/outlier-consecutive-failures".to_string(),
                "3".to_string(),
            ),
        ]));
        let mapped = map(&probed, &[], "n1");
        let http = named(&mapped, "shop/reviews:http");
        assert_eq!(
            http.health.probe,
            crate::config::Probe::Http {
                path: "/healthz".into()
            }
        );
        assert_eq!(http.health.interval, std::time::Duration::from_millis(200));
        assert_eq!(
            http.outlier.as_ref().map(|o| o.consecutive_failures),
            Some(3)
        );
        // The UDP port is not probed, and the operator is told so.
        assert_eq!(
            named(&mapped, "shop/reviews:dns").health.probe,
            crate::config::Probe::None
        );
        assert_eq!(mapped.problems.len(), 1, "{:?}", mapped.problems);
        assert!(mapped.problems[0].contains("UDP"), "{:?}", mapped.problems);

        let mut bad = reviews();
        bad.metadata.annotations = Some(BTreeMap::from([
            ("weft.io/health".to_string(), "http".to_string()),
            ("weft.io/health-interval".to_string(), "soon".to_string()),
            (
                "weft.io/health-healthy-threshold".to_string(),
                "many".to_string(),
            ),
            ("weft.io/outlier".to_string(), "off".to_string()),
        ]));
        let mapped = map(&bad, &[], "n1");
        assert!(!mapped.specs.is_empty(), "bad annotations are never fatal");
        // Only the bad ones are ignored: the probe kind still applies, the interval and
        // threshold take their defaults.
        let http = named(&mapped, "shop/reviews:http");
        assert_eq!(
            http.health.probe,
            crate::config::Probe::Http { path: "/".into() }
        );
        assert_eq!(http.health.interval, std::time::Duration::from_secs(1));
        assert!(
            http.outlier.is_none(),
            "an unreadable weft.io/outlier turns nothing on"
        );
        assert!(
            mapped
                .problems
                .iter()
                .any(|p| p.contains("weft.io/outlier") && p.contains("off")),
            "{:?}",
            mapped.problems
        );
        let problems = mapped.problems.join("\n");
        assert!(
            problems.contains("shop/reviews") && problems.contains("many"),
            "{problems}"
        );
        assert!(
            problems.contains("weft.io/health-interval") && problems.contains("soon"),
            "{problems}"
        );

        // `weft.io/outlier: "true"` alone: passive detection with its defaults; "false"
        // turns it off whatever else is set.
        let mut on = reviews();
        on.metadata.annotations = Some(BTreeMap::from([(
            "weft.io/outlier".to_string(),
            "true".to_string(),
        )]));
        assert!(
            named(&map(&on, &[], "n1"), "shop/reviews:http")
                .outlier
                .is_some()
        );
        let mut off = reviews();
        off.metadata.annotations = Some(BTreeMap::from([
            ("weft.io/outlier".to_string(), "false".to_string()),
            (
                "weft.io/outlier-consecutive-failures".to_string(),
                "3".to_string(),
            ),
        ]));
        assert!(
            named(&map(&off, &[], "n1"), "shop/reviews:http")
                .outlier
                .is_none()
        );
    }
}
