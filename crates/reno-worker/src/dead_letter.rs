//! Filing an event that can never be delivered in the dead-letter stream, with the reason, where it
//! came from and its original bytes (the first 64 KiB of them), so that an operator can inspect and
//! replay it.

use async_nats::{HeaderMap, jetstream};
use reno_model::{Priority, codec::MAX_EVENT_BYTES, subject};

/// The headers of a dead letter (see docs/protocol.md).
pub(crate) const REASON_HEADER: &str = "Reno-Reason";
pub(crate) const REASON_CODE_HEADER: &str = "Reno-Reason-Code";
pub(crate) const SUBJECT_HEADER: &str = "Reno-Subject";
pub(crate) const STREAM_HEADER: &str = "Reno-Stream";
pub(crate) const SEQUENCE_HEADER: &str = "Reno-Stream-Sequence";
pub(crate) const DELIVERIES_HEADER: &str = "Reno-Deliveries";
pub(crate) const ORIGINAL_SIZE_HEADER: &str = "Reno-Original-Size";

/// The most of an event's bytes a dead letter keeps: a valid envelope is never larger, so it is kept
/// whole, and an oversized one is cut to what is enough to inspect it. Without the cut, one publisher
/// could fill the dead-letter stream with 960 KiB of junk per event.
pub(crate) const MAX_DEAD_LETTER_BODY: usize = MAX_EVENT_BYTES;

/// Where the failed event came from.
pub(crate) struct Origin<'a> {
    pub subject: &'a str,
    /// The priority stream and sequence that held it; `None` for a message that was not a delivery.
    pub position: Option<(&'a str, u64)>,
    pub deliveries: i64,
}

/// Publishes the dead letter and waits until the dead-letter stream has stored it.
pub(crate) async fn file(
    jetstream: &jetstream::Context,
    priority: Priority,
    code: &str,
    reason: &str,
    origin: &Origin<'_>,
    payload: bytes::Bytes,
) -> Result<(), async_nats::Error> {
    let mut headers = HeaderMap::new();
    if let Some((stream, sequence)) = origin.position {
        // The stream position identifies the event even when its envelope is unreadable; as the
        // message id it makes filing the same event twice (a crash in between) a no-op.
        headers.insert("Nats-Msg-Id", format!("{stream}-{sequence}").as_str());
        headers.insert(STREAM_HEADER, stream);
        headers.insert(SEQUENCE_HEADER, sequence.to_string().as_str());
    }
    headers.insert(REASON_HEADER, header_value(reason).as_str());
    headers.insert(REASON_CODE_HEADER, code);
    // As the service published it: publishing the body there again replays the event.
    let published = subject::published_event_subject(origin.subject);
    headers.insert(SUBJECT_HEADER, header_value(&published).as_str());
    headers.insert(DELIVERIES_HEADER, origin.deliveries.to_string().as_str());
    let payload = if payload.len() > MAX_DEAD_LETTER_BODY {
        headers.insert(ORIGINAL_SIZE_HEADER, payload.len().to_string().as_str());
        payload.slice(..MAX_DEAD_LETTER_BODY)
    } else {
        payload
    };
    jetstream
        .publish_with_headers(subject::dead_letter_subject(priority, code), headers, payload)
        .await?
        .await?;
    Ok(())
}

/// A header value must be one line of printable text: anything else from untrusted input is
/// replaced, and the value is cut to a readable length.
fn header_value(text: &str) -> String {
    text.chars().take(1000).map(|character| if character.is_control() { ' ' } else { character }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_stay_on_one_line() {
        assert_eq!(header_value("bad\r\nX-Injected: 1"), "bad  X-Injected: 1");
        assert_eq!(header_value(&"x".repeat(5000)).len(), 1000);
    }
}
