//! The subject scheme and the names of streams, consumers and buckets: the one place that spells
//! them, so that publishers, workers, the pull service and devices cannot drift apart.
//!
//! | subject                              | carries                                         |
//! |--------------------------------------|-------------------------------------------------|
//! | `reno.evt.<type>.<member>`           | events from services (JetStream, by priority)    |
//! | `reno.evt.<partition>.<type>.<member>` | the same event as its priority stream stores it |
//! | `reno.ntf.<member>.<device_type>`    | notifications pushed to online devices (core)    |
//! | `reno.pull.<member>.<device_type>`   | pull requests from devices (request/reply)       |
//! | `reno.dead.<priority>.<reason>`      | dead letters (JetStream, `RENO_DEAD`)            |
//! | `reno.presence.<member>.<device_type>.<device_id>` | a device announcing it is online |
//! | `reno.trace.<member>`                | trace records of a member someone is tracing (core) |

use crate::{
    envelope::InvalidEvent,
    registry::Priority,
    token::{DeviceId, DeviceType, EventType, MemberId},
};

/// Prefix of every event subject.
pub const EVENT_PREFIX: &str = "reno.evt";
/// The stream that keeps dead letters.
pub const DEAD_LETTER_STREAM: &str = "RENO_DEAD";
/// Every dead-letter subject.
pub const DEAD_LETTER_SUBJECTS: &str = "reno.dead.>";
/// The KV bucket that keeps the notification history: one key per member (see [`crate::history`]).
pub const HISTORY_BUCKET: &str = "RENO_HISTORY";
/// The KV bucket of online devices: key `<member>.<device_type>.<device_id>`, gone when a device has
/// not announced itself for the presence time-to-live.
pub const PRESENCE_BUCKET: &str = "RENO_PRESENCE";

/// The presence key of one device.
pub fn presence_key(member: &MemberId, device_type: &DeviceType, device_id: &DeviceId) -> String {
    format!("{member}.{device_type}.{device_id}")
}

/// Reads member, device type and device id back out of a presence key.
pub fn parse_presence_key(key: &str) -> Option<(MemberId, DeviceType, DeviceId)> {
    parse_presence_subject(&format!("reno.presence.{key}"))
}

/// The KV bucket of members being traced: key `<member>.<session>`, one per `reno trace` running,
/// gone when the session stops renewing it.
pub const TRACE_BUCKET: &str = "RENO_TRACE";

/// `reno.trace.<member>`: where reno's processes publish trace records of a traced member.
pub fn trace_subject(member: &MemberId) -> String {
    format!("reno.trace.{member}")
}

/// The KV bucket that holds the current registry, watched by every worker.
pub const REGISTRY_BUCKET: &str = "RENO_REGISTRY";
/// The one key of the registry bucket.
pub const REGISTRY_KEY: &str = "registry";
/// The name of the pull service (NATS service API).
pub const PULL_SERVICE: &str = "reno-pull";
/// The subject pattern the pull service listens on.
pub const PULL_SUBJECTS: &str = "reno.pull.*.*";

/// `reno.evt.<type>.<member>`: where a service publishes an event.
pub fn event_subject(event_type: &EventType, member: &MemberId) -> String {
    format!("{EVENT_PREFIX}.{event_type}.{member}")
}

/// `reno.evt.<type>.*`: what a priority stream captures for one event type.
pub fn event_type_filter(event_type: &EventType) -> String {
    format!("{EVENT_PREFIX}.{event_type}.*")
}

/// Reads type and member back out of an event subject, refusing anything that is not exactly
/// `reno.evt.<type>.<member>` with safe tokens (a raw publisher may have sent anything), or that
/// subject as a priority stream stores it, `reno.evt.<partition>.<type>.<member>`.
pub fn parse_event_subject(subject: &str) -> Result<(EventType, MemberId), InvalidEvent> {
    let bad =
        |problem: String| InvalidEvent::BadSubject { subject: subject.chars().take(200).collect(), problem };
    let rest = subject
        .strip_prefix(EVENT_PREFIX)
        .and_then(|rest| rest.strip_prefix('.'))
        .ok_or_else(|| bad(format!("it does not start with {EVENT_PREFIX}.")))?;
    let tokens: Vec<&str> = rest.split('.').collect();
    let (event_type, member) = match tokens.as_slice() {
        [event_type, member] => (*event_type, *member),
        [partition, event_type, member] if parse_partition(partition).is_some() => (*event_type, *member),
        _ => return Err(bad("it does not have exactly two tokens after reno.evt".into())),
    };
    let event_type = EventType::new(event_type).map_err(|error| bad(error.to_string()))?;
    let member = MemberId::new(member).map_err(|error| bad(error.to_string()))?;
    Ok((event_type, member))
}

