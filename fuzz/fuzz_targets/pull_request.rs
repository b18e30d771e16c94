//! A pull request as the pull service reads it: `PullRequest::decode`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reno_fuzz::assert_round_trip;
use reno_model::{Position, PullRequest, codec::DecodeError};

/// The largest pull request accepted, encoded (docs/protocol.md).
const MAX_REQUEST_BYTES: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let decoded = PullRequest::decode(data);
    if data.len() > MAX_REQUEST_BYTES {
        assert!(matches!(decoded, Err(DecodeError::TooLarge { .. })));
    }
    let Ok(request) = decoded else { return };
    let encoded = assert_round_trip(&request, data, PullRequest::encode, PullRequest::decode);
    assert_eq!(PullRequest::decode(&encoded).as_ref(), Ok(&request));
    // A device builds its requests from a position: the same request, whatever the limit.
    let position =
        Position { cursor: request.cursor, epoch: request.epoch, cursor_time_ms: request.cursor_time_ms };
    let limit = request.limit.unwrap_or(0);
    assert_eq!(position.request(limit), PullRequest { limit: Some(limit), ..request });
});
