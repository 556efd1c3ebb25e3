//! What the service, backend and Maglev maps hold, and how a set of changed services gets
//! there. Every service keeps the commit order — endpoints → table → service entry →
//! leftovers — so a reader never follows an entry to a table or backend not yet written;
//! across services the writes of one kind go together, in batches.
//!
//! Order of one apply: (1) removed services leave (entry, then table), so a config that
//! removes some services and adds others frees room before it needs it; (2) new endpoints;
//! (3) tables, built in parallel, written where no reader looks (a fresh table id);
//! (4) service entries, each one write publishing its new table; (5) old tables and
//! endpoints no table uses any more. A service whose writes fail keeps its previous state
//! (or none) and is reported; everything else applies.

use std::collections::{HashMap, HashSet};

use weft_common::{Backend, MAGLEV_CHUNK, MaglevChunk, MaglevKey, ServiceKey, ServiceValue};

use super::maps::{Maps, Partial, WriteFailure};
use crate::{
    layout,
    plan::{Member, ServicePlan, TableInputs, build_in_batches},
    store::ServiceId,
};

/// Services whose tables are built and written together: bounds the buffers of an install
/// from scratch (a table of 1,601 slots is 26 chunks of 264 bytes).
const TABLE_BATCH: usize = 512;

/// A service the apply could not bring to its planned state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}; {}", if *.serving_previous { "its previous table keeps serving" } else { "not installed" })]
pub struct ApplyFailure {
    pub id: ServiceId,
    pub reason: WriteFailure,
    /// The service had an entry already, which still serves its previous table.
    pub serving_previous: bool,
}

/// What one apply did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub services_written: usize,
    pub services_removed: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    /// Planned services whose kernel state already matched.
    pub unchanged: Vec<ServiceId>,
    pub written: Vec<ServiceId>,
    pub failures: Vec<ApplyFailure>,
}

/// A service to remove: its id and the key it was installed under.
#[derive(Clone, Copy, Debug)]
pub struct Removal {
    pub id: ServiceId,
    pub key: ServiceKey,
}

/// How we know an installed table's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TableSource {
    /// We built it from these inputs (building is deterministic).
    Built(TableInputs),
    /// Read back from pinned maps at start: backend id per slot.
    Read(Vec<u32>),
}

#[derive(Debug, Clone)]
struct InstalledService {
    key: ServiceKey,
    value: ServiceValue,
    table: TableSource,
}

/// Entry counts of the maps the agent writes, kept as it writes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub services: u64,
    pub backends: u64,
    pub maglev_chunks: u64,
}

/// What the maps hold, as written (or read back at start).
#[derive(Default)]
pub struct Installed {
    services: HashMap<ServiceId, InstalledService>,
    backends: Backends,
    tables: IdPool,
    chunks: u64,
}

impl Installed {
    /// What an earlier agent left: services by id with their tables, and the backends.
    pub fn adopt(
        services: Vec<(ServiceKey, ServiceValue, Vec<u32>)>,
        backends: Vec<(u32, Backend)>,
    ) -> Installed {
        let mut installed = Installed {
            backends: Backends::adopt(backends),
            ..Installed::default()
        };
        for (key, value, table) in services {
            installed.tables.reserve(value.table_id);
            installed.chunks += u64::from(layout::chunks(value.table_size));
            for id in distinct(&table) {
                installed.backends.acquire(id);
            }
            installed.services.insert(
                ServiceId(value.service_id),
                InstalledService {
                    key,
                    value,
                    table: TableSource::Read(table),
                },
            );
        }
        installed
    }

    pub fn counts(&self) -> Counts {
        Counts {
            services: self.services.len() as u64,
            backends: self.backends.len() as u64,
            maglev_chunks: self.chunks,
        }
    }

