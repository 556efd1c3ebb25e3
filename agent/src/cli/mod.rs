//! The inspection commands: ask the running agent over its admin socket, print a table or
//! the agent's JSON as it is.

mod client;
mod table;

use std::{io::Write as _, path::PathBuf};

use client::Client;
use table::render;

use crate::api::view::{
    ConnEventView, ConnPath, ConnView, DatapathView, EndpointRow, GovernanceStats, KernelLogView,
    ServiceView, StatsView, StatusView,
};
use crate::datapath::KernelLogLevel;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub enum Query {
    Status,
    Services,
    Endpoints {
        service: Option<String>,
    },
    Conns {
        service: Option<String>,
        follow: bool,
    },
    Stats,
}

/// `weft kernel-log LEVEL`: what the running agent's kernel programs log, from now on.
pub fn set_kernel_log(level: KernelLogLevel, socket: PathBuf) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer: KernelLogView =
        runtime.block_on(Client::new(&socket).put("/v1/kernel-log", &KernelLogView { level }))?;
    println!("kernel log: {}", answer.level);
    Ok(())
}

pub fn run(query: Query, format: Format, socket: PathBuf) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(ask(query, format, Client::new(&socket)))
}

async fn ask(query: Query, format: Format, client: Client) -> anyhow::Result<()> {
    let with_service = |path: &str, service: &Option<String>| match service {
        Some(s) => format!("{path}?service={}", encode(s)),
        None => path.to_string(),
    };
    match query {
        Query::Status => show(&client, "/v1/status", format, status_table).await,
        Query::Services => {
            show(&client, "/v1/services", format, |v: &Vec<_>| {
                services_table(v)
            })
            .await
        }
        Query::Endpoints { service } => {
            let path = with_service("/v1/endpoints", &service);
            show(&client, &path, format, |v: &Vec<_>| endpoints_table(v)).await
        }
        Query::Conns {
            service,
            follow: false,
        } => {
            let path = with_service("/v1/conns", &service);
            show(&client, &path, format, |v: &Vec<_>| conns_table(v)).await
        }
        Query::Conns {
            service,
            follow: true,
        } => follow(&client, &with_service("/v1/conns/follow", &service), format).await,
        Query::Stats => show(&client, "/v1/stats", format, stats_table).await,
    }
}

/// Fetches one answer and prints it: the agent's JSON verbatim, or a table made from it.
async fn show<T: serde::de::DeserializeOwned>(
    client: &Client,
    path: &str,
    format: Format,
    table: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    let (raw, value) = client.json::<T>(path).await?;
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            out.write_all(&raw)?;
            out.write_all(b"\n")?;
        }
        Format::Table => out.write_all(table(&value).as_bytes())?,
    }
    Ok(())
}

/// One line per connection event until interrupted (or the agent goes away).
async fn follow(client: &Client, path: &str, format: Format) -> anyhow::Result<()> {
    if format == Format::Table {
        println!(
            "{:<15} {:<16} {:<22} {:<22} {:>10} {:>10} {:>9}",
            "EVENT", "SERVICE", "SOURCE", "ENDPOINT", "SENT", "RECEIVED", "AGE"
        );
    }
    client
        .lines(path, |line| {
            let mut out = std::io::stdout().lock();
            match format {
                Format::Json => writeln!(out, "{line}")?,
                Format::Table => {
                    let e: ConnEventView = serde_json::from_str(line)?;
                    writeln!(
                        out,
                        "{:<15} {:<16} {:<22} {:<22} {:>10} {:>10} {:>9}",
                        e.event,
                        e.conn.service,
                        e.conn.src.to_string(),
                        e.conn.endpoint.to_string(),
                        table::bytes(e.conn.bytes_sent),
                        table::bytes(e.conn.bytes_received),
                        table::millis(e.conn.age_ms)
                    )?;
                }
            }
            // Followers are often piped into other tools: each event as it happens.
            out.flush()?;
            Ok(())
        })
        .await
}

fn status_table(s: &StatusView) -> String {
    let datapath = match &s.datapath {
        DatapathView::Installed => "installed".to_string(),
        DatapathView::Missing(why) => format!("MISSING ({why})"),
    };
    let mut out = format!(
        "weft {}  ready: {}  generation: {}  uptime: {}\n\
         datapath: {datapath}\n\
         services: {} ({} installed)  endpoints: {}  live connections: {}  events lost: {}\n\
         reverse-NAT entries evicted while in use: {} ({} replies recovered)\n\
         config reloads: {} ok, {} failed  kernel log: {}\n\
         panic mode: {}\n",
        s.version,
        if s.ready { "yes" } else { "no" },
        s.generation,
        table::millis(s.uptime_s * 1000),
        s.services,
        s.services_installed,
        s.endpoints,
        if s.connection_stats {
            s.connections.to_string()
        } else {
            "off (stats.connections: false)".to_string()
        },
        s.events_lost,
        s.reverse_nat_evictions,
        s.reverse_nat_recovered,
        s.config_reloads_ok,
        s.config_reloads_failed,
        s.kernel_log,
        if s.panicking.is_empty() {
            "none".to_string()
        } else {
            s.panicking.join(", ")
        },
    );
    if !s.not_installed.is_empty() {
        out.push_str("not installed (retrying):\n");
        for why in &s.not_installed {
            out.push_str(&format!("  {why}\n"));
        }
    }
    out.push_str("\nprograms attached:\n");
    for p in &s.programs {
        let how = if p.adopted {
            "adopted from the pinned link"
        } else {
            "attached"
        };
        out.push_str(&format!("  {:<18} {how}\n", p.name));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = s
        .maps
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.entries.map_or("-".into(), |e| e.to_string()),
                m.capacity.to_string(),
                m.entries.map_or("-".into(), |e| {
                    format!("{:.1}%", e as f64 * 100.0 / m.capacity.max(1) as f64)
                }),
                table::bytes(m.approx_bytes),
            ]
        })
        .collect();
    out + &render(&["MAP", "ENTRIES", "CAPACITY", "USED", "~MEMORY"], &rows)
}

