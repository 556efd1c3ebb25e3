//! Reading back what an earlier agent installed, so a restarted agent rewrites nothing that
//! is already right, and removing table chunks no service points at (an agent killed
//! between writing a table and publishing it).

use std::collections::HashSet;

use weft_common::{Backend, MaglevKey, ServiceKey, ServiceValue, maps as names};

use super::{DatapathError, install::Installed, maps::KernelMaps, maps::map_error};
use crate::layout;

pub fn read_installed(maps: &mut KernelMaps) -> Result<(Installed, usize), DatapathError> {
    let mut backends: Vec<(u32, Backend)> = Vec::new();
    for entry in maps.backends().iter() {
        backends.push(entry.map_err(map_error(names::BACKENDS))?);
    }
    let mut services: Vec<(ServiceKey, ServiceValue, Vec<u32>)> = Vec::new();
    for entry in maps.services().iter() {
        let (key, value) = entry.map_err(map_error(names::SERVICES))?;
        let table = read_table(maps, &value);
        services.push((key, value, table));
    }
    let live: HashSet<u32> = services.iter().map(|(_, v, _)| v.table_id).collect();
    let orphans: Vec<MaglevKey> = maps
        .maglev()
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !live.contains(&key.table_id))
        .collect();
    use super::maps::Maps as _;
    maps.delete_chunks(&orphans);
    Ok((Installed::adopt(services, backends), orphans.len()))
}

/// Backend id per slot of a service's table; shorter than its size if a chunk is missing,
/// which makes it differ from any desired table and so get rewritten.
fn read_table(maps: &KernelMaps, value: &ServiceValue) -> Vec<u32> {
    let mut table = Vec::with_capacity(value.table_size as usize);
    for chunk in 0..layout::chunks(value.table_size) {
        let key = MaglevKey {
            table_id: value.table_id,
            chunk,
        };
        match maps.maglev().get(&key, 0) {
            Ok(c) => table.extend_from_slice(&c.backends),
            Err(_) => return table,
        }
    }
    table.truncate(value.table_size as usize);
    table
}
