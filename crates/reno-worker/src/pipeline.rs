//! The gates one event passes, in order: decode and validate, staleness, dedup, targeting, history
//! (with collapse), push; then the ack. Permanent failures are dead-lettered and terminated;
//! transient ones are nak'ed with a growing delay until the delivery bound, then dead-lettered. The
//! rules themselves live in [`crate::gates`]; this module does the IO around them.

use std::sync::Arc;

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use reno_model::{
    DeviceType, Envelope, InvalidEvent, MemberId, Notification, Priority, Registry,
    history::{Entry, MemberHistory},
    subject,
};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::watch;
use tracing::{Instrument, debug, warn};

use reno_presence::PresenceView;

use crate::{
    dead_letter::{self, Origin},
    gates::{self, Staleness, Written},
    history::{History, HistoryError},
    outcome::{self, Outcome},
};

/// Everything one priority's tasks share.
pub(crate) struct Pipeline {
    pub priority: Priority,
    /// The current registry, replaced whenever it changes in NATS.
    pub registry: watch::Receiver<Arc<Registry>>,
    /// Core NATS, for pushes to devices.
    pub client: async_nats::Client,
    /// JetStream, for dead letters.
    pub jetstream: jetstream::Context,
    /// The notification history devices pull from; also the authority on what was delivered.
    pub history: History,
    /// Which members have a device of which type online: the push goes only there.
    pub presence: PresenceView,
    /// The clock of the server that stamps this priority's events: ages are measured by it.
    pub clock: reno_nats::ServerClock,
    /// Trace records for members someone traces (`reno trace`); nothing for the others.
    pub tracer: reno_nats::Tracer,
    /// Events delivered recently (`type:member:id`): spares the history a round trip for repeats.
    pub delivered_ids: moka::sync::Cache<String, ()>,
    pub max_deliveries: i64,
}

/// Why handling failed.
enum Failure {
    /// The event can never be delivered.
    Permanent(InvalidEvent),
    /// Worth another try later; `reason` labels the retry in metrics.
    Transient { reason: &'static str, error: String },
}

impl Failure {
    fn transient(reason: &'static str, error: impl std::fmt::Display) -> Self {
        Failure::Transient { reason, error: error.to_string() }
    }
}

impl From<HistoryError> for Failure {
    fn from(error: HistoryError) -> Self {
        let reason = match error {
            HistoryError::Full(_) => "history_full",
            HistoryError::Conflict => "contention",
            HistoryError::Unavailable(_) => "unavailable",
        };
        Failure::transient(reason, error)
    }
}

impl Pipeline {
    /// Settles a delivery whose handling panicked: retried like a transient failure, and
    /// dead-lettered once it has used up its deliveries.
    pub(crate) async fn panicked(&self, message: &jetstream::Message) {
        let info = message.info().ok();
        let deliveries = info.as_ref().map_or(1, |info| info.delivered);
        let event_type = outcome::type_label(message.subject.as_str());
        let outcome = if deliveries >= self.max_deliveries {
            let position = info.as_ref().map(|info| (info.stream, info.stream_sequence));
            let origin = Origin { subject: message.subject.as_str(), position, deliveries };
            let reason = format!("the worker failed on each of its {deliveries} deliveries (a panic)");
            self.dead_letter(message, &origin, "panicked", &reason).await
        } else {
            warn!(subject = message.subject.as_str(), deliveries, "event handler panicked; will retry");
            outcome::count_retry(self.priority, "panicked");
            ack(message, AckKind::Nak(Some(gates::retry_delay(deliveries)))).await;
            Outcome::Retried
        };
        outcome::count(self.priority, &event_type, outcome, 0.0);
    }

