//! The admin API: JSON over HTTP on a unix socket (mode 0600), serving what the CLI shows.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, put},
};
use serde::Deserialize;
use tokio::{net::UnixListener, sync::broadcast::error::RecvError};
use tracing::warn;

use super::{ApiError, Shared, event_view, view::KernelLogView};

#[derive(Deserialize)]
struct ServiceFilter {
    service: Option<String>,
}

/// Binds the socket (replacing a stale one, refusing to steal a live one) and serves it
/// until the process exits.
pub async fn serve(path: PathBuf, shared: Arc<Shared>) -> Result<(), ApiError> {
    let listener = bind(&path).await?;
    let app = router(shared);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "admin API stopped");
        }
    });
    Ok(())
}

/// The admin API's routes over `shared` (public for the fuzz target that feeds it any
/// request line).
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/services", get(services))
        .route("/v1/endpoints", get(endpoints))
        .route("/v1/conns", get(conns))
        .route("/v1/conns/follow", get(follow))
        .route("/v1/stats", get(stats))
        .route("/v1/kernel-log", put(set_kernel_log))
        .with_state(shared)
}

async fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    let error = |error| ApiError::Admin {
        path: path.to_path_buf(),
        error,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(error)?;
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(error(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another agent is serving on it",
        )));
    }
    // Left behind by an agent that did not exit cleanly.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(error)?;
    Ok(listener)
}

/// Removes the socket file at exit.
pub fn unbind(path: &Path) {
    let _ = std::fs::remove_file(path);
}

async fn status(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(shared.status().await)
}

async fn set_kernel_log(
    State(shared): State<Arc<Shared>>,
    Json(wanted): Json<KernelLogView>,
) -> impl IntoResponse {
    shared.set_kernel_log(wanted.level);
    Json(KernelLogView {
        level: shared.kernel_log(),
    })
}

async fn services(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(shared.services())
}

async fn endpoints(
    State(shared): State<Arc<Shared>>,
    Query(filter): Query<ServiceFilter>,
) -> Response {
    match shared.endpoints(filter.service.as_deref()).await {
        Some(rows) => Json(rows).into_response(),
        None => not_found(filter.service),
    }
}

async fn conns(State(shared): State<Arc<Shared>>, Query(filter): Query<ServiceFilter>) -> Response {
    if !shared.knows(filter.service.as_deref()) {
        return not_found(filter.service);
    }
    Json(shared.connections(filter.service).await).into_response()
}

/// One JSON object per line per connection event, for as long as the client listens.
async fn follow(
    State(shared): State<Arc<Shared>>,
    Query(filter): Query<ServiceFilter>,
) -> Response {
    if !shared.knows(filter.service.as_deref()) {
        return not_found(filter.service);
    }
    let events = shared.follow();
    let lines = futures_util::stream::unfold(
        (events, filter.service),
        |(mut events, service)| async move {
            loop {
                match events.recv().await {
                    Ok(e) if service.as_deref().is_none_or(|s| s == &*e.service) => {
                        let mut line = serde_json::to_vec(&event_view(&e)).unwrap_or_default();
                        line.push(b'\n');
                        return Some((
                            Ok::<_, std::io::Error>(Bytes::from(line)),
                            (events, service),
                        ));
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        warn!(
                            missed,
                            "a `weft conns --follow` client fell behind; events skipped"
                        );
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

async fn stats(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(shared.stats().await)
}

fn not_found(service: Option<String>) -> Response {
    let message = format!("no service named {:?}", service.unwrap_or_default());
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}
