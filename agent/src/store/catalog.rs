//! Which definition of a service is in force when several origins define it. The first
//! origin to claim a name holds it; later claims wait (and are reported) until it lets go.
//! A claim whose frontend (address, port, protocol) another service already holds waits the
//! same way. Work is proportional to the names a change touches.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use crate::{
    config::{Frontend, ServiceSpec},
    source::Origin,
};

#[derive(Clone, Debug)]
struct Claim {
    origin: Origin,
    spec: Arc<ServiceSpec>,
}

/// What a change did to the services in force.
#[derive(Debug, PartialEq, Eq)]
pub enum Active {
    /// This definition is in force now (new, or replacing the one before).
    Set {
        origin: Origin,
        spec: Arc<ServiceSpec>,
    },
    /// The name is no longer in force.
    Unset { name: Arc<str> },
}

/// One name's claims, in the order they arrived, and the one in force. The first claim is
/// inline: nearly every name has exactly one, and 10,000 of them should cost no more.
#[derive(Clone, Debug)]
struct Name {
    first: Claim,
    later: Vec<Claim>,
    active: Option<Claim>,
}

impl Name {
    fn claims(&self) -> impl Iterator<Item = &Claim> {
        std::iter::once(&self.first).chain(&self.later)
    }
}

#[derive(Default)]
pub struct Catalog {
    names: HashMap<Arc<str>, Name>,
    /// Which name holds each frontend.
    frontends: HashMap<Frontend, Arc<str>>,
    /// Names whose first claim waits for a frontend another name holds.
    waiting: HashMap<Frontend, HashSet<Arc<str>>>,
    /// Why each waiting claim waits, by (name, origin): for the log and `weft status`.
    conflicts: BTreeMap<(Arc<str>, Origin), String>,
}

impl Catalog {
    /// `origin` defines `spec` now.
    pub fn upsert(&mut self, origin: Origin, spec: Arc<ServiceSpec>, out: &mut Vec<Active>) {
        let name = Arc::clone(&spec.name);
        let claim = Claim { origin, spec };
        match self.names.get_mut(&name) {
            None => {
                self.names.insert(
                    Arc::clone(&name),
                    Name {
                        first: claim,
                        later: Vec::new(),
                        active: None,
                    },
                );
            }
            Some(entry) if entry.first.origin == claim.origin => entry.first = claim,
            Some(entry) => match entry.later.iter_mut().find(|c| c.origin == claim.origin) {
                Some(existing) => *existing = claim,
                None => entry.later.push(claim),
            },
        }
        self.settle(&name, out);
    }

    /// `origin` no longer defines `name`.
    pub fn remove(&mut self, origin: &Origin, name: &Arc<str>, out: &mut Vec<Active>) {
        let Some(entry) = self.names.get_mut(name) else {
            return;
        };
        if &entry.first.origin == origin {
            if entry.later.is_empty() {
                // No claim left: the name goes, and whatever it had in force with it.
                let active = entry.active.take();
                self.names.remove(name);
                self.conflicts.remove(&(Arc::clone(name), origin.clone()));
                if let Some(active) = active {
                    let mut released = Vec::new();
                    self.release(name, &active, &mut released);
                    out.push(Active::Unset {
                        name: Arc::clone(name),
                    });
                    self.settle_released(released, out);
                }
                return;
            }
            entry.first = entry.later.remove(0);
        } else {
            entry.later.retain(|c| &c.origin != origin);
        }
        self.conflicts.remove(&(Arc::clone(name), origin.clone()));
        self.settle(name, out);
    }

    /// Why claims are waiting, one line each.
    pub fn conflicts(&self) -> impl Iterator<Item = &String> {
        self.conflicts.values()
    }

    /// Brings `name`'s claim in force in line with its claims, then lets claims waiting for
    /// a frontend it released try again.
    fn settle(&mut self, name: &Arc<str>, out: &mut Vec<Active>) {
        let mut released = Vec::new();
        self.settle_one(name, out, &mut released);
        self.settle_released(released, out);
    }

    fn settle_released(&mut self, mut released: Vec<Frontend>, out: &mut Vec<Active>) {
        while let Some(frontend) = released.pop() {
            let Some(waiting) = self.waiting.remove(&frontend) else {
                continue;
            };
            for waiter in waiting {
                self.settle_one(&waiter, out, &mut released);
            }
        }
    }

