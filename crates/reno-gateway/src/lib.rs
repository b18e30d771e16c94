//! The HTTP gateway, for what cannot speak NATS: services post events (with a service token; the
//! same validation, errors and dedup as the NATS path), devices that cannot hold a socket pull their
//! history (with their device token; the same isolation and resync rules), operators and services
//! ask who is online, schedulers probe liveness and readiness, and a person opens the browser
//! device page. Talks to NATS as one of reno's own processes (the hub's RENO account).

#![forbid(unsafe_code)]

mod error;
mod events;
mod identity;
mod pull;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use reno_auth::TokenKeys;
use reno_model::{MemberId, Registry};
use tokio::sync::watch;
use tracing::info;

pub use error::ApiError;
use identity::ServiceTokens;

/// What the gateway needs.
pub struct GatewayConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The operator's public keys, for device tokens (pull).
    pub token_keys: TokenKeys,
    /// The tokens services present (events, presence).
    pub service_tokens: Vec<String>,
    /// The browser device page (`index.html`, `app.js`); `None` serves no page.
    pub web_dir: Option<PathBuf>,
}

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {address}: {source}")]
    Listen { address: SocketAddr, source: std::io::Error },
    #[error("the gateway stopped: {0}")]
    Serve(std::io::Error),
}

/// Everything a request handler shares.
pub(crate) struct Gateway {
    pub client: async_nats::Client,
    pub jetstream: async_nats::jetstream::Context,
    pub publisher: reno_nats::Publisher,
    /// The registry in force, followed.
    pub registry: watch::Receiver<Arc<Registry>>,
    pub token_keys: TokenKeys,
    pub service_tokens: ServiceTokens,
    pub web_dir: Option<PathBuf>,
}

/// Serves the gateway on `client` until `shutdown` completes.
pub async fn run(
    client: async_nats::Client,
    registry: watch::Receiver<Arc<Registry>>,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| GatewayError::Listen { address: config.listen, source })?;
    let gateway = Arc::new(Gateway {
        jetstream: async_nats::jetstream::new(client.clone()),
        publisher: reno_nats::Publisher::new(client.clone()),
        client,
        registry,
        token_keys: config.token_keys,
        service_tokens: ServiceTokens::new(config.service_tokens),
        web_dir: config.web_dir,
    });
    let app = router(gateway);
    info!(address = %config.listen, "gateway listening");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(GatewayError::Serve)
}

fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/events", post(events::post))
        .route("/v1/pull", get(pull::get))
        .route("/v1/presence/{member}", get(presence))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/", get(page))
        .route("/app.js", get(script))
        .fallback(|| async { ApiError::not_found() })
        .layer(axum::extract::DefaultBodyLimit::max(events::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(count_responses))
        .with_state(gateway)
}

/// Counts every answer by route and status (`reno_gateway_responses_total`).
async fn count_responses(
    route: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = route.map_or_else(|| "other".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(error::RESPONSES_METRIC, "route" => route, "status" => status).increment(1);
    response
}

/// `GET /v1/presence/{member}`: the member's online devices (service token).
async fn presence(
    State(gateway): State<Arc<Gateway>>,
    headers: axum::http::HeaderMap,
    Path(member): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    gateway.service_tokens.check(&headers)?;
    let member = MemberId::new(member).map_err(ApiError::token)?;
    let devices =
        reno_presence::online_devices(&gateway.jetstream, &member).await.map_err(ApiError::unavailable)?;
    let devices: Vec<_> = devices
        .into_iter()
        .map(|device| {
            serde_json::json!({
                "device_type": device.device_type.as_str(),
                "device_id": device.device_id.as_str(),
                "seen_ms": device.seen_ms,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "member": member.as_str(), "devices": devices })))
}

/// `GET /readyz`: connected to NATS, with the buckets it reads.
async fn ready(State(gateway): State<Arc<Gateway>>) -> impl IntoResponse {
    use reno_model::subject;
    use reno_nats::readiness::Needed;
    let needed = [
        Needed::Bucket(subject::REGISTRY_BUCKET.to_owned()),
        Needed::Bucket(subject::PRESENCE_BUCKET.to_owned()),
    ];
    let problems = reno_nats::readiness::problems(&gateway.client, &needed).await;
    let status = if problems.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(serde_json::json!({ "ready": problems.is_empty(), "problems": problems })))
}

async fn page(State(gateway): State<Arc<Gateway>>) -> Result<Response, ApiError> {
    static_file(&gateway, "index.html", "text/html; charset=utf-8").await
}

async fn script(State(gateway): State<Arc<Gateway>>) -> Result<Response, ApiError> {
    static_file(&gateway, "app.js", "text/javascript; charset=utf-8").await
}

/// One file of the page, by a fixed name (never a path from the request).
async fn static_file(
    gateway: &Gateway,
    name: &str,
    content_type: &'static str,
) -> Result<Response, ApiError> {
    let Some(dir) = &gateway.web_dir else { return Err(ApiError::not_found()) };
    let body = tokio::fs::read(dir.join(name)).await.map_err(|_| ApiError::not_found())?;
    Ok(([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response())
}
