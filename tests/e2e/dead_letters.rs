//! Bad input: malformed, oversized or deeply nested events land in the dead-letter stream with their
//! reason; unknown types and unsafe member ids are refused at the door; and nothing smuggled in
//! through a raw NATS publish ever reaches a device.

use std::collections::BTreeMap;

use async_nats::jetstream::context::PublishErrorKind;
use futures::StreamExt;
use reno_model::{Envelope, MemberId, Value, subject};
use reno_nats::PublishError;

use crate::support::*;

/// The dead letters filed so far: reason code and subject of each, in order.
async fn dead_letters(stack: &Stack) -> Vec<(String, String)> {
    let mut stream = stack.jetstream.get_stream(subject::DEAD_LETTER_STREAM).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut letters = Vec::new();
    for sequence in 1..=last {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let header =
            |name: &str| message.headers.get(name).map(|value| value.to_string()).unwrap_or_default();
        assert!(!header("Reno-Reason").is_empty(), "every dead letter says why");
        letters.push((header("Reno-Reason-Code"), header("Reno-Subject")));
    }
    letters
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(Value::Null, |inner, _| Value::Array(vec![inner]))
}

#[tokio::test]
async fn bad_events_are_dead_lettered_with_their_reason() {
    let mut stack = Stack::start().await;
    let worker = stack.start_all().await;
    // Sees every push to every device; judy's tv is online, so her pushes go out.
    let mut spy = stack.client.subscribe("reno.ntf.>").await.unwrap();
    stack.announce("judy", "tv").await;

    let raw = |subject: &str, bytes: Vec<u8>| {
        let jetstream = stack.jetstream.clone();
        let subject = subject.to_owned();
        async move { jetstream.publish(subject, bytes.into()).await.unwrap().await.unwrap() }
    };
    raw("reno.evt.plan_changed.judy", b"\xff not cbor".to_vec()).await;
    raw("reno.evt.plan_changed.judy", event("plan_changed", "judy", text(&"x".repeat(70_000))).encode())
        .await;
    raw("reno.evt.plan_changed.judy", event("plan_changed", "judy", nested(40)).encode()).await;
    raw("reno.evt.plan_changed.judy", event("plan_changed", "mallory", text("not judy's")).encode()).await;
    let mut unknown_field = ciborium_map(&event("plan_changed", "judy", Value::Null));
    unknown_field.push((text("priority"), text("high")));
    raw("reno.evt.plan_changed.judy", reno_model::codec::encode(&Value::Map(unknown_field))).await;
    let mut wrong_target = event("diagnostics_requested", "judy", Value::Null);
    wrong_target.targets = Some(vec![device("browser")]);
    raw("reno.evt.diagnostics_requested.judy", wrong_target.encode()).await;

    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "dead_lettered")], 6).await;
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for (code, subject) in dead_letters(&stack).await {
        assert!(subject.starts_with("reno.evt."), "{subject}");
        *codes.entry(code).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> =
        [("malformed", 2), ("too_large", 1), ("too_deep", 1), ("subject_mismatch", 1), ("bad_target", 1)]
            .into_iter()
            .map(|(code, count)| (code.to_owned(), count))
            .collect();
    assert_eq!(codes, expected);
    assert_eq!(stack.counter(worker, "reno_worker_dead_letters_total", &[("reason", "too_large")]).await, 1);

    // Nothing of the above reached any device: the first push anyone sees is this sentinel.
    let sentinel = event("plan_changed", "judy", text("fine"));
    stack.publisher().publish(&sentinel).await.unwrap();
    let first_push = within("sentinel push", spy.next()).await.unwrap();
    assert_eq!(reno_model::Notification::decode(&first_push.payload).unwrap().id, sentinel.id);
}

fn ciborium_map(envelope: &Envelope) -> Vec<(Value, Value)> {
    match Value::serialized(envelope).unwrap() {
        Value::Map(entries) => entries,
        other => panic!("an envelope encodes as a map, not {other:?}"),
    }
}

#[tokio::test]
async fn unknown_types_and_unsafe_members_are_refused_at_the_door() {
    let mut stack = Stack::start().await;
    let worker = stack.start_all().await;
    let mut spy = stack.client.subscribe("reno.ntf.>").await.unwrap();
    stack.announce("judy", "tv").await;

    // The Rust API: an unknown type is refused by the server, at once and with the reason.
    let error = stack.publisher().publish(&event("title_watched", "judy", Value::Null)).await.unwrap_err();
    assert!(matches!(error, PublishError::UnknownType { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        "no stream captures reno.evt.title_watched.judy: event type title_watched is not provisioned"
    );
    // ...and unsafe member ids cannot even be built.
    for member in ["a.b", "a*", "a>", "a b", ""] {
        assert!(MemberId::new(member).is_err(), "{member:?}");
    }
    // The CLI says what is accepted.
    let output = stack.reno(&["publish", "--type", "plan_changed", "--member", "a.b"]).output().unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("use 1 to 64 ASCII letters, digits, '-' or '_'")
    );

    // Raw NATS publishes that try to smuggle a subject level or wildcard in. A member with '.'
    // adds a token: no stream captures that subject, so the publisher is refused.
    let envelope = event("plan_changed", "judy", text("smuggled"));
    for subject in ["reno.evt.plan_changed.a.b", "reno.evt.plan_changed.judy.>"] {
        let error =
            stack.jetstream.publish(subject, envelope.encode().into()).await.unwrap().await.unwrap_err();
        assert_eq!(error.kind(), PublishErrorKind::StreamNotFound, "{subject}");
    }
    // A literal '*' as the member token matches the stream's own wildcard and is stored; the
    // worker refuses it and files it as a dead letter.
    stack
        .jetstream
        .publish("reno.evt.plan_changed.*", envelope.encode().into())
        .await
        .unwrap()
        .await
        .unwrap();
    stack.wait_for_counter(worker, "reno_worker_dead_letters_total", &[("reason", "bad_subject")], 1).await;
    // White space cannot be put into a subject by the client at all.
    assert!(stack.client.publish("reno.evt.plan_changed.a b", "x".into()).await.is_err());

    let sentinel = event("plan_changed", "judy", text("fine"));
    stack.publisher().publish(&sentinel).await.unwrap();
    let first_push = within("sentinel push", spy.next()).await.unwrap();
    assert_eq!(reno_model::Notification::decode(&first_push.payload).unwrap().id, sentinel.id);
}
