//! The envelope a service publishes: one event about one member. Strictly validated: unknown fields,
//! unsafe tokens, unknown types and targets outside the type's device types are refused with a reason.

use ciborium::Value;
use serde::{Deserialize, Serialize};

use crate::{
    codec::{self, DecodeError, MAX_EVENT_BYTES},
    registry::{Registry, TypeSpec, join},
    subject,
    token::{CollapseKey, DeviceType, EventId, EventType, MemberId},
};

/// One event, as services publish it (CBOR map with these keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Unique per event of one type and member; the publisher also sends it, scoped by type and
    /// member ([`Envelope::dedup_id`]), as `Nats-Msg-Id` so JetStream drops retries.
    pub id: EventId,
    /// A type from the registry; decides priority, staleness, targets and collapsing.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The member the event is about.
    pub member: MemberId,
    /// When it happened at the source, in milliseconds since the Unix epoch (informational: staleness
    /// is judged by the server's clock, not the publisher's).
    pub occurred_at_ms: u64,
    /// What devices need to act on the event; any CBOR value.
    #[serde(default = "null")]
    pub payload: Value,
    /// Narrows delivery to these device types (each must be among the type's targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<DeviceType>>,
    /// For collapsing types: events with the same key replace each other (default: the type's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<CollapseKey>,
}

/// Why an event cannot be delivered, ever: the reason it is dead-lettered (or refused at the door).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("subject {subject:?} is not reno.evt.<type>.<member>: {problem}")]
    BadSubject { subject: String, problem: String },
    #[error("the subject says {field} {subject_value} but the envelope says {envelope_value}")]
    SubjectMismatch { field: &'static str, subject_value: String, envelope_value: String },
    #[error("unknown event type {event_type}; known types: {known}")]
    UnknownType { event_type: String, known: String },
    #[error("event type {event_type} does not reach device type {target}; it reaches: {allowed}")]
    TargetNotAllowed { event_type: String, target: String, allowed: String },
    #[error("event type {event_type} does not collapse, so it takes no collapse_key")]
    CollapseKeyNotAllowed { event_type: String },
    #[error("targets is empty; leave it out to reach every device type of the event type")]
    EmptyTargets,
}

/// `<type>:<member>:<id>`: the identity of one event for dedup (see [`Envelope::dedup_id`]). No
/// token holds a `:`, so two different events never share one.
pub fn dedup_id(event_type: &EventType, member: &MemberId, id: &EventId) -> String {
    format!("{event_type}:{member}:{id}")
}

/// An absent payload reads as CBOR null.
fn null() -> Value {
    Value::Null
}

impl InvalidEvent {
    /// A short stable code for metrics labels and the dead-letter subject.
    pub fn code(&self) -> &'static str {
        match self {
            InvalidEvent::Decode(DecodeError::TooLarge { .. }) => "too_large",
            InvalidEvent::Decode(DecodeError::TooDeep) => "too_deep",
            InvalidEvent::Decode(DecodeError::Malformed(_)) => "malformed",
            InvalidEvent::BadSubject { .. } => "bad_subject",
            InvalidEvent::SubjectMismatch { .. } => "subject_mismatch",
            InvalidEvent::UnknownType { .. } => "unknown_type",
            InvalidEvent::TargetNotAllowed { .. } | InvalidEvent::EmptyTargets => "bad_target",
            InvalidEvent::CollapseKeyNotAllowed { .. } => "bad_collapse_key",
        }
    }
}

/// Where a valid event goes: resolved against the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    /// The registry's spec of the event's type.
    pub spec: &'a TypeSpec,
    /// The device types to deliver to.
    pub targets: Vec<DeviceType>,
    /// The last part of the history key: the collapse key for collapsing types, else the event id.
    pub notification_key: String,
    /// For collapsing types, the effective collapse key (the event's, or the type's name); devices
    /// use it to keep only the newest notification per key.
    pub collapse_key: Option<CollapseKey>,
}

