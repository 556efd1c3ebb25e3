//! The desired state: every service in force, its endpoints' health and the weights the
//! kernel should use. Sources' deltas and health changes come in; out come the services that
//! changed (dirty), each to be planned and written on its own. Nothing here walks all
//! services: work follows the change.
//!
//! Services live in an arena indexed by `ServiceId`, the id the kernel maps use too. Each
//! is an `Arc<ServiceState>` shared with the API's snapshot: a change clones only the one
//! service it touches (copy-on-write), and nothing is held twice at rest.

mod catalog;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::Instant,
};

pub use catalog::{Active, Catalog};

use crate::{
    config::{Frontend, HealthCheck, Probe, ServiceSpec, StatsSettings, TcSettings},
    health::{self, EndpointHealth, ProbeOutcome, State, Transition, ramp},
    source::{Claim, Delta, Origin, StatsClaim, TcClaim},
    stats::ServiceCounters,
};

/// A service's id: its index in the store and its `service_id` in the kernel maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u32);

/// One endpoint of one service (services probe the same address independently).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointRef {
    pub service: ServiceId,
    pub endpoint: SocketAddr,
}

/// Whether the kernel holds a service as the store wants it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Installed {
    /// Not written yet.
    #[default]
    Pending,
    Yes,
    /// Could not be written; why (the control loop retries).
    Failed(String),
}

/// One service in force.
#[derive(Clone, Debug)]
pub struct ServiceState {
    pub id: ServiceId,
    pub spec: Arc<ServiceSpec>,
    pub origin: Origin,
    /// Parallel to `spec.endpoints`.
    pub endpoints: Vec<EndpointState>,
    /// Too little healthy weight: every endpoint gets its configured weight.
    pub panic: bool,
    pub installed: Installed,
    /// Connection counters, kept across changes of the definition.
    pub counters: Arc<ServiceCounters>,
    /// Weights were worked out at least once: an endpoint that becomes usable from now on
    /// is new to a running service (slow start ramps it), not part of its first table.
    pub weighed: bool,
}

#[derive(Clone, Debug)]
pub struct EndpointState {
    pub health: EndpointHealth,
    /// The weight the kernel uses (0: no new connections), in the configured weight's
    /// units (rounded up while it ramps).
    pub effective: u32,
    /// What the table is built from: `effective`, or for a service with slow start the
    /// effective weight in thousandths (so a ramp is exact even for weight 1).
    pub table_weight: u32,
    /// Slow start: when the endpoint became usable and the share of its weight it has now,
    /// in thousandths; none when it has its whole weight.
    pub ramp: Option<(Instant, u32)>,
}

impl ServiceState {
    pub fn endpoint_index(&self, endpoint: SocketAddr) -> Option<usize> {
        self.spec
            .endpoints
            .iter()
            .position(|e| e.address == endpoint)
    }

    pub fn state(&self, index: usize) -> State {
        self.endpoints[index]
            .health
            .state(self.spec.endpoints[index].weight)
    }
}

/// Start, change or stop probing one endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeChange {
    pub target: EndpointRef,
    pub check: Option<Arc<HealthCheck>>,
}

/// A service the datapath must remove from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removed {
    pub id: ServiceId,
    pub frontend: Frontend,
}

/// What a round of changes left for the control loop to do.
#[derive(Debug, Default)]
pub struct Work {
    /// Services whose kernel state may need writing.
    pub dirty: BTreeSet<ServiceId>,
    pub removed: Vec<Removed>,
    pub probes: Vec<ProbeChange>,
    pub transitions: Vec<Transition>,
}

impl Work {
    pub fn is_empty(&self) -> bool {
        self.dirty.is_empty() && self.removed.is_empty() && self.probes.is_empty()
    }
}

/// What the store publishes after each change: every service in force, shared with the
/// store rather than copied (a publish costs a pointer per service).
#[derive(Debug, Default)]
pub struct Snapshot {
    pub generation: u64,
    /// Indexed by `ServiceId`.
    pub services: Vec<Option<Arc<ServiceState>>>,
    pub settings: StatsSettings,
    /// Definitions waiting because another origin holds their name or frontend.
    pub conflicts: Vec<String>,
}

