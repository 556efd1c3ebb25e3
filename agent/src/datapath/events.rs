//! The connection-event ring buffer, read asynchronously: the reader task is the map's one
//! owner and hands decoded events to whoever consumes them.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use weft_common::ConnRecord;

use super::DatapathError;

/// How stale statistics may get: events that do not wake the agent wait at most this long.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventReader {
    pub(super) fn new(ring: RingBuf<MapData>) -> Result<Self, DatapathError> {
        // SAFETY: the RingBuf owns its map fd for its whole life and always reports that same
        // fd, which is what AsyncFd requires. Needs a tokio runtime (the daemon's).
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|error| DatapathError::Io {
            what: "polling",
            path: weft_common::maps::EVENTS.into(),
            source: error.into_parts().1,
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
            if item.len() >= std::mem::size_of::<ConnRecord>() {
                // SAFETY: the kernel wrote a ConnRecord (repr(C), plain integers) here;
                // read_unaligned copes with the ring's 8-byte record alignment.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ConnRecord>()) };
                batch.push(event);
            }
        }
        batch
    }
}
