//! `GET /v1/pull`: a page of history for a device that cannot hold a socket. The member and device
//! type come from the device token, never from the request, so a device pulls only its own; the page
//! is the one the pull service answers on NATS, with the same cursor, epoch, cursor time and resync
//! rules. JSON by default (the epoch as a decimal string: it does not fit a JSON number exactly), or
//! the CBOR page itself with `Accept: application/cbor`.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use reno_model::{PullPage, PullRequest, subject};
use serde::Deserialize;

use crate::{Gateway, error::ApiError, identity};

/// How long the pull service may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(10);

/// The query: a device's position and how many it wants.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PullQuery {
    #[serde(default)]
    cursor: u64,
    epoch: Option<String>,
    cursor_time_ms: Option<u64>,
    limit: Option<u32>,
}

pub(crate) async fn get(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    query: Result<Query<PullQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let device = identity::device(&gateway.token_keys, &headers)?;
    let Query(query) = query.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{rejection}; accepted: cursor, epoch, cursor_time_ms, limit (whole numbers)"),
        )
    })?;
    let epoch = match &query.epoch {
        None => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("epoch {text:?} is not a whole number"),
            )
        })?),
    };
    let request =
        PullRequest { cursor: query.cursor, limit: query.limit, epoch, cursor_time_ms: query.cursor_time_ms };
    let pull_subject = subject::pull_subject(&device.member, &device.device_type);
    let reply =
        tokio::time::timeout(PULL_TIMEOUT, gateway.client.request(pull_subject, request.encode().into()))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    "the pull service did not answer in time; retry",
                )
            })?
            .map_err(ApiError::unavailable)?;
    if let Some(headers) = &reply.headers
        && let Some(message) = headers.get("Nats-Service-Error")
    {
        let code = headers.get("Nats-Service-Error-Code").map(|code| code.to_string()).unwrap_or_default();
        return Err(match code.as_str() {
            "400" => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message.to_string()),
            "504" => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message.to_string()),
            _ => ApiError::unavailable(message),
        });
    }
    let wants_cbor = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("application/cbor"));
    if wants_cbor {
        return Ok(([(header::CONTENT_TYPE, "application/cbor")], reply.payload).into_response());
    }
    let page = PullPage::decode(&reply.payload).map_err(ApiError::unavailable)?;
    Ok(Json(serde_json::json!({
        "notifications": page.notifications,
        "next_cursor": page.next_cursor,
        "more": page.more,
        "resync": page.resync,
        "epoch": page.epoch.to_string(),
        "next_cursor_time_ms": page.next_cursor_time_ms,
    }))
    .into_response())
}
