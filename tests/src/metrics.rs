//! The agent's Prometheus endpoint as a scraper sees it, and reading samples out of it.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use crate::NetNs;

/// Where the agent listens by default (inside the test's network namespace).
pub const METRICS_ADDR: &str = "127.0.0.1:9464";

/// GET `path` from the agent's metrics listener: (status code, body).
pub fn get(netns: &NetNs, path: &str) -> (u16, String) {
    get_accepting(netns, path, "*/*")
}

/// GET with an Accept header (Prometheus itself asks for OpenMetrics).
pub fn get_accepting(netns: &NetNs, path: &str, accept: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.0\r\nHost: weft\r\nAccept: {accept}\r\n\r\n");
    netns.run(move || {
        let mut stream = TcpStream::connect(METRICS_ADDR).expect("connecting to /metrics");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(request.as_bytes()).expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        (status, body.to_string())
    })
}

/// Scrapes until `done` holds (the agent counts asynchronously), at most `within`; fails
/// naming `what` with the last scrape.
pub fn scrape_until(
    netns: &NetNs,
    within: Duration,
    what: &str,
    done: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + within;
    loop {
        let scrape = scrape(netns);
        if done(&scrape) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not within {within:?}:\n{}",
            scrape.0
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn scrape(netns: &NetNs) -> Scrape {
    let (status, body) = get(netns, "/metrics");
    assert_eq!(status, 200, "/metrics answered {status}: {body}");
    Scrape(body)
}

pub struct Scrape(pub String);

impl Scrape {
    /// The value of the sample `name{labels}`; labels must match exactly (in any order).
    /// Absent series read as 0: a counter nobody incremented.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or(0.0)
    }

    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        want.sort();
        self.0.lines().find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let mut have: Vec<String> = if rest.is_empty() {
                Vec::new()
            } else {
                rest.split(',').map(str::to_string).collect()
            };
            have.sort();
            (have == want).then(|| value.parse().ok())?
        })
    }
}
