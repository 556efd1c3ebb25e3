//! The three maps the agent writes (services, backends, Maglev tables), behind a small
//! interface: `install` decides what to write and in which order, these write it. The kernel
//! implementation uses batch operations where the kernel has them and single updates where
//! it does not; tests use an in-memory one.

use std::{collections::HashMap as StdHashMap, os::fd::AsFd as _};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError},
};
use tracing::debug;
use weft_common::{Backend, MaglevChunk, MaglevKey, ServiceKey, ServiceValue, maps as names};

use super::{
    DatapathError,
    batch::{self, BatchError},
};

/// Why a map write failed, phrased for operators: a full map names its capacity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteFailure {
    #[error("map {map} is full (capacity {capacity} entries)")]
    Full { map: &'static str, capacity: u32 },
    #[error("writing map {map}: {error}")]
    Other { map: &'static str, error: String },
    #[error("one of its endpoints could not be installed ({0})")]
    Endpoint(Box<WriteFailure>),
}

impl WriteFailure {
    fn of_errno(map: &'static str, capacity: u32, error: &std::io::Error) -> WriteFailure {
        match error.raw_os_error() {
            Some(libc::E2BIG | libc::ENOSPC | libc::ENOMEM) => WriteFailure::Full { map, capacity },
            _ => WriteFailure::Other {
                map,
                error: error.to_string(),
            },
        }
    }

    fn of_map_error(map: &'static str, capacity: u32, error: &MapError) -> WriteFailure {
        match error {
            MapError::SyscallError(syscall) => Self::of_errno(map, capacity, &syscall.io_error),
            other => WriteFailure::Other {
                map,
                error: other.to_string(),
            },
        }
    }
}

/// A write that stopped part-way: the first `written` elements are in the map, element
/// `written` failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    pub written: usize,
    pub failure: WriteFailure,
}

/// What `install` needs from the maps. Writes stop at the first failure; deletes skip what
/// is already gone.
pub trait Maps {
    fn write_backends(&mut self, ids: &[u32], backends: &[Backend]) -> Result<(), Partial>;
    fn write_chunks(&mut self, keys: &[MaglevKey], chunks: &[MaglevChunk]) -> Result<(), Partial>;
    fn write_services(
        &mut self,
        keys: &[ServiceKey],
        values: &[ServiceValue],
    ) -> Result<(), Partial>;
    fn delete_services(&mut self, keys: &[ServiceKey]);
    fn delete_chunks(&mut self, keys: &[MaglevKey]);
    fn delete_backends(&mut self, ids: &[u32]);
}

/// Elements per batch syscall: bounds the buffers a batch needs (a chunk is 264 bytes).
pub(super) const BATCH: usize = 8192;

/// The kernel's maps.
pub struct KernelMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    maglev: HashMap<MapData, MaglevKey, MaglevChunk>,
    settings: Array<MapData, u32>,
    /// Cleared once the kernel says it has no batch operations.
    batches: bool,
}

pub(super) fn map_error(map: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |error| DatapathError::Map {
        map,
        error: Box::new(error),
    }
}

impl KernelMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<KernelMaps, DatapathError> {
        fn take<K: aya::Pod, V: aya::Pod>(
            ebpf: &mut Ebpf,
            map: &'static str,
        ) -> Result<HashMap<MapData, K, V>, DatapathError> {
            let raw = ebpf
                .take_map(map)
                .ok_or(DatapathError::MissingMap { map })?;
            HashMap::try_from(raw).map_err(map_error(map))
        }
        let settings = ebpf
            .take_map(names::SETTINGS)
            .ok_or(DatapathError::MissingMap {
                map: names::SETTINGS,
            })?;
        Ok(KernelMaps {
            services: take(ebpf, names::SERVICES)?,
            backends: take(ebpf, names::BACKENDS)?,
            maglev: take(ebpf, names::MAGLEV)?,
            settings: Array::try_from(settings).map_err(map_error(names::SETTINGS))?,
            batches: true,
        })
    }

    /// Sets the kernel programs' switches (`weft_common::settings` bits).
    pub fn write_settings(&mut self, bits: u32) -> Result<(), DatapathError> {
        self.settings
            .set(0, &bits, 0)
            .map_err(map_error(names::SETTINGS))
    }

    pub fn services(&self) -> &HashMap<MapData, ServiceKey, ServiceValue> {
        &self.services
    }

    pub fn backends(&self) -> &HashMap<MapData, u32, Backend> {
        &self.backends
    }

    pub fn maglev(&self) -> &HashMap<MapData, MaglevKey, MaglevChunk> {
        &self.maglev
    }

    /// Whether writes go in batches (false on kernels without them).
    pub fn batches(&self) -> bool {
        self.batches
    }
}

/// Writes in batches of `BATCH`, falling back to `single` for each element once the kernel
/// says it has no batch operations.
fn write<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    batches: &mut bool,
    (name, capacity): (&'static str, u32),
    keys: &[K],
    values: &[V],
) -> Result<(), Partial> {
    let mut written = 0;
    while written < keys.len() {
        let end = (written + BATCH).min(keys.len());
        if *batches {
            let fd = aya::maps::IterableMap::map(&*map).fd().as_fd();
            match batch::update(fd, &keys[written..end], &values[written..end]) {
                Ok(()) => {
                    written = end;
                    continue;
                }
                Err(BatchError::Failed { done, error }) => {
                    return Err(Partial {
                        written: written + done,
                        failure: WriteFailure::of_errno(name, capacity, &error),
                    });
                }
                Err(BatchError::Unsupported) => {
                    debug!(
                        map = name,
                        "no batch map operations in this kernel; writing one by one"
                    );
                    *batches = false;
                }
            }
        }
        for (key, value) in keys[written..end].iter().zip(&values[written..end]) {
            map.insert(key, value, 0).map_err(|e| Partial {
                written,
                failure: WriteFailure::of_map_error(name, capacity, &e),
            })?;
            written += 1;
        }
    }
    Ok(())
}

