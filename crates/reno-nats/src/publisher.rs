//! The publisher API for Rust services: validates an event before it leaves, publishes it to
//! `reno.evt.<type>.<member>` with `<type>:<member>:<id>` as `Nats-Msg-Id`, and waits for JetStream to confirm that
//! a stream holds it. A refusal comes back as an error the caller can match and act on.

use std::sync::Arc;

use async_nats::{
    HeaderMap,
    jetstream::{self, context::PublishErrorKind},
};
use reno_model::{Envelope, InvalidEvent, Registry, subject};

/// Where a published event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The priority stream that holds it.
    pub stream: String,
    /// Its sequence in that stream.
    pub sequence: u64,
    /// JetStream had already seen this event id within its duplicate window and did not store it
    /// again: a retry that is safe to treat as success.
    pub duplicate: bool,
}

/// Why an event was not published. Every variant means the event is not in reno.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event itself is wrong; sending it again will not help.
    #[error("event refused before publishing: {0}")]
    Invalid(#[from] InvalidEvent),
    /// No stream captures the subject: the type is not in the provisioned registry (or is being
    /// moved between priorities right now; then a retry succeeds).
    #[error("no stream captures {subject}: event type {event_type} is not provisioned")]
    UnknownType { subject: String, event_type: String },
    /// The server refused to store it (stream full, too large, ...).
    #[error("the server refused the event: {0}")]
    Refused(String),
    /// No confirmation arrived in time; the event may or may not be stored. Retrying with the same
    /// event id is safe: duplicates are dropped.
    #[error("no confirmation from JetStream in time; retry with the same event id")]
    TimedOut,
    #[error("cannot reach NATS: {0}")]
    Connection(String),
}

/// Publishes events for a service. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    /// JetStream context on the service's connection.
    jetstream: jetstream::Context,
    /// When set, types and targets are checked before sending, not only by the server.
    registry: Option<Arc<Registry>>,
}

impl Publisher {
    /// A publisher that checks the envelope's shape, size and tokens locally and leaves the event
    /// type to the server (an unprovisioned type has no stream and is refused there).
    pub fn new(client: async_nats::Client) -> Self {
        Publisher { jetstream: jetstream::new(client), registry: None }
    }

    /// Also checks type, targets and collapse key against `registry` before sending.
    pub fn with_registry(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Publishes one event and waits until a stream has stored it.
    pub async fn publish(&self, envelope: &Envelope) -> Result<Published, PublishError> {
        let bytes = envelope.encode();
        // Read it back with the worker's own limits, so an event a worker would dead-letter for its
        // size or nesting is refused here instead.
        Envelope::decode(&bytes)?;
        if let Some(registry) = &self.registry {
            envelope.route(registry)?;
        }
        let subject = subject::event_subject(&envelope.event_type, &envelope.member);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", envelope.dedup_id().as_str());
        let ack = self
            .jetstream
            .publish_with_headers(subject.clone(), headers, bytes.into())
            .await
            .map_err(|error| self.publish_error(&subject, envelope, error))?
            .await
            .map_err(|error| self.publish_error(&subject, envelope, error))?;
        Ok(Published { stream: ack.stream, sequence: ack.sequence, duplicate: ack.duplicate })
    }

    fn publish_error(
        &self,
        subject: &str,
        envelope: &Envelope,
        error: jetstream::context::PublishError,
    ) -> PublishError {
        match error.kind() {
            PublishErrorKind::StreamNotFound => PublishError::UnknownType {
                subject: subject.to_owned(),
                event_type: envelope.event_type.to_string(),
            },
            PublishErrorKind::TimedOut => PublishError::TimedOut,
            PublishErrorKind::BrokenPipe => PublishError::Connection(error.to_string()),
            _ => PublishError::Refused(error.to_string()),
        }
    }
}
