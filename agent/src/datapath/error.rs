use std::path::PathBuf;

use crate::chain::Chain;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "this weft binary was built without its kernel programs; build it with `cargo xtask build`"
    )]
    NoObject,
    #[error("{} is not on a BPF filesystem (mount one with `mount -t bpf bpf /sys/fs/bpf`)", .0.display())]
    NotBpffs(PathBuf),
    #[error("{what} {}: {error}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("loading the kernel object: {}", Chain(&**.0))]
    Load(Box<aya::EbpfError>),
    #[error("program {program}: {}", Chain(&**error))]
    Program {
        program: &'static str,
        error: Box<aya::programs::ProgramError>,
    },
    #[error("pinned link {}: {}", path.display(), Chain(&**error))]
    Link {
        path: PathBuf,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("attaching {program} to interface {interface}: {}", Chain(&**error))]
    Interface {
        interface: String,
        program: &'static str,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("map {map}: {}", Chain(&**error))]
    Map {
        map: &'static str,
        error: Box<aya::maps::MapError>,
    },
    #[error(
        "{}: made by another release of weft whose layout differs (a newer one, if this is a downgrade). Nothing was changed; the programs in place keep serving. Run a release that knows this layout, or `weft reset` and start again (live connections lose their state)",
        .0.iter().map(|m| format!("pinned map {} has layout {}, this agent needs {}", m.map, m.pinned, m.expected)).collect::<Vec<_>>().join("; ")
    )]
    PinnedLayout(Vec<super::pinned_layout::LayoutMismatch>),
    #[error("{0}")]
    KernelLacks(String),
    #[error("the kernel log ring: {}", Chain(&**.0))]
    KernelLog(Box<aya_log::Error>),
    #[error("map {map} is missing from the kernel object")]
    MissingMap { map: &'static str },
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
}
