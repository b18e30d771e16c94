//! Under stress: a backlog in one priority never holds up another, a worker killed in the middle of
//! a batch loses nothing, and moving a type to another priority loses no event.

use std::collections::BTreeSet;

use futures::{StreamExt, stream};
use reno_model::{Value, subject};

use crate::support::*;

/// Publishes `count` events of one type as fast as JetStream takes them (acks awaited in windows).
async fn flood(stack: &Stack, event_type: &str, member: &str, count: usize) -> BTreeSet<String> {
    let envelopes: Vec<_> =
        (0..count).map(|index| event(event_type, member, Value::Integer(index.into()))).collect();
    let ids = envelopes.iter().map(|envelope| envelope.id.to_string()).collect();
    let subject = subject::event_subject(&envelopes[0].event_type, &envelopes[0].member);
    stream::iter(envelopes)
        .map(|envelope| {
            let jetstream = stack.jetstream.clone();
            let subject = subject.clone();
            async move { jetstream.publish(subject, envelope.encode().into()).await.unwrap().await.unwrap() }
        })
        .buffer_unordered(512)
        .collect::<Vec<_>>()
        .await;
    ids
}

async fn pending(stack: &Stack, priority_stream: &str) -> u64 {
    stack
        .partition_infos(priority_stream)
        .await
        .iter()
        .map(|info| info.num_pending + info.num_ack_pending as u64)
        .sum()
}

#[tokio::test]
async fn heavy_a_low_backlog_never_delays_a_high_event() {
    let mut stack = Stack::start().await;
    stack.start_pull_service().await;
    // The backlog is in place before the worker starts, and it is one member's, so one partition
    // works it off one event at a time: it lasts.
    flood(&stack, "diagnostics_requested", "bulk", 20_000).await;
    stack.start_worker(&[]);
    let mut tv = stack.device("vip", "tv", 0).await;

    let urgent = event("profile_maturity_changed", "vip", text("kids profile"));
    stack.publisher().publish(&urgent).await.unwrap();
    assert_eq!(next_notification(&mut tv).await.id, urgent.id);
    // The urgent event was delivered while the low stream still had most of its backlog.
    let low_backlog = pending(&stack, "RENO_LOW").await;
    assert!(low_backlog > 10_000, "low backlog was {low_backlog}: the high event did not overtake it");
}

#[tokio::test]
async fn heavy_killing_a_worker_mid_batch_loses_nothing() {
    // A short ack wait, so that what the killed worker held is redelivered soon; a history that
    // holds all of kim's, so that the device can pull whatever push did not bring.
    let mut stack = Stack::start_with(None, &["--ack-wait-secs", "2", "--history-max-entries", "1000"]).await;
    stack.start_pull_service().await;
    let mut mobile = stack.device("kim", "mobile", 0).await;
    let first = stack.start_worker(&["--priority", "normal"]);
    let published = flood(&stack, "my_list_updated", "kim", 600).await;

    let mut received = BTreeSet::new();
    while received.len() < 300 {
        received.insert(next_notification(&mut mobile).await.id.to_string());
    }
    // Frozen first, so that what it holds and what is left can be checked before the kill.
    stack.process(first).signal("STOP").unwrap();
    let backlog = pending(&stack, "RENO_NORMAL").await;
    assert!(backlog > 0, "the first worker finished everything before it was stopped");
    stack.process(first).signal("KILL").unwrap();

    let second = stack.start_worker(&["--priority", "normal"]);
    while received.len() < published.len() {
        received.insert(next_notification(&mut mobile).await.id.to_string());
    }
    assert_eq!(received, published);
    stack.wait_for_counter(second, "reno_worker_events_total", &[("outcome", "delivered")], 1).await;
    eventually("the stream is worked off", || async { pending(&stack, "RENO_NORMAL").await == 0 }).await;
    // Every one of them is in the history exactly once.
    let mut in_history = BTreeSet::new();
    let mut cursor = 0;
    loop {
        let page = stack.pull_page("kim", "mobile", cursor, 1000).await;
        in_history.extend(page.notifications.iter().map(|notification| notification.id.to_string()));
        cursor = page.next_cursor;
        if !page.more {
            break;
        }
    }
    assert_eq!(in_history, published);
}

const LOW_REGISTRY: &str = r#"
device_types = ["tv"]
[types.moving]
priority = "low"
stale_after_secs = 3600
[types.staying]
priority = "high"
stale_after_secs = 3600
"#;

