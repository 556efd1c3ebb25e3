//! Typed handles on weft's maps, reading back installed state, and writing changes.

use std::collections::{HashMap as StdHashMap, HashSet};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError},
};
use tracing::warn;
use weft_common::{
    Backend, MAGLEV_CHUNK, MaglevChunk, MaglevKey, ServiceKey, ServiceValue, maps as names,
};

use super::{ApplyReport, DatapathError};
use crate::plan::{
    Changes, Installed, InstalledService, ServiceUpdate, diff::IdAllocator, diff::TableSource,
    maglev,
};

pub struct Maps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    maglev: HashMap<MapData, MaglevKey, MaglevChunk>,
    settings: Array<MapData, u32>,
}

pub(super) fn map_error(map: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map {
        map,
        error: Box::new(source),
    }
}

/// Why a map write failed, phrased for operators: a full map names its capacity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteFailure {
    #[error("map {map} is full (capacity {capacity} entries)")]
    Full { map: &'static str, capacity: u32 },
    #[error("writing map {map}: {error}")]
    Other { map: &'static str, error: String },
    #[error("one of its endpoints could not be installed")]
    Endpoint,
}

impl WriteFailure {
    fn of(map: &'static str, capacity: u32, error: &MapError) -> WriteFailure {
        if let MapError::SyscallError(syscall) = error
            && matches!(
                syscall.io_error.raw_os_error(),
                Some(libc::E2BIG | libc::ENOSPC | libc::ENOMEM)
            )
        {
            return WriteFailure::Full { map, capacity };
        }
        WriteFailure::Other {
            map,
            error: error.to_string(),
        }
    }
}

/// A service the apply could not bring to its desired state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service {service}: {reason}; {}", if *.serving_previous { "its previous table keeps serving" } else { "not installed" })]
pub struct ApplyFailure {
    pub service: String,
    pub reason: WriteFailure,
    /// The service had an entry already, which still serves its previous table.
    pub serving_previous: bool,
}

impl Maps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Maps, DatapathError> {
        fn take<K: aya::Pod, V: aya::Pod>(
            ebpf: &mut Ebpf,
            map: &'static str,
        ) -> Result<HashMap<MapData, K, V>, DatapathError> {
            let raw = ebpf
                .take_map(map)
                .ok_or(DatapathError::MissingMap { map })?;
            HashMap::try_from(raw).map_err(map_error(map))
        }
        Ok(Maps {
            services: take(ebpf, names::SERVICES)?,
            backends: take(ebpf, names::BACKENDS)?,
            maglev: take(ebpf, names::MAGLEV)?,
            settings: {
                let map = names::SETTINGS;
                let raw = ebpf
                    .take_map(map)
                    .ok_or(DatapathError::MissingMap { map })?;
                Array::try_from(raw).map_err(map_error(map))?
            },
        })
    }

    /// Sets the kernel programs' switches (`weft_common::settings` bits).
    pub fn write_settings(&mut self, bits: u32) -> Result<(), DatapathError> {
        self.settings
            .set(0, &bits, 0)
            .map_err(map_error(names::SETTINGS))
    }

    /// Reads what an earlier agent installed, so an unchanged config rewrites nothing.
    pub fn read_installed(&self) -> Result<Installed, DatapathError> {
        let mut installed = Installed::default();
        for entry in self.backends.iter() {
            let (id, backend) = entry.map_err(map_error(names::BACKENDS))?;
            installed.backends.insert(backend, id);
        }
        for entry in self.services.iter() {
            let (key, value) = entry.map_err(map_error(names::SERVICES))?;
            let table = self.read_table(&value);
            installed.services.insert(
                key,
                InstalledService {
                    value,
                    table: TableSource::Read(table),
                },
            );
        }
        Ok(installed)
    }

    /// Backend id per slot of a service's current table; shorter than its size if a chunk is
    /// missing, which makes it differ from any desired table and so get rewritten.
    fn read_table(&self, value: &ServiceValue) -> Vec<u32> {
        let mut table = Vec::with_capacity(value.table_size as usize);
        for chunk in 0..maglev::chunks(value.table_size) {
            let key = MaglevKey {
                table_id: value.table_id,
                chunk,
            };
            match self.maglev.get(&key, 0) {
                Ok(c) => table.extend_from_slice(&c.backends),
                Err(_) => return table,
            }
        }
        table.truncate(value.table_size as usize);
        table
    }

    /// Deletes table chunks no service points at (left by an agent killed mid-update).
    pub fn delete_orphan_tables(&mut self, installed: &Installed) -> Result<usize, DatapathError> {
        let live: HashSet<u32> = installed
            .services
            .values()
            .map(|s| s.value.table_id)
            .collect();
        let orphans: Vec<MaglevKey> = self
            .maglev
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !live.contains(&key.table_id))
            .collect();
        for key in &orphans {
            self.maglev.remove(key).map_err(map_error(names::MAGLEV))?;
        }
        Ok(orphans.len())
    }

    pub fn apply(&mut self, installed: &mut Installed, changes: Changes) -> ApplyReport {
        let mut report = ApplyReport::default();
        let mut table_ids = IdAllocator::new(
            installed
                .services
                .values()
                .map(|s| s.value.table_id)
                .filter(|&id| id != 0),
        );

        // 1. Removed services first, so a config that removes some services and adds others
        //    (or moves one to a new address) frees map room before it needs it. Entry first
        //    (no new lookups), then its table.
        for key in changes.removed {
            let Some(service) = installed.services.get(&key) else {
                continue;
            };
            match self.services.remove(&key) {
                Ok(()) => {
                    self.delete_table(&service.value);
                    installed.services.remove(&key);
                    report.services_removed += 1;
                }
                Err(e) => warn!(error = %e, "could not remove a service entry; retrying later"),
            }
        }

        // 2. Endpoints: a table may only name backends that exist.
        let mut failed_backends = StdHashMap::new();
        for (id, backend) in &changes.new_backends {
            match self.backends.insert(id, backend, 0) {
                Ok(()) => {
                    installed.backends.insert(*backend, *id);
                    report.backends_added += 1;
                }
                Err(e) => {
                    failed_backends.insert(
                        *id,
                        WriteFailure::of(names::BACKENDS, names::BACKENDS_CAPACITY, &e),
                    );
                }
            }
        }

        // 3. Per service: new table where no reader looks, publish with one write, free the old.
        for update in changes.updates {
            let serving_previous = installed.services.contains_key(&update.key);
            let failure = match update
                .inputs
                .members
                .iter()
                .find_map(|(id, _, _)| failed_backends.get(id))
            {
                Some(failure) => Err(failure.clone()),
                None => self.write_service(installed, &mut table_ids, &update),
            };
            match failure {
                Ok(()) => report.services_written += 1,
                Err(reason) => report.failures.push(ApplyFailure {
                    service: update.name,
                    reason,
                    serving_previous,
                }),
            }
        }
        for (key, inputs) in changes.confirmed {
            if let Some(service) = installed.services.get_mut(&key) {
                service.table = TableSource::Built(inputs);
            }
        }

        // 4. Endpoints no table references any more.
        report.backends_removed = self.delete_unreferenced_backends(installed);
        report
    }

    fn write_service(
        &mut self,
        installed: &mut Installed,
        table_ids: &mut IdAllocator,
        update: &ServiceUpdate,
    ) -> Result<(), WriteFailure> {
        let table = update.inputs.build();
        let mut value = ServiceValue {
            service_id: update.service_id,
            table_id: 0,
            table_size: 0,
            flags: 0,
        };
        if !table.is_empty() {
            value.table_id = table_ids.allocate();
            value.table_size = table.len() as u32;
            if let Err(e) = self.write_table(value.table_id, &table) {
                self.delete_table(&value);
                return Err(WriteFailure::of(names::MAGLEV, names::MAGLEV_CAPACITY, &e));
            }
        }
        if let Err(e) = self.services.insert(&update.key, &value, 0) {
            self.delete_table(&value);
            return Err(WriteFailure::of(
                names::SERVICES,
                names::SERVICES_CAPACITY,
                &e,
            ));
        }
        let previous = installed.services.insert(
            update.key,
            InstalledService {
                value,
                table: TableSource::Built(update.inputs.clone()),
            },
        );
        if let Some(previous) = previous
            && previous.value.table_id != value.table_id
        {
            self.delete_table(&previous.value);
        }
        Ok(())
    }

    fn write_table(&mut self, table_id: u32, table: &[u32]) -> Result<(), MapError> {
        for (chunk, slots) in table.chunks(MAGLEV_CHUNK as usize).enumerate() {
            let mut value = MaglevChunk {
                backends: [0; MAGLEV_CHUNK as usize],
            };
            value.backends[..slots.len()].copy_from_slice(slots);
            let key = MaglevKey {
                table_id,
                chunk: chunk as u32,
            };
            self.maglev.insert(&key, &value, 0)?;
        }
        Ok(())
    }

    fn delete_table(&mut self, value: &ServiceValue) {
        if value.table_id == 0 {
            return;
        }
        for chunk in 0..maglev::chunks(value.table_size) {
            let key = MaglevKey {
                table_id: value.table_id,
                chunk,
            };
            // Missing chunks (never written, or already gone) are fine.
            let _ = self.maglev.remove(&key);
        }
    }

    fn delete_unreferenced_backends(&mut self, installed: &mut Installed) -> usize {
        let mut referenced = HashSet::new();
        for service in installed.services.values() {
            match &service.table {
                TableSource::Built(inputs) => {
                    referenced.extend(inputs.members.iter().map(|&(id, _, _)| id))
                }
                TableSource::Read(table) => referenced.extend(table.iter().copied()),
            }
        }
        let unreferenced: Vec<(Backend, u32)> = installed
            .backends
            .iter()
            .filter(|(_, id)| !referenced.contains(id))
            .map(|(b, id)| (*b, *id))
            .collect();
        let mut removed = 0;
        for (backend, id) in unreferenced {
            match self.backends.remove(&id) {
                Ok(()) => {
                    installed.backends.remove(&backend);
                    removed += 1;
                }
                Err(e) => warn!(id, error = %e, "could not remove an unused backend"),
            }
        }
        removed
    }
}
