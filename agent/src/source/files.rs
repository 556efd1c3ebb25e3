//! Config files as a source: `--config` names one YAML file or a directory whose `*.yaml`
//! files each hold `services:` (a Kubernetes ConfigMap mounted as a volume is such a
//! directory: one file per key, swapped all at once through its `..data` symlink).
//!
//! The directory (or the file's directory) is watched with inotify, so editors' atomic
//! renames and ConfigMap swaps are seen, plus a metadata poll as a fallback for filesystems
//! without inotify. The watch starts before the first read, so nothing written while the
//! agent starts is missed. A change re-reads only the files whose metadata changed, parses
//! only those whose bytes changed (on a blocking thread: a large or hostile file never holds
//! up the threads that answer health checks), and hands on only the services that changed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    hash::{Hash as _, Hasher as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{Claim, Delta, Origin, SourceEvent, SourceKind};
use crate::config::{self, Config, ConfigError, ServiceSpec, StatsSettings, TcSettings};

/// Settling time after an event: editors may write in several steps. Short, because an
/// atomic rename (editors, ConfigMap swaps) is complete when its event arrives, and this
/// delay is part of every change's way to the kernel.
const DEBOUNCE: Duration = Duration::from_millis(10);
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("config {}: no such file or directory", .0.display())]
    Missing(PathBuf),
    #[error("watching {}: {error}", path.display())]
    Watch { path: PathBuf, error: notify::Error },
}

/// What `--config` names.
#[derive(Clone, Debug)]
enum Target {
    File(PathBuf),
    Dir(PathBuf),
}

impl Target {
    fn of(path: PathBuf) -> Target {
        if path.is_dir() {
            Target::Dir(path)
        } else {
            Target::File(path)
        }
    }

    /// The directory inotify watches.
    fn watched_dir(&self) -> PathBuf {
        match self {
            Target::Dir(dir) => dir.clone(),
            Target::File(file) => file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        }
    }

    /// The config files there are now.
    fn files(&self) -> Vec<PathBuf> {
        match self {
            Target::File(file) => vec![file.clone()],
            Target::Dir(dir) => {
                let Ok(entries) = fs::read_dir(dir) else {
                    return Vec::new();
                };
                let mut files: Vec<PathBuf> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| is_config_name(p) && p.is_file())
                    .collect();
                files.sort();
                files
            }
        }
    }

    /// Which files a change to `changed` may concern: one file, or (for ConfigMap
    /// machinery, `..data` and `..<timestamp>`) all of them. None: not ours.
    fn concerned(&self, changed: &Path) -> Option<Concern> {
        let name = changed.file_name()?;
        if name.as_encoded_bytes().starts_with(b"..") {
            return Some(Concern::All);
        }
        match self {
            Target::File(file) => {
                (Some(name) == file.file_name()).then(|| Concern::One(file.clone()))
            }
            Target::Dir(dir) => is_config_name(changed).then(|| Concern::One(dir.join(name))),
        }
    }
}

enum Concern {
    One(PathBuf),
    All,
}

/// `*.yaml`, not hidden (editors' swap files and ConfigMap internals start with a dot).
fn is_config_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && name.ends_with(".yaml")
}

/// What the poll compares: cheap to read, changes whenever the file does (following a
/// ConfigMap's symlinks to the file they point at now).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

