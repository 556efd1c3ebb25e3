//! The applied state as the admin API shows it, rebuilt after every apply.

use super::view::{EndpointView, ProgramView, ServiceView};
use crate::{
    config::Config,
    health::{self, Health, Weights},
    plan::{Installed, desired::service_key, maglev, resolve::Resolver},
};

#[derive(Default)]
pub struct Snapshot {
    /// 0 until the first config is applied.
    pub generation: u64,
    /// In config order, so `resolver`'s service indexes point into it.
    pub services: Vec<ServiceView>,
    pub programs: Vec<ProgramView>,
    /// Whether the kernel keeps per-connection records (`stats.connections`).
    pub connection_stats: bool,
    pub installed: InstalledCounts,
    /// Services not in their configured state in the kernel, and why.
    pub not_installed: Vec<String>,
    pub resolver: Resolver,
}

/// Entries the agent itself wrote, so known without walking the maps.
#[derive(Clone, Copy, Debug, Default)]
pub struct InstalledCounts {
    pub services: u64,
    pub backends: u64,
    pub maglev_chunks: u64,
}

impl Snapshot {
    pub fn build(
        generation: u64,
        config: &Config,
        health: &Health,
        weights: &Weights,
        installed: &Installed,
        programs: Vec<ProgramView>,
        not_installed: Vec<String>,
    ) -> Snapshot {
        let services = config
            .services
            .iter()
            .map(|service| ServiceView {
                name: service.name.clone(),
                address: service.address,
                port: service.port,
                protocol: service.protocol.as_str().to_string(),
                panic: weights.panicking.contains(&service.name),
                installed: installed.services.contains_key(&service_key(
                    service.address,
                    service.port,
                    service.protocol,
                )),
                endpoints: service
                    .endpoints
                    .iter()
                    .map(|endpoint| {
                        let key = health::endpoint_key(service, endpoint);
                        EndpointView {
                            address: endpoint.address,
                            port: endpoint.port,
                            weight: endpoint.weight,
                            effective_weight: weights.by_endpoint.get(&key).copied().unwrap_or(0),
                            state: health.state(&key, endpoint.weight).as_str().to_string(),
                        }
                    })
                    .collect(),
            })
            .collect();
        Snapshot {
            generation,
            services,
            programs,
            connection_stats: config.connection_stats,
            installed: InstalledCounts {
                services: installed.services.len() as u64,
                backends: installed.backends.len() as u64,
                maglev_chunks: installed
                    .services
                    .values()
                    .map(|s| u64::from(maglev::chunks(s.value.table_size)))
                    .sum(),
            },
            not_installed,
            resolver: Resolver::new(installed, config),
        }
    }
}
