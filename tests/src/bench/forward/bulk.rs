//! Bulk transfer: one long TCP stream from the client into a sink at an endpoint, bounded in
//! time and bytes. The sink counts what arrived and answers the count once the client has
//! shut its side, so a stream only counts when every byte made it through the node.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use crate::bench::load::Server;

/// Bytes per write and per read: large enough that syscalls are not what is measured.
const CHUNK: usize = 256 << 10;

/// How long a stalled stream may block a read or write before it counts as failed.
const STALL: Duration = Duration::from_secs(5);

/// One stream's outcome.
#[derive(Clone, Debug, Default)]
pub struct Stream {
    /// Bytes the sink confirmed.
    pub bytes: u64,
    /// From the connection's first byte to the sink's count.
    pub elapsed: Duration,
    /// Why the stream failed, if it did.
    pub error: Option<String>,
}

impl Stream {
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
}

/// Sends to `target` for `duration` or `max_bytes`, whichever ends first, then waits for
/// the sink's count. Call it on a thread in the client's network namespace.
pub fn stream(target: SocketAddr, duration: Duration, max_bytes: u64) -> Stream {
    let started = Instant::now();
    match send(target, duration, max_bytes) {
        Ok((bytes, elapsed)) => Stream {
            bytes,
            elapsed,
            error: None,
        },
        Err(e) => Stream {
            bytes: 0,
            elapsed: started.elapsed(),
            error: Some(format!("{target}: {e}")),
        },
    }
}

fn send(
    target: SocketAddr,
    duration: Duration,
    max_bytes: u64,
) -> std::io::Result<(u64, Duration)> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    stream.set_write_timeout(Some(STALL))?;
    stream.set_read_timeout(Some(STALL))?;
    let chunk = vec![0x5a_u8; CHUNK];
    let started = Instant::now();
    let deadline = started + duration;
    let mut sent = 0u64;
    while Instant::now() < deadline && sent < max_bytes {
        stream.write_all(&chunk)?;
        sent += CHUNK as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count)?;
    let elapsed = started.elapsed();
    let received = u64::from_be_bytes(count);
    if received != sent {
        return Err(std::io::Error::other(format!(
            "the sink counted {received} of {sent} bytes"
        )));
    }
    Ok((received, elapsed))
}

/// A sink: a thread per connection reads to EOF and answers the byte count. Stops on drop.
pub struct Sink {
    /// Held for its drop.
    _server: Server,
}

impl Sink {
    /// Binds in the calling thread's network namespace; serves on threads it spawns.
    pub fn start(addr: SocketAddr) -> Sink {
        // Each connection ends at EOF or after STALL without a byte.
        Sink {
            _server: Server::start(addr, |stream| {
                std::thread::spawn(move || drain(stream));
            }),
        }
    }
}

/// Reads to EOF, then answers how many bytes arrived.
fn drain(mut stream: TcpStream) {
    if stream.set_read_timeout(Some(STALL)).is_err() {
        return;
    }
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(_) => return,
        }
    }
    let _ = stream.write_all(&total.to_be_bytes());
}
