//! `WEFT_VIPS_V1`: the service addresses the TC programs stop at. A packet to any other
//! address passes them after one lookup; a packet to one of these is a service's (or a
//! fragment or ICMP error about one). Several services share an address (one per port and
//! protocol), so each address is counted and leaves the map with its last service.

use std::collections::HashMap as StdHashMap;

use aya::maps::{HashMap, MapData};
use tracing::warn;
use weft_common::{FAMILY_V4, ServiceKey, VipKey, maps as names};

use super::{DatapathError, maps::map_error};
use crate::store::ServiceId;

pub struct Vips {
    map: HashMap<MapData, VipKey, u32>,
    /// The address each installed service holds.
    of_service: StdHashMap<ServiceId, VipKey>,
    /// Services per address.
    refs: StdHashMap<VipKey, u32>,
}

/// The address part of a service's key.
pub fn vip_of(key: &ServiceKey) -> VipKey {
    VipKey {
        addr: key.addr,
        family: key.family,
        _pad: [0; 3],
    }
}

impl Vips {
    /// Takes the map and brings it in line with the services the kernel serves now (an
    /// earlier agent's, or none): entries no service needs go, missing ones are written.
    pub fn take(
        ebpf: &mut aya::Ebpf,
        installed: impl Iterator<Item = (ServiceKey, ServiceId)>,
    ) -> Result<Vips, DatapathError> {
        let raw = ebpf
            .take_map(names::VIPS)
            .ok_or(DatapathError::MissingMap { map: names::VIPS })?;
        let map = HashMap::try_from(raw).map_err(map_error(names::VIPS))?;
        let mut vips = Vips {
            map,
            of_service: StdHashMap::new(),
            refs: StdHashMap::new(),
        };
        for (key, id) in installed {
            let vip = vip_of(&key);
            vips.of_service.insert(id, vip);
            *vips.refs.entry(vip).or_default() += 1;
        }
        let stale: Vec<VipKey> = vips
            .map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !vips.refs.contains_key(k))
            .collect();
        for key in stale {
            let _ = vips.map.remove(&key);
        }
        let wanted: Vec<VipKey> = vips.refs.keys().copied().collect();
        for vip in wanted {
            vips.write(vip);
        }
        Ok(vips)
    }

    /// Service `id` now has the address of `key` (called right after its service entry is
    /// written: until then the TC programs pass the address's packets untouched, as they did
    /// while there was no such service).
    pub fn hold(&mut self, id: ServiceId, key: &ServiceKey) {
        let vip = vip_of(key);
        if self.of_service.get(&id) == Some(&vip) {
            return;
        }
        self.release(id);
        self.of_service.insert(id, vip);
        let refs = self.refs.entry(vip).or_default();
        *refs += 1;
        if *refs == 1 {
            self.write(vip);
        }
    }

    /// Service `id` holds no address any more.
    pub fn release(&mut self, id: ServiceId) {
        let Some(vip) = self.of_service.remove(&id) else {
            return;
        };
        if let Some(refs) = self.refs.get_mut(&vip) {
            *refs -= 1;
            if *refs == 0 {
                self.refs.remove(&vip);
                let _ = self.map.remove(&vip);
            }
        }
    }

    fn write(&mut self, vip: VipKey) {
        if let Err(error) = self.map.insert(&vip, &1, 0) {
            // The map holds as many addresses as there can be services, so only a kernel
            // failure lands here; the TC path then passes that address's packets untouched.
            let family = if vip.family == FAMILY_V4 { 4 } else { 6 };
            warn!(family, %error, "could not add a service address to {}", names::VIPS);
        }
    }
}
