//! The agent's JSON log followed from a mark: the applies it logged (with its own time for
//! each) and its endpoints' state changes. The bench reads the agent's measure of its work
//! from here, and its own clock only for what it can see from outside (clients following).

use std::{
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::Agent;

/// The agent's message for an apply a config change caused (and its first apply).
pub const CONFIG_APPLIED: &str = "config applied";
/// The agent's message for an apply endpoint health caused.
pub const HEALTH_APPLIED: &str = "health change applied";

/// How long the agent may take to log what the bench waits for.
const TIMEOUT: Duration = Duration::from_secs(120);
/// How often the log is read while waiting: it bounds the error of the bench's own clock.
const POLL: Duration = Duration::from_millis(1);

/// One apply as the agent logged it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Apply {
    /// Services in force after it.
    pub services: u64,
    /// Services it touched.
    pub changed: u64,
    pub written: u64,
    pub failures: u64,
    /// The agent's own time for it: planning and map writes.
    pub elapsed_ms: f64,
}

impl Apply {
    fn of(line: &Value) -> Apply {
        let count = |field: &str| line[field].as_u64().unwrap_or(0);
        Apply {
            services: count("services"),
            changed: count("changed"),
            written: count("written"),
            failures: count("failures"),
            elapsed_ms: line["elapsed_ms"].as_f64().unwrap_or(f64::NAN),
        }
    }
}

/// A position in the agent's log; waiting moves it past what was found.
pub struct LogCursor {
    path: PathBuf,
    offset: u64,
}

impl LogCursor {
    /// At the log's current end: what the agent logs from now on.
    pub fn at_end(agent: &Agent) -> LogCursor {
        LogCursor {
            path: agent.log.clone(),
            offset: agent.log_mark() as u64,
        }
    }

    /// Waits for applies logged with `message` until one leaves `services` in force, and
    /// returns them all (an install may be split over several applies).
    pub fn applies_until(&mut self, message: &str, services: u64) -> Vec<Apply> {
        let mut applies = Vec::new();
        loop {
            let apply = Apply::of(&self.next(message, |line| is_message(line, message)));
            applies.push(apply);
            if apply.services == services {
                return applies;
            }
        }
    }

    /// Waits for the next apply logged with `message`.
    pub fn next_apply(&mut self, message: &str) -> Apply {
        Apply::of(&self.next(message, |line| is_message(line, message)))
    }

    /// Waits for `endpoint` to change to `state` (of whichever service), then for the apply
    /// that carried the change (the agent logs a change just before its apply).
    pub fn transition_applied(&mut self, endpoint: SocketAddr, state: &str) -> Apply {
        let what = format!("{endpoint} becoming {state}");
        let endpoint = endpoint.to_string();
        self.next(&what, |line| {
            is_message(line, "endpoint state changed")
                && line["endpoint"].as_str() == Some(endpoint.as_str())
                && line["to"].as_str() == Some(state)
        });
        self.next_apply(HEALTH_APPLIED)
    }

    /// Waits for the next complete line `wanted` accepts; panics with the log's new lines
    /// after `TIMEOUT`.
    fn next(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let text = self.unread();
            // Only complete lines: the agent may be halfway through writing the last one.
            let mut consumed = 0;
            for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
                consumed += line.len();
                let Ok(value) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                if wanted(&value) {
                    self.offset += consumed as u64;
                    return value;
                }
            }
            self.offset += consumed as u64;
            assert!(
                Instant::now() < deadline,
                "no {what} in the agent log ({}) within {TIMEOUT:?}",
                self.path.display()
            );
            std::thread::sleep(POLL);
        }
    }

    /// The log from the cursor on (empty if it cannot be read yet).
    fn unread(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.path)
            && file.seek(SeekFrom::Start(self.offset)).is_ok()
        {
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

fn is_message(line: &Value, message: &str) -> bool {
    line["message"].as_str() == Some(message)
}

/// The agent's own time for `applies`, summed.
pub fn elapsed_ms(applies: &[Apply]) -> f64 {
    applies.iter().map(|a| a.elapsed_ms).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apply_is_read_from_the_agents_flattened_fields() {
        let line: Value = serde_json::from_str(
            r#"{"timestamp":"t","level":"INFO","generation":3,"services":10000,"changed":1,"written":1,"removed":0,"backends_added":0,"backends_removed":0,"failures":0,"elapsed_ms":1.25,"message":"config applied","target":"weft::daemon::control"}"#,
        )
        .unwrap();
        assert!(is_message(&line, CONFIG_APPLIED));
        let apply = Apply::of(&line);
        assert_eq!(
            apply,
            Apply {
                services: 10_000,
                changed: 1,
                written: 1,
                failures: 0,
                elapsed_ms: 1.25
            }
        );
        assert_eq!(elapsed_ms(&[apply, apply]), 2.5);
    }
}
