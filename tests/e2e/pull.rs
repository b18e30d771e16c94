//! Pull: a device that was offline gets exactly what it missed, in order, in pages; a cursor older
//! than the retained history, or from a history that was reset, gets the resync signal; and a pull
//! reads only its member's own history, however large the whole history is.

use std::{collections::BTreeSet, time::Duration};

use reno_device::DeviceEvent;
use reno_model::{Value, subject};

use crate::support::*;

/// Publishes `count` events for `member` and waits until the worker has delivered them all.
async fn publish_and_deliver(stack: &Stack, worker: usize, member: &str, count: usize) -> BTreeSet<String> {
    let delivered = [("outcome", "delivered")];
    let before = stack.counter(worker, "reno_worker_events_total", &delivered).await;
    let mut ids = BTreeSet::new();
    for index in 0..count {
        let update = event("viewing_activity", member, Value::Integer(index.into()));
        stack.publisher().publish(&update).await.unwrap();
        ids.insert(update.id.to_string());
    }
    stack.wait_for_counter(worker, "reno_worker_events_total", &delivered, before + count as u64).await;
    ids
}

#[tokio::test]
async fn an_offline_device_gets_exactly_what_it_missed_in_order() {
    let mut stack = Stack::start_with(None, &["--history-max-entries", "300"]).await;
    let worker = stack.start_all().await;
    let published = publish_and_deliver(&stack, worker, "frank", 250).await;

    // Connected after the fact: everything comes by pull, in pages of 100, in history order.
    let mut tv = stack.device("frank", "tv", 0).await;
    let mut received = Vec::new();
    for _ in 0..250 {
        received.push(next_notification(&mut tv).await);
    }
    let seqs: Vec<u64> = received.iter().map(|notification| notification.seq).collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "in seq order: {seqs:?}");
    let ids: BTreeSet<String> = received.iter().map(|notification| notification.id.to_string()).collect();
    assert_eq!(ids, published);
    assert_eq!(tv.cursor(), *seqs.last().unwrap());

    // From a cursor in the middle: exactly the rest.
    let page = stack.pull_page("frank", "tv", seqs[99], 1000).await;
    let rest: Vec<u64> = page.notifications.iter().map(|notification| notification.seq).collect();
    assert_eq!(rest, seqs[100..]);
    assert!(!page.more && !page.resync);
    assert_eq!(page.next_cursor, *seqs.last().unwrap());
    // Paging: a small limit says there is more and where to go on.
    let page = stack.pull_page("frank", "tv", 0, 10).await;
    assert_eq!(page.notifications.len(), 10);
    assert!(page.more);
    assert_eq!(page.next_cursor, seqs[9]);

    // While online, new events come by push, after the ones pulled.
    let live = event("viewing_activity", "frank", text("live"));
    stack.publisher().publish(&live).await.unwrap();
    let notification = next_notification(&mut tv).await;
    assert_eq!(notification.id, live.id);
    assert!(notification.seq > *seqs.last().unwrap());
    // The cursor to persist moves only with pulls (pushes may arrive out of history order): the
    // live one came by push or by a catch-up pull, and a device restarted from the cursor gets it
    // again exactly when the cursor is below it. At least once, never lost.
    let cursor = tv.cursor();
    assert!((*seqs.last().unwrap()..=notification.seq).contains(&cursor), "cursor {cursor}");
    let again: Vec<_> = stack.pull_page("frank", "tv", cursor, 100).await.notifications;
    let again: Vec<_> = again.into_iter().map(|notification| notification.id).collect();
    if cursor < notification.seq {
        assert_eq!(again, [live.id]);
    } else {
        assert!(again.is_empty());
    }
}

