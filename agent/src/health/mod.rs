//! Endpoint health: active probes, passive ejection, and what both mean for the weights the
//! kernel uses. The daemon owns one `Health` and feeds it events; `effective` turns it into
//! per-endpoint weights for the planner.

mod probe;
mod state;
mod weights;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

pub use probe::{ProbeResult, Prober};
pub use state::{EndpointHealth, State};
pub use weights::{Effective, effective_weights};

use crate::config::{Config, HealthCheck, Probe, Service};

/// An endpoint as one service sees it (services probe the same address independently).
pub type EndpointKey = (String, SocketAddr);

pub fn endpoint_key(service: &Service, endpoint: &crate::config::Endpoint) -> EndpointKey {
    (
        service.name.clone(),
        SocketAddr::new(endpoint.address, endpoint.port),
    )
}

struct Tracked {
    health: EndpointHealth,
    check: HealthCheck,
}

#[derive(Default)]
pub struct Health {
    endpoints: HashMap<EndpointKey, Tracked>,
    panicking: HashSet<String>,
}

/// A change worth logging.
#[derive(Debug, PartialEq, Eq)]
pub struct Transition {
    pub key: EndpointKey,
    pub from: State,
    pub to: State,
}

/// Effective weights for every endpoint, and the services in panic mode.
#[derive(Debug, Default)]
pub struct Weights {
    pub by_endpoint: HashMap<EndpointKey, u32>,
    pub panicking: HashSet<String>,
}

impl Health {
    /// Tracks the config's endpoints: new ones start unknown (or healthy without probes),
    /// removed ones are forgotten, kept ones keep their state.
    pub fn sync(&mut self, config: &Config) {
        let mut keep = HashSet::new();
        for service in &config.services {
            let probing = service.health.probe != Probe::None;
            for endpoint in &service.endpoints {
                let key = endpoint_key(service, endpoint);
                keep.insert(key.clone());
                let tracked = self.endpoints.entry(key).or_insert_with(|| Tracked {
                    health: EndpointHealth::new(probing),
                    check: service.health.clone(),
                });
                if (tracked.check.probe == Probe::None) != !probing {
                    tracked.health = EndpointHealth::new(probing);
                }
                tracked.check = service.health.clone();
            }
        }
        self.endpoints.retain(|key, _| keep.contains(key));
    }

    /// Records a probe result; returns the state change, if any.
    pub fn on_probe(&mut self, result: &ProbeResult, weight: u16) -> Option<Transition> {
        let key = (result.service.clone(), result.endpoint);
        let tracked = self.endpoints.get_mut(&key)?;
        let from = tracked.health.state(weight);
        tracked.health.on_probe(result.ok, &tracked.check);
        let to = tracked.health.state(weight);
        (from != to).then_some(Transition { key, from, to })
    }

    pub fn state(&self, key: &EndpointKey, weight: u16) -> State {
        self.endpoints
            .get(key)
            .map_or(State::Unknown, |t| t.health.state(weight))
    }

    /// Effective weights for the config, remembering which services panic.
    pub fn effective(&mut self, config: &Config) -> (Weights, Vec<(String, bool)>) {
        let mut weights = Weights::default();
        for service in &config.services {
            let endpoints: Vec<(u16, State)> = service
                .endpoints
                .iter()
                .map(|e| (e.weight, self.state(&endpoint_key(service, e), e.weight)))
                .collect();
            let effective = effective_weights(&endpoints, service.panic_threshold);
            for (endpoint, weight) in service.endpoints.iter().zip(effective.weights) {
                weights
                    .by_endpoint
                    .insert(endpoint_key(service, endpoint), weight);
            }
            if effective.panic {
                weights.panicking.insert(service.name.clone());
            }
        }
        let mut changes: Vec<(String, bool)> = weights
            .panicking
            .symmetric_difference(&self.panicking)
            .map(|name| (name.clone(), weights.panicking.contains(name)))
            .collect();
        changes.sort();
        self.panicking = weights.panicking.clone();
        (weights, changes)
    }
}