    /// The frontends the kernel serves, with their service ids (for the store to adopt).
    pub fn service_keys(&self) -> impl Iterator<Item = (ServiceKey, ServiceId)> + '_ {
        self.services.iter().map(|(id, s)| (s.key, *id))
    }

    pub fn contains(&self, id: ServiceId) -> bool {
        self.services.contains_key(&id)
    }

    /// The key service `id` is installed under, if it is.
    pub fn key_of(&self, id: ServiceId) -> Option<ServiceKey> {
        self.services.get(&id).map(|s| s.key)
    }

    /// Removes services, then writes the planned ones, in commit order.
    pub fn apply(
        &mut self,
        maps: &mut impl Maps,
        removals: Vec<Removal>,
        plans: Vec<ServicePlan>,
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        // Services already in the maps (or moving within them) are written before new ones:
        // when a map is full, a new service must not take the slot a moved one just freed.
        let moving: HashSet<ServiceId> = removals.iter().map(|r| r.id).collect();
        let mut plans = plans;
        plans.sort_by_key(|p| !(self.services.contains_key(&p.id) || moving.contains(&p.id)));
        self.remove(maps, removals, &mut report);

        // What each planned service's table is now a function of; unchanged ones stop here.
        let mut pending: Vec<Pending> = Vec::new();
        for plan in plans {
            let inputs = TableInputs {
                size: plan.table_size,
                members: plan
                    .endpoints
                    .iter()
                    .map(|e| Member {
                        backend: self.backends.id_for(layout::backend(e.address)),
                        weight: e.weight,
                        hash: e.hash,
                    })
                    .collect(),
            };
            if let Some(current) = self.services.get_mut(&plan.id)
                && current.key == plan.key
            {
                let same = match &current.table {
                    TableSource::Built(built) => *built == inputs,
                    TableSource::Read(table) => *table == inputs.build(),
                };
                if same {
                    if let TableSource::Read(table) = &current.table {
                        // Adopted and right: remember how it was built, write nothing.
                        let read = distinct(table);
                        inputs
                            .members
                            .iter()
                            .for_each(|m| self.backends.acquire(m.backend));
                        read.into_iter().for_each(|id| self.backends.release(id));
                        current.table = TableSource::Built(inputs);
                    }
                    report.unchanged.push(plan.id);
                    continue;
                }
            }
            pending.push(Pending {
                id: plan.id,
                key: plan.key,
                inputs,
                failure: None,
            });
        }

        // Endpoints first: a table may only name backends that exist.
        let (ids, values) = self.backends.unwritten();
        let failed = write_all(&ids, |from| {
            maps.write_backends(&ids[from..], &values[from..])
        });
        for (index, failure) in failed {
            let id = ids[index];
            self.backends.forget(id);
            for p in pending.iter_mut().filter(|p| p.uses(id)) {
                p.fail(WriteFailure::Endpoint(Box::new(failure.clone())));
            }
        }
        report.backends_added = ids.len() - self.backends.forgotten_since_write();
        self.backends.mark_written();

        // Tables, where no reader looks yet: built a batch at a time on other threads while
        // this one writes the batch before.
        let building: Vec<usize> = (0..pending.len())
            .filter(|&i| pending[i].failure.is_none())
            .collect();
        let inputs: Vec<&TableInputs> = building.iter().map(|&i| &pending[i].inputs).collect();
        let mut values: Vec<Option<ServiceValue>> = vec![None; pending.len()];
        let mut chunk_failures: Vec<(usize, WriteFailure)> = Vec::new();
        let tables_ids = &mut self.tables;
        build_in_batches(&inputs, TABLE_BATCH, |offset, tables| {
            let chunks: usize = tables
                .iter()
                .map(|t| t.len().div_ceil(MAGLEV_CHUNK as usize))
                .sum();
            let mut keys = Vec::with_capacity(chunks);
            let mut chunk_values = Vec::with_capacity(chunks);
            let mut owners = Vec::with_capacity(chunks);
            for (k, table) in tables.into_iter().enumerate() {
                let index = building[offset + k];
                let mut value = ServiceValue {
                    service_id: pending[index].id.0,
                    ..ServiceValue::default()
                };
                if !table.is_empty() {
                    value.table_id = tables_ids.allocate();
                    value.table_size = table.len() as u32;
                    for (chunk, slots) in table.chunks(MAGLEV_CHUNK as usize).enumerate() {
                        let mut backends = [0; MAGLEV_CHUNK as usize];
                        backends[..slots.len()].copy_from_slice(slots);
                        keys.push(MaglevKey {
                            table_id: value.table_id,
                            chunk: chunk as u32,
                        });
                        chunk_values.push(MaglevChunk { backends });
                        owners.push(index);
                    }
                }
                values[index] = Some(value);
            }
            let failed = write_all(&keys, |from| {
                maps.write_chunks(&keys[from..], &chunk_values[from..])
            });
            chunk_failures.extend(failed.into_iter().map(|(i, f)| (owners[i], f)));
        });
        for (index, failure) in chunk_failures {
            pending[index].fail(failure);
        }

        // Service entries: one write each publishes its table.
        let publish: Vec<usize> = (0..pending.len())
            .filter(|&i| pending[i].failure.is_none())
            .collect();
        let keys: Vec<ServiceKey> = publish.iter().map(|&i| pending[i].key).collect();
        let entries: Vec<ServiceValue> = publish
            .iter()
            .map(|&i| values[i].unwrap_or_default())
            .collect();
        let failed = write_all(&keys, |from| {
            maps.write_services(&keys[from..], &entries[from..])
        });
        for (index, failure) in failed {
            pending[publish[index]].fail(failure);
        }

        // Leftovers: failed services' new tables, replaced services' old ones.
        let (mut stale_chunks, mut stale_keys) = (Vec::new(), Vec::new());
        for (p, value) in pending.into_iter().zip(values) {
            let previous = self.services.get(&p.id);
            if let Some(failure) = p.failure {
                if let Some(value) = value {
                    stale_chunks.extend(chunk_keys_of(&value));
                    self.tables.free(value.table_id);
                }
                report.failures.push(ApplyFailure {
                    id: p.id,
                    reason: failure,
                    serving_previous: previous.is_some_and(|s| s.key == p.key),
                });
                continue;
            }
            let value = value.unwrap_or_default();
            p.inputs
                .members
                .iter()
                .for_each(|m| self.backends.acquire(m.backend));
            self.chunks += u64::from(layout::chunks(value.table_size));
            let replaced = self.services.insert(
                p.id,
                InstalledService {
                    key: p.key,
                    value,
                    table: TableSource::Built(p.inputs),
                },
            );
            if let Some(old) = replaced {
                if old.key != p.key {
                    // Moved without its removal being planned: the old entry goes too.
                    stale_keys.push(old.key);
                }
                self.forget_table(&old, &mut stale_chunks);
            }
            report.services_written += 1;
            report.written.push(p.id);
        }
        maps.delete_services(&stale_keys);
        maps.delete_chunks(&stale_chunks);
        let unused = self.backends.take_unreferenced();
        maps.delete_backends(&unused);
        report.backends_removed = unused.len();
        report
    }

    /// Removes services: entry first (no new lookups), then its table.
    fn remove(&mut self, maps: &mut impl Maps, removals: Vec<Removal>, report: &mut ApplyReport) {
        let mut keys = Vec::new();
        let mut chunks = Vec::new();
        for removal in removals {
            let matches = self
                .services
                .get(&removal.id)
                .is_some_and(|s| s.key == removal.key);
            if !matches {
                continue;
            }
            if let Some(service) = self.services.remove(&removal.id) {
                keys.push(service.key);
                self.forget_table(&service, &mut chunks);
                report.services_removed += 1;
            }
        }
        maps.delete_services(&keys);
        maps.delete_chunks(&chunks);
    }

    /// Releases what a table no longer installed held: its chunks (to delete) and its
    /// references to backends.
    fn forget_table(&mut self, service: &InstalledService, chunks: &mut Vec<MaglevKey>) {
        chunks.extend(chunk_keys_of(&service.value));
        self.chunks -= u64::from(layout::chunks(service.value.table_size));
        self.tables.free(service.value.table_id);
        match &service.table {
            TableSource::Built(inputs) => inputs
                .members
                .iter()
                .for_each(|m| self.backends.release(m.backend)),
            TableSource::Read(table) => distinct(table)
                .into_iter()
                .for_each(|id| self.backends.release(id)),
        }
    }

    /// Installed services not in `keep` (an earlier agent's, no source defines them now).
    pub fn strays(&self, keep: impl Fn(ServiceId) -> bool) -> Vec<Removal> {
        self.services
            .iter()
            .filter(|(id, _)| !keep(**id))
            .map(|(id, s)| Removal {
                id: *id,
                key: s.key,
            })
            .collect()
    }
}