#[tokio::test]
async fn a_cursor_older_than_the_history_gets_the_resync_signal() {
    let mut stack = Stack::start_with(None, &["--history-max-entries", "50"]).await;
    let worker = stack.start_all().await;
    // More than a member's history holds: the oldest make room, and the history says so.
    publish_and_deliver(&stack, worker, "grace", 70).await;
    let page = stack.pull_page("grace", "tv", 0, 1000).await;
    let seqs: Vec<u64> = page.notifications.iter().map(|notification| notification.seq).collect();
    assert_eq!(seqs.len(), 50);
    assert!(!page.resync, "cursor 0 means from the start: no resync");

    // A device that had the first few: the next 17 are gone.
    let page = stack.pull_page("grace", "tv", 3, 1000).await;
    assert!(page.resync, "entries after the cursor are gone");
    let kept: Vec<u64> = page.notifications.iter().map(|notification| notification.seq).collect();
    assert_eq!(kept, seqs);
    // A cursor at or after the last one dropped is fine: the history knows what it dropped.
    let last_dropped = seqs[0] - 1;
    assert!(!stack.pull_page("grace", "tv", last_dropped, 1000).await.resync);

    // The device SDK hands the signal to the app first, then what is still retained.
    let mut tv = stack.device("grace", "tv", 3).await;
    assert_eq!(within("resync", tv.next()).await.unwrap(), DeviceEvent::Resync);
    assert_eq!(next_notification(&mut tv).await.seq, seqs[0]);
}

#[tokio::test]
async fn a_cursor_from_a_reset_history_gets_the_resync_signal() {
    let mut stack = Stack::start().await;
    let worker = stack.start_all().await;
    publish_and_deliver(&stack, worker, "heidi", 5).await;
    let old = stack.pull_page("heidi", "tv", 0, 100).await;

    // The history is lost and created anew (an operator recreated the bucket), once every priority
    // of the worker has started: a priority still starting finds no bucket and stops the worker.
    for priority_stream in ["RENO_HIGH", "RENO_NORMAL", "RENO_LOW"] {
        stack.wait_until_pulling(priority_stream, 1).await;
    }
    stack.jetstream.delete_key_value(subject::HISTORY_BUCKET).await.unwrap();
    stack.provision(&[]);
    let page = stack.pull_page("heidi", "tv", old.next_cursor, 100).await;
    assert!(page.resync, "a cursor beyond the new history's end");
    assert!(page.notifications.is_empty());
    assert_ne!(page.epoch, old.epoch);

    // Once the new history has grown past the old cursor, only the epoch tells.
    let new_ids = publish_and_deliver(&stack, worker, "heidi", 10).await;
    let page = stack.pull_page_in("heidi", "tv", old.next_cursor, Some(old.epoch), 100).await;
    assert!(page.resync, "a cursor from an older epoch");
    let pulled: BTreeSet<String> =
        page.notifications.iter().map(|notification| notification.id.to_string()).collect();
    assert_eq!(pulled, new_ids, "the whole new history, from its start");

    let mut tv = stack.device_at("heidi", "tv", old.next_position()).await;
    assert_eq!(within("resync", tv.next()).await.unwrap(), DeviceEvent::Resync);
    let mut received = BTreeSet::new();
    for _ in 0..10 {
        received.insert(next_notification(&mut tv).await.id.to_string());
    }
    assert_eq!(received, new_ids);
    assert_eq!(tv.position().epoch, Some(page.epoch));
}

#[tokio::test]
async fn the_pull_service_refuses_bad_requests_with_a_reason() {
    let mut stack = Stack::start().await;
    stack.start_pull_service().await;
    let response =
        within("pull answer", stack.client.request("reno.pull.ivan.tv", "not cbor".into())).await.unwrap();
    let headers = response.headers.expect("error headers");
    assert_eq!(headers.get("Nats-Service-Error-Code").unwrap().as_str(), "400");
    let reason = headers.get("Nats-Service-Error").unwrap().to_string();
    assert!(reason.contains("expected CBOR {cursor, limit?}"), "{reason}");
}