/// Deletes in batches, stepping over keys already gone.
pub(super) fn delete<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    batches: &mut bool,
    keys: &[K],
) {
    let mut next = 0;
    while next < keys.len() {
        let end = (next + BATCH).min(keys.len());
        if *batches {
            let fd = aya::maps::IterableMap::map(&*map).fd().as_fd();
            match batch::delete(fd, &keys[next..end]) {
                Ok(()) => {
                    next = end;
                    continue;
                }
                // The key at `done` is gone already (or cannot go): step over it.
                Err(BatchError::Failed { done, .. }) => {
                    next += done + 1;
                    continue;
                }
                Err(BatchError::Unsupported) => *batches = false,
            }
        }
        for key in &keys[next..end] {
            let _ = map.remove(key);
        }
        next = end;
    }
}

impl Maps for KernelMaps {
    fn write_backends(&mut self, ids: &[u32], backends: &[Backend]) -> Result<(), Partial> {
        let target = (names::BACKENDS, weft_common::maps::BACKENDS_CAPACITY);
        write(&mut self.backends, &mut self.batches, target, ids, backends)
    }

    fn write_chunks(&mut self, keys: &[MaglevKey], chunks: &[MaglevChunk]) -> Result<(), Partial> {
        let target = (names::MAGLEV, weft_common::maps::MAGLEV_CAPACITY);
        write(&mut self.maglev, &mut self.batches, target, keys, chunks)
    }

    fn write_services(
        &mut self,
        keys: &[ServiceKey],
        values: &[ServiceValue],
    ) -> Result<(), Partial> {
        let target = (names::SERVICES, weft_common::maps::SERVICES_CAPACITY);
        write(&mut self.services, &mut self.batches, target, keys, values)
    }

    fn delete_services(&mut self, keys: &[ServiceKey]) {
        delete(&mut self.services, &mut self.batches, keys);
    }

    fn delete_chunks(&mut self, keys: &[MaglevKey]) {
        delete(&mut self.maglev, &mut self.batches, keys);
    }

    fn delete_backends(&mut self, ids: &[u32]) {
        delete(&mut self.backends, &mut self.batches, ids);
    }
}

/// The maps in memory, with the kernel's capacities: for tests of what `install` writes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryMaps {
    pub services: StdHashMap<ServiceKey, ServiceValue>,
    pub backends: StdHashMap<u32, Backend>,
    pub maglev: StdHashMap<MaglevKey, MaglevChunk>,
    /// Capacities (the kernel's unless a test lowers them).
    pub capacity: (usize, usize, usize),
}

impl MemoryMaps {
    pub fn new() -> MemoryMaps {
        use weft_common::maps::*;
        MemoryMaps {
            capacity: (
                SERVICES_CAPACITY as usize,
                BACKENDS_CAPACITY as usize,
                MAGLEV_CAPACITY as usize,
            ),
            ..MemoryMaps::default()
        }
    }
}

fn put<K: std::hash::Hash + Eq + Copy, V: Copy>(
    map: &mut StdHashMap<K, V>,
    (name, capacity): (&'static str, usize),
    keys: &[K],
    values: &[V],
) -> Result<(), Partial> {
    for (written, (key, value)) in keys.iter().zip(values).enumerate() {
        if !map.contains_key(key) && map.len() >= capacity {
            return Err(Partial {
                written,
                failure: WriteFailure::Full {
                    map: name,
                    capacity: capacity as u32,
                },
            });
        }
        map.insert(*key, *value);
    }
    Ok(())
}

impl Maps for MemoryMaps {
    fn write_backends(&mut self, ids: &[u32], backends: &[Backend]) -> Result<(), Partial> {
        put(
            &mut self.backends,
            (names::BACKENDS, self.capacity.1),
            ids,
            backends,
        )
    }

    fn write_chunks(&mut self, keys: &[MaglevKey], chunks: &[MaglevChunk]) -> Result<(), Partial> {
        put(
            &mut self.maglev,
            (names::MAGLEV, self.capacity.2),
            keys,
            chunks,
        )
    }

    fn write_services(
        &mut self,
        keys: &[ServiceKey],
        values: &[ServiceValue],
    ) -> Result<(), Partial> {
        put(
            &mut self.services,
            (names::SERVICES, self.capacity.0),
            keys,
            values,
        )
    }

    fn delete_services(&mut self, keys: &[ServiceKey]) {
        keys.iter().for_each(|k| {
            self.services.remove(k);
        });
    }

    fn delete_chunks(&mut self, keys: &[MaglevKey]) {
        keys.iter().for_each(|k| {
            self.maglev.remove(k);
        });
    }

    fn delete_backends(&mut self, ids: &[u32]) {
        ids.iter().for_each(|k| {
            self.backends.remove(k);
        });
    }
}
