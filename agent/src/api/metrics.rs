//! The Prometheus listener: `/metrics`, and `/healthz` and `/readyz` for the DaemonSet's
//! liveness and readiness probes.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;
use tracing::warn;

use super::{ApiError, Shared};
use crate::stats::classic_text;

pub async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> Result<(), ApiError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| ApiError::Metrics { addr, error })?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(shared);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics listener stopped");
        }
    });
    Ok(())
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), the classic text format for
/// everyone else.
async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let body = shared.exposition().await;
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body.as_str().to_owned(),
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            classic_text(&body),
        )
    }
}

/// Ready once the first config is applied and while the datapath serving it is in place.
async fn ready(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match shared.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
