//! Writing the notification history: the KV bucket's stream, written with plain JetStream publishes
//! so that each entry carries where it came from (`Reno-Source`) and a conditional write is one
//! round trip (`Nats-Expected-Last-Subject-Sequence`), and read back with direct gets that keep the
//! headers.

use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        context::PublishErrorKind,
        stream::{DirectGetErrorKind, Stream},
    },
};
use bytes::Bytes;
use reno_model::subject;

/// The header that names the priority stream message an entry was written from.
pub(crate) const SOURCE_HEADER: &str = "Reno-Source";

/// Why a history write or read did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HistoryError {
    /// Another write came first: the key exists (for a create) or moved on (for an update).
    #[error("the history key changed under this write")]
    Conflict,
    /// The history is at its byte limit and refuses new entries until old ones expire or an
    /// operator raises the limit; the event waits in its priority stream meanwhile.
    #[error("the history is full: {0}")]
    Full(String),
    #[error("history unavailable: {0}")]
    Unavailable(String),
}

/// An entry as stored.
pub(crate) struct Stored {
    /// Its position: the sequence in the history stream.
    pub revision: u64,
    /// The encoded notification (empty for a delete marker).
    pub value: Bytes,
    /// Whether it is a live value rather than a delete or purge marker.
    pub live: bool,
    /// `Reno-Source` of the write, if it had one.
    pub source: Option<String>,
}

/// The history bucket, for one priority's tasks. Cheap to clone.
#[derive(Clone)]
pub(crate) struct History {
    jetstream: jetstream::Context,
    /// The bucket's stream, for direct gets.
    stream: Stream,
}

impl History {
    pub(crate) fn new(jetstream: jetstream::Context, stream: Stream) -> Self {
        History { jetstream, stream }
    }

    /// Writes `value` under `key` if the key holds nothing yet; returns its position.
    pub(crate) async fn create(&self, key: &str, value: Bytes, source: &str) -> Result<u64, HistoryError> {
        self.write(key, value, 0, source).await
    }

    /// Replaces the entry at `revision` under `key`; fails with a conflict if it moved on.
    pub(crate) async fn update(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
        source: &str,
    ) -> Result<u64, HistoryError> {
        self.write(key, value, revision, source).await
    }

    async fn write(&self, key: &str, value: Bytes, expected: u64, source: &str) -> Result<u64, HistoryError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", expected.to_string().as_str());
        headers.insert(SOURCE_HEADER, source);
        let ack = self
            .jetstream
            .publish_with_headers(subject::history_subject(key), headers, value)
            .await
            .map_err(|error| HistoryError::Unavailable(error.to_string()))?
            .await
            .map_err(|error| match error.kind() {
                PublishErrorKind::WrongLastSequence => HistoryError::Conflict,
                _ if is_full(&error) => HistoryError::Full(error.to_string()),
                _ => HistoryError::Unavailable(error.to_string()),
            })?;
        Ok(ack.sequence)
    }

    /// The entry under `key`, if there is one.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Stored>, HistoryError> {
        match self.stream.direct_get_last_for_subject(subject::history_subject(key)).await {
            Ok(message) => {
                let header = |name: &str| message.headers.get(name).map(|value| value.to_string());
                Ok(Some(Stored {
                    revision: message.sequence,
                    live: header("KV-Operation").is_none(),
                    source: header(SOURCE_HEADER),
                    value: message.payload,
                }))
            }
            Err(error) if error.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(error) => Err(HistoryError::Unavailable(error.to_string())),
        }
    }
}

/// Whether the server refused a write because the stream is at its byte limit.
fn is_full(error: &jetstream::context::PublishError) -> bool {
    error.to_string().contains("maximum bytes exceeded")
}
