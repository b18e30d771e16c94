//! Reading and writing members' histories: one document per member in the history bucket's stream
//! (see `reno_model::history`), read with a direct get of the member's subject and written back
//! with a plain JetStream publish that is conditional on the revision read
//! (`Nats-Expected-Last-Subject-Sequence`), one round trip each.

use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        context::PublishErrorKind,
        stream::{DirectGetErrorKind, Stream},
    },
};
use bytes::Bytes;
use reno_model::{MemberId, subject};

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

/// A member's document as stored.
pub(crate) struct Stored {
    /// Its position: the sequence in the history stream.
    pub revision: u64,
    /// When the server stored it, milliseconds since the Unix epoch.
    pub stored_ms: u64,
    /// The encoded document (empty for a delete marker).
    pub value: Bytes,
    /// Whether it is a live value rather than a delete or purge marker.
    pub live: bool,
}

/// The history bucket, for one priority's tasks. Cheap to clone.
#[derive(Clone)]
pub(crate) struct History {
    jetstream: jetstream::Context,
    /// The bucket's stream, for direct gets.
    stream: Stream,
    /// How long the bucket keeps entries; `None` for as long as it lives.
    pub retention: Option<std::time::Duration>,
    /// How many notifications a member's history holds.
    pub max_entries: usize,
}

impl History {
    pub(crate) fn new(jetstream: jetstream::Context, stream: Stream) -> Self {
        let config = &stream.cached_info().config;
        let retention = (!config.max_age.is_zero()).then_some(config.max_age);
        let max_entries = reno_nats::topology::history_max_entries_of(config);
        History { jetstream, stream, retention, max_entries }
    }

    /// Writes `member`'s document in place of the one at `expected` (0: none yet); returns the new
    /// revision, or a conflict if the document moved on meanwhile.
    pub(crate) async fn write(
        &self,
        member: &MemberId,
        value: Bytes,
        expected: u64,
    ) -> Result<u64, HistoryError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", expected.to_string().as_str());
        let ack = self
            .jetstream
            .publish_with_headers(subject::history_subject(member), headers, value)
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

    /// `member`'s document, if there is one.
    pub(crate) async fn get(&self, member: &MemberId) -> Result<Option<Stored>, HistoryError> {
        match self.stream.direct_get_last_for_subject(subject::history_subject(member)).await {
            Ok(message) => Ok(Some(Stored {
                revision: message.sequence,
                stored_ms: u64::try_from(message.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
                live: message.headers.get("KV-Operation").is_none(),
                value: message.payload,
            })),
            Err(error) if error.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(error) => Err(HistoryError::Unavailable(error.to_string())),
        }
    }
}

/// Whether the server refused a write because the stream is at its byte limit.
fn is_full(error: &jetstream::context::PublishError) -> bool {
    error.to_string().contains("maximum bytes exceeded")
}
