//! Whether what the datapath pinned is still there: `weft reset` (or anyone with access to
//! bpffs) can unpin links and maps under a running agent, which detaches its programs while
//! it still holds its own handles. The agent checks, and reinstalls.

use std::path::{Path, PathBuf};

use aya::maps::MapInfo;

use super::{attach, links_dir, maps_dir};

/// The pins of one installed datapath and the map ids they pointed at when it opened.
pub struct Pins {
    links: Vec<PathBuf>,
    maps: Vec<(PathBuf, u32)>,
}

/// What is missing, for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} no longer pinned (removed by `weft reset`?)", .0.join(", "))]
pub struct PinsMissing(pub Vec<String>);

impl Pins {
    /// Records the pins as they are right after opening: the socket programs' links, the
    /// TC links (`tc_links`), the maps, and the TC maps if TC programs are attached.
    pub fn record(
        bpffs_dir: &Path,
        tc_links: impl Iterator<Item = PathBuf>,
        tc_maps: Option<&[&str]>,
    ) -> Pins {
        let links = attach::all_programs()
            .map(|name| links_dir(bpffs_dir).join(name))
            .chain(tc_links)
            .collect();
        let maps = weft_common::maps::ALL
            .iter()
            .chain(tc_maps.unwrap_or_default())
            .map(|name| {
                let path = maps_dir(bpffs_dir).join(name);
                let id = pinned_map_id(&path).unwrap_or(0);
                (path, id)
            })
            .collect();
        Pins { links, maps }
    }

    /// Every link pin still exists and every map pin still names the map this agent writes.
    /// Only a pin that is gone (or names another map) counts: a failed look (out of file
    /// descriptors, say) says nothing, and must not tear the datapath down.
    pub fn check(&self) -> Result<(), PinsMissing> {
        let mut missing: Vec<String> = self
            .links
            .iter()
            .filter(|path| {
                std::fs::symlink_metadata(path)
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
            })
            .map(|path| display_name(path))
            .collect();
        missing.extend(
            self.maps
                .iter()
                .filter(|(path, id)| match pinned_map_id(path) {
                    Ok(now) => now != *id,
                    Err(gone) => gone,
                })
                .map(|(path, _)| display_name(path)),
        );
        if missing.is_empty() {
            Ok(())
        } else {
            Err(PinsMissing(missing))
        }
    }
}

/// The id of the map pinned at `path`; or whether the pin is gone (true) rather than
/// merely unreadable (false).
fn pinned_map_id(path: &Path) -> Result<u32, bool> {
    MapInfo::from_pin(path).map(|info| info.id()).map_err(|_| {
        std::fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    })
}

fn display_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}
