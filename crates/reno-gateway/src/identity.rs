//! Who is asking: a service (a bearer token from the configured list) or a device (a bearer device
//! token, verified like the edges' authorization service does).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use reno_auth::{DeviceIdentity, TokenKeys};

use crate::error::ApiError;

/// The bearer token of a request.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <token>"))
}

/// The tokens services present.
pub(crate) struct ServiceTokens {
    tokens: Vec<String>,
}

impl ServiceTokens {
    pub(crate) fn new(tokens: Vec<String>) -> Self {
        ServiceTokens { tokens: tokens.into_iter().filter(|token| !token.is_empty()).collect() }
    }

    /// Accepts a request carrying one of the service tokens.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let presented = bearer(headers)?;
        // Compared in full whatever the content, so the time taken says nothing about a prefix.
        let matches = self
            .tokens
            .iter()
            .fold(false, |found, token| found | constant_time_eq(token.as_bytes(), presented.as_bytes()));
        if matches { Ok(()) } else { Err(ApiError::unauthorized("not a service token of this gateway")) }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |difference, (x, y)| difference | (x ^ y)) == 0
}

/// The device a request's device token names.
pub(crate) fn device(keys: &TokenKeys, headers: &HeaderMap) -> Result<DeviceIdentity, ApiError> {
    let token = bearer(headers)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
    keys.verify(token, now).map_err(|refusal| {
        tracing::info!(reason = %refusal, "device token refused");
        ApiError::unauthorized("not a valid device token")
    })
}