#[tokio::test]
async fn moving_a_type_to_another_priority_loses_no_event() {
    let mut stack = Stack::start_with(Some(LOW_REGISTRY), &[]).await;
    let before = flood(&stack, "moving", "lee", 50).await;

    stack.rewrite_registry(&LOW_REGISTRY.replace("priority = \"low\"", "priority = \"high\""));
    stack.provision(&[]);
    let mut high = stack.jetstream.get_stream("RENO_HIGH").await.unwrap();
    assert!(high.info().await.unwrap().config.subjects.contains(&"reno.evt.moving.*".to_owned()));
    assert_eq!(stack.stored("RENO_LOW").await, 50, "the low stream keeps what it had");
    let after = flood(&stack, "moving", "lee", 50).await;
    assert_eq!(stack.stored("RENO_HIGH").await, 50, "new events go to the high stream");

    stack.start_all().await;
    let mut tv = stack.device("lee", "tv", 0).await;
    let mut received = BTreeSet::new();
    while received.len() < 100 {
        received.insert(next_notification(&mut tv).await.id.to_string());
    }
    assert_eq!(received, before.union(&after).cloned().collect());
}

#[tokio::test]
async fn heavy_two_workers_share_one_priority() {
    let mut stack = Stack::start_with(None, &["--history-max-entries", "1000"]).await;
    stack.start_pull_service().await;
    let workers =
        [stack.start_worker(&["--priority", "normal"]), stack.start_worker(&["--priority", "normal"])];
    // Both are waiting on the partition consumers before the events arrive, so JetStream splits
    // them: one member's events are handed out one at a time, to either worker.
    stack.wait_until_pulling("RENO_NORMAL", 2).await;
    let published = flood(&stack, "viewing_activity", "sam", 600).await;

    let delivered_by =
        |worker| stack.counter(worker, "reno_worker_events_total", &[("outcome", "delivered")]);
    eventually("all delivered", || async {
        delivered_by(workers[0]).await + delivered_by(workers[1]).await >= published.len() as u64
    })
    .await;
    let delivered = [delivered_by(workers[0]).await, delivered_by(workers[1]).await];
    assert_eq!(delivered.iter().sum::<u64>(), published.len() as u64, "each event delivered once");
    assert!(delivered.iter().all(|count| *count > 0), "each worker took a share: {delivered:?}");
    for worker in workers {
        assert_eq!(stack.counter(worker, "reno_worker_events_total", &[("outcome", "duplicate")]).await, 0);
    }
    let page = stack.pull_page("sam", "tv", 0, 1000).await;
    assert_eq!(page.notifications.len(), published.len(), "sam's history holds every one");
}

#[tokio::test]
async fn a_failure_that_outlasts_the_delivery_bound_is_dead_lettered_with_its_error() {
    let mut stack = Stack::start().await;
    let worker = stack.start_worker(&["--priority", "high", "--max-deliveries", "2"]);
    stack.wait_until_pulling("RENO_HIGH", 1).await;
    // The history bucket disappears under the running worker: every write fails, a transient
    // failure as far as the worker can tell, retried once and then filed with its error.
    stack.jetstream.delete_key_value(subject::HISTORY_BUCKET).await.unwrap();
    let doomed = event("plan_changed", "tess", text("nowhere to go"));
    stack.publisher().publish(&doomed).await.unwrap();

    stack
        .wait_for_counter(worker, "reno_worker_dead_letters_total", &[("reason", "retries_exhausted")], 1)
        .await;
    assert_eq!(stack.counter(worker, "reno_worker_events_total", &[("outcome", "retried")]).await, 1);
    assert_eq!(stack.stored(subject::DEAD_LETTER_STREAM).await, 1);
    let dead = stack.jetstream.get_stream(subject::DEAD_LETTER_STREAM).await.unwrap();
    let letter = dead.get_raw_message(1).await.unwrap();
    let reason = letter.headers.get("Reno-Reason").unwrap().to_string();
    assert!(reason.starts_with("gave up after 2 deliveries: "), "{reason}");
    assert_eq!(letter.headers.get("Reno-Deliveries").unwrap().as_str(), "2");
    assert_eq!(reno_model::Envelope::decode(&letter.payload).unwrap(), doomed, "the original bytes are kept");
    // Nothing is left behind in the stream (the terminate is sent without waiting for an answer).
    eventually("the stream is empty", || async { pending(&stack, "RENO_HIGH").await == 0 }).await;
    eventually("the stream holds nothing", || async { stack.stored("RENO_HIGH").await == 0 }).await;
}
