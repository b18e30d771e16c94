//! The worker's gates: stale events are dropped and counted, a repeated event id is delivered once,
//! and a collapsing type keeps only the latest event per collapse key in the history.

use std::time::Duration;

use async_nats::HeaderMap;
use reno_model::{CollapseKey, Value};

use crate::support::*;

const REGISTRY: &str = r#"
device_types = ["mobile", "tv"]

[types.fleeting]
priority = "normal"
stale_after_secs = 1

[types.lasting]
priority = "normal"
stale_after_secs = 3600

[types.plan_changed]
priority = "high"
stale_after_secs = 3600
collapse = true
"#;

#[tokio::test]
async fn a_stale_event_is_dropped_and_counted() {
    let mut stack = Stack::start_with(Some(REGISTRY), &[]).await;
    stack.start_pull_service().await;
    let stale = event("fleeting", "carol", text("too late"));
    stack.publisher().publish(&stale).await.unwrap();
    // Staleness is judged by the server's receive time, so the only way to make an event stale is
    // to let its threshold (1 s) pass before a worker sees it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let worker = stack.start_worker(&[]);
    let fresh = event("lasting", "carol", text("in time"));
    stack.publisher().publish(&fresh).await.unwrap();

    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 1).await;
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "stale")], 1).await;
    let page = stack.pull_page("carol", "tv", 0, 100).await;
    let ids: Vec<_> = page.notifications.iter().map(|notification| notification.id.clone()).collect();
    assert_eq!(ids, [fresh.id]);
    assert_eq!(stack.counter(worker, "reno_worker_events_total", &[("outcome", "received")]).await, 2);
}

#[tokio::test]
async fn a_repeated_event_id_is_delivered_once() {
    let mut stack = Stack::start_with(Some(REGISTRY), &[]).await;
    let worker = stack.start_all().await;
    let mut tv = stack.device("dave", "tv", 0).await;

    // The same event three times: twice raw without Nats-Msg-Id (so JetStream stores both copies
    // and only the worker's own dedup stands between them and the device), once more through the
    // publisher, which JetStream itself recognises inside its duplicate window.
    let repeated = event("lasting", "dave", text("once"));
    let subject = reno_model::subject::event_subject(&repeated.event_type, &repeated.member);
    for _ in 0..2 {
        stack.jetstream.publish(subject.clone(), repeated.encode().into()).await.unwrap().await.unwrap();
    }
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", repeated.dedup_id().as_str());
    stack
        .jetstream
        .publish_with_headers(subject, headers, repeated.encode().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let again = stack.publisher().publish(&repeated).await.unwrap();
    assert!(again.duplicate, "JetStream drops a repeat with the same Nats-Msg-Id");

    // Three copies reached the worker: one delivered, two counted as duplicates.
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "duplicate")], 2).await;
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 1).await;
    assert_eq!(stack.counter(worker, "reno_worker_events_total", &[("outcome", "received")]).await, 3);
    let sentinel = event("lasting", "dave", text("after"));
    stack.publisher().publish(&sentinel).await.unwrap();
    assert_eq!(next_notification(&mut tv).await.id, repeated.id);
    assert_eq!(next_notification(&mut tv).await.id, sentinel.id);
    let page = stack.pull_page("dave", "tv", 0, 100).await;
    assert_eq!(page.notifications.len(), 2);
}

#[tokio::test]
async fn a_collapsing_type_keeps_only_the_latest_in_history() {
    let mut stack = Stack::start_with(Some(REGISTRY), &[]).await;
    stack.start_pull_service().await;
    // Published before any worker runs, so that the worker meets all of them at once and handles
    // them concurrently: the newest (by server receive time) must win whatever the order.
    let mut plans = Vec::new();
    for plan in ["basic", "standard", "premium"] {
        let mut update = event("plan_changed", "erin", text(plan));
        update.collapse_key = Some(CollapseKey::new("plan").unwrap());
        stack.publisher().publish(&update).await.unwrap();
        plans.push(update);
        // Receive times are compared in milliseconds: keep them apart.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut other_key = event("plan_changed", "erin", text("household"));
    other_key.collapse_key = Some(CollapseKey::new("household").unwrap());
    stack.publisher().publish(&other_key).await.unwrap();

    let worker = stack.start_worker(&[]);
    eventually("all four handled", || async {
        let delivered = stack.counter(worker, "reno_worker_events_total", &[("outcome", "delivered")]).await;
        let collapsed = stack.counter(worker, "reno_worker_events_total", &[("outcome", "collapsed")]).await;
        delivered + collapsed == 4
    })
    .await;
    for device_type in ["tv", "mobile"] {
        let page = stack.pull_page("erin", device_type, 0, 100).await;
        let mut payloads: Vec<Value> =
            page.notifications.into_iter().map(|notification| notification.payload).collect();
        payloads.sort_by_key(|payload| format!("{payload:?}"));
        assert_eq!(payloads, [text("household"), text("premium")], "{device_type}");
    }
}

#[tokio::test]
async fn the_same_event_id_for_another_member_or_type_is_another_event() {
    let mut stack = Stack::start_with(Some(REGISTRY), &[]).await;
    let worker = stack.start_all().await;
    // JetStream's own dedup is per stream, across every type and member in it: a bare event id
    // as Nats-Msg-Id would store only the first of these and ack the others as duplicates.
    let first = event("lasting", "frank", text("frank's"));
    let mut other_member = event("lasting", "grace", text("grace's"));
    other_member.id = first.id.clone();
    let mut other_type = event("plan_changed", "frank", text("frank's plan"));
    other_type.id = first.id.clone();
    for envelope in [&first, &other_member, &other_type] {
        let published = stack.publisher().publish(envelope).await.unwrap();
        assert!(
            !published.duplicate,
            "{} for {} was taken for a duplicate",
            envelope.event_type, envelope.member
        );
    }
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 3).await;
    for (member, expected) in [("frank", 2), ("grace", 1)] {
        let page = stack.pull_page(member, "tv", 0, 100).await;
        assert_eq!(page.notifications.len(), expected, "{member}");
    }
    // A true repeat of one of them is still dropped by JetStream.
    assert!(stack.publisher().publish(&other_member).await.unwrap().duplicate);
}
