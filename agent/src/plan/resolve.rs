//! Kernel ids back to config entities: a connection event names a service id and a backend
//! id; health and statistics want the service and the endpoint address.

use std::{collections::HashMap, net::SocketAddr};

use super::{Installed, desired::ip_from_kernel, desired::service_key};
use crate::config::Config;

#[derive(Debug, Default)]
pub struct Resolver {
    /// service id → index into `Config::services`.
    services: HashMap<u32, usize>,
    backends: HashMap<u32, SocketAddr>,
}

impl Resolver {
    /// Rebuilt after every apply: ids are stable, but services and backends come and go.
    pub fn new(installed: &Installed, config: &Config) -> Resolver {
        let by_key: HashMap<_, usize> = config
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (service_key(s.address, s.port, s.protocol), i))
            .collect();
        let services = installed
            .services
            .iter()
            .filter_map(|(key, s)| Some((s.value.service_id, *by_key.get(key)?)))
            .collect();
        let backends = installed
            .backends
            .iter()
            .map(|(b, &id)| {
                let port = u16::from_be(b.port);
                (id, SocketAddr::new(ip_from_kernel(&b.addr, b.family), port))
            })
            .collect();
        Resolver { services, backends }
    }

    /// (index into the config's services, endpoint address).
    pub fn resolve(&self, service_id: u32, backend_id: u32) -> Option<(usize, SocketAddr)> {
        Some((
            *self.services.get(&service_id)?,
            *self.backends.get(&backend_id)?,
        ))
    }
}
