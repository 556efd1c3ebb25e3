//! Active probes, straight to the endpoint address (never the service address). One
//! scheduler task keeps every probed endpoint in a timer heap (a few dozen bytes each, not a
//! task each) and starts each probe when it is due, with ±10 % jitter so endpoints do not
//! probe in lockstep; a semaphore bounds how many probe sockets are open at once.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    net::SocketAddr,
    sync::Arc,
};

use http_body_util::Empty;
use hyper::{Request, body::Bytes, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpStream,
    sync::{Semaphore, mpsc},
    time::{Instant, sleep_until, timeout},
};

use crate::{
    config::{HealthCheck, Probe},
    layout,
    store::{EndpointRef, ProbeChange},
};

/// Probe sockets open at once, whatever the number of endpoints.
pub const MAX_CONCURRENT_PROBES: usize = 256;

#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub target: EndpointRef,
    pub outcome: ProbeOutcome,
}

/// What one probe found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    Pass,
    Fail(ProbeFailure),
    /// The probe could not be sent, which says nothing about the endpoint.
    Inconclusive(NotSent),
}

/// Why a probe failed, for the log: an operator must tell a dead endpoint from a slow one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    #[error("connection refused")]
    Refused,
    #[error("no answer within the timeout")]
    TimedOut,
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("not an HTTP answer")]
    NotHttp,
    #[error("{}", std::io::Error::from_raw_os_error(*.0))]
    Os(i32),
    #[error("{0}")]
    Io(std::io::ErrorKind),
}

/// Why a probe was never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotSent {
    #[error(
        "no local port for the probe's connection (EADDRNOTAVAIL): the node's ephemeral ports are exhausted, e.g. by connections in TIME_WAIT; the endpoint's state is kept"
    )]
    LocalPortsExhausted,
}

impl ProbeOutcome {
    fn from_io(error: &std::io::Error) -> ProbeOutcome {
        match error.raw_os_error() {
            Some(libc::EADDRNOTAVAIL) => ProbeOutcome::Inconclusive(NotSent::LocalPortsExhausted),
            Some(libc::ECONNREFUSED) => ProbeOutcome::Fail(ProbeFailure::Refused),
            Some(errno) => ProbeOutcome::Fail(ProbeFailure::Os(errno)),
            None => ProbeOutcome::Fail(ProbeFailure::Io(error.kind())),
        }
    }
}

/// The control loop's handle on the scheduler task.
pub struct Prober {
    changes: mpsc::UnboundedSender<ProbeChange>,
}

impl Prober {
    /// Starts the scheduler on `runtime` (the I/O runtime: probes never run on the control
    /// loop's thread); results go to `results`.
    pub fn new(results: mpsc::Sender<ProbeResult>, runtime: &tokio::runtime::Handle) -> Self {
        let (changes, commands) = mpsc::unbounded_channel();
        runtime.spawn(schedule(commands, results));
        Prober { changes }
    }

    /// Starts, changes or stops probing endpoints.
    pub fn apply(&self, changes: Vec<ProbeChange>) {
        for change in changes {
            let _ = self.changes.send(change);
        }
    }
}

/// One probed endpoint. `generation` tells a heap entry of an earlier check from the
/// current one, so changing or stopping a probe never needs to search the heap.
struct Target {
    check: Arc<HealthCheck>,
    generation: u32,
    jitter: Jitter,
}

/// A heap entry: when, which endpoint, of which generation.
type Due = Reverse<(Instant, u32, SocketAddr, u32)>;

