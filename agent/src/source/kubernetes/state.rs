//! The cluster as the watch has seen it, reduced to facts, and what the agent was last told
//! about each Service: turns watch events into per-service deltas.
//!
//! An event about one object marks one Service dirty; only dirty Services are mapped again
//! and diffed against what was sent, so an EndpointSlice change costs one Service's work. A
//! relist (after `410 Gone`, or a list that failed) is buffered until it is complete and then
//! compared with what was known: objects that did not change send nothing, so the kernel's
//! tables are never flushed in between. Nothing is sent before both resources have been
//! listed once: a Service seen before its EndpointSlices would otherwise be installed empty.

use std::{
    collections::{BTreeSet, HashMap},
    mem,
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::mapping::{ServiceFacts, SliceFacts, object_key, specs};
use crate::{
    config::ServiceSpec,
    source::{Claim, Delta, Origin, SourceEvent},
};

/// The two resources the source watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Services,
    EndpointSlices,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
        }
    }
}

/// Objects listed so far in a relist that has not finished.
struct Relist<F> {
    objects: Option<HashMap<Arc<str>, F>>,
    done_once: bool,
}

impl<F> Relist<F> {
    fn new() -> Relist<F> {
        Relist {
            objects: None,
            done_once: false,
        }
    }

    fn start(&mut self) {
        self.objects = Some(HashMap::new());
    }

    fn add(&mut self, key: Arc<str>, facts: Option<F>) {
        if let (Some(objects), Some(facts)) = (self.objects.as_mut(), facts) {
            objects.insert(key, facts);
        }
    }

    /// The objects listed, or `None` if no relist was started (nothing to replace).
    fn finish(&mut self) -> Option<HashMap<Arc<str>, F>> {
        let objects = self.objects.take()?;
        self.done_once = true;
        Some(objects)
    }
}

pub struct ClusterState {
    node: Arc<str>,
    services: HashMap<Arc<str>, ServiceFacts>,
    /// EndpointSlices that belong to a Service, by their own key.
    slices: HashMap<Arc<str>, SliceFacts>,
    /// Each Service's slices, by the Service's key; ordered, so endpoints come in a stable
    /// order.
    slices_of: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
    service_relist: Relist<ServiceFacts>,
    slice_relist: Relist<SliceFacts>,
    /// What was last sent for each Service.
    sent: HashMap<Arc<str>, Vec<Arc<ServiceSpec>>>,
    dirty: BTreeSet<Arc<str>>,
    /// Annotation problems not yet reported.
    problems: Vec<String>,
}

impl ClusterState {
    /// The state of a watch from the node `node` (for `internalTrafficPolicy: Local`).
    pub fn new(node: Arc<str>) -> ClusterState {
        ClusterState {
            node,
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_of: HashMap::new(),
            service_relist: Relist::new(),
            slice_relist: Relist::new(),
            sent: HashMap::new(),
            dirty: BTreeSet::new(),
            problems: Vec::new(),
        }
    }

    /// Both resources have been listed in full at least once.
    pub fn synced(&self) -> bool {
        self.service_relist.done_once && self.slice_relist.done_once
    }

    /// Services the state knows that have frontends.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The key of a Service with `ip` among its frontend addresses.
    pub fn service_at(&self, ip: IpAddr) -> Option<&str> {
        self.services
            .values()
            .find(|s| s.addresses().any(|a| *a == ip))
            .map(|s| &*s.key)
    }

    pub fn service_applied(&mut self, service: &Service) {
        self.set_service(object_key(&service.metadata), ServiceFacts::of(service));
    }

    pub fn service_deleted(&mut self, service: &Service) {
        self.set_service(object_key(&service.metadata), None);
    }

    pub fn slice_applied(&mut self, slice: &EndpointSlice) {
        let facts = SliceFacts::of(slice, &self.node);
        self.set_slice(object_key(&slice.metadata), Some(facts));
    }

