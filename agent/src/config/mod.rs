//! The config file: its YAML format (`raw`), the validated model (here), and the checks
//! between them (`validate`). A file is accepted whole or rejected whole.

mod error;
mod raw;
mod validate;

use std::{net::IpAddr, path::Path, time::Duration};

pub use error::{ConfigError, FieldError};

/// A validated configuration: every value is in range and consistent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub services: Vec<Service>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub endpoints: Vec<Endpoint>,
    pub health: HealthCheck,
    pub outlier: Option<Outlier>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
    /// 0 drains the endpoint: no new connections.
    pub weight: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Tcp,
    Http { path: String },
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outlier {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: u8,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw = raw::parse(text)?;
        validate::validate(raw)
    }
}
