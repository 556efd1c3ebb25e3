//! Installed state vs desired state → the changes to make, in commit order.
//!
//! The datapath applies them as: new backends → per service (new table → publish service
//! entry → delete old table) → removed services → backends nothing references any more.
//! A reader therefore never follows a service entry to a table or backend not yet written.

use std::collections::{HashMap, HashSet};

use weft_common::{Backend, ServiceKey, ServiceValue};

use super::{Desired, maglev};

/// What the kernel maps hold, as the datapath last wrote or read them.
#[derive(Debug, Default)]
pub struct Installed {
    pub backends: HashMap<Backend, u32>,
    pub services: HashMap<ServiceKey, InstalledService>,
}

#[derive(Debug, Clone)]
pub struct InstalledService {
    pub value: ServiceValue,
    pub table: TableSource,
}

/// How we know an installed table's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableSource {
    /// We built it from these inputs (building is deterministic).
    Built(TableInputs),
    /// Read back from pinned maps at start: backend id per slot.
    Read(Vec<u32>),
}

/// Everything a service's table is a function of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInputs {
    pub size: u32,
    /// (backend id, effective weight, endpoint hash) per configured endpoint.
    pub members: Vec<(u32, u32, u64)>,
}

impl TableInputs {
    /// Backend id per slot; empty when no member has weight.
    pub fn build(&self) -> Vec<u32> {
        let members: Vec<maglev::Member> = self
            .members
            .iter()
            .map(|&(_, weight, hash)| maglev::Member { hash, weight })
            .collect();
        maglev::build(&members, self.size)
            .into_iter()
            .map(|index| self.members[index as usize].0)
            .collect()
    }
}

#[derive(Debug, Default)]
pub struct Changes {
    pub new_backends: Vec<(u32, Backend)>,
    pub updates: Vec<ServiceUpdate>,
    /// Adopted tables that already match: remember their inputs, write nothing.
    pub confirmed: Vec<(ServiceKey, TableInputs)>,
    pub removed: Vec<ServiceKey>,
}

#[derive(Debug)]
pub struct ServiceUpdate {
    pub key: ServiceKey,
    pub name: String,
    pub service_id: u32,
    pub inputs: TableInputs,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.new_backends.is_empty() && self.updates.is_empty() && self.removed.is_empty()
    }
}

pub fn diff(installed: &Installed, desired: &Desired) -> Changes {
    let mut changes = Changes::default();
    let mut backend_ids = IdAllocator::new(installed.backends.values().copied());
    let mut assigned: HashMap<Backend, u32> = HashMap::new();
    let mut service_ids = IdAllocator::new(installed.services.values().map(|s| s.value.service_id));

    for (key, service) in &desired.services {
        let members = service
            .members
            .iter()
            .map(|member| {
                let id = match installed.backends.get(&member.backend) {
                    Some(&id) => id,
                    None => *assigned.entry(member.backend).or_insert_with(|| {
                        let id = backend_ids.allocate();
                        changes.new_backends.push((id, member.backend));
                        id
                    }),
                };
                (id, member.weight, member.hash)
            })
            .collect();
        let inputs = TableInputs {
            size: service.table_size,
            members,
        };
        let current = installed.services.get(key);
        match current.map(|s| &s.table) {
            Some(TableSource::Built(built)) if *built == inputs => continue,
            Some(TableSource::Read(table)) if *table == inputs.build() => {
                changes.confirmed.push((*key, inputs));
                continue;
            }
            _ => {}
        }
        let service_id = match current {
            Some(s) => s.value.service_id,
            None => service_ids.allocate(),
        };
        changes.updates.push(ServiceUpdate {
            key: *key,
            name: service.name.clone(),
            service_id,
            inputs,
        });
    }
    changes.removed = installed
        .services
        .keys()
        .filter(|key| !desired.services.contains_key(key))
        .copied()
        .collect();
    changes.removed.sort();
    changes
}

/// Hands out ids not in use, never 0 (0 means "none" in the maps).
pub struct IdAllocator {
    used: HashSet<u32>,
    cursor: u32,
}

impl IdAllocator {
    pub fn new(used: impl IntoIterator<Item = u32>) -> Self {
        let used: HashSet<u32> = used.into_iter().collect();
        let cursor = used.iter().copied().max().unwrap_or(0);
        IdAllocator { used, cursor }
    }

    pub fn allocate(&mut self) -> u32 {
        loop {
            self.cursor = self.cursor.wrapping_add(1);
            if self.cursor != 0 && self.used.insert(self.cursor) {
                return self.cursor;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, plan::desired_state};

    fn config(weights: &[u16]) -> Config {
        let endpoints: String = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                format!(
                    "      - {{ address: 10.1.0.{}, port: 80, weight: {w} }}\n",
                    i + 1
                )
            })
            .collect();
        Config::parse(&format!(
            "services:\n  - name: web\n    address: 10.96.0.1\n    port: 80\n    endpoints:\n{endpoints}"
        ))
        .unwrap()
    }

    fn install(installed: &mut Installed, changes: &Changes) {
        for (id, backend) in &changes.new_backends {
            installed.backends.insert(*backend, *id);
        }
        for update in &changes.updates {
            installed.services.insert(
                update.key,
                InstalledService {
                    value: ServiceValue {
                        service_id: update.service_id,
                        ..Default::default()
                    },
                    table: TableSource::Built(update.inputs.clone()),
                },
            );
        }
    }

    #[test]
    fn same_desired_state_changes_nothing() {
        let desired = desired_state(&config(&[1, 2]), |_, e| e.weight.into());
        let mut installed = Installed::default();
        let first = diff(&installed, &desired);
        assert_eq!(first.new_backends.len(), 2);
        assert_eq!(first.updates.len(), 1);
        install(&mut installed, &first);
        assert!(diff(&installed, &desired).is_empty());
    }

    #[test]
    fn weight_change_updates_one_service_and_keeps_ids() {
        let mut installed = Installed::default();
        let first = diff(
            &installed,
            &desired_state(&config(&[1, 2]), |_, e| e.weight.into()),
        );
        install(&mut installed, &first);
        let second = diff(
            &installed,
            &desired_state(&config(&[3, 2]), |_, e| e.weight.into()),
        );
        assert!(second.new_backends.is_empty());
        assert_eq!(second.updates.len(), 1);
        assert_eq!(second.updates[0].service_id, first.updates[0].service_id);
    }

    #[test]
    fn adopted_table_that_matches_is_confirmed_not_rewritten() {
        let desired = desired_state(&config(&[1, 2, 7]), |_, e| e.weight.into());
        let mut installed = Installed::default();
        let first = diff(&installed, &desired);
        install(&mut installed, &first);
        let table = first.updates[0].inputs.build();
        installed
            .services
            .values_mut()
            .for_each(|s| s.table = TableSource::Read(table.clone()));
        let again = diff(&installed, &desired);
        assert!(again.is_empty());
        assert_eq!(again.confirmed.len(), 1);
    }

    #[test]
    fn removed_service_is_listed() {
        let mut installed = Installed::default();
        let first = diff(
            &installed,
            &desired_state(&config(&[1]), |_, e| e.weight.into()),
        );
        install(&mut installed, &first);
        let changes = diff(&installed, &Desired::default());
        assert_eq!(changes.removed.len(), 1);
    }
}