impl Snapshot {
    pub fn service(&self, id: ServiceId) -> Option<&Arc<ServiceState>> {
        self.services.get(id.0 as usize)?.as_ref()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ServiceState>> {
        self.services.iter().flatten()
    }

    pub fn named(&self, name: &str) -> Option<&Arc<ServiceState>> {
        self.iter().find(|s| &*s.spec.name == name)
    }
}

/// An agent-wide block and the origin that holds it (the defaults while none does).
#[derive(Default)]
pub struct Held<T> {
    pub value: T,
    origin: Option<Origin>,
}

impl<T: Default> Held<T> {
    /// Takes `origin`'s claim on the block named `block`. Returns the conflict, if another
    /// origin holds it already (the first to claim it keeps it).
    pub fn claim(&mut self, block: &str, origin: &Origin, claim: Claim<T>) -> Result<(), String> {
        match claim {
            Claim::Unchanged => Ok(()),
            Claim::Set(value) => match &self.origin {
                Some(holder) if holder != origin => Err(format!(
                    "{block}: is set by {holder} and by {origin}; only one file may hold it, the one from {origin} is ignored"
                )),
                _ => {
                    self.origin = Some(origin.clone());
                    self.value = value;
                    Ok(())
                }
            },
            Claim::Cleared => {
                if self.origin.as_ref() == Some(origin) {
                    self.origin = None;
                    self.value = T::default();
                }
                Ok(())
            }
        }
    }
}

#[derive(Default)]
pub struct Store {
    /// Indexed by `ServiceId`; 0 is never used (the kernel's "none").
    services: Vec<Option<Arc<ServiceState>>>,
    by_name: HashMap<Arc<str>, ServiceId>,
    catalog: Catalog,
    ids: Ids,
    /// Endpoints ejected now: the frequent expiry check walks these, not all.
    ejected: HashSet<EndpointRef>,
    /// Services with an endpoint on its slow-start ramp.
    ramping: BTreeSet<ServiceId>,
    stats: Held<StatsSettings>,
    tc: Held<TcSettings>,
    work: Work,
    /// Bumped whenever the set of services or their definitions change.
    generation: u64,
}

impl Store {
    /// Ids the kernel already uses for these frontends (from pinned maps at start): a
    /// service defined for one of them gets that id, so nothing is rewritten.
    pub fn adopt_ids(&mut self, installed: impl IntoIterator<Item = (Frontend, u32)>) {
        self.ids.adopt(installed);
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            generation: self.generation,
            services: self.services.clone(),
            settings: self.stats.value,
            conflicts: self.conflicts(),
        }
    }

    pub fn services(&self) -> &[Option<Arc<ServiceState>>] {
        &self.services
    }

    pub fn get(&self, id: ServiceId) -> Option<&Arc<ServiceState>> {
        self.services.get(id.0 as usize)?.as_ref()
    }

