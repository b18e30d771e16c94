//! The admin listener every long-running process serves, for its operators and its scheduler:
//! `/metrics` (Prometheus text), `/livez` (the process answers) and `/readyz` (connected to NATS and
//! every stream, consumer and bucket it needs exists; 503 with the problems otherwise).

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use reno_nats::readiness::{self, Needed};
use tokio::sync::Mutex;

/// Histogram buckets, in seconds, for every `_seconds` histogram: from half a millisecond (a push on
/// a quiet machine) to a minute (an event held back by retries).
const SECONDS_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// How long a readiness answer is reused: a scheduler probing often costs NATS one check per period.
const READINESS_CACHE: Duration = Duration::from_secs(2);

/// What `/readyz` checks.
struct Readiness {
    /// The process's own connection for the checks.
    client: async_nats::Client,
    /// The JetStream objects the process cannot work without.
    needed: Vec<Needed>,
    /// The last answer and when it was found.
    last: Mutex<Option<(tokio::time::Instant, Vec<String>)>>,
}

impl Readiness {
    async fn problems(&self) -> Vec<String> {
        let mut last = self.last.lock().await;
        if let Some((when, problems)) = last.as_ref()
            && when.elapsed() < READINESS_CACHE
        {
            return problems.clone();
        }
        let problems = readiness::problems(&self.client, &self.needed).await;
        *last = Some((tokio::time::Instant::now(), problems.clone()));
        problems
    }
}

/// Installs the metrics recorder of this process (once), so that counters count from the start.
pub fn install_metrics() -> Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .context("histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")
}

/// Serves the admin listener on `address` until `shutdown` completes. Readiness is checked on a
/// connection of its own to `endpoint` against `needed`.
pub async fn serve<S: Future<Output = ()> + Send + 'static>(
    address: SocketAddr,
    metrics: PrometheusHandle,
    endpoint: &reno_nats::Endpoint,
    name: &str,
    needed: Vec<Needed>,
    shutdown: S,
) -> Result<impl Future<Output = ()> + Send + use<S>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot serve the admin listener on {address}"))?;
    // Connected in the background: the listener answers /livez (and 503 on /readyz) meanwhile.
    let client = endpoint
        .options(&format!("{name}-admin"))
        .retry_on_initial_connect()
        .connect(reno_nats::server_addrs(&endpoint.url)?)
        .await
        .context("admin connection")?;
    let readiness = Arc::new(Readiness { client, needed, last: Mutex::new(None) });
    let metrics_route = get(move || std::future::ready(metrics.render()));
    let app = Router::new()
        .route("/metrics", metrics_route)
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(readiness);
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    Ok(async move {
        if let Err(error) = server.await {
            tracing::warn!(%error, "admin listener stopped");
        }
    })
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> impl IntoResponse {
    let problems = readiness.problems().await;
    let status = if problems.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(serde_json::json!({ "ready": problems.is_empty(), "problems": problems })))
}