async fn schedule(
    mut changes: mpsc::UnboundedReceiver<ProbeChange>,
    results: mpsc::Sender<ProbeResult>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
    let mut targets: HashMap<EndpointRef, Target> = HashMap::new();
    let mut heap: BinaryHeap<Due> = BinaryHeap::new();
    let mut generations: u32 = 0;
    loop {
        let next = heap.peek().map(|Reverse((at, ..))| *at);
        tokio::select! {
            change = changes.recv() => {
                let Some(change) = change else { return };
                match change.check {
                    Some(check) => {
                        generations = generations.wrapping_add(1);
                        // The first probe goes at once (the semaphore bounds the burst): a
                        // new endpoint is not used before it passes.
                        heap.push(Reverse((
                            Instant::now(),
                            change.target.service.0,
                            change.target.endpoint,
                            generations,
                        )));
                        targets.insert(change.target, Target {
                            check,
                            generation: generations,
                            jitter: Jitter::new(change.target),
                        });
                    }
                    None => {
                        targets.remove(&change.target);
                    }
                }
            }
            () = sleep_until(next.unwrap_or_else(far_future)), if next.is_some() => {
                let now = Instant::now();
                while let Some(Reverse((at, service, endpoint, generation))) = heap.peek().copied() {
                    if at > now {
                        break;
                    }
                    heap.pop();
                    let key = EndpointRef { service: crate::store::ServiceId(service), endpoint };
                    let Some(target) = targets.get_mut(&key).filter(|t| t.generation == generation) else {
                        continue;
                    };
                    // ±10 % jitter around the interval.
                    let next = at + target.check.interval.mul_f64(0.9 + 0.2 * target.jitter.unit());
                    heap.push(Reverse((next.max(now), service, endpoint, generation)));
                    let (check, limit, results) = (Arc::clone(&target.check), Arc::clone(&limit), results.clone());
                    tokio::spawn(async move {
                        let Ok(_permit) = limit.acquire().await else { return };
                        let outcome = probe_once(endpoint, &check).await;
                        let _ = results.send(ProbeResult { target: key, outcome }).await;
                    });
                }
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(3600)
}

/// One probe within the check's timeout.
pub async fn probe_once(endpoint: SocketAddr, check: &HealthCheck) -> ProbeOutcome {
    let attempt = async {
        match &check.probe {
            Probe::None => ProbeOutcome::Pass,
            Probe::Tcp => match TcpStream::connect(endpoint).await {
                Ok(_) => ProbeOutcome::Pass,
                Err(e) => ProbeOutcome::from_io(&e),
            },
            Probe::Http { path } => match http_get(endpoint, path).await {
                Ok(Some(code)) if (200..400).contains(&code) => ProbeOutcome::Pass,
                Ok(Some(code)) => ProbeOutcome::Fail(ProbeFailure::Status(code)),
                Ok(None) => ProbeOutcome::Fail(ProbeFailure::NotHttp),
                Err(e) => ProbeOutcome::from_io(&e),
            },
        }
    };
    timeout(check.timeout, attempt)
        .await
        .unwrap_or(ProbeOutcome::Fail(ProbeFailure::TimedOut))
}

/// GET `path`; the answer's status code, if it is HTTP.
async fn http_get(endpoint: SocketAddr, path: &str) -> std::io::Result<Option<u16>> {
    let stream = TcpStream::connect(endpoint).await?;
    let Ok((mut sender, connection)) = http1::handshake(TokioIo::new(stream)).await else {
        return Ok(None);
    };
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(hyper::header::HOST, endpoint.to_string())
        .header(hyper::header::USER_AGENT, "weft-health")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(std::io::Error::other)?;
    match sender.send_request(request).await {
        Ok(response) => Ok(Some(response.status().as_u16())),
        Err(_) => Ok(None),
    }
}

/// A small xorshift generator seeded per endpoint: jitter needs spread, not security.
struct Jitter(u64);

impl Jitter {
    fn new(target: EndpointRef) -> Self {
        let seed = layout::endpoint_hash(target.endpoint)
            ^ layout::mix(u64::from(target.service.0))
            ^ u64::from(std::process::id());
        Jitter(seed | 1)
    }

    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn tcp_and_http_probes_against_real_listeners() {
        use crate::config::HealthCheck;
        let check = |probe| HealthCheck {
            probe,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable", "301 Moved"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                s.write_all(reply.as_bytes()).await.unwrap();
            }
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
        });
        let http = check(Probe::Http {
            path: "/healthz".into(),
        });
        assert_eq!(probe_once(addr, &http).await, ProbeOutcome::Pass, "200");
        assert_eq!(
            probe_once(addr, &http).await,
            ProbeOutcome::Fail(ProbeFailure::Status(503))
        );
        assert_eq!(probe_once(addr, &http).await, ProbeOutcome::Pass, "301");
        assert_eq!(
            probe_once(addr, &http).await,
            ProbeOutcome::Fail(ProbeFailure::NotHttp),
            "not HTTP"
        );
        server.await.unwrap();
        assert_eq!(
            probe_once(addr, &check(Probe::Tcp)).await,
            ProbeOutcome::Fail(ProbeFailure::Refused),
            "closed port"
        );
    }
}