    pub fn id_of(&self, name: &str) -> Option<ServiceId> {
        self.by_name.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn stats_settings(&self) -> StatsSettings {
        self.stats.value
    }

    pub fn tc_settings(&self) -> TcSettings {
        self.tc.value
    }

    pub fn conflicts(&self) -> Vec<String> {
        self.catalog.conflicts().cloned().collect()
    }

    /// Takes what the changes so far left to do.
    pub fn take_work(&mut self) -> Work {
        std::mem::take(&mut self.work)
    }

    /// Takes only the probe changes (the first probe round runs before the first apply).
    pub fn take_probes(&mut self) -> Vec<ProbeChange> {
        std::mem::take(&mut self.work.probes)
    }

    /// Services the kernel does not hold as wanted become dirty again (a retry).
    pub fn retry_not_installed(&mut self) {
        let ids: Vec<ServiceId> = self.not_installed().map(|s| s.id).collect();
        self.work.dirty.extend(ids);
    }

    /// Every service becomes dirty (the datapath was reinstalled with empty maps).
    pub fn mark_all_dirty(&mut self) {
        let ids: Vec<ServiceId> = self.services.iter().flatten().map(|s| s.id).collect();
        self.work.dirty.extend(ids);
    }

    /// An origin's service deltas; conflicts they cause are listed by `conflicts`.
    pub fn apply(&mut self, deltas: Vec<Delta>) {
        let mut active = Vec::new();
        for delta in deltas {
            match delta {
                Delta::Upsert { origin, spec } => self.catalog.upsert(origin, spec, &mut active),
                Delta::Remove { origin, name } => self.catalog.remove(&origin, &name, &mut active),
            }
        }
        if !active.is_empty() {
            self.generation += 1;
        }
        for change in active {
            match change {
                Active::Set { origin, spec } => self.set(origin, spec),
                Active::Unset { name } => self.unset(&name),
            }
        }
    }

    /// An origin's claim on the agent-wide `stats:` block. Returns the conflict, if another
    /// origin holds it already.
    pub fn claim_stats(&mut self, origin: &Origin, claim: StatsClaim) -> Result<(), String> {
        self.stats.claim("stats", origin, claim)
    }

    /// An origin's claim on the agent-wide `tc:` block, likewise.
    pub fn claim_tc(&mut self, origin: &Origin, claim: TcClaim) -> Result<(), String> {
        self.tc.claim("tc", origin, claim)
    }

    fn set(&mut self, origin: Origin, spec: Arc<ServiceSpec>) {
        let name = Arc::clone(&spec.name);
        let probing = spec.health.probe != Probe::None;
        let id = match self.by_name.get(&name) {
            Some(&id) => id,
            None => {
                let id = self.ids.allocate(&spec.frontend, &self.services);
                self.by_name.insert(Arc::clone(&name), id);
                id
            }
        };
        let previous = self.get(id).cloned();
        // Endpoints that stay keep their health (unless probing was switched on or off).
        let endpoints: Vec<EndpointState> = spec
            .endpoints
            .iter()
            .map(|e| {
                previous
                    .as_ref()
                    .filter(|p| (p.spec.health.probe != Probe::None) == probing)
                    .and_then(|p| p.endpoint_index(e.address).map(|i| p.endpoints[i].clone()))
                    .unwrap_or(EndpointState {
                        health: EndpointHealth::new(probing),
                        effective: 0,
                        table_weight: 0,
                        ramp: None,
                    })
            })
            .collect();
        let (counters, installed) = match &previous {
            Some(p) => (Arc::clone(&p.counters), p.installed.clone()),
            None => (Arc::new(ServiceCounters::default()), Installed::Pending),
        };
        counters.retain_endpoints(spec.endpoints.iter().map(|e| e.address));
        if let Some(previous) = &previous
            && previous.spec.frontend != spec.frontend
        {
            // Moved: the old frontend leaves the kernel first.
            self.work.removed.push(Removed {
                id,
                frontend: previous.spec.frontend,
            });
        }
        self.sync_probes(id, previous.as_deref().map(|p| &*p.spec), Some(&spec));
        for (e, state) in spec.endpoints.iter().zip(&endpoints) {
            let target = EndpointRef {
                service: id,
                endpoint: e.address,
            };
            if state.health.is_ejected() {
                self.ejected.insert(target);
            } else {
                self.ejected.remove(&target);
            }
        }
        if let Some(previous) = &previous {
            for e in &previous.spec.endpoints {
                if !spec.endpoints.iter().any(|x| x.address == e.address) {
                    self.ejected.remove(&EndpointRef {
                        service: id,
                        endpoint: e.address,
                    });
                }
            }
        }
        let state = ServiceState {
            id,
            spec,
            origin,
            endpoints,
            panic: previous.as_ref().is_some_and(|p| p.panic),
            installed,
            counters,
            weighed: previous.as_ref().is_some_and(|p| p.weighed),
        };
        self.put(id, state);
        self.work.dirty.insert(id);
    }

    fn unset(&mut self, name: &Arc<str>) {
        let Some(id) = self.by_name.remove(name) else {
            return;
        };
        let Some(previous) = self.services.get_mut(id.0 as usize).and_then(Option::take) else {
            return;
        };
        self.sync_probes(id, Some(&previous.spec), None);
        self.ejected.retain(|e| e.service != id);
        self.work.removed.push(Removed {
            id,
            frontend: previous.spec.frontend,
        });
        self.work.dirty.remove(&id);
    }

    /// Probe changes for one service going from `before` to `after`: endpoints no longer
    /// probed stop, endpoints newly probed (or probed with a new check) start.
    fn sync_probes(
        &mut self,
        id: ServiceId,
        before: Option<&ServiceSpec>,
        after: Option<&ServiceSpec>,
    ) {
        fn probed(spec: Option<&ServiceSpec>) -> Option<&ServiceSpec> {
            spec.filter(|s| s.health.probe != Probe::None)
        }
        let (before, after) = (probed(before), probed(after));
        let has = |spec: Option<&ServiceSpec>, endpoint: SocketAddr| {
            spec.is_some_and(|s| s.endpoints.iter().any(|e| e.address == endpoint))
        };
        let target = |endpoint| EndpointRef {
            service: id,
            endpoint,
        };
        for e in before.map(|b| b.endpoints.as_slice()).unwrap_or_default() {
            if !has(after, e.address) {
                self.work.probes.push(ProbeChange {
                    target: target(e.address),
                    check: None,
                });
            }
        }
        let Some(after) = after else { return };
        let same_check = before.is_some_and(|b| b.health == after.health);
        for e in &after.endpoints {
            if !(same_check && has(before, e.address)) {
                self.work.probes.push(ProbeChange {
                    target: target(e.address),
                    check: Some(Arc::clone(&after.health)),
                });
            }
        }
    }

    fn put(&mut self, id: ServiceId, state: ServiceState) {
        let index = id.0 as usize;
        if self.services.len() <= index {
            self.services.resize(index + 1, None);
        }
        self.services[index] = Some(Arc::new(state));
    }

    /// The mutable state of one service: cloned once if the API's snapshot still holds it.
    fn service_mut(&mut self, id: ServiceId) -> Option<&mut ServiceState> {
        self.services
            .get_mut(id.0 as usize)?
            .as_mut()
            .map(Arc::make_mut)
    }

    /// A probe result; the endpoint's service is dirty if its state changed.
    pub fn on_probe(&mut self, target: EndpointRef, outcome: ProbeOutcome) {
        let ok = match outcome {
            ProbeOutcome::Pass => true,
            ProbeOutcome::Fail(_) => false,
            ProbeOutcome::Inconclusive(_) => return,
        };
        let Some(current) = self.get(target.service) else {
            return;
        };
        let Some(index) = current.endpoint_index(target.endpoint) else {
            return;
        };
        let check = Arc::clone(&current.spec.health);
        let from = current.state(index);
        let Some(service) = self.service_mut(target.service) else {
            return;
        };
        service.endpoints[index].health.on_probe(ok, &check);
        let to = service.state(index);
        let name = service_name(service);
        if from != to {
            let cause = match outcome {
                ProbeOutcome::Fail(failure) => Some(failure),
                _ => None,
            };
            self.transition(target, &name, from, to, cause);
        }
    }

    /// The outcome of a real connection to an endpoint: consecutive failures up to the
    /// outlier threshold eject it, unless that would eject more than the service's
    /// max_ejection_percent (one endpoint may always be ejected).
    pub fn on_connect(&mut self, target: EndpointRef, ok: bool, now: Instant) {
        let Some(current) = self.get(target.service) else {
            return;
        };
        let Some(outlier) = current.spec.outlier.clone() else {
            return;
        };
        let Some(index) = current.endpoint_index(target.endpoint) else {
            return;
        };
        let total = current.endpoints.len();
        let ejected = current
            .endpoints
            .iter()
            .filter(|e| e.health.is_ejected())
            .count();
        let from = current.state(index);
        let Some(service) = self.service_mut(target.service) else {
            return;
        };
        let health = &mut service.endpoints[index].health;
        if ok {
            health.on_connect_success();
            return;
        }
        if !health.on_connect_failure(&outlier) {
            return;
        }
        let within_cap = ejected == 0
            || (ejected + 1) * 100 <= total * usize::from(outlier.max_ejection_percent);
        if !within_cap {
            return;
        }
        health.eject(&outlier, now);
        let to = service.state(index);
        let name = service_name(service);
        self.ejected.insert(target);
        if from != to {
            self.transition(target, &name, from, to, None);
        }
    }

    /// Moves slow-start ramps on: services with an endpoint whose ramp reached its next
    /// step (or its end) are planned again. Runs often, so it touches only ramping services.
    pub fn advance_ramps(&mut self, now: Instant) {
        let due: Vec<ServiceId> = self
            .ramping
            .iter()
            .copied()
            .filter(|&id| {
                self.get(id).is_some_and(|s| {
                    let window = s.spec.governance.slow_start.map(|s| s.window);
                    s.endpoints.iter().any(|e| {
                        e.ramp.is_some_and(|(since, at)| {
                            window.and_then(|w| ramp::permille(since, now, w)) != Some(at)
                        })
                    })
                })
            })
            .collect();
        self.work.dirty.extend(due);
    }

    /// Ends ejections whose time is up. Runs often, so it touches only ejected endpoints.
    pub fn expire_ejections(&mut self, now: Instant) {
        let due: Vec<EndpointRef> = self
            .ejected
            .iter()
            .copied()
            .filter(|target| {
                self.get(target.service)
                    .and_then(|s| {
                        s.endpoints[s.endpoint_index(target.endpoint)?]
                            .health
                            .ejected_until()
                    })
                    .is_some_and(|until| until <= now)
            })
            .collect();
        for target in due {
            self.ejected.remove(&target);
            let Some(current) = self.get(target.service) else {
                continue;
            };
            let Some(index) = current.endpoint_index(target.endpoint) else {
                continue;
            };
            let probing = current.spec.health.probe != Probe::None;
            let from = current.state(index);
            let Some(service) = self.service_mut(target.service) else {
                continue;
            };
            service.endpoints[index].health.expire(now, probing);
            let to = service.state(index);
            let name = service_name(service);
            if from != to {
                self.transition(target, &name, from, to, None);
            }
        }
    }

    fn transition(
        &mut self,
        target: EndpointRef,
        name: &Arc<str>,
        from: State,
        to: State,
        cause: Option<health::ProbeFailure>,
    ) {
        self.work.dirty.insert(target.service);
        self.work.transitions.push(Transition {
            service: Arc::clone(name),
            endpoint: target.endpoint,
            from,
            to,
            cause,
        });
    }

    /// Recomputes the effective weights (and panic mode) of the dirty services. Returns the
    /// services that entered (true) or left (false) panic mode.
    pub fn reweigh(&mut self, dirty: &BTreeSet<ServiceId>) -> Vec<(Arc<str>, bool)> {
        let mut panics = Vec::new();
        let now = Instant::now();
        for &id in dirty {
            let Some(service) = self.service_mut(id) else {
                continue;
            };
            let endpoints: Vec<(u16, State)> = (0..service.endpoints.len())
                .map(|i| (service.spec.endpoints[i].weight, service.state(i)))
                .collect();
            let effective = health::effective_weights(&endpoints, service.spec.panic_threshold);
            let window = service.spec.governance.slow_start.map(|s| s.window);
            let first = !service.weighed;
            service.weighed = true;
            let ramps = set_weights(
                &mut service.endpoints,
                &effective.weights,
                window,
                first,
                now,
            );
            if service.panic != effective.panic {
                service.panic = effective.panic;
                panics.push((Arc::clone(&service.spec.name), effective.panic));
            }
            if ramps {
                self.ramping.insert(id);
            } else {
                self.ramping.remove(&id);
            }
        }
        panics
    }

    /// What the datapath did with a service.
    pub fn set_installed(&mut self, id: ServiceId, installed: Installed) {
        if self.get(id).is_some_and(|s| s.installed == installed) {
            return;
        }
        if let Some(service) = self.service_mut(id) {
            service.installed = installed;
        }
    }

    /// Services that are not installed as wanted (for a retry).
    pub fn not_installed(&self) -> impl Iterator<Item = &Arc<ServiceState>> {
        self.services
            .iter()
            .flatten()
            .filter(|s| s.installed != Installed::Yes)
    }
}

/// Gives a service's endpoints their effective `weights`, ramping those that became usable
/// (unless this is the service's `first` weighing) when it has a slow-start `window`.
/// Returns whether any endpoint is ramping.
fn set_weights(
    endpoints: &mut [EndpointState],
    weights: &[u32],
    window: Option<std::time::Duration>,
    first: bool,
    now: Instant,
) -> bool {
    let mut ramps = false;
    for (endpoint, &weight) in endpoints.iter_mut().zip(weights) {
        let became_usable = endpoint.effective == 0 && weight > 0;
        let since = match endpoint.ramp {
            _ if weight == 0 || window.is_none() => None,
            Some((since, _)) => Some(since),
            None => (became_usable && !first).then_some(now),
        };
        let permille = since
            .zip(window)
            .and_then(|(since, window)| ramp::permille(since, now, window));
        endpoint.ramp = since.zip(permille);
        ramps |= endpoint.ramp.is_some();
        (endpoint.effective, endpoint.table_weight) = match (window, permille) {
            (_, Some(p)) => (ramp::shown_weight(weight, p), ramp::table_weight(weight, p)),
            (Some(_), None) => (weight, ramp::table_weight(weight, ramp::FULL)),
            (None, None) => (weight, weight),
        };
    }
    ramps
}

fn service_name(service: &ServiceState) -> Arc<str> {
    Arc::clone(&service.spec.name)
}

/// New ids cycle through 1..=`ID_CYCLE` (or up to twice the services, when there are more
/// than half that many) before one is reused: a soak with services coming and going found
/// the id-indexed tables growing by a slot per service ever created, and every publish
/// copying them. 65,536 creations before a reuse is still far longer than any event about
/// a removed service stays unread.
const ID_CYCLE: u32 = 65_536;

/// Service ids: adopted from the kernel for frontends it already serves, otherwise new,
/// never 0, and not reused soon (an event about a removed service must not be counted for
/// a new one).
#[derive(Default)]
struct Ids {
    adopted: HashMap<Frontend, u32>,
    /// The adopted ids not yet claimed: new services do not take them.
    reserved: HashSet<u32>,
    cursor: u32,
    /// Where the cursor goes back to 1: `ID_CYCLE`, or twice the services when more.
    cycle_end: u32,
}

impl Ids {
    fn adopt(&mut self, installed: impl IntoIterator<Item = (Frontend, u32)>) {
        self.adopted = installed.into_iter().collect();
        self.reserved = self.adopted.values().copied().collect();
        self.cursor = self.reserved.iter().copied().max().unwrap_or(0);
    }

