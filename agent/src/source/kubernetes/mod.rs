//! Kubernetes as a source: Services and EndpointSlices from the API server, mapped to weft
//! services (`mapping`), kept per Service so a change costs one Service's work (`state`),
//! followed with kube-rs' watcher (`watch`).

pub mod mapping;
pub mod state;
pub mod watch;

use std::net::IpAddr;

use kube::{Client, Config, config::KubeConfigOptions};

use crate::chain::Chain;

/// Why the agent cannot talk to the API server at all (as opposed to not reaching it yet,
/// which it retries).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--kubernetes: the in-cluster config (service account) cannot be used: {0}")]
    InCluster(String),
    #[error(
        "--kubernetes: not in a cluster (KUBERNETES_SERVICE_HOST is unset) and no kubeconfig can be used: {0}"
    )]
    Kubeconfig(String),
    #[error("--kubernetes: {0}")]
    Client(String),
}

/// A client for the API server, and the API server's address where it is an IP address.
pub struct Connected {
    pub client: Client,
    pub api_host: Option<IpAddr>,
}

/// A client for the API server: the in-cluster config (service account token and CA, and
/// `KUBERNETES_SERVICE_HOST`) when the agent runs in a pod, else `KUBECONFIG` (or
/// `~/.kube/config`). Call from within a runtime.
pub async fn client() -> Result<Connected, ClientError> {
    let config = if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        Config::incluster().map_err(|e| ClientError::InCluster(Chain(&e).to_string()))?
    } else {
        Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .map_err(|e| ClientError::Kubeconfig(Chain(&e).to_string()))?
    };
    let api_host = config
        .cluster_url
        .host()
        .and_then(|h| h.trim_matches(['[', ']']).parse().ok());
    let client =
        Client::try_from(config).map_err(|e| ClientError::Client(Chain(&e).to_string()))?;
    Ok(Connected { client, api_host })
}

#[cfg(test)]
mod scripted_tests;
