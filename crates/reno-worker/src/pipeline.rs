//! The gates one event passes, in order: decode and validate, staleness, dedup, targeting, history
//! (with collapse), push; then the ack. Permanent failures are dead-lettered and terminated;
//! transient ones are nak'ed with a growing delay until the delivery bound, then dead-lettered.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, kv};
use bytes::Bytes;
use reno_model::{DeviceType, Envelope, InvalidEvent, Notification, Priority, Registry, subject};
use time::OffsetDateTime;
use tracing::{Instrument, debug, warn};

use crate::{
    dead_letter::{self, Origin},
    outcome::{self, Outcome},
};

/// Everything one priority's tasks share.
pub(crate) struct Pipeline {
    pub priority: Priority,
    pub registry: Arc<Registry>,
    /// Core NATS, for pushes to devices.
    pub client: async_nats::Client,
    /// JetStream, for dead letters.
    pub jetstream: jetstream::Context,
    /// The notification history devices pull from; also the authority on what was delivered.
    pub history: kv::Store,
    /// Events delivered recently (`type:member:id`): spares the history a round trip for repeats.
    pub delivered_ids: moka::sync::Cache<String, ()>,
    pub max_deliveries: i64,
}

/// Why handling failed.
enum Failure {
    /// The event can never be delivered.
    Permanent(InvalidEvent),
    /// Worth another try later (NATS unreachable, a write timed out, ...).
    Transient(String),
}

/// What writing one device type's history entry found.
enum Written {
    /// A new history entry at this position.
    New(u64),
    /// The same event was already in the history at this position.
    Existing(u64),
    /// A newer event with the same collapse key is in the history.
    Superseded,
}

impl Pipeline {
    /// Handles one delivery end to end and settles it with JetStream.
    pub(crate) async fn handle(&self, message: jetstream::Message) {
        let Ok(info) = message.info() else {
            // Not a delivery of our consumer (its reply subject is not a JetStream ack subject):
            // there is nothing to account it against; stop any redelivery and say so.
            warn!(subject = %message.subject, "message without JetStream metadata; terminated");
            ack(&message, AckKind::Term).await;
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
        self.settle(&message, &stream, sequence, deliveries, published).instrument(span).await;
    }

    async fn settle(
        &self,
        message: &jetstream::Message,
        stream: &str,
        sequence: u64,
        deliveries: i64,
        published: OffsetDateTime,
    ) {
        outcome::count_received(self.priority);
        let origin = Origin { subject: message.subject.as_str(), stream, sequence, deliveries };
        // Far past the delivery bound without ever reaching an outcome: it took its workers down
        // with it (a crash, a panic) every time. File it rather than let it loop forever.
        if deliveries > 2 * self.max_deliveries {
            let reason = format!("delivered {deliveries} times without an outcome; it may crash workers");
            let outcome = self.dead_letter(message, &origin, "poison", &reason).await;
            outcome::count(self.priority, outcome, 0.0);
            return;
        }

        let outcome = match self.process(message, published, deliveries).await {
            Ok(outcome) => {
                ack(message, AckKind::Ack).await;
                outcome
            }
            Err(Failure::Permanent(invalid)) => {
                self.dead_letter(message, &origin, invalid.code(), &invalid.to_string()).await
            }
            Err(Failure::Transient(error)) if deliveries >= self.max_deliveries => {
                let reason = format!("gave up after {deliveries} deliveries: {error}");
                self.dead_letter(message, &origin, "retries_exhausted", &reason).await
            }
            Err(Failure::Transient(error)) => {
                warn!(%error, "transient failure; will retry");
                ack(message, AckKind::Nak(Some(retry_delay(deliveries)))).await;
                Outcome::Retried
            }
        };
        let seconds = (OffsetDateTime::now_utc() - published).as_seconds_f64().max(0.0);
        debug!(outcome = outcome.label(), seconds, "handled");
        outcome::count(self.priority, outcome, seconds);
    }

    async fn process(
        &self,
        message: &jetstream::Message,
        published: OffsetDateTime,
        deliveries: i64,
    ) -> Result<Outcome, Failure> {
        let envelope =
            Envelope::decode_from(message.subject.as_str(), &message.payload).map_err(Failure::Permanent)?;
        let route = envelope.route(&self.registry).map_err(|invalid| match invalid {
            // The stream only captures provisioned types, so a type this worker does not know
            // means its registry is older than the provisioned one: a restart with the new
            // registry fixes it, so wait for that instead of dead-lettering at once.
            InvalidEvent::UnknownType { .. } => Failure::Transient(invalid.to_string()),
            permanent => Failure::Permanent(permanent),
        })?;
        let span = tracing::Span::current();
        span.record("event_id", envelope.id.as_str());
        span.record("member", envelope.member.as_str());

        // Only a first delivery can be stale: a redelivery may already be written for some
        // device types, and dropping it now would leave the others without it.
        let age = OffsetDateTime::now_utc() - published;
        if deliveries <= 1 && age > route.spec.stale_after {
            debug!(age = %age, "stale");
            return Ok(Outcome::Stale);
        }
        let dedup_key = envelope.dedup_id();
        if self.delivered_ids.contains_key(&dedup_key) {
            return Ok(Outcome::Duplicate);
        }

        let published_at_ms = u64::try_from(published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let mut written_any = false;
        let mut existing_any = false;
        for device_type in &route.targets {
            let mut notification = Notification::from_event(&envelope, device_type, published_at_ms);
            notification.collapse_key = route.collapse_key.clone();
            let key = subject::history_key(
                &envelope.member,
                device_type,
                &envelope.event_type,
                &route.notification_key,
            );
            let written = if route.spec.collapse {
                self.write_collapsing(&key, &notification).await?
            } else {
                self.write_once(&key, &notification).await?
            };
            let seq = match written {
                Written::New(seq) => {
                    written_any = true;
                    seq
                }
                // A redelivery of an event we wrote before a crash or a timeout: the push may not
                // have gone out, so it goes again (devices drop repeats by seq). A first delivery
                // that finds itself already written is a second copy of the same event.
                Written::Existing(seq) if deliveries > 1 => {
                    written_any = true;
                    seq
                }
                Written::Existing(_) => {
                    existing_any = true;
                    continue;
                }
                Written::Superseded => continue,
            };
            notification.seq = seq;
            self.push(device_type, &notification).await?;
        }

        let outcome = if written_any {
            self.delivered_ids.insert(dedup_key, ());
            Outcome::Delivered
        } else if existing_any {
            Outcome::Duplicate
        } else {
            Outcome::Collapsed
        };
        Ok(outcome)
    }

    /// A notification that never collapses: its key holds the event id, so `create` both writes it
    /// and tells a repeat of the same event apart, across any number of workers.
    async fn write_once(&self, key: &str, notification: &Notification) -> Result<Written, Failure> {
        match self.history.create(key, Bytes::from(notification.encode())).await {
            Ok(revision) => Ok(Written::New(revision)),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                let entry = self.history.entry(key).await.map_err(transient)?;
                entry.map(|entry| Written::Existing(entry.revision)).ok_or_else(|| {
                    Failure::Transient(format!("history key {key} exists and vanished while read"))
                })
            }
            Err(error) => Err(transient(error)),
        }
    }

    /// A collapsing notification replaces the one under its key unless that one is newer (see
    /// [`newer`]), with a compare-and-set so that concurrent workers cannot interleave.
    async fn write_collapsing(&self, key: &str, notification: &Notification) -> Result<Written, Failure> {
        let value = Bytes::from(notification.encode());
        for _attempt in 0..8 {
            let current = self.history.entry(key).await.map_err(transient)?;
            let current = current.filter(|entry| entry.operation == kv::Operation::Put);
            let result = match current {
                None => match self.history.create(key, value.clone()).await {
                    Ok(revision) => return Ok(Written::New(revision)),
                    Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                    Err(error) => Err(transient(error)),
                },
                Some(entry) => {
                    if let Ok(stored) = Notification::decode(&entry.value) {
                        if stored.id == notification.id {
                            return Ok(Written::Existing(entry.revision));
                        }
                        if newer(&stored, notification) {
                            return Ok(Written::Superseded);
                        }
                    }
                    match self.history.update(key, value.clone(), entry.revision).await {
                        Ok(revision) => return Ok(Written::New(revision)),
                        Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            continue;
                        }
                        Err(error) => Err(transient(error)),
                    }
                }
            };
            return result;
        }
        Err(Failure::Transient(format!("history key {key} kept changing under concurrent writers")))
    }