#[tokio::test]
async fn what_came_by_push_is_not_handed_out_again_by_pull() {
    let mut stack = Stack::start().await;
    let worker = stack.start_all().await;
    let mut tv = stack.device("olga", "tv", 0).await;
    // A first event settles the device: the catch-up its connection owes is done by now.
    publish_and_deliver(&stack, worker, "olga", 1).await;
    next_notification(&mut tv).await;
    let cursor_before = tv.cursor();

    let published = publish_and_deliver(&stack, worker, "olga", 20).await;
    let mut received = Vec::new();
    for _ in 0..20 {
        received.push(next_notification(&mut tv).await);
    }
    let ids: BTreeSet<String> = received.iter().map(|notification| notification.id.to_string()).collect();
    assert_eq!(ids, published);
    assert_eq!(tv.cursor(), cursor_before, "the 20 came by push: the cursor moves only by pull");

    // A catch-up at a lifecycle point pulls the same 20 from the history: none comes out again,
    // and the cursor moves past them.
    within("catch-up", tv.catch_up()).await.unwrap();
    let last_seq = received.iter().map(|notification| notification.seq).max().unwrap();
    assert!(tv.cursor() >= last_seq, "cursor {} after the catch-up", tv.cursor());
    let after = event("viewing_activity", "olga", text("after"));
    stack.publisher().publish(&after).await.unwrap();
    assert_eq!(next_notification(&mut tv).await.id, after.id);
}

#[tokio::test]
async fn entries_replaced_by_collapse_are_no_gap() {
    let mut stack = Stack::start().await;
    let worker = stack.start_all().await;
    // The first entries of the history are one member's plan, on every device type.
    stack.publisher().publish(&event("plan_changed", "xena", text("basic"))).await.unwrap();
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 1).await;
    let first = stack.pull_page("xena", "tv", 0, 100).await;
    assert_eq!(first.notifications.len(), 1);
    let position = first.next_position();
    assert!(position.cursor_time_ms.is_some(), "a page says when its last entry was written");

    // A new plan replaces them all, so the history now starts after the device's cursor.
    let newer = event("plan_changed", "xena", text("premium"));
    stack.publisher().publish(&newer).await.unwrap();
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 2).await;

    // The member's history records what it dropped, and a replaced state is not that: no resync,
    // just the newer state, with the cursor's time, its epoch alone, or a bare cursor.
    let page = stack.pull("xena", "tv", position.request(100)).await;
    assert!(!page.resync);
    let ids: Vec<_> = page.notifications.iter().map(|notification| &notification.id).collect();
    assert_eq!(ids, [&newer.id]);
    assert!(!stack.pull_page_in("xena", "tv", position.cursor, position.epoch, 100).await.resync);
    assert!(!stack.pull_page("xena", "tv", position.cursor, 100).await.resync);
    // The device SDK keeps the time with its position.
    let mut tv = stack.device_at("xena", "tv", position).await;
    assert_eq!(next_notification(&mut tv).await.id, newer.id);
}

#[tokio::test]
async fn entries_lost_to_retention_are_a_gap() {
    let mut stack = Stack::start_with(None, &["--history-retention-secs", "1"]).await;
    let worker = stack.start_all().await;
    publish_and_deliver(&stack, worker, "yuri", 1).await;
    let position = stack.pull_page("yuri", "tv", 0, 100).await.next_position();
    // Two more for the device while it is away; retention (1 s here) removes them unseen.
    let lost = publish_and_deliver(&stack, worker, "yuri", 2).await;
    eventually("the history expires its entries", || async {
        stack.stored(&subject::history_stream()).await == 0
    })
    .await;
    let later = publish_and_deliver(&stack, worker, "yuri", 2).await;

    let mut tv = stack.device_at("yuri", "tv", position).await;
    assert_eq!(within("resync", tv.next()).await.unwrap(), DeviceEvent::Resync, "{lost:?} were lost");
    let received: BTreeSet<String> =
        [next_notification(&mut tv).await.id.to_string(), next_notification(&mut tv).await.id.to_string()]
            .into();
    assert_eq!(received, later);
}

/// What the server sent the pull service so far, in messages and bytes (from the server's own
/// connection list, not from reno): on the connection it takes requests on, and on the connections
/// it reads documents on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    requests: (u64, u64),
    reads: (u64, u64),
}