fn digest(bytes: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// Starts watching `path` (a file or a directory), then reads it: the first events sent to
/// `tx` are its files as they are, followed by `Synced`. Call from within the runtime the
/// watcher's task should run on.
pub fn watch(path: PathBuf, tx: mpsc::Sender<SourceEvent>) -> Result<(), WatchError> {
    if !path.exists() {
        return Err(WatchError::Missing(path));
    }
    let target = Target::of(path);
    let (event_tx, mut events) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Our own reads raise access events; they never change a file.
        match event {
            Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => {}
            Ok(event) => {
                let _ = event_tx.send(event.paths);
            }
            // Overflowed or failed: look at everything.
            Err(_) => {
                let _ = event_tx.send(Vec::new());
            }
        }
    })
    .map_err(|error| WatchError::Watch {
        path: target.watched_dir(),
        error,
    })?;
    let dir = target.watched_dir();
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|error| WatchError::Watch {
            path: dir.clone(),
            error,
        })?;

    tokio::spawn(async move {
        // Owned by the task: dropping it would stop the events.
        let _watcher = watcher;
        let mut files = Files::default();
        let all: BTreeSet<PathBuf> = target.files().into_iter().collect();
        if !files.reload(&target, all, &tx).await {
            return;
        }
        if tx
            .send(SourceEvent::Synced(SourceKind::Files))
            .await
            .is_err()
        {
            return;
        }
        let mut poll = tokio::time::interval(POLL);
        loop {
            let changed: BTreeSet<PathBuf> = tokio::select! {
                paths = events.recv() => {
                    let Some(paths) = paths else { break };
                    tokio::time::sleep(DEBOUNCE).await;
                    let mut concerns: Vec<Concern> = concerned(&target, &paths);
                    while let Ok(more) = events.try_recv() {
                        concerns.extend(concerned(&target, &more));
                    }
                    if concerns.is_empty() {
                        continue;
                    }
                    if concerns.iter().any(|c| matches!(c, Concern::All)) {
                        files.candidates(&target)
                    } else {
                        concerns
                            .into_iter()
                            .filter_map(|c| match c {
                                Concern::One(path) => Some(path),
                                Concern::All => None,
                            })
                            .collect()
                    }
                }
                _ = poll.tick() => files.candidates(&target),
            };
            if !files.reload(&target, changed, &tx).await {
                break;
            }
        }
    });
    Ok(())
}

fn concerned(target: &Target, paths: &[PathBuf]) -> Vec<Concern> {
    if paths.is_empty() {
        return vec![Concern::All];
    }
    paths.iter().filter_map(|p| target.concerned(p)).collect()
}

/// What a path's metadata says to do.
enum Check {
    Unchanged,
    Event(SourceEvent),
    /// Read it: its metadata (`Stamp`, or none) changed.
    Read(Option<Stamp>),
}

/// What reading (and parsing) a file found.
enum Loaded {
    /// The same bytes as what was accepted (or rejected) last.
    Unchanged(u64),
    /// Missing or unreadable for a moment (mid-swap): wait for the next change.
    Unreadable(std::io::Error),
    Parsed(u64, Result<Config, ConfigError>),
    /// Decided from metadata alone.
    Event(SourceEvent),
    /// Read with this stamp.
    Read(Option<Stamp>, Box<Loaded>),
}

/// Reads and parses one file (on a blocking thread): unless its bytes are the ones `known`
/// (accepted) or `rejected` last time.
fn load(path: &Path, known: Option<u64>, rejected: Option<u64>) -> Loaded {
    let bytes = match config::read_file(path) {
        Ok(bytes) => bytes,
        Err(ConfigError::Read(error)) => return Loaded::Unreadable(error),
        Err(error) => return Loaded::Parsed(0, Err(error)),
    };
    let digest = digest(&bytes);
    if known == Some(digest) || rejected == Some(digest) {
        return Loaded::Unchanged(digest);
    }
    let config = Config::from_bytes(&bytes).and_then(|mut config| {
        config.resolve_cgroups(cgroup2_root())?;
        Ok(config)
    });
    Loaded::Parsed(digest, config)
}

/// The cgroup2 mount the config's cgroup paths are under, found once.
fn cgroup2_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        crate::datapath::discover_cgroup2_root().unwrap_or_else(|_| "/sys/fs/cgroup".into())
    })
}

/// What one file defined when last accepted.
struct Tracked {
    stamp: Option<Stamp>,
    digest: u64,
    services: HashMap<Arc<str>, Arc<ServiceSpec>>,
    stats: Option<StatsSettings>,
    tc: Option<TcSettings>,
}

