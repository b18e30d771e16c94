//! `POST /v1/events`: an event from a service, as CBOR (`application/cbor`, the envelope exactly as on
//! NATS) or JSON (`application/json`, the same keys, the payload any JSON value). Checked against
//! the registry in force like a worker would, then published like the Rust publisher does, with the
//! same dedup: a repeat of the same type, member and id within 2 minutes is answered `duplicate`.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
};
use reno_model::{Envelope, InvalidEvent, codec::MAX_EVENT_BYTES};
use reno_nats::PublishError;

use crate::{Gateway, error::ApiError};

/// The largest body accepted: a JSON envelope may be larger than its CBOR (which must stay within
/// 64 KiB), but not by this much.
pub(crate) const MAX_BODY_BYTES: usize = 4 * MAX_EVENT_BYTES;

pub(crate) async fn post(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    gateway.service_tokens.check(&headers)?;
    let body = body.map_err(|rejection| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body could not be read ({rejection}); an event is at most {MAX_EVENT_BYTES} bytes as CBOR"),
        )
    })?;
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default();
    let envelope = match content_type.split(';').next().unwrap_or_default().trim() {
        "application/cbor" => Envelope::decode(&body).map_err(invalid)?,
        "application/json" => {
            let envelope: Envelope = serde_json::from_slice(&body).map_err(|error| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    format!("not an event envelope: {error}; expected {{id, type, member, occurred_at_ms, payload?, targets?, collapse_key?}}"),
                )
            })?;
            // The size and nesting it has on the wire, as a worker will read it.
            Envelope::decode(&envelope.encode()).map_err(invalid)?
        }
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("content type {other:?} is not accepted; send application/cbor or application/json"),
            ));
        }
    };
    let registry = gateway.registry.borrow().clone();
    envelope.route(&registry).map_err(invalid)?;
    let published = gateway.publisher.publish(&envelope).await.map_err(|error| match error {
        PublishError::Invalid(invalid_event) => invalid(invalid_event),
        PublishError::UnknownType { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, "unknown_type", format!("{error}; known types: {}", registry.type_names()))
        }
        PublishError::Refused(reason) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "refused",
            format!("the event was not stored: {reason}; retry later with the same id"),
        ),
        PublishError::TimedOut => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "no confirmation in time; it may or may not be stored: retry with the same id (a repeat is dropped)",
        ),
        PublishError::Connection(reason) => ApiError::unavailable(reason),
    })?;
    let answer = serde_json::json!({
        "id": envelope.id.as_str(),
        "stream": published.stream,
        "sequence": published.sequence,
        "duplicate": published.duplicate,
    });
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// An event that can never be delivered: 400, with the reason code of a dead letter.
fn invalid(invalid: InvalidEvent) -> ApiError {
    let status = match &invalid {
        InvalidEvent::Decode(reno_model::codec::DecodeError::TooLarge { .. }) => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, invalid.code(), invalid.to_string())
}
