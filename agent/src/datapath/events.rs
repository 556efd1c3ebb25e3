//! The connection-event ring buffer, read asynchronously: the reader task is the map's one
//! owner and hands decoded events to whoever consumes them.

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use weft_common::ConnRecord;

use super::DatapathError;

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

    /// Waits for events and returns every one available.
    pub async fn next_batch(&mut self) -> std::io::Result<Vec<ConnRecord>> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let mut batch = Vec::new();
            while let Some(item) = ring.next() {
                if item.len() >= std::mem::size_of::<ConnRecord>() {
                    // SAFETY: the kernel wrote a ConnRecord (repr(C), plain integers) here;
                    // read_unaligned copes with the ring's 8-byte record alignment.
                    let event =
                        unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ConnRecord>()) };
                    batch.push(event);
                }
            }
            guard.clear_ready();
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }
}