/// The files of the target and what each defined: the memory that lets a change be handed
/// on as the services that changed.
#[derive(Default)]
struct Files {
    tracked: BTreeMap<PathBuf, Tracked>,
    /// Files seen but rejected: their stamp, so the poll does not re-read them.
    rejected: BTreeMap<PathBuf, (Option<Stamp>, u64)>,
}

impl Files {
    /// Every file that exists or did.
    fn candidates(&self, target: &Target) -> BTreeSet<PathBuf> {
        let mut all: BTreeSet<PathBuf> = target.files().into_iter().collect();
        all.extend(self.tracked.keys().cloned());
        all
    }

    /// Re-reads the `paths` whose metadata changed and sends what changed. False once the
    /// receiver is gone.
    async fn reload(
        &mut self,
        target: &Target,
        paths: BTreeSet<PathBuf>,
        tx: &mpsc::Sender<SourceEvent>,
    ) -> bool {
        // Every changed file is read and parsed at once (a conf.d changed together, as a
        // ConfigMap swap does, uses every core); the results are handed on in path order.
        let mut reads = Vec::new();
        let mut events = Vec::new();
        for path in paths {
            match self.check(target, &path) {
                Check::Unchanged => {}
                Check::Event(event) => events.push((path, Loaded::Event(event))),
                Check::Read(now) => {
                    let known = self.tracked.get(&path).map(|t| t.digest);
                    let rejected = self.rejected.get(&path).map(|r| r.1);
                    let read_path = path.clone();
                    reads.push((
                        path,
                        now,
                        tokio::task::spawn_blocking(move || load(&read_path, known, rejected)),
                    ));
                }
            }
        }
        for (path, now, task) in reads {
            // A panic while reading or parsing rejects the file; it never takes the watcher
            // down.
            let loaded = task
                .await
                .unwrap_or_else(|_| Loaded::Parsed(0, Err(parser_failed())));
            events.push((path, Loaded::Read(now, Box::new(loaded))));
        }
        events.sort_by(|a, b| a.0.cmp(&b.0));
        for (path, loaded) in events {
            let event = match loaded {
                Loaded::Event(event) => Some(event),
                Loaded::Read(now, loaded) => self.settle(&path, now, *loaded),
                Loaded::Parsed(..) | Loaded::Unchanged(_) | Loaded::Unreadable(_) => None,
            };
            if let Some(event) = event
                && tx.send(event).await.is_err()
            {
                return false;
            }
        }
        true
    }

