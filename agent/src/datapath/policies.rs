//! `WEFT_POLICY_V1`: the governance the kernel enforces per service, and `WEFT_GOVCNT_V1`,
//! the counts it keeps for it. A service's policy is written before its planned table (a
//! new service is governed from its first connection) and leaves with the service; the
//! counts of a service that is no longer governed are dropped once no connection holds one.

use std::collections::{HashMap as StdHashMap, HashSet};

use aya::maps::{HashMap, MapData};
use tracing::warn;
use weft_common::{GovernCount, GovernKey, Policy, maps as names};

use super::{DatapathError, maps::map_error};
use crate::store::ServiceId;

pub struct Policies {
    map: HashMap<MapData, u32, Policy>,
    counts: HashMap<MapData, GovernKey, GovernCount>,
    /// What the map holds, by service.
    written: StdHashMap<ServiceId, Policy>,
    /// Services no longer governed that may still have counts in the kernel. Only these are
    /// looked for: walking the counts map costs a scan of its buckets per step, too much to
    /// do for every ungoverned service of an apply (10,000 services: seconds).
    lingering: HashSet<ServiceId>,
}

impl Policies {
    /// Takes the maps and reads back what an earlier agent wrote.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Policies, DatapathError> {
        let mut take =
            |map: &'static str| ebpf.take_map(map).ok_or(DatapathError::MissingMap { map });
        let map: HashMap<MapData, u32, Policy> =
            HashMap::try_from(take(names::POLICY)?).map_err(map_error(names::POLICY))?;
        let counts = HashMap::try_from(take(names::GOVERN)?).map_err(map_error(names::GOVERN))?;
        let written: StdHashMap<ServiceId, Policy> = map
            .iter()
            .filter_map(Result::ok)
            .map(|(id, policy)| (ServiceId(id), policy))
            .collect();
        // Counts of services an earlier agent stopped governing while connections held them.
        let lingering = counts
            .keys()
            .filter_map(Result::ok)
            .map(|key: GovernKey| ServiceId(key.service_id))
            .filter(|id| !written.contains_key(id))
            .collect();
        Ok(Policies {
            map,
            counts,
            written,
            lingering,
        })
    }

    /// Makes the kernel enforce `policy` for service `id` (none: nothing).
    pub fn follow(&mut self, id: ServiceId, policy: Option<&Policy>) {
        match policy {
            Some(policy) if self.written.get(&id) == Some(policy) => {}
            Some(policy) => match self.map.insert(&id.0, policy, 0) {
                Ok(()) => {
                    self.written.insert(id, *policy);
                    // Governed again: its counts are live again.
                    self.lingering.remove(&id);
                }
                // Map full (as many governed services as services): the service then runs
                // ungoverned, said loudly.
                Err(e) => warn!(
                    service_id = id.0,
                    "governance not written, not enforced: {e}"
                ),
            },
            None => {
                if self.written.remove(&id).is_some() {
                    let _ = self.map.remove(&id.0);
                    self.lingering.insert(id);
                }
            }
        }
    }

    /// Drops the counts of services no longer governed that no open connection holds; a
    /// service whose connections still hold some is looked at again at the next sweep.
    /// One walk of the counts, and none while no such service is left.
    pub fn sweep(&mut self) {
        if self.lingering.is_empty() {
            return;
        }
        let mut idle = Vec::new();
        let mut held = HashSet::new();
        for (key, count) in self.counts.iter().filter_map(Result::ok) {
            let id = ServiceId(key.service_id);
            if !self.lingering.contains(&id) {
                continue;
            }
            if count.open <= 0 {
                idle.push(key);
            } else {
                held.insert(id);
            }
        }
        for key in idle {
            let _ = self.counts.remove(&key);
        }
        self.lingering = held;
    }

    /// Services with a policy written, for the ones an earlier agent left.
    pub fn services(&self) -> impl Iterator<Item = ServiceId> + '_ {
        self.written.keys().copied()
    }
}