fn services_table(services: &[ServiceView]) -> String {
    let mut rows = Vec::new();
    for s in services {
        let frontend = format!(
            "{}/{}",
            std::net::SocketAddr::new(s.address, s.port),
            s.protocol
        );
        for e in &s.endpoints {
            rows.push(vec![
                s.name.clone(),
                frontend.clone(),
                std::net::SocketAddr::new(e.address, e.port).to_string(),
                e.state.clone(),
                e.weight.to_string(),
                e.effective_weight.to_string(),
                match (s.panic, e.slow_start_percent) {
                    (true, _) => "PANIC".into(),
                    (false, Some(percent)) => format!("slow start {percent}%"),
                    (false, None) => String::new(),
                },
            ]);
        }
        if s.endpoints.is_empty() {
            rows.push(vec![s.name.clone(), frontend, "-".into()]);
        }
    }
    render(
        &[
            "SERVICE",
            "FRONTEND",
            "ENDPOINT",
            "STATE",
            "WEIGHT",
            "EFFECTIVE",
            "",
        ],
        &rows,
    )
}

fn endpoints_table(endpoints: &[EndpointRow]) -> String {
    let rows: Vec<Vec<String>> = endpoints
        .iter()
        .map(|r| {
            vec![
                r.service.clone(),
                std::net::SocketAddr::new(r.endpoint.address, r.endpoint.port).to_string(),
                r.endpoint.state.clone(),
                r.endpoint.weight.to_string(),
                r.endpoint.effective_weight.to_string(),
                r.stats.connections_open.to_string(),
                r.stats.connections_opened.to_string(),
                r.stats.connect_failures.to_string(),
                table::bytes(r.stats.bytes_sent),
                table::bytes(r.stats.bytes_received),
            ]
        })
        .collect();
    render(
        &[
            "SERVICE",
            "ENDPOINT",
            "STATE",
            "WEIGHT",
            "EFFECTIVE",
            "OPEN",
            "OPENED",
            "FAILED",
            "SENT",
            "RECEIVED",
        ],
        &rows,
    )
}

fn conns_table(conns: &[ConnView]) -> String {
    let rows: Vec<Vec<String>> = conns
        .iter()
        .map(|c| {
            vec![
                c.service.clone(),
                c.src.to_string(),
                c.endpoint.to_string(),
                c.state.clone(),
                c.path.as_str().to_string(),
                table::bytes(c.bytes_sent),
                table::bytes(c.bytes_received),
                // The TC path sees packets, not the sockets' round-trip estimates.
                match c.path {
                    ConnPath::Socket => format!("{:.2}ms", f64::from(c.srtt_us) / 1e3),
                    ConnPath::Tc => "-".to_string(),
                },
                c.retransmits.to_string(),
                table::millis(c.age_ms),
            ]
        })
        .collect();
    render(
        &[
            "SERVICE", "SOURCE", "ENDPOINT", "STATE", "PATH", "SENT", "RECEIVED", "SRTT",
            "RETRANS", "AGE",
        ],
        &rows,
    )
}

fn stats_table(stats: &StatsView) -> String {
    let row = |name: &str, s: &crate::api::view::ConnStats, g: &GovernanceStats| {
        vec![
            name.to_string(),
            s.connections_opened.to_string(),
            s.connections_closed.to_string(),
            s.connect_failures.to_string(),
            s.connections_open.to_string(),
            table::bytes(s.bytes_sent),
            table::bytes(s.bytes_received),
            table::optional(s.mean_duration_ms, "ms"),
            table::optional(s.mean_srtt_us, "µs"),
            g.overflows.to_string(),
            g.fault_aborts.to_string(),
            g.denials.to_string(),
        ]
    };
    let mut rows: Vec<Vec<String>> = stats
        .services
        .iter()
        .map(|s| row(&s.service, &s.stats, &s.governance))
        .collect();
    let refused = stats
        .services
        .iter()
        .fold(GovernanceStats::default(), |sum, s| sum + s.governance);
    rows.push(row("TOTAL", &stats.total, &refused));
    render(
        &[
            "SERVICE",
            "OPENED",
            "CLOSED",
            "FAILED",
            "OPEN",
            "SENT",
            "RECEIVED",
            "MEAN-LIFE",
            "MEAN-SRTT",
            "OVERFLOW",
            "ABORTED",
            "DENIED",
        ],
        &rows,
    ) + &format!("events lost (ring buffer full): {}\n", stats.events_lost)
}

/// Percent-encodes a service name for the query string.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
