//! The NATS service around the history reader: parses the subject and the CBOR request, answers
//! with a CBOR page or a service error (`Nats-Service-Error`, `Nats-Service-Error-Code`).

use std::{future::Future, sync::Arc};

use async_nats::service::{self, ServiceExt};
use bytes::Bytes;
use futures::StreamExt;
use reno_model::{PullRequest, subject};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::history::{HistoryError, HistoryReader};

/// Counter of pull requests by result: `ok`, `bad_request` (400) or `error` (503, 504).
pub const REQUESTS_METRIC: &str = "reno_pull_requests_total";
/// Histogram of seconds from taking a pull request to sending its answer.
pub const LATENCY_METRIC: &str = "reno_pull_request_seconds";

/// Requests answered at once by one service instance.
const MAX_CONCURRENT_REQUESTS: usize = 512;

/// Why the pull service could not run.
#[derive(Debug, thiserror::Error)]
pub enum PullServiceError {
    #[error("cannot start the pull service: {0}")]
    Start(async_nats::Error),
}

/// The JetStream objects the pull service cannot work without.
pub fn needs() -> Vec<reno_nats::readiness::Needed> {
    vec![reno_nats::readiness::Needed::Bucket(subject::HISTORY_BUCKET.to_owned())]
}

/// Serves pull requests on `client` until `shutdown` completes, reading the documents on the
/// `readers`' connections (at least one; see [`HistoryReader::start`]).
pub async fn run(
    client: async_nats::Client,
    readers: Vec<async_nats::Client>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PullServiceError> {
    let service = client
        .service_builder()
        .description("reno pull: a member's notifications for a device type since a cursor")
        .start(subject::PULL_SERVICE, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(PullServiceError::Start)?;
    let mut endpoint = service
        .endpoint_builder()
        .name("pull")
        .add(subject::PULL_SUBJECTS)
        .await
        .map_err(PullServiceError::Start)?;
    let reader = HistoryReader::start(client.clone(), readers).await;
    let tracer = reno_nats::Tracer::follow(client.clone(), "pull");
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS));
    info!(subjects = subject::PULL_SUBJECTS, "pull service started");

    tokio::pin!(shutdown);
    loop {
        // A free slot first, so that a burst waits in the endpoint rather than in memory here; a
        // shutdown is taken while waiting for either.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let request = tokio::select! {
            () = &mut shutdown => break,
            request = endpoint.next() => match request {
                Some(request) => request,
                None => break,
            },
        };
        let reader = reader.clone();
        let tracer = tracer.clone();
        let span = info_span!("pull", subject = %request.message.subject);
        tokio::spawn(
            async move {
                let started = std::time::Instant::now();
                let response = answer(&reader, &tracer, &request).await;
                if let Err(error) = request.respond(response).await {
                    warn!(%error, "cannot send pull response");
                }
                metrics::histogram!(LATENCY_METRIC).record(started.elapsed().as_secs_f64());
                drop(permit);
            }
            .instrument(span),
        );
    }
    // Leave the queue group first, so that no new request is routed here, then let the answers
    // in flight finish before the connection goes.
    if let Err(error) = endpoint.stop().await {
        warn!(%error, "cannot leave the queue group");
    }
    let _ = permits.acquire_many(MAX_CONCURRENT_REQUESTS as u32).await;
    let _ = client.flush().await;
    info!("pull service stopped");
    Ok(())
}

async fn answer(
    reader: &HistoryReader,
    tracer: &reno_nats::Tracer,
    request: &service::Request,
) -> Result<Bytes, service::error::Error> {
    let bad_request = |status: String| {
        metrics::counter!(REQUESTS_METRIC, "result" => "bad_request").increment(1);
        service::error::Error { status, code: 400 }
    };
    let Some((member, device_type)) = subject::parse_pull_subject(request.message.subject.as_str()) else {
        return Err(bad_request(
            "subject is not reno.pull.<member>.<device_type> with tokens of ASCII letters, digits, '-' or '_'".into(),
        ));
    };
    let pull = if request.message.payload.is_empty() {
        PullRequest::default()
    } else {
        PullRequest::decode(&request.message.payload).map_err(|error| {
            bad_request(format!("pull request: {error}; expected CBOR {{cursor, limit?}}"))
        })?
    };
    let page = reader.page(&member, &device_type, pull).await;
    if tracer.is_traced(&member) {
        let record = match &page {
            Ok(page) => serde_json::json!({
                "stage": "pull", "device_type": device_type.as_str(), "cursor": pull.cursor, "epoch": pull.epoch,
                "returned": page.notifications.iter().map(|notification| notification.seq).collect::<Vec<_>>(),
                "more": page.more, "resync": page.resync, "next_cursor": page.next_cursor,
            }),
            Err(error) => serde_json::json!({
                "stage": "pull", "device_type": device_type.as_str(), "cursor": pull.cursor, "error": error.to_string(),
            }),
        };
        tracer.emit(&member, record).await;
    }
    match page {
        Ok(page) => {
            debug!(cursor = pull.cursor, count = page.notifications.len(), resync = page.resync, "page");
            metrics::counter!(REQUESTS_METRIC, "result" => "ok").increment(1);
            Ok(Bytes::from(page.encode()))
        }
        Err(error) => {
            warn!(%error, "pull failed");
            metrics::counter!(REQUESTS_METRIC, "result" => "error").increment(1);
            let code = match error {
                HistoryError::TimedOut => 504,
                HistoryError::Unavailable(_) | HistoryError::Protocol(_) => 503,
            };
            Err(service::error::Error { status: error.to_string(), code })
        }
    }
}