/// One planned service on its way into the maps.
struct Pending {
    id: ServiceId,
    key: ServiceKey,
    inputs: TableInputs,
    failure: Option<WriteFailure>,
}

impl Pending {
    fn uses(&self, backend: u32) -> bool {
        self.inputs.members.iter().any(|m| m.backend == backend)
    }

    fn fail(&mut self, failure: WriteFailure) {
        self.failure.get_or_insert(failure);
    }
}

/// Writes everything `write(from)` is asked to write from index `from` on, stepping over
/// each element that fails; returns the failed indexes and why.
fn write_all<T>(
    keys: &[T],
    mut write: impl FnMut(usize) -> Result<(), Partial>,
) -> Vec<(usize, WriteFailure)> {
    let mut failed = Vec::new();
    let mut from = 0;
    while from < keys.len() {
        match write(from) {
            Ok(()) => break,
            Err(partial) => {
                failed.push((from + partial.written, partial.failure));
                from += partial.written + 1;
            }
        }
    }
    failed
}

fn chunk_keys_of(value: &ServiceValue) -> impl Iterator<Item = MaglevKey> + use<> {
    let table_id = value.table_id;
    let chunks = if table_id == 0 {
        0
    } else {
        layout::chunks(value.table_size)
    };
    (0..chunks).map(move |chunk| MaglevKey { table_id, chunk })
}

fn distinct(table: &[u32]) -> HashSet<u32> {
    table.iter().copied().collect()
}

/// Table ids: never 0 (0 means "no table"), the lowest free one first.
#[derive(Default)]
struct IdPool {
    next: u32,
    free: Vec<u32>,
}

impl IdPool {
    fn reserve(&mut self, id: u32) {
        self.next = self.next.max(id);
    }

