//! The bench's client and backends. The client is closed-loop: each worker connects, sends
//! one small HTTP request with `Connection: close`, reads the answer to EOF and closes, then
//! starts over, until the deadline. The backends answer inline on one thread each, so the
//! only thing that differs between contenders is the path in between.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

/// One measurement: connections per second and latency of a whole connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub connections: u64,
    pub failures: u64,
    pub per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Runs `workers` client threads against `target` for `duration`. Call it on a thread that
/// is already in the right network namespace (and cgroup): workers inherit both.
pub fn drive(target: SocketAddr, workers: usize, duration: Duration) -> Sample {
    drive_over(&[target], workers, duration)
}

/// `drive` with each connection going to one of `targets` chosen at random: a random
/// balancer's spread over endpoints, without the balancer.
pub fn drive_over(targets: &[SocketAddr], workers: usize, duration: Duration) -> Sample {
    let run = run_workers_over(targets, workers, duration);
    let elapsed = run.elapsed.as_secs_f64();
    let mut latencies = run.latencies_us;
    latencies.sort_unstable();
    let quantile = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |&v| f64::from(v))
    };
    Sample {
        connections: latencies.len() as u64,
        failures: run.failures.len() as u64,
        per_second: latencies.len() as f64 / elapsed,
        p50_us: quantile(0.5),
        p99_us: quantile(0.99),
    }
}

/// What the workers of one run saw.
pub struct Run {
    pub started: Instant,
    pub elapsed: Duration,
    /// Whole-connection latency of each success.
    pub latencies_us: Vec<u32>,
    /// When each failed connection attempt ended.
    pub failures: Vec<Instant>,
}

/// The closed loop itself: `workers` threads, each connecting again as soon as the previous
/// connection ended, until `duration` is over.
pub fn run_workers(target: SocketAddr, workers: usize, duration: Duration) -> Run {
    run_workers_over(&[target], workers, duration)
}

/// `run_workers`, each connection to one of `targets` chosen at random.
fn run_workers_over(targets: &[SocketAddr], workers: usize, duration: Duration) -> Run {
    let started = Instant::now();
    let deadline = started + duration;
    let threads: Vec<JoinHandle<(Vec<u32>, Vec<Instant>)>> = (0..workers)
        .map(|k| {
            let targets = targets.to_vec();
            let mut pick = Xorshift::seeded(k);
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(100_000);
                let mut failures = Vec::new();
                while Instant::now() < deadline {
                    let target = targets[pick.below(targets.len())];
                    let t = Instant::now();
                    match one_request(target) {
                        Ok(()) => latencies.push(t.elapsed().as_micros() as u32),
                        Err(_) => failures.push(Instant::now()),
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut run = Run {
        started,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
        failures: Vec::new(),
    };
    for t in threads {
        let (latencies, failures) = t.join().expect("load worker");
        run.latencies_us.extend(latencies);
        run.failures.extend(failures);
    }
    run.elapsed = started.elapsed();
    run.failures.sort_unstable();
    run
}

/// A small random generator for picking targets: no cryptography or quality needed, and
/// cheap next to a connection.
struct Xorshift(u64);

impl Xorshift {
    /// Seeded from the clock and the worker's number, so workers pick independently.
    fn seeded(worker: usize) -> Xorshift {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Xorshift((nanos ^ (worker as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }

    /// A number in 0..n.
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One short connection; the answer's first line names the backend.
pub fn one_request(target: SocketAddr) -> std::io::Result<()> {
    one_request_named(target).map(|_| ())
}

pub fn one_request_named(target: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(REQUEST)?;
    let mut answer = Vec::with_capacity(128);
    stream.read_to_end(&mut answer)?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other("bad answer"));
    }
    let body = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(&[][..], |at| &answer[at + 4..]);
    Ok(String::from_utf8_lossy(body).into_owned())
}

/// A listening socket served by an accept loop on a thread of its own, stopped (and joined)
/// by `stop` or on drop: the bench's backends and sinks.
pub struct Server {
    /// A second handle on the listening socket, to wake the blocking accept at stop.
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds in the calling thread's network namespace and hands every accepted connection
    /// to `serve`, on a thread it spawns (which inherits the namespace).
    pub fn start(addr: SocketAddr, mut serve: impl FnMut(TcpStream) + Send + 'static) -> Server {
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bench server bind {addr}: {e}"));
        let handle = listener.try_clone().expect("listener handle");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(stream) = stream {
                    serve(stream);
                }
            }
        });
        Server {
            listener: handle,
            stop,
            thread: Some(thread),
        }
    }

    /// Where it listens (the port the kernel chose, for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Stops serving; the listener closes, so connects to it are refused.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // shutdown(2) on a listening socket wakes a blocked accept (Linux).
        // SAFETY: plain syscall on a socket fd we own.
        unsafe {
            libc::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&self.listener),
                libc::SHUT_RDWR,
            )
        };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An HTTP backend answering every request with its name, one connection at a time.
pub struct Backend(Server);

impl Backend {
    /// Binds in the calling thread's network namespace; serves on a thread it spawns.
    pub fn start(addr: SocketAddr, name: &str) -> Backend {
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
            name.len()
        );
        let mut buf = [0u8; 1024];
        Backend(Server::start(addr, move |mut stream| {
            let mut read = 0;
            while let Ok(n @ 1..) = stream.read(&mut buf[read..]) {
                read += n;
                if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") || read == buf.len() {
                    break;
                }
            }
            let _ = stream.write_all(response.as_bytes());
        }))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// Stops serving; the listener closes, so connects to it are refused.
    pub fn stop(&mut self) {
        self.0.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_answers_with_its_name_until_stopped() {
        let mut backend = Backend::start(SocketAddr::from(([127, 0, 0, 1], 0)), "a");
        let addr = backend.addr();
        for _ in 0..3 {
            assert_eq!(one_request_named(addr).expect("an answer"), "a");
        }
        backend.stop();
        assert!(TcpStream::connect(addr).is_err(), "refused once stopped");
    }

    #[test]
    fn targets_are_picked_evenly() {
        let mut pick = Xorshift::seeded(0);
        let mut counts = [0usize; 2];
        for _ in 0..10_000 {
            counts[pick.below(2)] += 1;
        }
        assert!((4_700..=5_300).contains(&counts[0]), "{counts:?}");
        assert_eq!(Xorshift::seeded(3).below(1), 0);
    }
}
