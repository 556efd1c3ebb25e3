//! The control plane end to end without the kernel: the store, the planner and the
//! datapath's install logic over in-memory maps with the kernel's capacities. Any sequence
//! of per-service deltas — additions, changes, moves, removals, names and addresses claimed
//! twice — must leave the maps holding exactly what an install of the final state from
//! scratch holds: the same tables for the same frontends, the same endpoints, no table or
//! endpoint left over.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    sync::Arc,
    time::Duration,
};

use proptest::prelude::*;
use weft_common::{Backend, MAGLEV_CHUNK, MaglevKey, ServiceKey};

use crate::{
    config::{EndpointSpec, Frontend, HealthCheck, Probe, Protocol, ServiceSpec},
    datapath::{Installed, MemoryMaps, Removal},
    layout,
    plan::ServicePlan,
    source::{Delta, Origin},
    store::Store,
};

/// One step of a random history.
#[derive(Clone, Debug)]
enum Step {
    Upsert {
        file: u8,
        name: u8,
        frontend: u8,
        endpoints: Vec<(u8, u16)>,
    },
    Remove {
        file: u8,
        name: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..2u8, 0..6u8, 0..8u8, prop::collection::vec((0..10u8, 0..4u16), 0..6)).prop_map(
            |(file, name, frontend, endpoints)| Step::Upsert { file, name, frontend, endpoints }
        ),
        1 => (0..2u8, 0..6u8).prop_map(|(file, name)| Step::Remove { file, name }),
    ]
}

fn origin(file: u8) -> Origin {
    Origin::File(Path::new(&format!("/etc/weft/{file}.yaml")).into())
}

fn spec(name: u8, frontend: u8, endpoints: &[(u8, u16)]) -> Arc<ServiceSpec> {
    let mut seen = BTreeSet::new();
    Arc::new(ServiceSpec {
        name: format!("s{name}").into(),
        frontend: Frontend {
            address: IpAddr::V4(Ipv4Addr::new(10, 96, 0, frontend + 1)),
            port: 80,
            protocol: Protocol::Tcp,
        },
        endpoints: endpoints
            .iter()
            .filter(|(e, _)| seen.insert(*e))
            .map(|&(e, weight)| EndpointSpec {
                address: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, e + 1)), 8080),
                weight,
            })
            .collect(),
        health: Arc::new(HealthCheck {
            probe: Probe::None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }),
        outlier: None,
        panic_threshold: 50,
        governance: Default::default(),
    })
}

fn delta(step: &Step) -> Delta {
    match step {
        Step::Upsert {
            file,
            name,
            frontend,
            endpoints,
        } => Delta::Upsert {
            origin: origin(*file),
            spec: spec(*name, *frontend, endpoints),
        },
        Step::Remove { file, name } => Delta::Remove {
            origin: origin(*file),
            name: format!("s{name}").into(),
        },
    }
}

/// What the control loop does after each batch of changes, against in-memory maps.
fn reconcile(store: &mut Store, installed: &mut Installed, maps: &mut MemoryMaps) {
    let work = store.take_work();
    store.reweigh(&work.dirty);
    let plans: Vec<ServicePlan> = work
        .dirty
        .iter()
        .filter_map(|&id| store.get(id))
        .map(|s| ServicePlan::of(s))
        .collect();
    let removals = work
        .removed
        .iter()
        .map(|r| Removal {
            id: r.id,
            key: layout::service_key(&r.frontend),
        })
        .collect();
    let report = installed.apply(maps, removals, plans);
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

/// The maps as a reader of the kernel sees them: per frontend, the endpoint of every slot;
/// and every endpoint in the backend map.
fn contents(maps: &MemoryMaps) -> (BTreeMap<ServiceKey, Vec<Backend>>, BTreeSet<Backend>) {
    let mut tables = BTreeMap::new();
    let mut used_chunks = BTreeSet::new();
    for (key, value) in &maps.services {
        let mut slots = Vec::new();
        for chunk in 0..layout::chunks(value.table_size) {
            let chunk_key = MaglevKey {
                table_id: value.table_id,
                chunk,
            };
            used_chunks.insert(chunk_key);
            let chunk = maps
                .maglev
                .get(&chunk_key)
                .expect("a table's chunk is there");
            slots.extend(chunk.backends.iter().take(MAGLEV_CHUNK as usize));
        }
        slots.truncate(value.table_size as usize);
        let endpoints = slots
            .iter()
            .map(|id| {
                *maps
                    .backends
                    .get(id)
                    .expect("a slot names a backend that is there")
            })
            .collect();
        tables.insert(*key, endpoints);
    }
    let chunks: BTreeSet<MaglevKey> = maps.maglev.keys().copied().collect();
    assert_eq!(chunks, used_chunks, "no table chunk is left over");
    let backends = maps.backends.values().copied().collect();
    (tables, backends)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_sequence_of_deltas_leaves_what_an_install_from_scratch_would(
        steps in prop::collection::vec(step(), 1..40),
        batch in 1usize..5,
    ) {
        let (mut store, mut installed, mut maps) =
            (Store::default(), Installed::default(), MemoryMaps::new());
        for chunk in steps.chunks(batch) {
            store.apply(chunk.iter().map(delta).collect());
            reconcile(&mut store, &mut installed, &mut maps);
        }
        let incremental = contents(&maps);

        // The final state, installed at once into empty maps.
        let (mut fresh, mut fresh_installed, mut fresh_maps) =
            (Store::default(), Installed::default(), MemoryMaps::new());
        let finals: Vec<Delta> = store
            .services()
            .iter()
            .flatten()
            .map(|s| Delta::Upsert { origin: s.origin.clone(), spec: Arc::clone(&s.spec) })
            .collect();
        fresh.apply(finals);
        reconcile(&mut fresh, &mut fresh_installed, &mut fresh_maps);
        let from_scratch = contents(&fresh_maps);

        prop_assert_eq!(&incremental.0, &from_scratch.0, "tables differ");
        prop_assert_eq!(&incremental.1, &from_scratch.1, "endpoints differ");
        prop_assert_eq!(installed.counts(), fresh_installed.counts());
    }
}