    /// What a path needs, judged from its metadata alone.
    fn check(&mut self, target: &Target, path: &Path) -> Check {
        let now = stamp(path);
        let known = self
            .tracked
            .get(path)
            .map(|t| t.stamp)
            .or_else(|| self.rejected.get(path).map(|r| r.0));
        if known.is_some() && known == Some(now) {
            return Check::Unchanged;
        }
        let is_config = match target {
            Target::File(_) => true,
            Target::Dir(_) => is_config_name(path) && path.is_file(),
        };
        if now.is_none() || !is_config {
            // Gone (or no longer a config file): its services go with it. A single config
            // file briefly missing mid-swap is not a removal: wait for it to reappear; but
            // one never seen is an error (the agent must not start on nothing).
            if matches!(target, Target::File(_)) {
                if known.is_some() {
                    return Check::Unchanged;
                }
                let error = fs::metadata(path).err().unwrap_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file")
                });
                return Check::Event(self.reject(path, now, 0, ConfigError::Read(error)));
            }
            self.rejected.remove(path);
            return match self.forget(path) {
                Some(event) => Check::Event(event),
                None => Check::Unchanged,
            };
        }
        Check::Read(now)
    }

    /// What a read and parse found, applied to the file's state: the event to hand on.
    fn settle(&mut self, path: &Path, now: Option<Stamp>, loaded: Loaded) -> Option<SourceEvent> {
        match loaded {
            Loaded::Unreadable(error) => {
                warn!(path = %path.display(), "config file unreadable: {error}");
                None
            }
            Loaded::Unchanged(digest) => {
                if let Some(tracked) = self.tracked.get_mut(path) {
                    tracked.stamp = now;
                } else {
                    self.rejected.insert(path.to_path_buf(), (now, digest));
                }
                None
            }
            Loaded::Parsed(digest, Ok(config)) => {
                debug!(path = %path.display(), "config file changed");
                Some(self.accept(path, now, digest, config))
            }
            Loaded::Parsed(digest, Err(error)) => Some(self.reject(path, now, digest, error)),
            Loaded::Event(event) => Some(event),
            Loaded::Read(now, inner) => self.settle(path, now, *inner),
        }
    }

    fn accept(
        &mut self,
        path: &Path,
        stamp: Option<Stamp>,
        digest: u64,
        config: Config,
    ) -> SourceEvent {
        self.rejected.remove(path);
        let origin = Origin::File(path.into());
        let previous = self.tracked.remove(path);
        let (mut old, old_stats, old_tc) = previous
            .map(|t| (t.services, t.stats, t.tc))
            .unwrap_or_default();
        let mut services = HashMap::with_capacity(config.services.len());
        let mut upserts = Vec::new();
        for spec in config.services {
            let unchanged = old.remove(&spec.name).is_some_and(|before| before == spec);
            if !unchanged {
                upserts.push(Delta::Upsert {
                    origin: origin.clone(),
                    spec: Arc::clone(&spec),
                });
            }
            services.insert(Arc::clone(&spec.name), spec);
        }
        // Removals first: a service renamed at the same address frees it for its new name.
        let mut deltas = removals(&origin, old);
        deltas.extend(upserts);
        let stats = Claim::between(old_stats, config.stats);
        let tc = Claim::between(old_tc, config.tc);
        self.tracked.insert(
            path.to_path_buf(),
            Tracked {
                stamp,
                digest,
                services,
                stats: config.stats,
                tc: config.tc,
            },
        );
        SourceEvent::Accepted {
            origin,
            deltas,
            stats,
            tc,
        }
    }

    fn reject(
        &mut self,
        path: &Path,
        stamp: Option<Stamp>,
        digest: u64,
        error: ConfigError,
    ) -> SourceEvent {
        if let Some(tracked) = self.tracked.get_mut(path) {
            // Seen: not re-read until it changes again; what it defined keeps serving.
            tracked.stamp = stamp;
        } else {
            self.rejected.insert(path.to_path_buf(), (stamp, digest));
        }
        SourceEvent::Rejected {
            origin: Origin::File(path.into()),
            error,
        }
    }

    fn forget(&mut self, path: &Path) -> Option<SourceEvent> {
        let tracked = self.tracked.remove(path)?;
        let origin = Origin::File(path.into());
        Some(SourceEvent::Accepted {
            deltas: removals(&origin, tracked.services),
            stats: Claim::between(tracked.stats, None),
            tc: Claim::between(tracked.tc, None),
            origin,
        })
    }
}

fn parser_failed() -> ConfigError {
    ConfigError::single(
        "",
        "reading this file failed inside weft (a bug: please report it)",
    )
}

