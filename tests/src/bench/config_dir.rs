//! weft's config directory as the bench drives it: emptied until the agent holds no
//! service, then filled with a rule set's files and timed until every service is in force.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use super::{
    applies::{CONFIG_APPLIED, LogCursor},
    lab::WeftChange,
};
use crate::Agent;

/// Empties `agent`'s config directory, then writes `files` (name, text) and times until
/// the agent has `services` services in force.
pub fn install(agent: &Agent, files: &[(String, String)], services: usize) -> WeftChange {
    clear(agent);
    let mut log = LogCursor::at_end(agent);
    let started = Instant::now();
    for (name, text) in files {
        agent.write_config_file(name, text);
    }
    let applies = log.applies_until(CONFIG_APPLIED, services as u64);
    WeftChange {
        files: files.len(),
        to_kernel: started.elapsed(),
        applies,
    }
}

/// Removes every file of the config directory and waits until the agent holds no service,
/// so the next install starts from scratch.
pub fn clear(agent: &Agent) {
    let in_force = agent.cli_json(&["status"])["services"]
        .as_u64()
        .unwrap_or(0);
    let mut log = LogCursor::at_end(agent);
    for file in config_files(&agent.config) {
        std::fs::remove_file(&file).unwrap_or_else(|e| panic!("removing {}: {e}", file.display()));
    }
    // An agent holding nothing logs nothing for the removal of files that held nothing.
    if in_force > 0 {
        log.applies_until(CONFIG_APPLIED, 0);
    }
}

/// The config files in the directory now.
fn config_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect()
}