    /// Best-effort push to the devices of this type that are online now.
    async fn push(&self, device_type: &DeviceType, notification: &Notification) -> Result<(), Failure> {
        let subject = subject::push_subject(&notification.member, device_type);
        self.client.publish(subject, Bytes::from(notification.encode())).await.map_err(transient)
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
                ack(message, AckKind::Nak(Some(retry_delay(origin.deliveries)))).await;
                Outcome::Retried
            }
        }
    }
}

/// Whether `stored` is a newer state than `incoming` under the same collapse key: by when it
/// happened at the source (a publisher's late retry keeps its original time), then by when the
/// server received it. On a tie in both, the later write wins. A source time after the server's
/// receive time is a publisher's clock running ahead: it counts as the receive time, so that one
/// event from the future cannot shadow every later state of its key.
fn newer(stored: &Notification, incoming: &Notification) -> bool {
    let order = |notification: &Notification| {
        let source = notification.occurred_at_ms.min(notification.published_at_ms);
        (source, notification.published_at_ms)
    };
    order(stored) > order(incoming)
}

fn transient(error: impl std::fmt::Display) -> Failure {
    Failure::Transient(error.to_string())
}

/// Sends an ack of the given kind; a lost ack only means a redelivery, which the gates absorb.
async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        warn!(%error, "ack not sent; the event will be redelivered");
    }
}

/// Delay before redelivery after the n-th failed delivery: 1 s, doubling, at most 60 s.
fn retry_delay(deliveries: i64) -> Duration {
    let exponent = u32::try_from(deliveries.clamp(1, 7) - 1).unwrap_or(0);
    Duration::from_secs(2u64.pow(exponent)).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(occurred_at_ms: u64, published_at_ms: u64) -> Notification {
        Notification {
            seq: 0,
            id: reno_model::EventId::new("e").unwrap(),
            event_type: reno_model::EventType::new("plan_changed").unwrap(),
            member: reno_model::MemberId::new("m").unwrap(),
            device_type: DeviceType::new("tv").unwrap(),
            occurred_at_ms,
            published_at_ms,
            payload: reno_model::Value::Null,
            collapse_key: None,
        }
    }

    #[test]
    fn collapse_orders_by_source_time_then_server_time() {
        // A publisher's late retry of an old state keeps its source time and loses.
        assert!(newer(&notification(200, 1_000), &notification(100, 9_000)));
        assert!(!newer(&notification(100, 9_000), &notification(200, 1_000)));
        // Same source time: the server's receive time decides; a full tie lets the write through.
        assert!(newer(&notification(100, 200), &notification(100, 150)));
        assert!(!newer(&notification(100, 150), &notification(100, 150)));
        // A source time in the future (a clock running ahead) counts as the receive time.
        assert!(!newer(&notification(9_999_999, 1_000), &notification(1_500, 2_000)));
    }

    #[test]
    fn retry_delay_doubles_up_to_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