/// The most partitions a priority stream may have.
pub const MAX_PARTITIONS: u16 = 1024;

fn parse_partition(token: &str) -> Option<u16> {
    let canonical =
        !token.is_empty() && token.bytes().all(|byte| byte.is_ascii_digit()) && !token.starts_with('0')
            || token == "0";
    canonical.then(|| token.parse().ok()).flatten().filter(|partition| *partition < MAX_PARTITIONS)
}

/// What a priority stream maps every captured subject to: `reno.evt.<type>.<member>` becomes
/// `reno.evt.<partition>.<type>.<member>`, the partition a hash of the member alone, so that all
/// events of one member in one priority land in one partition, whatever their type.
pub fn partition_transform(partitions: u16) -> (String, String) {
    (
        format!("{EVENT_PREFIX}.*.*"),
        format!("{EVENT_PREFIX}.{{{{partition({partitions},2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"),
    )
}

/// `reno.evt.<partition>.*.*`: the events of one partition, what its worker consumer takes. Exactly
/// three tokens after the prefix, so that it never overlaps a subject as published (two tokens).
pub fn partition_filter(partition: u16) -> String {
    format!("{EVENT_PREFIX}.{partition}.*.*")
}

/// What the name of every partition's worker consumer starts with.
pub const WORKER_CONSUMER_PREFIX: &str = "reno-worker-";

/// The durable consumer of one partition of a priority stream, shared by that priority's workers.
pub fn worker_consumer(partition: u16) -> String {
    format!("{WORKER_CONSUMER_PREFIX}{partition}")
}

/// The consumer of what a priority stream stores outside every partition: events stored before
/// partitions existed, and subjects the stream cannot map (a literal `*` or `>` as the member),
/// which the workers dead-letter.
pub const STRAYS_CONSUMER: &str = "reno-worker-strays";

/// `reno.evt.*.*`: what the strays consumer takes, subjects stored as published.
pub const STRAYS_FILTER: &str = "reno.evt.*.*";

/// The subject a service published an event on, from the subject its priority stream stored it
/// under: the partition token removed. Anything else is returned as it is.
pub fn published_event_subject(stored: &str) -> std::borrow::Cow<'_, str> {
    let Some(rest) = stored.strip_prefix(EVENT_PREFIX).and_then(|rest| rest.strip_prefix('.')) else {
        return stored.into();
    };
    match rest.split_once('.') {
        Some((partition, published))
            if parse_partition(partition).is_some() && published.split('.').count() == 2 =>
        {
            format!("{EVENT_PREFIX}.{published}").into()
        }
        _ => stored.into(),
    }
}

/// `reno.ntf.<member>.<device_type>`: where online devices of a member's device type get pushes.
pub fn push_subject(member: &MemberId, device_type: &DeviceType) -> String {
    format!("reno.ntf.{member}.{device_type}")
}

/// `reno.pull.<member>.<device_type>`: where a device asks for what it missed.
pub fn pull_subject(member: &MemberId, device_type: &DeviceType) -> String {
    format!("reno.pull.{member}.{device_type}")
}

/// `_INBOX.<member>.<device_type>.<device_id>`: the only prefix a device may receive replies on
/// (its NATS client's inbox prefix), so that no device can read another's pull replies.
pub fn device_inbox_prefix(member: &MemberId, device_type: &DeviceType, device_id: &DeviceId) -> String {
    format!("_INBOX.{member}.{device_type}.{device_id}")
}

/// `reno.presence.<member>.<device_type>.<device_id>`: where a device announces that it is online.
pub fn presence_subject(member: &MemberId, device_type: &DeviceType, device_id: &DeviceId) -> String {
    format!("reno.presence.{member}.{device_type}.{device_id}")
}

/// Every presence announcement.
pub const PRESENCE_SUBJECTS: &str = "reno.presence.*.*.*";

/// Reads member, device type and device id back out of a presence subject.
pub fn parse_presence_subject(subject: &str) -> Option<(MemberId, DeviceType, DeviceId)> {
    let mut tokens = subject.strip_prefix("reno.presence.")?.split('.');
    let (Some(member), Some(device_type), Some(device_id), None) =
        (tokens.next(), tokens.next(), tokens.next(), tokens.next())
    else {
        return None;
    };
    Some((MemberId::new(member).ok()?, DeviceType::new(device_type).ok()?, DeviceId::new(device_id).ok()?))
}

/// Reads member and device type back out of a pull subject.
pub fn parse_pull_subject(subject: &str) -> Option<(MemberId, DeviceType)> {
    let mut tokens = subject.strip_prefix("reno.pull.")?.split('.');
    let (Some(member), Some(device_type), None) = (tokens.next(), tokens.next(), tokens.next()) else {
        return None;
    };
    Some((MemberId::new(member).ok()?, DeviceType::new(device_type).ok()?))
}

