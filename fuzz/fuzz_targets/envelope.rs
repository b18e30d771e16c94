//! An event as a worker reads it from a priority stream: `Envelope::decode`, `Envelope::decode_from`
//! with an agreeing subject or one built from the input, and `route` against the shipped registry,
//! down to the notification a worker would write to the history and the pull page that carries it.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use reno_fuzz::{assert_payload_depth, assert_round_trip, is_token};
use reno_model::{
    Envelope, InvalidEvent, Notification, PullPage, Registry,
    codec::{DecodeError, MAX_EVENT_BYTES},
    subject,
};

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    Registry::from_toml(include_str!("../../registry/events.toml")).expect("the shipped registry is valid")
});

fuzz_target!(|data: &[u8]| {
    let decoded = Envelope::decode(data);
    if data.len() > MAX_EVENT_BYTES {
        assert!(matches!(decoded, Err(InvalidEvent::Decode(DecodeError::TooLarge { .. }))));
    }
    if let Ok(envelope) = &decoded {
        check_envelope(envelope, data);
    }
    let subject = subject_for(data, decoded.as_ref().ok());
    check_decode_from(&subject, data, &decoded);
});

fn check_envelope(envelope: &Envelope, data: &[u8]) {
    assert!(data.len() <= MAX_EVENT_BYTES);
    for token in [envelope.id.as_str(), envelope.event_type.as_str(), envelope.member.as_str()] {
        assert!(is_token(token), "{token:?} was accepted as a token");
    }
    for target in envelope.targets.iter().flatten() {
        assert!(is_token(target.as_str()));
    }
    if let Some(key) = &envelope.collapse_key {
        assert!(is_token(key.as_str()));
    }
    assert_payload_depth(&envelope.payload, 1);
    let encoded = assert_round_trip(envelope, data, Envelope::encode, Envelope::decode);
    // Accepted means within the limit also as reno writes it again.
    assert!(encoded.len() <= MAX_EVENT_BYTES, "an accepted envelope re-encodes to {} bytes", encoded.len());
    check_route(envelope);
}

/// Half the time the subject the envelope itself names (so `decode_from` must agree with `decode`);
/// otherwise the envelope's type with a member made of the input's last bytes (often text of the
/// envelope's own, so a valid member that differs), or the input's first bytes as the whole subject.
/// The last byte chooses.
fn subject_for(data: &[u8], envelope: Option<&Envelope>) -> String {
    let selector = data.last().copied().unwrap_or(0);
    let length = usize::from(selector / 4 % 24).min(data.len());
    let event_type = envelope.map_or("plan_changed", |envelope| envelope.event_type.as_str());
    match (selector % 4, envelope) {
        (0 | 1, Some(envelope)) => subject::event_subject(&envelope.event_type, &envelope.member),
        (0 | 1, None) => "reno.evt.plan_changed.m1".to_owned(),
        (2, _) => {
            let member = String::from_utf8_lossy(&data[data.len() - length..]);
            format!("reno.evt.{event_type}.{}", member.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        }
        _ => String::from_utf8_lossy(&data[..length]).into_owned(),
    }
}

fn check_decode_from(subject: &str, data: &[u8], decoded: &Result<Envelope, InvalidEvent>) {
    let result = Envelope::decode_from(subject, data);
    let parsed = subject::parse_event_subject(subject);
    match (&parsed, decoded) {
        (Err(_), _) => assert!(matches!(result, Err(InvalidEvent::BadSubject { .. })), "{result:?}"),
        (Ok(_), Err(error)) => assert_eq!(result.as_ref().err(), Some(error)),
        (Ok((event_type, member)), Ok(envelope)) => {
            if &envelope.event_type == event_type && &envelope.member == member {
                let from_subject = result.expect("an envelope on its own subject is accepted");
                assert_eq!(from_subject.encode(), envelope.encode());
            } else {
                assert!(matches!(result, Err(InvalidEvent::SubjectMismatch { .. })), "{result:?}");
            }
        }
    }
}

/// Routing either refuses with a routing reason or yields targets within the type's, a collapse
/// key exactly for collapsing types, and notifications the devices' decoder accepts.
fn check_route(envelope: &Envelope) {
    let route = match envelope.route(&REGISTRY) {
        Ok(route) => route,
        Err(error) => {
            let code = error.code();
            assert!(["unknown_type", "bad_target", "bad_collapse_key"].contains(&code), "{error}");
            assert_eq!(code == "unknown_type", REGISTRY.get(&envelope.event_type).is_none());
            return;
        }
    };
    let spec = REGISTRY.get(&envelope.event_type).expect("a routed type is in the registry");
    assert_eq!(route.spec, spec);
    assert!(!route.targets.is_empty());
    for (index, target) in route.targets.iter().enumerate() {
        assert!(spec.targets.contains(target), "{target} is not a target of {}", envelope.event_type);
        assert!(!route.targets[..index].contains(target), "{target} is routed twice");
    }
    assert_eq!(route.collapse_key.is_some(), spec.collapse);
    match &route.collapse_key {
        Some(key) => assert_eq!(route.notification_key, key.as_str()),
        None => assert_eq!(route.notification_key, envelope.id.as_str()),
    }
    assert!(is_token(&route.notification_key));
    // The copy a worker writes to the history (and pushes) must be one devices can read.
    let mut notification = Notification::from_event(envelope, &route.targets[0], u64::MAX);
    notification.collapse_key = route.collapse_key.clone();
    notification.seq = u64::MAX;
    let encoded = notification.encode();
    let read = Notification::decode(&encoded).expect("devices read the push of a valid event");
    assert_eq!(read.encode(), encoded);
    // And the page that carries it by pull.
    let page = PullPage {
        notifications: vec![read],
        next_cursor: u64::MAX,
        more: true,
        resync: true,
        epoch: u64::MAX,
        next_cursor_time_ms: Some(u64::MAX),
    };
    if let Err(error) = PullPage::decode(&page.encode()) {
        panic!("devices cannot read the page of a valid event: {error}");
    }
}