    pub fn slice_deleted(&mut self, slice: &EndpointSlice) {
        self.set_slice(object_key(&slice.metadata), None);
    }

    /// A relist of `resource` begins: its objects are buffered until it is done.
    pub fn relist_started(&mut self, resource: Resource) {
        match resource {
            Resource::Services => self.service_relist.start(),
            Resource::EndpointSlices => self.slice_relist.start(),
        }
    }

    pub fn relisted_service(&mut self, service: &Service) {
        let facts = ServiceFacts::of(service);
        self.service_relist
            .add(object_key(&service.metadata), facts);
    }

    pub fn relisted_slice(&mut self, slice: &EndpointSlice) {
        let facts = SliceFacts::of(slice, &self.node);
        self.slice_relist
            .add(object_key(&slice.metadata), Some(facts));
    }

    /// The relist of `resource` is complete: what it did not list is gone, what it listed
    /// differently changed, the rest stays as it is.
    pub fn relist_done(&mut self, resource: Resource) {
        match resource {
            Resource::Services => {
                let Some(mut listed) = self.service_relist.finish() else {
                    return;
                };
                let known: Vec<Arc<str>> = self.services.keys().cloned().collect();
                for key in known {
                    let facts = listed.remove(&key);
                    self.set_service(key, facts);
                }
                for (key, facts) in listed {
                    self.set_service(key, Some(facts));
                }
            }
            Resource::EndpointSlices => {
                let Some(mut listed) = self.slice_relist.finish() else {
                    return;
                };
                let known: Vec<Arc<str>> = self.slices.keys().cloned().collect();
                for key in known {
                    let facts = listed.remove(&key);
                    self.set_slice(key, facts);
                }
                for (key, facts) in listed {
                    self.set_slice(key, Some(facts));
                }
            }
        }
    }

    fn set_service(&mut self, key: Arc<str>, facts: Option<ServiceFacts>) {
        let old = self.services.get(&key);
        if old == facts.as_ref() {
            return;
        }
        if let Some(new) = &facts
            && old.map(|o| &o.problems) != Some(&new.problems)
        {
            self.problems.extend(new.problems.iter().cloned());
        }
        match facts {
            Some(facts) => self.services.insert(Arc::clone(&key), facts),
            None => self.services.remove(&key),
        };
        self.dirty.insert(key);
    }

    fn set_slice(&mut self, key: Arc<str>, facts: Option<SliceFacts>) {
        // A slice that names no Service is nobody's: as if it did not exist.
        let facts = facts.filter(|f| f.service.is_some());
        let old = self.slices.get(&key);
        if old == facts.as_ref() {
            return;
        }
        if let Some(new) = &facts
            && old.map(|o| &o.problems) != Some(&new.problems)
        {
            self.problems.extend(new.problems.iter().cloned());
        }
        let old = match facts {
            Some(facts) => {
                let service = facts.service.clone();
                let old = self.slices.insert(Arc::clone(&key), facts);
                if let Some(service) = service {
                    self.slices_of
                        .entry(Arc::clone(&service))
                        .or_default()
                        .insert(Arc::clone(&key));
                    self.dirty.insert(service);
                }
                old
            }
            None => self.slices.remove(&key),
        };
        // It left the Service it belonged to (deleted, or relabelled).
        if let Some(previous) = old.and_then(|o| o.service) {
            let still = self
                .slices
                .get(&key)
                .and_then(|f| f.service.as_ref())
                .is_some_and(|s| *s == previous);
            if !still && let Some(set) = self.slices_of.get_mut(&previous) {
                set.remove(&key);
                if set.is_empty() {
                    self.slices_of.remove(&previous);
                }
            }
            self.dirty.insert(previous);
        }
    }

    /// Annotation problems found since the last call, each naming its object.
    pub fn take_problems(&mut self) -> Vec<String> {
        mem::take(&mut self.problems)
    }