    /// Handles one delivery end to end and settles it with JetStream.
    pub(crate) async fn handle(&self, message: &jetstream::Message) {
        let Ok(info) = message.info() else {
            // Not a delivery of our consumer (its reply subject is not a JetStream ack subject).
            // Counted and filed like any event that can never be delivered, so it is seen.
            outcome::count_received(self.priority, outcome::UNKNOWN_TYPE);
            let origin = Origin { subject: message.subject.as_str(), position: None, deliveries: 1 };
            let reason = "not a delivery of the worker's consumer: no JetStream metadata";
            let outcome = self.dead_letter(message, &origin, "not_a_delivery", reason).await;
            outcome::count(self.priority, outcome::UNKNOWN_TYPE, outcome, 0.0);
            return;
        };
        let (stream, sequence, deliveries, published) =
            (info.stream.to_owned(), info.stream_sequence, info.delivered, info.published);
        let span = tracing::debug_span!(
            "event",
            priority = %self.priority,
            stream,
            seq = sequence,
            deliveries,
            event_id = tracing::field::Empty,
            member = tracing::field::Empty,
        );
        self.settle(message, &stream, sequence, deliveries, published).instrument(span).await;
    }

    async fn settle(
        &self,
        message: &jetstream::Message,
        stream: &str,
        sequence: u64,
        deliveries: i64,
        published: OffsetDateTime,
    ) {
        let event_type = outcome::type_label(message.subject.as_str());
        outcome::count_received(self.priority, &event_type);
        // The member as the subject names it, when someone traces it.
        let traced = subject::parse_event_subject(message.subject.as_str())
            .ok()
            .map(|(_, member)| member)
            .filter(|member| self.tracer.is_traced(member));
        if let Some(member) = &traced {
            let record = json!({
                "stage": "received", "priority": self.priority.as_str(), "type": event_type,
                "stream": stream, "stream_seq": sequence, "deliveries": deliveries,
            });
            self.tracer.emit(member, record).await;
        }
        let origin =
            Origin { subject: message.subject.as_str(), position: Some((stream, sequence)), deliveries };
        if gates::is_poison(deliveries, self.max_deliveries) {
            let reason = format!("delivered {deliveries} times without an outcome; it may crash workers");
            let outcome = self.dead_letter(message, &origin, "poison", &reason).await;
            outcome::count(self.priority, &event_type, outcome, 0.0);
            if let Some(member) = &traced {
                self.tracer.emit(member, json!({"stage": "outcome", "outcome": "dead_lettered", "reason": "poison", "stream_seq": sequence})).await;
            }
            return;
        }

        let source = gates::source(stream, sequence);
        let mut retry_reason = None;
        let outcome = match self.process(message, &source, published, deliveries).await {
            Ok(outcome) => {
                ack(message, AckKind::Ack).await;
                outcome
            }
            Err(Failure::Permanent(invalid)) => {
                self.dead_letter(message, &origin, invalid.code(), &invalid.to_string()).await
            }
            Err(Failure::Transient { error, .. }) if deliveries >= self.max_deliveries => {
                let reason = format!("gave up after {deliveries} deliveries: {error}");
                self.dead_letter(message, &origin, "retries_exhausted", &reason).await
            }
            Err(Failure::Transient { reason, error }) => {
                warn!(reason, %error, "transient failure; will retry");
                outcome::count_retry(self.priority, reason);
                ack(message, AckKind::Nak(Some(gates::retry_delay(deliveries)))).await;
                retry_reason = Some(format!("{reason}: {error}"));
                Outcome::Retried
            }
        };
        let seconds = (self.clock.now() - published).as_seconds_f64().max(0.0);
        debug!(outcome = outcome.label(), seconds, "handled");
        outcome::count(self.priority, &event_type, outcome, seconds);
        if let Some(member) = &traced {
            let reason = match outcome {
                Outcome::DeadLettered(code) => Some(code.to_owned()),
                _ => retry_reason,
            };
            let record = json!({
                "stage": "outcome", "outcome": outcome.label(), "reason": reason,
                "stream_seq": sequence, "seconds_since_published": seconds,
            });
            self.tracer.emit(member, record).await;
        }
    }

