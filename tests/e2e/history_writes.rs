//! What a worker finds in the history and does about it: its own earlier write (stored although the
//! write's answer was lost) is pushed, an entry it cannot read is never overwritten, and a stale
//! redelivery that was never started is dropped while one that was started is finished. (A history
//! is one document per member: `reno_model::history`.)

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use futures::{StreamExt, TryStreamExt};
use reno_model::{
    CollapseKey, Envelope, Notification,
    history::{Entry, MemberHistory},
    subject,
};

use crate::support::*;

const REGISTRY: &str = r#"
device_types = ["mobile", "tv"]

[types.lasting]
priority = "normal"
stale_after_secs = 3600

[types.fleeting]
priority = "normal"
stale_after_secs = 1

[types.plan_changed]
priority = "high"
stale_after_secs = 3600
collapse = true
"#;

/// Writes a member's history document as it is stored; returns its revision.
async fn write_history(stack: &Stack, member: &str, value: Vec<u8>) -> u64 {
    let subject = subject::history_subject(&member_id(member));
    stack.jetstream.publish(subject, value.into()).await.unwrap().await.unwrap().sequence
}

/// The history entry a worker writes for `envelope`, for `targets`, from the message `source`.
fn entry_of(envelope: &Envelope, targets: &[&str], source: &str) -> Entry {
    Entry {
        seq: 0,
        written_ms: 0,
        targets: targets.iter().map(|target| device(target)).collect(),
        source: source.to_owned(),
        id: envelope.id.clone(),
        event_type: envelope.event_type.clone(),
        occurred_at_ms: envelope.occurred_at_ms,
        published_at_ms: 1,
        payload: envelope.payload.clone(),
        collapse_key: None,
    }
}

#[tokio::test]
async fn a_write_stored_although_its_answer_was_lost_is_still_pushed() {
    let mut stack = Stack::start_with(Some(REGISTRY), &[]).await;
    stack.start_pull_service().await;
    let mut spy = stack.client.subscribe("reno.ntf.ivan.tv").await.unwrap();
    stack.announce("ivan", "tv").await;
    let envelope = event("lasting", "ivan", text("hello"));
    let published = stack.publisher().publish(&envelope).await.unwrap();
    // What an attempt whose history write timed out leaves behind: the entry is there, written from
    // this very message, but nothing was pushed and the event was not acked.
    let source = format!("{}:{}", published.stream, published.sequence);
    let history =
        MemberHistory { entries: vec![entry_of(&envelope, &["tv"], &source)], ..Default::default() };
    let seq = write_history(&stack, "ivan", history.encode()).await;

    let worker = stack.start_worker(&[]);
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 1).await;
    let push = within("push of the already written entry", spy.next()).await.unwrap();
    let pushed = Notification::decode(&push.payload).unwrap();
    assert_eq!((pushed.id, pushed.seq), (envelope.id.clone(), seq));
    assert_eq!(stack.counter(worker, "reno_worker_events_total", &[("outcome", "duplicate")]).await, 0);
}

#[tokio::test]
async fn a_history_the_worker_cannot_read_is_never_overwritten() {
    let mut stack = Stack::start_with(Some(REGISTRY), &[]).await;
    // As a newer reno might write it during a rolling upgrade: not a history this worker knows.
    let unreadable = b"\xa1\x63new\x01".to_vec();
    let seq = write_history(&stack, "judy", unreadable.clone()).await;
    let mut update = event("plan_changed", "judy", text("basic"));
    update.collapse_key = Some(CollapseKey::new("plan").unwrap());
    update.targets = Some(vec![device("tv")]);
    stack.publisher().publish(&update).await.unwrap();

    let worker = stack.start_worker(&["--max-deliveries", "2"]);
    stack.wait_for_counter(worker, "reno_worker_retries_total", &[("reason", "unreadable_entry")], 1).await;
    stack
        .wait_for_counter(worker, "reno_worker_dead_letters_total", &[("reason", "retries_exhausted")], 1)
        .await;
    let history = stack.jetstream.get_stream(subject::history_stream()).await.unwrap();
    let stored =
        history.direct_get_last_for_subject(subject::history_subject(&member_id("judy"))).await.unwrap();
    assert_eq!((stored.sequence, stored.payload.to_vec()), (seq, unreadable));
    assert_eq!(stack.counter(worker, "reno_worker_events_total", &[("outcome", "delivered")]).await, 0);
}

#[tokio::test]
async fn a_stale_redelivery_is_dropped_unless_an_earlier_attempt_started_it() {
    let mut stack = Stack::start_with(Some(REGISTRY), &[]).await;
    stack.start_pull_service().await;
    // Two members, so that the two events sit in two partitions and can be held at once (a
    // partition hands out one event at a time).
    let untouched = event("fleeting", "kurt", text("never started"));
    let half_done = event("fleeting", "kate", text("half written"));
    stack.publisher().publish(&untouched).await.unwrap();
    let published = stack.publisher().publish(&half_done).await.unwrap();
    // The second one's mobile entry was written by an earlier attempt that then stopped.
    let source = format!("{}:{}", published.stream, published.sequence);
    let history =
        MemberHistory { entries: vec![entry_of(&half_done, &["mobile"], &source)], ..Default::default() };
    write_history(&stack, "kate", history.encode()).await;

    // Both are fetched by their partitions' consumers and handed back without being worked on, as
    // a worker shutting down does, after they went stale: their redeliveries were never processed.
    let mut stream = stack.jetstream.get_stream("RENO_NORMAL").await.unwrap();
    let mut held = Vec::new();
    for member in ["kurt", "kate"] {
        let partition = partition_of(&mut stream, member).await;
        let consumer: PullConsumer = stream.get_consumer(&subject::worker_consumer(partition)).await.unwrap();
        let mut fetched = consumer.fetch().max_messages(1).messages().await.unwrap();
        held.push(fetched.next().await.unwrap().unwrap());
    }
    assert_ne!(held[0].subject, held[1].subject);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for message in held {
        message.ack_with(async_nats::jetstream::AckKind::Nak(None)).await.unwrap();
    }

    let worker = stack.start_worker(&[]);
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "stale")], 1).await;
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 1).await;
    let ids = |page: reno_model::PullPage| page.notifications.into_iter().map(|n| n.id).collect::<Vec<_>>();
    // The half-written one was finished for the device type it still lacked; the other never shows.
    for device_type in ["tv", "mobile"] {
        assert_eq!(
            ids(stack.pull_page("kate", device_type, 0, 100).await),
            std::slice::from_ref(&half_done.id)
        );
        assert_eq!(ids(stack.pull_page("kurt", device_type, 0, 100).await), []);
    }
}

/// The partition a member's `fleeting` event was stored in, read from the stream's subjects; fails
/// if the two members of the test share one (pick other names then).
async fn partition_of(stream: &mut async_nats::jetstream::stream::Stream, member: &str) -> u16 {
    let subjects: Vec<(String, usize)> =
        stream.info_with_subjects("reno.evt.*.fleeting.*").await.unwrap().try_collect().await.unwrap();
    let suffix = format!(".fleeting.{member}");
    let (stored, _) = subjects.into_iter().find(|(subject, _)| subject.ends_with(&suffix)).unwrap();
    stored.split('.').nth(2).unwrap().parse().unwrap()
}