/// Removals of the named services, in name order (deterministic, for logs and tests).
fn removals(origin: &Origin, services: HashMap<Arc<str>, Arc<ServiceSpec>>) -> Vec<Delta> {
    let mut names: Vec<Arc<str>> = services.into_keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| Delta::Remove {
            origin: origin.clone(),
            name,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    const A: &str = "services:\n  - { name: a, address: 10.96.0.1, port: 80, endpoints: [ { address: 10.1.0.1, port: 80 } ] }\n  - { name: b, address: 10.96.0.2, port: 80 }\n";
    const A_CHANGED: &str = "services:\n  - { name: a, address: 10.96.0.1, port: 80, endpoints: [ { address: 10.1.0.1, port: 80, weight: 5 } ] }\n  - { name: c, address: 10.96.0.3, port: 80 }\n";

    fn names(event: &SourceEvent) -> Vec<String> {
        let SourceEvent::Accepted { deltas, .. } = event else {
            panic!("{event:?}");
        };
        deltas
            .iter()
            .map(|d| match d {
                Delta::Upsert { spec, .. } => format!("+{}", spec.name),
                Delta::Remove { name, .. } => format!("-{name}"),
            })
            .collect()
    }

    #[test]
    fn a_changed_file_hands_on_only_the_services_that_changed() {
        let mut files = Files::default();
        let path = Path::new("/etc/weft/a.yaml");
        assert_eq!(names(&files.accept(path, None, 1, config(A))), ["+a", "+b"]);
        assert_eq!(
            names(&files.accept(path, None, 2, config(A_CHANGED))),
            ["-b", "+a", "+c"],
            "removals first"
        );
        assert!(names(&files.accept(path, None, 3, config(A_CHANGED))).is_empty());
        assert_eq!(names(&files.forget(path).unwrap()), ["-a", "-c"]);
    }

    #[test]
    fn the_stats_block_is_claimed_and_released() {
        let mut files = Files::default();
        let path = Path::new("/etc/weft/a.yaml");
        let with = config("services: []\nstats: { connections: false }\n");
        let SourceEvent::Accepted { stats, .. } = files.accept(path, None, 1, with) else {
            panic!()
        };
        assert!(matches!(stats, Claim::Set(s) if !s.connections));
        let SourceEvent::Accepted { stats, .. } =
            files.accept(path, None, 2, config("services: []\n"))
        else {
            panic!()
        };
        assert_eq!(stats, Claim::Cleared);
    }

    #[test]
    fn the_tc_block_is_claimed_changed_and_released_with_its_file() {
        let mut files = Files::default();
        let path = Path::new("/etc/weft/a.yaml");
        let mut tc = |text: &str, digest| match files.accept(path, None, digest, config(text)) {
            SourceEvent::Accepted { tc, stats, .. } => {
                assert_eq!(stats, Claim::Unchanged, "the stats block is another claim");
                tc
            }
            _ => panic!("accepted"),
        };
        let set = |max_flows| Claim::Set(TcSettings { max_flows });
        assert_eq!(tc("tc: { max_flows: 4096 }\n", 1), set(4096));
        assert_eq!(
            tc("tc: { max_flows: 4096 }\nservices: []\n", 2),
            Claim::Unchanged
        );
        assert_eq!(tc("tc: {}\n", 3), set(TcSettings::DEFAULT_MAX_FLOWS));
        let Some(SourceEvent::Accepted { tc, .. }) = files.forget(path) else {
            panic!("forgotten")
        };
        assert_eq!(tc, Claim::Cleared);
    }

    #[test]
    fn only_yaml_files_and_configmap_swaps_concern_a_directory() {
        let dir = Target::Dir("/etc/weft".into());
        assert!(matches!(
            dir.concerned(Path::new("/etc/weft/web.yaml")),
            Some(Concern::One(_))
        ));
        assert!(matches!(
            dir.concerned(Path::new("/etc/weft/..data")),
            Some(Concern::All)
        ));
        assert!(matches!(
            dir.concerned(Path::new("/etc/weft/..2026_11_21_07_51_09.1")),
            Some(Concern::All)
        ));
        assert!(dir.concerned(Path::new("/etc/weft/agent.log")).is_none());
        assert!(
            dir.concerned(Path::new("/etc/weft/.web.yaml.swp"))
                .is_none()
        );
        let file = Target::File("/etc/weft/weft.yaml".into());
        assert!(file.concerned(Path::new("/etc/weft/other.yaml")).is_none());
        assert!(file.concerned(Path::new("/etc/weft/weft.yaml")).is_some());
    }
}
