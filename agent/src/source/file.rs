//! The config file as a source: watched with inotify (its directory, so editors' atomic
//! renames and Kubernetes ConfigMap symlink swaps are seen) plus a metadata poll as a fallback
//! for filesystems without inotify. The watch starts before the first read, so a change
//! written while the agent starts is never missed. The first read, and each change that
//! alters the file's bytes, yields the parsed and validated config, or the reason it was
//! rejected. Parsing runs on a blocking thread: a large or hostile file never holds up the
//! threads that answer health checks.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::config::{self, Config, ConfigError};

/// A parsed and validated config, or why the file was rejected.
pub type Update = Result<Config, ConfigError>;

/// Settling time after an event: editors write in several steps.
const DEBOUNCE: Duration = Duration::from_millis(50);
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
#[error("watching {}: {error}", path.display())]
pub struct WatchError {
    path: PathBuf,
    error: notify::Error,
}

/// Starts watching `path`, then reads it: the first update is the file as it is. Call from
/// within the runtime the watcher's task should run on.
pub fn watch(path: PathBuf) -> Result<mpsc::Receiver<Update>, WatchError> {
    let (event_tx, mut events) = mpsc::unbounded_channel::<()>();
    let file_name = path.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only writes, creations, renames and removals of the config itself: our own read of
        // the file raises access events, and other files in the directory (a log written
        // beside the config, say) change often; either would have us re-read a config of many
        // megabytes over and over.
        let concerns_config = event.map_or(true, |event| {
            !matches!(event.kind, notify::EventKind::Access(_))
                && event
                    .paths
                    .iter()
                    .any(|p| concerns(p, file_name.as_deref()))
        });
        if concerns_config {
            let _ = event_tx.send(());
        }
    })
    .map_err(|error| WatchError {
        path: path.clone(),
        error,
    })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|error| WatchError {
            path: dir.clone(),
            error,
        })?;

    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        // Owned by the task: dropping it would stop the events.
        let _watcher = watcher;
        let mut last_bytes: Option<Vec<u8>> = None;
        let mut last_meta = metadata_stamp(&path);
        let mut poll = tokio::time::interval(POLL);
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    event = events.recv() => {
                        if event.is_none() { break; }
                        tokio::time::sleep(DEBOUNCE).await;
                        while events.try_recv().is_ok() {}
                    }
                    _ = poll.tick() => {
                        let stamp = metadata_stamp(&path);
                        if stamp == last_meta { continue; }
                    }
                }
            }
            last_meta = metadata_stamp(&path);
            let read_path = path.clone();
            let bytes =
                match tokio::task::spawn_blocking(move || config::read_file(&read_path)).await {
                    Ok(Ok(bytes)) => bytes,
                    // Mid-swap a file may be briefly missing: wait for the next change. At
                    // start, though, the agent must not start on nothing.
                    Ok(Err(ConfigError::Read(error))) if !first => {
                        warn!(path = %path.display(), "config file unreadable: {error}");
                        continue;
                    }
                    Ok(Err(error)) => {
                        last_bytes = None;
                        let at_start = first;
                        first = false;
                        if tx.send(Err(error)).await.is_err() || at_start {
                            break;
                        }
                        continue;
                    }
                    Err(_) => break,
                };
            first = false;
            if last_bytes.as_ref() == Some(&bytes) {
                continue;
            }
            debug!(path = %path.display(), "config file changed");
            let parsed = tokio::task::spawn_blocking({
                let bytes = bytes.clone();
                move || Config::from_bytes(&bytes)
            })
            .await;
            last_bytes = Some(bytes);
            let Ok(parsed) = parsed else { break };
            if tx.send(parsed).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Whether a change to `changed` may change the config: the file itself, or Kubernetes'
/// ConfigMap machinery (`..data` and `..<timestamp>` entries, swapped when the map changes).
fn concerns(changed: &Path, config_name: Option<&std::ffi::OsStr>) -> bool {
    let Some(name) = changed.file_name() else {
        return true;
    };
    Some(name) == config_name || name.as_encoded_bytes().starts_with(b"..")
}

/// What the poll compares: cheap to read, changes whenever the file does.
fn metadata_stamp(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_config_and_configmap_swaps_count_as_changes() {
        let name = Some(std::ffi::OsStr::new("weft.yaml"));
        assert!(concerns(Path::new("/etc/weft/weft.yaml"), name));
        assert!(concerns(Path::new("/etc/weft/..data"), name));
        assert!(concerns(
            Path::new("/etc/weft/..2026_11_21_07_51_09.1"),
            name
        ));
        assert!(!concerns(Path::new("/etc/weft/agent.log"), name));
        assert!(!concerns(Path::new("/etc/weft/.weft.yaml.swp"), name));
    }
}
