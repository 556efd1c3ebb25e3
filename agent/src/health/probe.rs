//! Active probes: one task per (service, endpoint), straight to the endpoint address (never
//! the service address), with jitter so many endpoints do not probe in lockstep, and a
//! semaphore bounding how many probe sockets are open at once.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::{Semaphore, mpsc},
    task::JoinHandle,
    time::{Instant, sleep_until, timeout},
};

use super::{EndpointKey, endpoint_key};
use crate::config::{Config, HealthCheck, Probe};

/// Probe sockets open at once, whatever the number of endpoints.
pub const MAX_CONCURRENT_PROBES: usize = 256;

#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub service: String,
    pub endpoint: SocketAddr,
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

pub struct Prober {
    tasks: HashMap<EndpointKey, (HealthCheck, JoinHandle<()>)>,
    limit: Arc<Semaphore>,
    results: mpsc::Sender<ProbeResult>,
    /// Probes run on the I/O runtime, not on the control loop's thread.
    runtime: tokio::runtime::Handle,
}

impl Prober {
    pub fn new(results: mpsc::Sender<ProbeResult>, runtime: tokio::runtime::Handle) -> Self {
        Prober {
            tasks: HashMap::new(),
            limit: Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES)),
            results,
            runtime,
        }
    }

    /// Number of endpoints being probed.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Starts probes for new endpoints or changed checks, stops those no longer wanted.
    pub fn sync(&mut self, config: &Config) {
        let mut wanted: HashMap<EndpointKey, HealthCheck> = HashMap::new();
        for service in &config.services {
            if service.health.probe == Probe::None {
                continue;
            }
            for endpoint in &service.endpoints {
                wanted.insert(endpoint_key(service, endpoint), service.health.clone());
            }
        }
        self.tasks.retain(|key, (check, task)| {
            let keep = wanted.get(key) == Some(check);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, check) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let task = self.runtime.spawn(probe_loop(
                key.clone(),
                check.clone(),
                Arc::clone(&self.limit),
                self.results.clone(),
            ));
            self.tasks.insert(key, (check, task));
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.tasks.values().for_each(|(_, task)| task.abort());
    }
}

async fn probe_loop(
    key: EndpointKey,
    check: HealthCheck,
    limit: Arc<Semaphore>,
    results: mpsc::Sender<ProbeResult>,
) {
    let mut jitter = Jitter::new(&key);
    // The first probe goes at once (the semaphore bounds the burst): a new endpoint is not
    // used before it passes. Later ones drift apart through the jitter.
    let mut next = Instant::now();
    loop {
        sleep_until(next).await;
        let started = Instant::now();
        let outcome = {
            let Ok(_permit) = limit.acquire().await else {
                return;
            };
            probe_once(key.1, &check).await
        };
        let result = ProbeResult {
            service: key.0.clone(),
            endpoint: key.1,
            outcome,
        };
        if results.send(result).await.is_err() {
            return;
        }
        // ±10 % jitter around the interval.
        next = started + check.interval.mul_f64(0.9 + 0.2 * jitter.unit());
    }
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
    let mut stream = TcpStream::connect(endpoint).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {endpoint}\r\nUser-Agent: weft-health\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        let n = stream.read(&mut head[read..]).await?;
        if n == 0 {
            break;
        }
        read += n;
    }
    Ok(parse_status(&head[..read]))
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head).ok()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// A small xorshift generator seeded per endpoint: jitter needs spread, not security.
struct Jitter(u64);

impl Jitter {
    fn new(key: &EndpointKey) -> Self {
        let seed = crate::plan::maglev::endpoint_hash(key.1.ip(), key.1.port())
            ^ key
                .0
                .bytes()
                .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b))
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

    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
    }

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
        server.await.unwrap();
        assert_eq!(
            probe_once(addr, &check(Probe::Tcp)).await,
            ProbeOutcome::Fail(ProbeFailure::Refused),
            "closed port"
        );
    }
}