fn sent_to_pull_service(stack: &Stack) -> Sent {
    let (_, body) = stack.cluster.hub(0).monitor("/connz?subs=1&limit=1024").expect("connz");
    // The body as the monitoring endpoint sent it, chunked or not: the JSON object inside.
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let connz: serde_json::Value = serde_json::from_str(json).unwrap();
    let connections = connz["connections"].as_array().unwrap();
    let sent = |connection: &serde_json::Value| {
        (connection["out_msgs"].as_u64().unwrap(), connection["out_bytes"].as_u64().unwrap())
    };
    let requests = connections
        .iter()
        .find(|connection| {
            connection["subscriptions_list"].as_array().is_some_and(|subscriptions| {
                subscriptions.iter().any(|subject| subject == subject::PULL_SUBJECTS)
            })
        })
        .map(sent)
        .expect("the pull service's connection");
    let readers: Vec<(u64, u64)> = connections
        .iter()
        .filter(|connection| {
            connection["name"].as_str().is_some_and(|name| name.starts_with("reno-pull-read-"))
        })
        .map(sent)
        .collect();
    assert!(!readers.is_empty(), "the pull service's read connections (pull.read_connections)");
    let reads = readers.iter().fold((0, 0), |total, read| (total.0 + read.0, total.1 + read.1));
    Sent { requests, reads }
}

/// One pull of `member`'s tv history, with what the server sent the pull service for it.
async fn measured_pull(stack: &Stack, member: &str) -> (reno_model::PullPage, Sent) {
    // Past the service's reuse of the bucket's bounds, so that every measured pull reads them.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = sent_to_pull_service(stack);
    let page = stack.pull_page(member, "tv", 0, 100).await;
    let after = sent_to_pull_service(stack);
    let delta = |after: (u64, u64), before: (u64, u64)| (after.0 - before.0, after.1 - before.1);
    (page, Sent { requests: delta(after.requests, before.requests), reads: delta(after.reads, before.reads) })
}

#[tokio::test]
async fn heavy_a_pull_reads_only_its_members_history() {
    let mut stack = Stack::start().await;
    let worker = stack.start_all().await;
    publish_and_deliver(&stack, worker, "solo", 10).await;
    let (small_page, small) = measured_pull(&stack, "solo").await;
    assert_eq!(small_page.notifications.len(), 10);

    // A hundred times the history, of 2,000 other members.
    let before = stack.counter(worker, "reno_worker_events_total", &[("outcome", "delivered")]).await;
    // In rounds of a thousand: the client holds at most a few thousand unanswered publishes.
    for round in 0..10u32 {
        let mut acks = Vec::new();
        for index in round * 1000..(round + 1) * 1000 {
            let envelope =
                event("viewing_activity", &format!("crowd{}", index % 2000), Value::Integer(index.into()));
            let subject = subject::event_subject(&envelope.event_type, &envelope.member);
            acks.push(stack.jetstream.publish(subject, envelope.encode().into()).await.unwrap());
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
    stack
        .wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], before + 10_000)
        .await;
    let (large_page, large) = measured_pull(&stack, "solo").await;

    println!(
        "one pull of a member with 10 entries, (messages, bytes) from the server with 10 entries in the \
         history: {small:?}; with 10,010: {large:?}"
    );
    assert_eq!(large_page, small_page, "the same page before and after");
    // The document came on a read connection, the only thing those carry.
    assert_eq!(small.reads.0, 1, "{small:?}: one document read on a read connection");
    assert_eq!(large.requests.0, small.requests.0, "the server sent as many messages for the pull");
    assert_eq!(large.reads.0, small.reads.0, "the server sent as many reads for the pull");
    // The bucket's bounds are a few digits longer; the member's history is the same size.
    for (small, large) in [(small.requests.1, large.requests.1), (small.reads.1, large.reads.1)] {
        assert!(large.abs_diff(small) < 64, "{small} bytes, then {large}");
    }
}
