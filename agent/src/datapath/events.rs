//! The connection-event ring buffer, read asynchronously: the reader task is the map's one
//! owner and hands decoded events to whoever consumes them.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use weft_common::ConnRecord;

use super::DatapathError;

/// How stale statistics may get: events that do not wake the agent wait at most this long.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The ring, not yet registered with a runtime: the datapath opens it on the control
/// thread, and the reader runs wherever its task is spawned.
pub struct EventRing(pub(super) RingBuf<MapData>);

pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventReader {
    /// Registers the ring for polling with the runtime this is called on.
    pub fn new(ring: EventRing) -> Result<Self, DatapathError> {
        // SAFETY: the RingBuf owns its map fd for its whole life and always reports that same
        // fd, which is what AsyncFd requires.
        let ring = unsafe { AsyncFd::register(ring.0) }.map_err(|error| DatapathError::Io {
            what: "polling",
            path: weft_common::maps::EVENTS.into(),
            error: error.into_parts().1,
        })?;
        Ok(EventReader { ring })
    }

    /// Waits for events and returns every one available. The kernel wakes us only for what
    /// needs a prompt answer (connect failures, a filling ring); everything else is collected
    /// every `POLL_INTERVAL`, in one batch.
    pub async fn next_batch(&mut self) -> std::io::Result<Vec<ConnRecord>> {
        loop {
            let batch = self.drain();
            if !batch.is_empty() {
                return Ok(batch);
            }
            tokio::select! {
                ready = self.ring.readable_mut() => {
                    // Cleared before the next drain, so an event committed after it raises
                    // readiness again instead of being missed.
                    ready?.clear_ready();
                }
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    fn drain(&mut self) -> Vec<ConnRecord> {
        let ring = self.ring.get_mut();
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            batch.extend(crate::stats::record::decode(&item));
        }
        batch
    }
}
