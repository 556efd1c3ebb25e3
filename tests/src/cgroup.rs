//! A child cgroup of the cgroup2 root for the agent to attach to; the test process joins it
//! only while it acts as a client.

use std::{fs, path::PathBuf};

pub struct Cgroup {
    pub path: PathBuf,
}

/// The cgroup2 mount point, from mountinfo (never hard-coded: hybrid hosts differ).
pub fn cgroup2_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, fstype) = line.split_once(" - ")?;
            fstype
                .starts_with("cgroup2 ")
                .then(|| mount.split(' ').nth(4).map(PathBuf::from))?
        })
        .expect("no cgroup2 mount")
}

/// The cgroup2 directory this process is in now.
fn current_cgroup() -> PathBuf {
    let own = fs::read_to_string("/proc/self/cgroup").expect("reading /proc/self/cgroup");
    let relative = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .expect("no cgroup2 entry in /proc/self/cgroup");
    cgroup2_root().join(relative.trim_start_matches('/'))
}

impl Cgroup {
    pub fn create(test: &str) -> Cgroup {
        let path = cgroup2_root().join(format!("weft-test-{test}-{}", std::process::id()));
        if path.exists() {
            let _ = fs::remove_dir(&path);
        }
        fs::create_dir(&path).expect("creating test cgroup");
        Cgroup { path }
    }

    /// A child cgroup of this one (its programs run for the child's tasks too).
    pub fn child(&self, name: &str) -> Cgroup {
        let path = self.path.join(name);
        fs::create_dir(&path).expect("creating child cgroup");
        Cgroup { path }
    }

    /// This cgroup's path as the config names it: under the cgroup2 mount, from `/`.
    pub fn config_path(&self) -> String {
        let relative = self
            .path
            .strip_prefix(cgroup2_root())
            .expect("a cgroup under the cgroup2 mount");
        format!("/{}", relative.display())
    }

    /// Moves this whole process into the cgroup until the guard drops.
    pub fn join(&self) -> Membership {
        let previous = current_cgroup();
        fs::write(
            self.path.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .expect("joining test cgroup");
        Membership { previous }
    }
}

pub struct Membership {
    previous: PathBuf,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let _ = fs::write(
            self.previous.join("cgroup.procs"),
            std::process::id().to_string(),
        );
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Any process still inside (a killed client's children) goes back to the root.
        if let Ok(procs) = fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = fs::write(cgroup2_root().join("cgroup.procs"), pid);
            }
        }
        let _ = fs::remove_dir(&self.path);
    }
}