impl Envelope {
    /// Decodes an envelope with the size and nesting limits of an event. The size is checked twice:
    /// as received, and as reno will write it again (a CBOR reader may take a value in a short form,
    /// a bignum for one, that comes back longer), so that every message built from the event stays
    /// within the limits its readers apply.
    pub fn decode(bytes: &[u8]) -> Result<Self, InvalidEvent> {
        let envelope: Envelope = codec::decode(bytes, MAX_EVENT_BYTES)?;
        let reencoded = codec::encoded_len(&envelope);
        if reencoded > MAX_EVENT_BYTES {
            return Err(DecodeError::TooLarge { size: reencoded, max: MAX_EVENT_BYTES }.into());
        }
        Ok(envelope)
    }

    /// Encodes the envelope as CBOR.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// What identifies this event for dedup: `<type>:<member>:<id>`. Sent as `Nats-Msg-Id` and used
    /// by the worker's own dedup. JetStream dedups per stream, across every type and member in it,
    /// so the bare id would make two different events that share an id one.
    pub fn dedup_id(&self) -> String {
        dedup_id(&self.event_type, &self.member, &self.id)
    }

    /// Decodes an event as it arrived on `subject` and checks that subject and envelope agree.
    pub fn decode_from(subject: &str, bytes: &[u8]) -> Result<Self, InvalidEvent> {
        let (subject_type, subject_member) = subject::parse_event_subject(subject)?;
        let envelope = Envelope::decode(bytes)?;
        if envelope.event_type != subject_type {
            return Err(InvalidEvent::SubjectMismatch {
                field: "type",
                subject_value: subject_type.to_string(),
                envelope_value: envelope.event_type.to_string(),
            });
        }
        if envelope.member != subject_member {
            return Err(InvalidEvent::SubjectMismatch {
                field: "member",
                subject_value: subject_member.to_string(),
                envelope_value: envelope.member.to_string(),
            });
        }
        Ok(envelope)
    }