    fn allocate<T>(&mut self, frontend: &Frontend, taken: &[Option<T>]) -> ServiceId {
        let free = |id: u32| id != 0 && taken.get(id as usize).is_none_or(Option::is_none);
        if let Some(id) = self.adopted.remove(frontend)
            && free(id)
        {
            self.reserved.remove(&id);
            return ServiceId(id);
        }
        loop {
            self.cursor = self.cursor.wrapping_add(1);
            // Counting the services only where a cycle would end keeps allocation O(1).
            if self.cursor > self.cycle_end.max(ID_CYCLE) {
                let live = taken.iter().filter(|s| s.is_some()).count() as u32;
                self.cycle_end = live.saturating_mul(2).max(ID_CYCLE);
                if self.cursor > self.cycle_end {
                    self.cursor = 1;
                }
            }
            if free(self.cursor) && !self.reserved.contains(&self.cursor) {
                return ServiceId(self.cursor);
            }
        }
    }
}

#[cfg(test)]
mod id_tests {
    use super::*;

    fn frontend() -> Frontend {
        Frontend {
            address: "10.96.0.1".parse().unwrap(),
            port: 80,
            protocol: crate::config::Protocol::Tcp,
        }
    }

    #[test]
    fn ids_of_services_that_come_and_go_cycle_instead_of_growing() {
        let mut ids = Ids::default();
        // Ten services live at ids 1..=10; 200,000 more created and removed in turn.
        let taken: Vec<Option<()>> = (0..=10).map(|i| (i > 0).then_some(())).collect();
        ids.cursor = 10;
        let mut highest = 0;
        for _ in 0..200_000 {
            let id = ids.allocate(&frontend(), &taken).0;
            assert!(id > 10, "a live id handed out again: {id}");
            highest = highest.max(id);
        }
        assert_eq!(highest, ID_CYCLE);
    }

