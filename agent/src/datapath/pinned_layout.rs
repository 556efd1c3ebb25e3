//! Before anything is loaded: every map pinned under the maps directory that this agent's
//! object would reuse (same name) must have the layout the object declares. A map's name
//! carries its layout version, so a pinned map of the same name and another layout was made
//! by a release that changed a layout without renaming the map, or by a newer release the
//! operator is downgrading from. Reusing it would feed the programs misread entries (or fail
//! in the verifier); refusing leaves the programs and maps in place serving.

use std::{fmt, path::Path};

use aya::maps::{MapInfo, MapType};

use super::DatapathError;

/// What of a map's layout must match: the kernel fixes these at creation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MapLayout {
    /// The bpf_map_type number (none: a type aya does not know).
    kind: Option<u32>,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl fmt::Display for MapLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Some(kind) => write!(f, "type {kind}")?,
            None => f.write_str("unknown type")?,
        }
        write!(
            f,
            ", key {} B, value {} B, {} entries",
            self.key_size, self.value_size, self.max_entries
        )
    }
}

/// A pinned map whose layout is not the one this agent's programs were built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutMismatch {
    pub map: String,
    pub pinned: String,
    pub expected: String,
}

/// Checks each map of `object` pinned under `maps_dir`. `sized_by_agent` are maps whose
/// entry count the agent chooses (and keeps from the pin), so only their entry count may
/// differ; `unused` are not checked (the agent removes their pins).
pub fn check(
    object: &[u8],
    maps_dir: &Path,
    sized_by_agent: &[&str],
    unused: &[&str],
) -> Result<(), DatapathError> {
    let parsed = aya_obj::Object::parse(object)
        .map_err(|error| DatapathError::Load(Box::new(aya::EbpfError::ParseError(error))))?;
    let mut mismatches = Vec::new();
    for (name, map) in &parsed.maps {
        if unused.contains(&name.as_str()) {
            continue;
        }
        let Ok(info) = MapInfo::from_pin(maps_dir.join(name)) else {
            continue;
        };
        let resizable = sized_by_agent.contains(&name.as_str());
        let expected = MapLayout {
            kind: Some(map.map_type()),
            key_size: map.key_size(),
            value_size: map.value_size(),
            max_entries: if resizable {
                info.max_entries()
            } else {
                map.max_entries()
            },
        };
        let pinned = MapLayout {
            kind: info.map_type().ok().map(|kind: MapType| kind as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        if pinned != expected {
            mismatches.push(LayoutMismatch {
                map: name.clone(),
                pinned: pinned.to_string(),
                expected: expected.to_string(),
            });
        }
    }
    if mismatches.is_empty() {
        return Ok(());
    }
    mismatches.sort_by(|a, b| a.map.cmp(&b.map));
    Err(DatapathError::PinnedLayout(mismatches))
}
