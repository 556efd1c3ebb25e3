//! A service's table, as planned from the store and as the datapath keeps it.

use std::{net::SocketAddr, num::NonZeroUsize};

use weft_common::ServiceKey;

use super::maglev;
use crate::{
    layout,
    store::{ServiceId, ServiceState},
};

/// What one service's kernel state should be: planned from the store, per service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePlan {
    pub id: ServiceId,
    pub key: ServiceKey,
    pub table_size: u32,
    /// The configured endpoints with their effective weights and identity hashes.
    pub endpoints: Vec<PlannedEndpoint>,
    /// What the kernel enforces at connect (limits, fault, allow), if anything.
    pub policy: Option<weft_common::Policy>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedEndpoint {
    pub address: SocketAddr,
    pub weight: u32,
    pub hash: u64,
}

impl ServicePlan {
    pub fn of(service: &ServiceState) -> ServicePlan {
        ServicePlan {
            id: service.id,
            key: layout::service_key(&service.spec.frontend),
            table_size: layout::table_size(service.spec.endpoints.len()),
            endpoints: service
                .spec
                .endpoints
                .iter()
                .zip(&service.endpoints)
                .map(|(spec, state)| PlannedEndpoint {
                    address: spec.address,
                    weight: state.table_weight,
                    hash: layout::endpoint_hash(spec.address),
                })
                .collect(),
            policy: super::policy::of(&service.spec.governance),
        }
    }
}

/// One member of a table as the kernel knows it: a backend id (the datapath's), its
/// effective weight and identity hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub backend: u32,
    pub weight: u32,
    pub hash: u64,
}

/// Everything a service's table is a function of (building is deterministic).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableInputs {
    pub size: u32,
    pub members: Vec<Member>,
}

impl TableInputs {
    /// Backend id per slot; empty when no member has weight.
    pub fn build(&self) -> Vec<u32> {
        let members: Vec<maglev::Member> = self
            .members
            .iter()
            .map(|m| maglev::Member {
                hash: m.hash,
                weight: m.weight,
            })
            .collect();
        let mut table = maglev::build(&members, self.size);
        // Member index → backend id, in place: one table allocation per build.
        for slot in &mut table {
            *slot = self.members[*slot as usize].backend;
        }
        table
    }
}

/// Tables below this many are built on the calling thread: a one-service change must not
/// pay for starting threads.
const PARALLEL_FROM: usize = 64;

/// Builds every table, on all cores when there are many (an install from scratch).
pub fn build_tables(inputs: &[&TableInputs]) -> Vec<Vec<u32>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(8);
    if inputs.len() < PARALLEL_FROM || threads == 1 {
        return inputs.iter().map(|i| i.build()).collect();
    }
    let share = inputs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = inputs
            .chunks(share)
            .map(|part| scope.spawn(move || part.iter().map(|i| i.build()).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            // A panicking build would be a bug in `maglev::build`; propagate it.
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Builds the tables of `inputs` a batch at a time, handing each batch to `consume` (with
/// the index of its first table) while the next is built on other threads: an install from
/// scratch overlaps building with writing, and never holds every table at once. Few enough
/// tables are one batch, built on the calling thread.
pub fn build_in_batches(
    inputs: &[&TableInputs],
    batch: usize,
    mut consume: impl FnMut(usize, Vec<Vec<u32>>),
) {
    if inputs.len() <= batch {
        consume(0, build_tables(inputs));
        return;
    }
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            for (n, part) in inputs.chunks(batch).enumerate() {
                if tx.send((n * batch, build_tables(part))).is_err() {
                    return;
                }
            }
        });
        for (offset, tables) in rx {
            consume(offset, tables);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_builds_are_the_tables_one_thread_builds() {
        let inputs: Vec<TableInputs> = (0..200u32)
            .map(|s| TableInputs {
                size: layout::table_size(3),
                members: (0..3)
                    .map(|e| Member {
                        backend: s * 3 + e + 1,
                        weight: e + 1,
                        hash: layout::mix(u64::from(s * 3 + e)),
                    })
                    .collect(),
            })
            .collect();
        let refs: Vec<&TableInputs> = inputs.iter().collect();
        let parallel = build_tables(&refs);
        let serial: Vec<Vec<u32>> = inputs.iter().map(TableInputs::build).collect();
        assert_eq!(parallel, serial);
        let mut batched = Vec::new();
        build_in_batches(&refs, 64, |offset, tables| {
            assert_eq!(offset, batched.len(), "batches arrive in order");
            batched.extend(tables);
        });
        assert_eq!(batched, serial);
    }
}