    #[test]
    fn more_services_than_half_the_cycle_widen_it() {
        let mut ids = Ids::default();
        let taken: Vec<Option<()>> = (0..=40_000).map(|i| (i > 0).then_some(())).collect();
        ids.cursor = 40_000;
        for _ in 0..90_000 {
            let id = ids.allocate(&frontend(), &taken).0;
            assert!(id > 40_000 && id as usize <= 80_001, "{id}");
        }
    }
}

#[cfg(test)]
mod slow_start_tests {
    use std::time::Duration;

    use super::*;

    fn endpoint(effective: u32) -> EndpointState {
        EndpointState {
            health: EndpointHealth::new(false),
            effective,
            table_weight: effective,
            ramp: None,
        }
    }

    const WINDOW: Option<Duration> = Some(Duration::from_secs(10));

    #[test]
    fn a_first_table_takes_whole_weights_and_a_later_arrival_ramps() {
        let now = Instant::now();
        let mut endpoints = vec![endpoint(0), endpoint(0)];
        assert!(!set_weights(&mut endpoints, &[1, 1], WINDOW, true, now));
        assert_eq!(
            endpoints.iter().map(|e| e.table_weight).collect::<Vec<_>>(),
            [1000, 1000]
        );
        // The second endpoint goes unhealthy, then comes back.
        assert!(!set_weights(&mut endpoints, &[1, 0], WINDOW, false, now));
        assert!(set_weights(&mut endpoints, &[1, 1], WINDOW, false, now));
        assert_eq!(endpoints[1].ramp, Some((now, 100)));
        assert_eq!(
            (endpoints[1].effective, endpoints[1].table_weight),
            (1, 100)
        );
        // Half the window later it has half its weight; after it, all of it.
        let half = now + Duration::from_secs(5);
        assert!(set_weights(&mut endpoints, &[1, 1], WINDOW, false, half));
        assert_eq!(endpoints[1].table_weight, 500);
        let after = now + Duration::from_secs(10);
        assert!(!set_weights(&mut endpoints, &[1, 1], WINDOW, false, after));
        assert_eq!((endpoints[1].ramp, endpoints[1].table_weight), (None, 1000));
    }

    #[test]
    fn without_slow_start_weights_are_plain() {
        let now = Instant::now();
        let mut endpoints = vec![endpoint(0), endpoint(5)];
        assert!(!set_weights(&mut endpoints, &[3, 5], None, false, now));
        assert_eq!(
            endpoints
                .iter()
                .map(|e| (e.effective, e.table_weight, e.ramp))
                .collect::<Vec<_>>(),
            [(3, 3, None), (5, 5, None)]
        );
    }
}
