//! `weft reset`: detach and remove everything weft pinned under a bpffs directory, and its
//! TC filters from the interfaces of this network namespace.

use std::{fs, path::Path};

use aya::programs::links::PinnedLink;

use super::DatapathError;

#[derive(Debug, Default)]
pub struct ResetReport {
    pub links_removed: usize,
    pub maps_removed: usize,
    /// weft's clsact filters removed from this namespace's interfaces (kernels without TCX).
    pub filters_removed: usize,
}

pub fn reset(bpffs_dir: &Path) -> Result<ResetReport, DatapathError> {
    let mut report = ResetReport {
        // Filters are not pinned: they are found by program name on every interface.
        filters_removed: super::tc::detach_clsact_filters(&[]),
        ..ResetReport::default()
    };
    if !bpffs_dir.exists() {
        return Ok(report);
    }
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |error| DatapathError::Io { what, path, error }
    };
    // Links first: unpinning the last reference detaches the program from the cgroup.
    let links = super::links_dir(bpffs_dir);
    for path in entries(&links)? {
        let link = PinnedLink::from_pin(&path).map_err(|e| DatapathError::Link {
            path: path.clone(),
            error: Box::new(e),
        })?;
        link.unpin().map_err(io("unpinning", &path))?;
        report.links_removed += 1;
    }
    let maps = super::maps_dir(bpffs_dir);
    for path in entries(&maps)? {
        fs::remove_file(&path).map_err(io("removing", &path))?;
        report.maps_removed += 1;
    }
    for dir in [&links, &maps, &bpffs_dir.to_path_buf()] {
        if dir.exists() {
            fs::remove_dir(dir).map_err(io("removing", dir))?;
        }
    }
    Ok(report)
}

fn entries(dir: &Path) -> Result<Vec<std::path::PathBuf>, DatapathError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let read = fs::read_dir(dir).map_err(|error| DatapathError::Io {
        what: "listing",
        path: dir.to_path_buf(),
        error,
    })?;
    Ok(read.filter_map(Result::ok).map(|e| e.path()).collect())
}