/// `reno.dead.<priority>.<reason>`: where a worker files an event that can never be delivered.
pub fn dead_letter_subject(priority: Priority, reason_code: &str) -> String {
    format!("reno.dead.{priority}.{reason_code}")
}

/// The stream that carries one priority: `RENO_HIGH`, `RENO_NORMAL`, `RENO_LOW`.
pub fn priority_stream(priority: Priority) -> String {
    format!("RENO_{}", priority.as_str().to_ascii_uppercase())
}

/// The stream behind the history bucket (JetStream names a KV bucket's stream `KV_<bucket>`).
pub fn history_stream() -> String {
    format!("KV_{HISTORY_BUCKET}")
}

/// The subject a member's history is stored under: `$KV.RENO_HISTORY.<member>`.
pub fn history_subject(member: &MemberId) -> String {
    format!("$KV.{HISTORY_BUCKET}.{member}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_subjects_round_trip() {
        let event_type = EventType::new("plan_changed").unwrap();
        let member = MemberId::new("m-1").unwrap();
        let subject = event_subject(&event_type, &member);
        assert_eq!(subject, "reno.evt.plan_changed.m-1");
        assert_eq!(parse_event_subject(&subject).unwrap(), (event_type, member));
    }

    #[test]
    fn stored_subjects_carry_a_partition() {
        let event_type = EventType::new("plan_changed").unwrap();
        let member = MemberId::new("m-1").unwrap();
        assert_eq!(parse_event_subject("reno.evt.17.plan_changed.m-1").unwrap(), (event_type, member));
        assert_eq!(published_event_subject("reno.evt.17.plan_changed.m-1"), "reno.evt.plan_changed.m-1");
        assert_eq!(published_event_subject("reno.evt.plan_changed.m-1"), "reno.evt.plan_changed.m-1");
        assert_eq!(published_event_subject("reno.evt.17.a.b.c"), "reno.evt.17.a.b.c");
        assert_eq!(partition_filter(3), "reno.evt.3.*.*");
        assert_eq!(worker_consumer(3), "reno-worker-3");
        let (source, destination) = partition_transform(32);
        assert_eq!(source, "reno.evt.*.*");
        assert_eq!(destination, "reno.evt.{{partition(32,2)}}.{{wildcard(1)}}.{{wildcard(2)}}");
    }

    #[test]
    fn refuses_subjects_that_smuggle_levels_or_wildcards() {
        for subject in [
            "reno.evt.plan_changed",
            "reno.evt.plan_changed.a.b",
            "reno.evt.01.plan_changed.m1",
            "reno.evt.1024.plan_changed.m1",
            "reno.evt.-1.plan_changed.m1",
            "reno.evt.1.2.plan_changed.m1",
            "reno.evt.plan_changed.*",
            "reno.evt.*.m1",
            "reno.evt.plan_changed.>",
            "other.evt.plan_changed.m1",
            "reno.evtx.a.b",
        ] {
            assert!(parse_event_subject(subject).is_err(), "{subject}");
        }
    }

    #[test]
    fn pull_subjects_round_trip() {
        let member = MemberId::new("m1").unwrap();
        let device = DeviceType::new("tv").unwrap();
        assert_eq!(parse_pull_subject(&pull_subject(&member, &device)), Some((member, device)));
        assert_eq!(parse_pull_subject("reno.pull.m1.tv.x"), None);
        assert_eq!(parse_pull_subject("reno.pull.m1"), None);
    }

    #[test]
    fn device_subjects_round_trip() {
        let member = MemberId::new("m1").unwrap();
        let device = DeviceType::new("tv").unwrap();
        let id = DeviceId::new("d-7").unwrap();
        assert_eq!(device_inbox_prefix(&member, &device, &id), "_INBOX.m1.tv.d-7");
        let presence = presence_subject(&member, &device, &id);
        assert_eq!(presence, "reno.presence.m1.tv.d-7");
        assert_eq!(parse_presence_subject(&presence), Some((member, device, id)));
        assert_eq!(parse_presence_subject("reno.presence.m1.tv"), None);
        assert_eq!(parse_presence_subject("reno.presence.m1.tv.d.x"), None);
        assert_eq!(parse_presence_subject("reno.presence.m1.tv.*"), None);
    }

    #[test]
    fn names_of_the_topology() {
        assert_eq!(priority_stream(Priority::Normal), "RENO_NORMAL");
        assert_eq!(dead_letter_subject(Priority::Low, "malformed"), "reno.dead.low.malformed");
        let member = MemberId::new("m1").unwrap();
        assert_eq!(history_subject(&member), "$KV.RENO_HISTORY.m1");
        assert_eq!(history_stream(), "KV_RENO_HISTORY");
    }
}