    fn settle_one(&mut self, name: &Arc<str>, out: &mut Vec<Active>, released: &mut Vec<Frontend>) {
        let Some(entry) = self.names.get(name) else {
            return;
        };
        let claims: Vec<Claim> = entry.claims().cloned().collect();
        for later in claims.iter().skip(1) {
            let first = &claims[0];
            self.conflicts.insert(
                (Arc::clone(name), later.origin.clone()),
                format!(
                    "service {name} is defined by {} and by {}; the definition from {} is ignored",
                    first.origin, later.origin, later.origin
                ),
            );
        }
        let wanted = claims.into_iter().next();
        let current = entry.active.clone();
        // The frontend the wanted claim needs, and whether someone else holds it.
        if let Some(claim) = &wanted {
            let frontend = claim.spec.frontend;
            if let Some(holder) = self.frontends.get(&frontend)
                && holder != name
            {
                let holder_origin = self
                    .names
                    .get(holder)
                    .and_then(|n| n.active.as_ref())
                    .map(|c| c.origin.to_string())
                    .unwrap_or_default();
                self.conflicts.insert(
                    (Arc::clone(name), claim.origin.clone()),
                    format!(
                        "service {name} from {} wants {frontend}, which service {holder} from {holder_origin} already has; it waits",
                        claim.origin
                    ),
                );
                self.waiting
                    .entry(frontend)
                    .or_default()
                    .insert(Arc::clone(name));
                // Whatever this name had in force stays off: its own definition moved on.
                if let Some(current) = current {
                    self.release(name, &current, released);
                    out.push(Active::Unset {
                        name: Arc::clone(name),
                    });
                }
                return;
            }
            self.conflicts
                .remove(&(Arc::clone(name), claim.origin.clone()));
        }
        match (current, wanted) {
            (None, None) => {}
            (Some(current), None) => {
                self.release(name, &current, released);
                out.push(Active::Unset {
                    name: Arc::clone(name),
                });
            }
            (current, Some(wanted)) => {
                if current
                    .as_ref()
                    .is_some_and(|c| c.origin == wanted.origin && c.spec == wanted.spec)
                {
                    return;
                }
                if let Some(current) = &current
                    && current.spec.frontend != wanted.spec.frontend
                {
                    self.release(name, current, released);
                }
                self.frontends
                    .insert(wanted.spec.frontend, Arc::clone(name));
                if let Some(entry) = self.names.get_mut(name) {
                    entry.active = Some(wanted.clone());
                }
                out.push(Active::Set {
                    origin: wanted.origin,
                    spec: wanted.spec,
                });
            }
        }
    }

    fn release(&mut self, name: &Arc<str>, claim: &Claim, released: &mut Vec<Frontend>) {
        let frontend = claim.spec.frontend;
        if self.frontends.get(&frontend) == Some(name) {
            self.frontends.remove(&frontend);
            released.push(frontend);
        }
        if let Some(entry) = self.names.get_mut(name) {
            entry.active = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn spec(name: &str, address: &str) -> Arc<ServiceSpec> {
        Arc::clone(
            &Config::parse(&format!(
                "services:\n  - {{ name: {name}, address: {address}, port: 80 }}\n"
            ))
            .unwrap()
            .services[0],
        )
    }

    fn file(name: &str) -> Origin {
        Origin::File(std::path::Path::new(name).into())
    }

    fn set_names(out: &[Active]) -> Vec<String> {
        out.iter()
            .map(|a| match a {
                Active::Set { origin, spec } => format!("+{} from {origin}", spec.name),
                Active::Unset { name } => format!("-{name}"),
            })
            .collect()
    }

    #[test]
    fn a_name_from_two_files_keeps_the_first_and_names_both() {
        let mut catalog = Catalog::default();
        let mut out = Vec::new();
        catalog.upsert(file("a.yaml"), spec("web", "10.96.0.1"), &mut out);
        catalog.upsert(file("b.yaml"), spec("web", "10.96.0.2"), &mut out);
        assert_eq!(set_names(&out), ["+web from a.yaml"]);
        let conflicts: Vec<&String> = catalog.conflicts().collect();
        assert_eq!(conflicts.len(), 1);
        assert!(conflicts[0].contains("a.yaml") && conflicts[0].contains("b.yaml"));
        // The first lets go: the second comes into force.
        out.clear();
        catalog.remove(&file("a.yaml"), &"web".into(), &mut out);
        assert_eq!(set_names(&out), ["+web from b.yaml"]);
        assert_eq!(catalog.conflicts().count(), 0);
    }

    #[test]
    fn a_frontend_held_by_another_name_waits_until_released() {
        let mut catalog = Catalog::default();
        let mut out = Vec::new();
        catalog.upsert(file("a.yaml"), spec("web", "10.96.0.1"), &mut out);
        catalog.upsert(file("b.yaml"), spec("api", "10.96.0.1"), &mut out);
        assert_eq!(set_names(&out), ["+web from a.yaml"]);
        assert!(catalog.conflicts().next().unwrap().contains("already has"));
        out.clear();
        catalog.upsert(file("a.yaml"), spec("web", "10.96.0.9"), &mut out);
        assert_eq!(set_names(&out), ["+web from a.yaml", "+api from b.yaml"]);
        assert_eq!(catalog.conflicts().count(), 0);
    }

    #[test]
    fn an_unchanged_claim_changes_nothing() {
        let mut catalog = Catalog::default();
        let mut out = Vec::new();
        catalog.upsert(file("a.yaml"), spec("web", "10.96.0.1"), &mut out);
        out.clear();
        catalog.upsert(file("a.yaml"), spec("web", "10.96.0.1"), &mut out);
        assert!(out.is_empty());
    }
}
