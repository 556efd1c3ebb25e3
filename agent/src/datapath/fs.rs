//! Paths on bpffs and cgroup2, and process limits the loader needs.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::DatapathError;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub struct Layout {
    pub maps: PathBuf,
    pub links: PathBuf,
}

impl Layout {
    pub fn create(bpffs_dir: &Path) -> Result<Layout, DatapathError> {
        let layout = Layout {
            maps: super::maps_dir(bpffs_dir),
            links: super::links_dir(bpffs_dir),
        };
        for dir in [bpffs_dir, &layout.maps, &layout.links] {
            fs::create_dir_all(dir).map_err(|error| DatapathError::Io {
                what: "creating",
                path: dir.to_path_buf(),
                error,
            })?;
        }
        if !is_bpffs(bpffs_dir) {
            return Err(DatapathError::NotBpffs(bpffs_dir.to_path_buf()));
        }
        Ok(layout)
    }
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Older kernels charge BPF memory to RLIMIT_MEMLOCK; newer ones to the memory cgroup, and
/// raising the limit may be refused (no CAP_SYS_RESOURCE): then there is nothing to do.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall on a struct we own.
    let result = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if result != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; relying on memcg accounting");
    }
}

/// The cgroup2 mount point, from /proc/self/mountinfo (hybrid hosts mount it below
/// /sys/fs/cgroup, so it is never assumed).
pub fn discover_cgroup2_root() -> Result<PathBuf, DatapathError> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").map_err(|error| DatapathError::Io {
            what: "reading",
            path: "/proc/self/mountinfo".into(),
            error,
        })?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, fstype) = line.split_once(" - ")?;
            fstype
                .starts_with("cgroup2 ")
                .then(|| mount.split(' ').nth(4).map(PathBuf::from))?
        })
        .ok_or(DatapathError::NoCgroup2)
}
