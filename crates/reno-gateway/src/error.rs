//! Errors as the gateway answers them: a status and a JSON body `{"code": ..., "message": ...}`, the
//! code stable for programs, the message saying what was wrong and what is accepted.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// Counter of gateway answers by route and status code.
pub const RESPONSES_METRIC: &str = "reno_gateway_responses_total";

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub fn not_found() -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such resource; see docs/openapi.json for POST /v1/events, GET /v1/pull, GET /v1/presence/{member}",
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn token(error: reno_model::TokenError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_token", error.to_string())
    }

    pub fn unavailable(error: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("reno cannot answer now: {error}; retry later"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "code": self.code, "message": self.message }))).into_response()
    }
}