    /// The changes to send: one event per Service whose weft services changed since they
    /// were last sent. None before the first full sync.
    pub fn changes(&mut self) -> Vec<SourceEvent> {
        if !self.synced() {
            return Vec::new();
        }
        let mut events = Vec::new();
        for key in mem::take(&mut self.dirty) {
            let specs = self.specs_of(&key);
            let before = self.sent.remove(&key).unwrap_or_default();
            let origin = Origin::Kubernetes(Arc::clone(&key));
            let deltas = diff(&origin, before, &specs);
            if !specs.is_empty() {
                self.sent.insert(Arc::clone(&key), specs);
            }
            if !deltas.is_empty() {
                events.push(SourceEvent::Accepted {
                    origin,
                    deltas,
                    stats: Claim::Unchanged,
                    tc: Claim::Unchanged,
                });
            }
        }
        events
    }

    fn specs_of(&self, key: &Arc<str>) -> Vec<Arc<ServiceSpec>> {
        let Some(service) = self.services.get(key) else {
            return Vec::new();
        };
        let slices: Vec<&SliceFacts> = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|slice| self.slices.get(slice))
            .collect();
        specs(service, &slices)
    }
}

/// Upserts for what is new or different, removals for what is gone.
fn diff(origin: &Origin, before: Vec<Arc<ServiceSpec>>, after: &[Arc<ServiceSpec>]) -> Vec<Delta> {
    let mut before: HashMap<Arc<str>, Arc<ServiceSpec>> = before
        .into_iter()
        .map(|spec| (Arc::clone(&spec.name), spec))
        .collect();
    let mut deltas = Vec::new();
    for spec in after {
        match before.remove(&spec.name) {
            Some(old) if old == *spec => {}
            _ => deltas.push(Delta::Upsert {
                origin: origin.clone(),
                spec: Arc::clone(spec),
            }),
        }
    }
    let mut gone: Vec<Arc<str>> = before.into_keys().collect();
    gone.sort();
    deltas.extend(gone.into_iter().map(|name| Delta::Remove {
        origin: origin.clone(),
        name,
    }));
    deltas
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn service(name: &str, ip: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": { "namespace": "shop", "name": name, "resourceVersion": "1" },
            "spec": { "clusterIP": ip, "ports": [{ "name": "http", "port": 80 }] }
        }))
        .unwrap()
    }

    fn slice(name: &str, service: &str, endpoints: &[(&str, bool)]) -> EndpointSlice {
        let endpoints: Vec<_> = endpoints
            .iter()
            .map(|(ip, ready)| json!({ "addresses": [ip], "conditions": { "ready": ready } }))
            .collect();
        serde_json::from_value(json!({
            "metadata": {
                "namespace": "shop", "name": name,
                "labels": { "kubernetes.io/service-name": service }
            },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": 8080 }],
            "endpoints": endpoints
        }))
        .unwrap()
    }

    /// (origin, upserted or removed name, endpoint addresses) of each delta.
    fn summary(events: &[SourceEvent]) -> Vec<String> {
        events
            .iter()
            .flat_map(|e| match e {
                SourceEvent::Accepted { deltas, .. } => deltas.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .map(|d| match d {
                Delta::Upsert { origin, spec } => format!(
                    "{origin} + {} {:?}",
                    spec.name,
                    spec.endpoints
                        .iter()
                        .map(|e| e.address.to_string())
                        .collect::<Vec<_>>()
                ),
                Delta::Remove { origin, name } => format!("{origin} - {name}"),
            })
            .collect()
    }

    fn synced_state() -> ClusterState {
        let mut state = ClusterState::new("n1".into());
        for resource in [Resource::Services, Resource::EndpointSlices] {
            state.relist_started(resource);
        }
        state.relisted_service(&service("a", "10.96.0.1"));
        state.relisted_service(&service("b", "10.96.0.2"));
        state.relisted_slice(&slice("a-1", "a", &[("10.1.0.1", true)]));
        assert!(state.changes().is_empty(), "nothing before the first sync");
        state.relist_done(Resource::Services);
        assert!(
            state.changes().is_empty(),
            "nothing before both resources are listed"
        );
        state.relist_done(Resource::EndpointSlices);
        state
    }

    #[test]
    fn the_first_sync_sends_every_service_once_with_its_endpoints() {
        let mut state = synced_state();
        assert!(state.synced());
        assert_eq!(
            summary(&state.changes()),
            [
                r#"shop/a + shop/a:http ["10.1.0.1:8080"]"#,
                "shop/b + shop/b:http []"
            ]
        );
        assert!(state.changes().is_empty());
    }

    #[test]
    fn a_slice_change_touches_only_its_service() {
        let mut state = synced_state();
        state.changes();
        state.slice_applied(&slice(
            "a-1",
            "a",
            &[("10.1.0.1", false), ("10.1.0.2", true)],
        ));
        assert_eq!(
            summary(&state.changes()),
            [r#"shop/a + shop/a:http ["10.1.0.2:8080"]"#]
        );
        // The same object again (a resync, or a change weft does not use): nothing.
        state.slice_applied(&slice(
            "a-1",
            "a",
            &[("10.1.0.1", false), ("10.1.0.2", true)],
        ));
        assert!(state.changes().is_empty());
        // Relabelled to another Service: it leaves one and joins the other.
        state.slice_applied(&slice("a-1", "b", &[("10.1.0.2", true)]));
        assert_eq!(
            summary(&state.changes()),
            [
                r#"shop/a + shop/a:http []"#,
                r#"shop/b + shop/b:http ["10.1.0.2:8080"]"#
            ]
        );
        state.slice_deleted(&slice("a-1", "b", &[]));
        assert_eq!(summary(&state.changes()), [r#"shop/b + shop/b:http []"#]);
        state.service_deleted(&service("a", "10.96.0.1"));
        assert_eq!(summary(&state.changes()), ["shop/a - shop/a:http"]);
    }

    #[test]
    fn a_relist_sends_only_what_differs_and_removes_what_it_did_not_list() {
        let mut state = synced_state();
        state.changes();
        // The watch broke (or 410 Gone): the same objects again, one changed, one gone.
        state.relist_started(Resource::Services);
        state.relisted_service(&service("a", "10.96.0.1"));
        state.relist_started(Resource::EndpointSlices);
        state.relisted_slice(&slice(
            "a-1",
            "a",
            &[("10.1.0.1", true), ("10.1.0.3", true)],
        ));
        assert!(
            state.changes().is_empty(),
            "nothing is flushed while a relist runs"
        );
        state.relist_done(Resource::Services);
        assert_eq!(summary(&state.changes()), ["shop/b - shop/b:http"]);
        state.relist_done(Resource::EndpointSlices);
        assert_eq!(
            summary(&state.changes()),
            [r#"shop/a + shop/a:http ["10.1.0.1:8080", "10.1.0.3:8080"]"#]
        );
        // A relist that finds everything as it was sends nothing at all.
        state.relist_started(Resource::EndpointSlices);
        state.relisted_slice(&slice(
            "a-1",
            "a",
            &[("10.1.0.1", true), ("10.1.0.3", true)],
        ));
        state.relist_done(Resource::EndpointSlices);
        assert!(state.changes().is_empty());
    }

    #[test]
    fn a_problem_is_reported_when_it_appears_not_at_every_event() {
        let mut state = synced_state();
        let mut weighed = slice("a-1", "a", &[("10.1.0.1", true)]);
        weighed.metadata.annotations = Some(
            [(
                super::super::mapping::WEIGHT.to_string(),
                "lots".to_string(),
            )]
            .into(),
        );
        state.slice_applied(&weighed);
        let problems = state.take_problems();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("shop/a-1") && problems[0].contains("lots"),
            "{problems:?}"
        );
        state.slice_applied(&weighed);
        state.relist_started(Resource::EndpointSlices);
        state.relisted_slice(&weighed);
        state.relist_done(Resource::EndpointSlices);
        assert!(state.take_problems().is_empty());
    }
}