    fn allocate(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next
        })
    }

    fn free(&mut self, id: u32) {
        if id != 0 {
            self.free.push(id);
        }
    }
}

/// The endpoints in the backend map: one id per distinct endpoint address, shared by every
/// service that uses it, counted so the last one to let go deletes it. Ids are dense (freed
/// ones are reused first), so the slots are a vector indexed by id.
#[derive(Default)]
struct Backends {
    by_backend: HashMap<Backend, u32>,
    /// By id: the backend and how many installed tables use it.
    slots: Vec<Option<Slot>>,
    count: usize,
    ids: IdPool,
    /// Ids whose count may have dropped to 0 (checked, not trusted).
    unused: HashSet<u32>,
    /// Allocated, not yet written.
    new: Vec<u32>,
    forgotten: usize,
    /// Adopted ids too large to index by: deleted from the map at the first apply.
    strays: Vec<u32>,
}

#[derive(Clone, Copy)]
struct Slot {
    backend: Backend,
    refs: u32,
}

/// Ids an earlier agent may have left that are too large to index by: such backends are
/// not adopted (no table this agent builds names them; they go with the stray services).
const MAX_ADOPTED_ID: u32 = 4 * weft_common::maps::BACKENDS_CAPACITY;

impl Backends {
    fn adopt(backends: Vec<(u32, Backend)>) -> Backends {
        let mut this = Backends::default();
        for (id, backend) in backends {
            if id == 0 || id > MAX_ADOPTED_ID {
                this.strays.push(id);
                continue;
            }
            this.ids.reserve(id);
            this.by_backend.insert(backend, id);
            this.put(id, Slot { backend, refs: 0 });
            this.unused.insert(id);
        }
        // Ids below the highest adopted one that no backend holds are free for reuse.
        let taken: HashSet<u32> = this.by_backend.values().copied().collect();
        this.ids.free = (1..this.ids.next)
            .rev()
            .filter(|id| !taken.contains(id))
            .collect();
        this
    }

    fn slot(&self, id: u32) -> Option<&Slot> {
        self.slots.get(id as usize)?.as_ref()
    }

    fn slot_mut(&mut self, id: u32) -> Option<&mut Slot> {
        self.slots.get_mut(id as usize)?.as_mut()
    }

    fn put(&mut self, id: u32, slot: Slot) {
        let index = id as usize;
        if self.slots.len() <= index {
            self.slots.resize(index + 1, None);
        }
        if self.slots[index].replace(slot).is_none() {
            self.count += 1;
        }
    }

    fn take(&mut self, id: u32) -> Option<Slot> {
        let slot = self.slots.get_mut(id as usize)?.take();
        if slot.is_some() {
            self.count -= 1;
        }
        slot
    }

    fn len(&self) -> usize {
        self.count - self.new.len()
    }

    fn id_for(&mut self, backend: Backend) -> u32 {
        if let Some(&id) = self.by_backend.get(&backend) {
            return id;
        }
        let id = self.ids.allocate();
        self.by_backend.insert(backend, id);
        self.put(id, Slot { backend, refs: 0 });
        self.new.push(id);
        self.unused.insert(id);
        id
    }

    fn unwritten(&self) -> (Vec<u32>, Vec<Backend>) {
        let backends = self
            .new
            .iter()
            .filter_map(|&id| self.slot(id).map(|s| s.backend))
            .collect();
        (self.new.clone(), backends)
    }

    /// A new backend that could not be written.
    fn forget(&mut self, id: u32) {
        if let Some(slot) = self.take(id) {
            self.by_backend.remove(&slot.backend);
            self.ids.free(id);
            self.unused.remove(&id);
            self.forgotten += 1;
        }
    }

    fn forgotten_since_write(&self) -> usize {
        self.forgotten
    }

    fn mark_written(&mut self) {
        self.new.clear();
        self.forgotten = 0;
    }

    fn acquire(&mut self, id: u32) {
        if let Some(slot) = self.slot_mut(id) {
            slot.refs += 1;
        }
    }

    fn release(&mut self, id: u32) {
        if let Some(slot) = self.slot_mut(id) {
            slot.refs = slot.refs.saturating_sub(1);
            if slot.refs == 0 {
                self.unused.insert(id);
            }
        }
    }

    /// Backends no table uses: out of the registry, to delete from the map.
    fn take_unreferenced(&mut self) -> Vec<u32> {
        let candidates: Vec<u32> = self.unused.drain().collect();
        // An install from scratch marks every new backend; keep no capacity for that.
        self.unused.shrink_to(64);
        let mut gone = std::mem::take(&mut self.strays);
        for id in candidates {
            if self.slot(id).is_some_and(|s| s.refs == 0)
                && let Some(slot) = self.take(id)
            {
                self.by_backend.remove(&slot.backend);
                self.ids.free(id);
                gone.push(id);
            }
        }
        gone
    }
}
