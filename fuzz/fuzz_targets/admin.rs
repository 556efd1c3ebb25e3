//! Any bytes as an admin API request: the first byte picks the route, the rest is its query
//! string (and, for `PUT /v1/kernel-log`, its JSON body). The API answers every request that
//! HTTP can carry with a success or a client error, never a server error or a panic; what it
//! answers with success is JSON, and a service filter never shows another service.
#![no_main]

use std::{path::Path, sync::Arc};

use axum::body::Body;
use http::{Method, Request};
use http_body_util::BodyExt as _;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;
use weft::{
    api::{Shared, admin},
    config::Config,
    datapath::KernelLogLevel,
    source::{Delta, Origin},
    store::Store,
};

#[derive(serde::Deserialize)]
struct Filter {
    service: Option<String>,
}

/// Two services for the filters to find (or not).
const CONFIG: &str = "services:
  - name: web
    address: 10.96.0.10
    port: 80
    endpoints: [{ address: 10.1.0.1, port: 8080 }]
  - name: db
    address: 10.96.0.11
    port: 5432
    endpoints: [{ address: 10.1.0.2, port: 5432 }]
";

const ROUTES: [&str; 7] = [
    "/v1/status",
    "/v1/services",
    "/v1/endpoints",
    "/v1/conns",
    "/v1/conns/follow",
    "/v1/stats",
    "/v1/kernel-log",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let route = ROUTES[usize::from(pick) % ROUTES.len()];
    let put = route == "/v1/kernel-log";
    let (uri, body) = if put {
        (route.to_string(), rest.to_vec())
    } else {
        (
            format!("{route}?{}", String::from_utf8_lossy(rest)),
            Vec::new(),
        )
    };
    // What HTTP cannot carry (a space, a control character) never reaches the API.
    let Ok(request) = Request::builder()
        .method(if put { Method::PUT } else { Method::GET })
        .uri(&uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
    else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let shared = shared();
        let response = admin::router(Arc::clone(&shared))
            .oneshot(request)
            .await
            .expect("the router answers");
        let status = response.status();
        assert!(
            status.is_success() || status.is_client_error(),
            "{uri}: {status}"
        );
        if !status.is_success() || route == "/v1/conns/follow" {
            // A follower's stream runs until the client leaves.
            return;
        }
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("a whole body")
            .to_bytes();
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{uri}: not JSON: {e}"));
        // The filter as the API reads it (the same query decoding), if it names a service.
        if route == "/v1/endpoints"
            && let Some(rows) = value.as_array()
            && let Some(query) = uri.split_once('?').map(|(_, q)| q)
            && let Ok(Filter {
                service: Some(name),
            }) = serde_urlencoded::from_str::<Filter>(query)
        {
            let services: Vec<&str> = rows.iter().filter_map(|r| r["service"].as_str()).collect();
            assert!(services.iter().all(|s| *s == name), "{uri}: {services:?}");
        }
        if put {
            assert_eq!(value["level"], shared.kernel_log().as_str());
        }
    });
});

fn shared() -> Arc<Shared> {
    let config = Config::parse(CONFIG).expect("the fuzz target's config");
    let origin = Origin::File(Path::new("/etc/weft/fuzz.yaml").into());
    let mut store = Store::default();
    store.apply(
        config
            .services
            .into_iter()
            .map(|spec| Delta::Upsert {
                origin: origin.clone(),
                spec,
            })
            .collect(),
    );
    let (_publish, view) = tokio::sync::watch::channel(Arc::new(store.snapshot()));
    let (follow, _) = tokio::sync::broadcast::channel(16);
    let (kernel_log, _) = tokio::sync::watch::channel(KernelLogLevel::Off);
    Arc::new(Shared::new(view, follow, kernel_log))
}