    /// Resolves the event against the registry: its spec, its device types and its history key.
    pub fn route<'a>(&self, registry: &'a Registry) -> Result<Route<'a>, InvalidEvent> {
        let spec = registry.get(&self.event_type).ok_or_else(|| InvalidEvent::UnknownType {
            event_type: self.event_type.to_string(),
            known: registry.type_names(),
        })?;
        let targets = match &self.targets {
            None => spec.targets.clone(),
            Some(targets) if targets.is_empty() => return Err(InvalidEvent::EmptyTargets),
            Some(targets) => {
                let mut chosen: Vec<DeviceType> = Vec::with_capacity(targets.len());
                for target in targets {
                    if !spec.targets.contains(target) {
                        return Err(InvalidEvent::TargetNotAllowed {
                            event_type: self.event_type.to_string(),
                            target: target.to_string(),
                            allowed: join(&spec.targets),
                        });
                    }
                    if !chosen.contains(target) {
                        chosen.push(target.clone());
                    }
                }
                chosen
            }
        };
        let collapse_key = match (&self.collapse_key, spec.collapse) {
            (Some(_), false) => {
                return Err(InvalidEvent::CollapseKeyNotAllowed { event_type: self.event_type.to_string() });
            }
            (Some(key), true) => Some(key.clone()),
            (None, true) => {
                Some(CollapseKey::new(self.event_type.as_str()).expect("an event type is a valid token"))
            }
            (None, false) => None,
        };
        let notification_key =
            collapse_key.as_ref().map_or_else(|| self.id.to_string(), CollapseKey::to_string);
        Ok(Route { spec, targets, notification_key, collapse_key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Priority;

    fn registry() -> Registry {
        Registry::from_toml(
            r#"
            device_types = ["mobile", "tv"]
            [types.plan_changed]
            priority = "high"
            stale_after_secs = 60
            collapse = true
            [types.my_list_updated]
            priority = "normal"
            stale_after_secs = 60
            targets = ["mobile"]
            "#,
        )
        .unwrap()
    }

    fn envelope(event_type: &str) -> Envelope {
        Envelope {
            id: EventId::new("e1").unwrap(),
            event_type: EventType::new(event_type).unwrap(),
            member: MemberId::new("m1").unwrap(),
            occurred_at_ms: 1_700_000_000_000,
            payload: Value::Text("hello".into()),
            targets: None,
            collapse_key: None,
        }
    }

    #[test]
    fn the_dedup_id_is_scoped_by_type_and_member() {
        let plan = envelope("plan_changed");
        assert_eq!(plan.dedup_id(), "plan_changed:m1:e1");
        let other_member = Envelope { member: MemberId::new("m2").unwrap(), ..plan.clone() };
        assert_ne!(other_member.dedup_id(), plan.dedup_id());
        assert_ne!(envelope("my_list_updated").dedup_id(), plan.dedup_id());
    }

    #[test]
    fn round_trips_through_cbor() {
        let mut original = envelope("plan_changed");
        original.targets = Some(vec![DeviceType::new("tv").unwrap()]);
        let decoded = Envelope::decode_from("reno.evt.plan_changed.m1", &original.encode()).unwrap();
        assert_eq!(decoded, original);
    }

    #[test]
    fn routes_by_the_registry() {
        let registry = registry();
        let route = envelope("plan_changed").route(&registry).unwrap();
        assert_eq!(route.spec.priority, Priority::High);
        assert_eq!(route.targets.len(), 2);
        assert_eq!(route.notification_key, "plan_changed");
        let route = envelope("my_list_updated").route(&registry).unwrap();
        assert_eq!(route.notification_key, "e1");
        assert_eq!(route.targets, [DeviceType::new("mobile").unwrap()]);
    }

    #[test]
    fn refuses_what_the_registry_does_not_allow() {
        let registry = registry();
        let unknown = envelope("title_watched").route(&registry).unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "unknown event type title_watched; known types: my_list_updated, plan_changed"
        );
        let mut to_tv = envelope("my_list_updated");
        to_tv.targets = Some(vec![DeviceType::new("tv").unwrap()]);
        assert_eq!(to_tv.route(&registry).unwrap_err().code(), "bad_target");
        let mut keyed = envelope("my_list_updated");
        keyed.collapse_key = Some(CollapseKey::new("k").unwrap());
        assert_eq!(keyed.route(&registry).unwrap_err().code(), "bad_collapse_key");
    }

    #[test]
    fn refuses_unknown_fields_and_unsafe_tokens() {
        let mut map = vec![
            (Value::Text("id".into()), Value::Text("e1".into())),
            (Value::Text("type".into()), Value::Text("plan_changed".into())),
            (Value::Text("member".into()), Value::Text("m1".into())),
            (Value::Text("occurred_at_ms".into()), Value::Integer(1.into())),
        ];
        assert!(Envelope::decode(&codec::encode(&Value::Map(map.clone()))).is_ok());
        map.push((Value::Text("priority".into()), Value::Text("high".into())));
        let error = Envelope::decode(&codec::encode(&Value::Map(map.clone()))).unwrap_err();
        assert!(error.to_string().contains("unknown field `priority`"), "{error}");
        map.pop();
        map[2].1 = Value::Text("m1.*".into());
        let error = Envelope::decode(&codec::encode(&Value::Map(map))).unwrap_err();
        assert!(error.to_string().contains("member id \"m1.*\" is not accepted"), "{error}");
    }

    #[test]
    fn subject_and_envelope_must_agree() {
        let bytes = envelope("plan_changed").encode();
        let error = Envelope::decode_from("reno.evt.plan_changed.m2", &bytes).unwrap_err();
        assert_eq!(error.to_string(), "the subject says member m2 but the envelope says m1");
        let error = Envelope::decode_from("reno.evt.plan_changed.m1.x", &bytes).unwrap_err();
        assert_eq!(error.code(), "bad_subject");
        let error = Envelope::decode_from("reno.evt.plan_changed.*", &bytes).unwrap_err();
        assert_eq!(error.code(), "bad_subject");
    }
}