    async fn process(
        &self,
        message: &jetstream::Message,
        source: &str,
        published: OffsetDateTime,
        deliveries: i64,
    ) -> Result<Outcome, Failure> {
        let envelope =
            Envelope::decode_from(message.subject.as_str(), &message.payload).map_err(Failure::Permanent)?;
        let registry = self.registry.borrow().clone();
        let route = envelope.route(&registry).map_err(|invalid| match invalid {
            // The stream only captures provisioned types, so a type this worker does not know
            // means the registry changed an instant ago and this worker has not seen it yet (or
            // the type was removed while events of it waited): retry instead of dead-lettering at
            // once.
            InvalidEvent::UnknownType { .. } => Failure::transient("unknown_type", invalid),
            permanent => Failure::Permanent(permanent),
        })?;
        let span = tracing::Span::current();
        span.record("event_id", envelope.id.as_str());
        span.record("member", envelope.member.as_str());

        // By the server's clock, which stamped `published`: this worker's own may be minutes off.
        // Not judged until that clock was read once (the local one could drop fresh events), and
        // never below zero (a clock a moment behind the server's is not an old event).
        let age = if self.clock.is_measured() {
            (self.clock.now() - published).max(time::Duration::ZERO).unsigned_abs()
        } else {
            std::time::Duration::ZERO
        };
        match gates::staleness(age, route.spec.stale_after, deliveries) {
            Staleness::Fresh => {}
            Staleness::Stale => return Ok(Outcome::Stale),
            Staleness::StaleUnlessStarted => {
                if !self.started(&envelope.member, source).await? {
                    debug!(?age, "stale redelivery that was never started");
                    return Ok(Outcome::Stale);
                }
            }
        }
        let dedup_key = envelope.dedup_id();
        if self.delivered_ids.contains_key(&dedup_key) {
            return Ok(Outcome::Duplicate);
        }

        let published_at_ms = u64::try_from(published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let incoming = Entry {
            seq: 0,
            written_ms: 0,
            targets: route.targets.clone(),
            source: source.to_owned(),
            id: envelope.id.clone(),
            event_type: envelope.event_type.clone(),
            occurred_at_ms: envelope.occurred_at_ms,
            published_at_ms,
            payload: envelope.payload,
            collapse_key: route.collapse_key.clone(),
        };
        let results = self.write(&envelope.member, &incoming).await?;
        if self.tracer.is_traced(&envelope.member) {
            let written: Vec<serde_json::Value> = results
                .iter()
                .map(|(device_type, written)| json!({"device_type": device_type.as_str(), "history": written.label(), "seq": written.seq()}))
                .collect();
            let record = json!({"stage": "history", "event_id": envelope.id.as_str(), "type": envelope.event_type.as_str(), "results": written});
            self.tracer.emit(&envelope.member, record).await;
        }
        // A new entry is pushed; so is this message's own entry from an earlier attempt, whose push
        // may never have gone out (devices drop a repeat by seq). Only where a device of the type
        // is online: the others find it in the history when they come back.
        for (device_type, written) in &results {
            let (Written::New(seq) | Written::Ours(seq)) = *written else {
                continue;
            };
            let pushed = if self.presence.is_online(&envelope.member, device_type) {
                let mut notification = incoming.notification(&envelope.member, device_type);
                notification.seq = seq;
                self.push(device_type, &notification).await?;
                outcome::observe_push(self.priority, (self.clock.now() - published).as_seconds_f64());
                "sent"
            } else {
                "skipped_offline"
            };
            outcome::count_push(self.priority, device_type, pushed);
            if self.tracer.is_traced(&envelope.member) {
                let record = json!({"stage": "push", "device_type": device_type.as_str(), "seq": seq, "result": pushed});
                self.tracer.emit(&envelope.member, record).await;
            }
        }
        let written: Vec<Written> = results.iter().map(|(_, written)| *written).collect();
        let outcome = gates::fold(&written);
        if outcome == Outcome::Delivered {
            self.delivered_ids.insert(dedup_key, ());
        }
        Ok(outcome)
    }

    /// Whether an earlier delivery of this very message wrote any of its history entries.
    async fn started(&self, member: &MemberId, source: &str) -> Result<bool, Failure> {
        let Some((_, history)) = self.read(member).await? else {
            return Ok(false);
        };
        Ok(history.entries.iter().any(|entry| entry.source == source))
    }

    /// The member's history and the revision it was read at (the revision of a delete marker
    /// left by an operator, with an empty history, counts too: the next write replaces it).
    async fn read(&self, member: &MemberId) -> Result<Option<(u64, MemberHistory)>, Failure> {
        let Some(stored) = self.history.get(member).await? else {
            return Ok(None);
        };
        if !stored.live {
            // An operator deleted the member's history: the next document says so, so that devices
            // behind the delete are told to resync.
            let history = MemberHistory { lost_before: stored.revision, ..MemberHistory::default() };
            return Ok(Some((stored.revision, history)));
        }
        // A document this worker cannot read (written by a newer reno during a rolling upgrade) is
        // never overwritten: the event is retried, so that a worker that can read it takes it.
        let mut history = MemberHistory::decode(&stored.value).map_err(|error| {
            Failure::transient(
                "unreadable_entry",
                format!("the history of {member} cannot be read (written by a newer reno?): {error}; not overwritten"),
            )
        })?;
        history.settle(stored.revision, stored.stored_ms);
        Ok(Some((stored.revision, history)))
    }

    /// Adds the event to its member's history with a compare-and-set on the document, again while
    /// other writers (other priorities of the member) move it on meanwhile. Returns what it found
    /// per target device type, the new entries at the revision written.
    async fn write(
        &self,
        member: &MemberId,
        incoming: &Entry,
    ) -> Result<Vec<(DeviceType, Written)>, Failure> {
        for attempt in 0..8u32 {
            if attempt > 0 {
                // Another writer moved the document on, or a replica a moment behind answered the
                // read: give it a few milliseconds.
                tokio::time::sleep(std::time::Duration::from_millis(1 << attempt.min(6))).await;
            }
            let (expected, mut history) = self.read(member).await?.unwrap_or_default();
            let mut results = gates::apply(&mut history, incoming.clone());
            if !results.iter().any(|(_, written)| *written == Written::New(0)) {
                return Ok(results);
            }
            let now_ms = u64::try_from(self.clock.now().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
            let retention_ms = self.history.retention.map(|retention| retention.as_millis() as u64);
            history.prune(now_ms, retention_ms, self.history.max_entries);
            match self.history.write(member, Bytes::from(history.encode()), expected).await {
                Ok(revision) => {
                    for (_, written) in &mut results {
                        if *written == Written::New(0) {
                            *written = Written::New(revision);
                        }
                    }
                    return Ok(results);
                }
                Err(HistoryError::Conflict) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(Failure::transient(
            "contention",
            format!("the history of {member} kept changing under concurrent writers"),
        ))
    }

    /// Best-effort push to the devices of this type that are online now.
    async fn push(&self, device_type: &DeviceType, notification: &Notification) -> Result<(), Failure> {
        let subject = reno_model::subject::push_subject(&notification.member, device_type);
        self.client
            .publish(subject, Bytes::from(notification.encode()))
            .await
            .map_err(|error| Failure::transient("unavailable", error))
    }

    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        origin: &Origin<'_>,
        code: &'static str,
        reason: &str,
    ) -> Outcome {
        warn!(code, reason, subject = origin.subject, "dead-lettering event");
        match dead_letter::file(&self.jetstream, self.priority, code, reason, origin, message.payload.clone())
            .await
        {
            Ok(()) => {
                ack(message, AckKind::Term).await;
                Outcome::DeadLettered(code)
            }
            Err(error) => {
                warn!(%error, "cannot file dead letter; will retry");
                outcome::count_retry(self.priority, "dead_letter_failed");
                ack(message, AckKind::Nak(Some(gates::retry_delay(origin.deliveries)))).await;
                Outcome::Retried
            }
        }
    }
}

/// Sends an ack of the given kind; a lost ack only means a redelivery, which the gates absorb.
async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        warn!(%error, "ack not sent; the event will be redelivered");
    }
}
