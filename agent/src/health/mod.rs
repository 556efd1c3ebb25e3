//! Endpoint health: active probes, passive ejection, and what both mean for the weights the
//! kernel uses. The daemon owns one `Health` and feeds it events; `effective` turns it into
//! per-endpoint weights for the planner.

mod probe;
mod state;
mod weights;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Instant,
};

pub use probe::{NotSent, ProbeFailure, ProbeOutcome, ProbeResult, Prober};
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
    /// Configured weight: 0 means draining, whatever the probes say.
    weight: u16,
}

#[derive(Default)]
pub struct Health {
    endpoints: HashMap<EndpointKey, Tracked>,
    /// The endpoints currently ejected: the frequent expiry check walks these, not all
    /// (100,000 endpoints walked 20 times a second cost ~5 % of a CPU).
    ejected: HashSet<EndpointKey>,
    panicking: HashSet<String>,
}

/// A change worth logging.
#[derive(Debug, PartialEq, Eq)]
pub struct Transition {
    pub key: EndpointKey,
    pub from: State,
    pub to: State,
    /// The failed probe that made it, if one did.
    pub cause: Option<ProbeFailure>,
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
                    weight: endpoint.weight,
                });
                if (tracked.check.probe == Probe::None) != !probing {
                    tracked.health = EndpointHealth::new(probing);
                }
                tracked.check = service.health.clone();
                tracked.weight = endpoint.weight;
            }
        }
        self.endpoints.retain(|key, _| keep.contains(key));
        let endpoints = &self.endpoints;
        self.ejected.retain(|key| {
            endpoints
                .get(key)
                .is_some_and(|tracked| tracked.health.is_ejected())
        });
    }

    /// Records a probe result; returns the state change, if any. A probe that could not be
    /// sent changes nothing.
    pub fn on_probe(&mut self, result: &ProbeResult) -> Option<Transition> {
        let ok = match result.outcome {
            ProbeOutcome::Pass => true,
            ProbeOutcome::Fail(_) => false,
            ProbeOutcome::Inconclusive(_) => return None,
        };
        let key = (result.service.clone(), result.endpoint);
        let tracked = self.endpoints.get_mut(&key)?;
        let from = tracked.health.state(tracked.weight);
        tracked.health.on_probe(ok, &tracked.check);
        let to = tracked.health.state(tracked.weight);
        let cause = match result.outcome {
            ProbeOutcome::Fail(failure) => Some(failure),
            _ => None,
        };
        (from != to).then_some(Transition {
            key,
            from,
            to,
            cause,
        })
    }

    /// The outcome of a real connection to an endpoint of `service`. Consecutive failures up
    /// to the outlier threshold eject it, unless that would eject more than the service's
    /// max_ejection_percent (one endpoint may always be ejected).
    pub fn on_connect(
        &mut self,
        service: &Service,
        endpoint: SocketAddr,
        ok: bool,
        now: Instant,
    ) -> Option<Transition> {
        let outlier = service.outlier.as_ref()?;
        let key = (service.name.clone(), endpoint);
        let tracked = self.endpoints.get_mut(&key)?;
        if ok {
            tracked.health.on_connect_success();
            return None;
        }
        if !tracked.health.on_connect_failure(outlier) {
            return None;
        }
        let ejected = service
            .endpoints
            .iter()
            .filter(|e| {
                self.endpoints
                    .get(&endpoint_key(service, e))
                    .is_some_and(|t| t.health.is_ejected())
            })
            .count();
        let total = service.endpoints.len();
        let within_cap = ejected == 0
            || (ejected + 1) * 100 <= total * usize::from(outlier.max_ejection_percent);
        if !within_cap {
            return None;
        }
        let tracked = self.endpoints.get_mut(&key)?;
        let from = tracked.health.state(tracked.weight);
        tracked.health.eject(outlier, now);
        let to = tracked.health.state(tracked.weight);
        self.ejected.insert(key.clone());
        (from != to).then_some(Transition {
            key,
            from,
            to,
            cause: None,
        })
    }

    /// Ends ejections whose time is up. Runs often, so it touches only ejected endpoints.
    pub fn expire_ejections(&mut self, now: Instant) -> Vec<Transition> {
        let mut transitions = Vec::new();
        let endpoints = &mut self.endpoints;
        self.ejected.retain(|key| {
            let Some(tracked) = endpoints.get_mut(key) else {
                return false;
            };
            match tracked.health.ejected_until() {
                None => return false,
                Some(until) if until > now => return true,
                Some(_) => {}
            }
            let from = tracked.health.state(tracked.weight);
            tracked
                .health
                .expire(now, tracked.check.probe != Probe::None);
            let to = tracked.health.state(tracked.weight);
            transitions.push(Transition {
                key: key.clone(),
                from,
                to,
                cause: None,
            });
            tracked.health.is_ejected()
        });
        transitions
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoints: usize, max_percent: u8) -> Config {
        let list: String = (0..endpoints)
            .map(|i| format!("      - {{ address: 10.1.0.{}, port: 80 }}\n", i + 1))
            .collect();
        Config::parse(&format!(
            "services:\n  - name: web\n    address: 10.96.0.1\n    port: 80\n    health: {{ kind: none }}\n    outlier: {{ consecutive_failures: 2, base_ejection: 1s, max_ejection_percent: {max_percent} }}\n    endpoints:\n{list}"
        ))
        .unwrap()
    }

    fn fail_all(health: &mut Health, config: &Config, failing: usize, now: Instant) -> usize {
        let service = &config.services[0];
        let mut ejected = 0;
        for _ in 0..2 {
            for e in &service.endpoints[..failing] {
                let addr = SocketAddr::new(e.address, e.port);
                if health.on_connect(service, addr, false, now).is_some() {
                    ejected += 1;
                }
            }
        }
        ejected
    }

    #[test]
    fn ejection_cap_leaves_the_rest_in_rotation() {
        let config = config(4, 50);
        let mut health = Health::default();
        health.sync(&config);
        assert_eq!(
            fail_all(&mut health, &config, 3, Instant::now()),
            2,
            "3 of 4 failing, cap 50 %"
        );
    }

    #[test]
    fn one_endpoint_may_always_be_ejected() {
        let config = config(4, 0);
        let mut health = Health::default();
        health.sync(&config);
        assert_eq!(fail_all(&mut health, &config, 4, Instant::now()), 1);
    }

    #[test]
    fn a_success_resets_the_failure_count_and_ejections_expire() {
        let config = config(2, 50);
        let service = &config.services[0];
        let addr = SocketAddr::new(service.endpoints[0].address, 80);
        let mut health = Health::default();
        health.sync(&config);
        let now = Instant::now();
        assert!(health.on_connect(service, addr, false, now).is_none());
        assert!(health.on_connect(service, addr, true, now).is_none());
        assert!(
            health.on_connect(service, addr, false, now).is_none(),
            "count was reset"
        );
        let t = health
            .on_connect(service, addr, false, now)
            .expect("ejected");
        assert_eq!(t.to, State::Ejected);
        assert!(health.expire_ejections(now).is_empty());
        let back = health.expire_ejections(now + std::time::Duration::from_secs(1));
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].to, State::Healthy, "no probing: back at expiry");
    }
}
