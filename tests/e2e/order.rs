//! Per-member order with several worker processes: for one member within one priority, the history
//! and the pushes follow the order in which the stream received the events. And the partition layout
//! can change under stored events: events stored before partitions existed, or in partitions a new
//! count drops, are still delivered.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use futures::StreamExt;
use reno_model::{Envelope, Notification, Value, subject};

use crate::support::*;

/// Publishes `events` from one connection without waiting between them, so that the stream stores
/// them in this order, then waits for every ack; returns the stream sequence of each.
async fn publish_in_order(stack: &Stack, events: &[Envelope]) -> Vec<u64> {
    let mut acks = Vec::with_capacity(events.len());
    for envelope in events {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", envelope.dedup_id().as_str());
        let subject = subject::event_subject(&envelope.event_type, &envelope.member);
        acks.push(
            stack.jetstream.publish_with_headers(subject, headers, envelope.encode().into()).await.unwrap(),
        );
    }
    let mut sequences = Vec::with_capacity(acks.len());
    for ack in acks {
        sequences.push(ack.await.unwrap().sequence);
    }
    sequences
}

/// Adjacent pairs in `received` that are out of the order of `expected` (both lists of ids).
fn inversions(expected: &[String], received: &[String]) -> usize {
    let rank: BTreeMap<&String, usize> = expected.iter().enumerate().map(|(at, id)| (id, at)).collect();
    received.windows(2).filter(|pair| rank[&pair[0]] > rank[&pair[1]]).count()
}

/// Every notification of a member's device type in the history, in `seq` order.
async fn history(stack: &Stack, member: &str, device_type: &str) -> Vec<Notification> {
    let mut cursor = 0;
    let mut all = Vec::new();
    loop {
        let page = stack.pull_page(member, device_type, cursor, 500).await;
        all.extend(page.notifications);
        cursor = page.next_cursor;
        if !page.more {
            return all;
        }
    }
}

#[tokio::test]
async fn heavy_three_workers_keep_each_members_order() {
    const MEMBERS: usize = 12;
    const PER_MEMBER: usize = 150;
    let mut stack = Stack::start().await;
    stack.start_pull_service().await;
    let workers: Vec<usize> = (0..3).map(|_| stack.start_worker(&["--priority", "normal"])).collect();
    stack.wait_until_pulling("RENO_NORMAL", 3).await;
    let members: Vec<String> = (0..MEMBERS).map(|index| format!("ordered{index}")).collect();
    let mut pushes = Vec::new();
    for member in &members {
        stack.announce(member, "mobile").await;
        pushes.push(stack.client.subscribe(format!("reno.ntf.{member}.mobile")).await.unwrap());
    }
    stack.client.flush().await.unwrap();

    // Bursts of every member, interleaved: what one worker could reorder, three could more easily.
    let mut events = Vec::new();
    for index in 0..PER_MEMBER {
        for member in &members {
            events.push(event("my_list_updated", member, Value::Integer(index.into())));
        }
    }
    let sequences = publish_in_order(&stack, &events).await;
    assert!(sequences.windows(2).all(|pair| pair[0] < pair[1]), "the stream stored them as sent");

    let mut total_inversions = 0;
    for (member, pushes) in members.iter().zip(pushes.iter_mut()) {
        let expected: Vec<String> = events
            .iter()
            .filter(|event| event.member.as_str() == member)
            .map(|event| event.id.to_string())
            .collect();
        let mut pushed = Vec::new();
        while pushed.len() < PER_MEMBER {
            let message = within("the next push", pushes.next()).await.unwrap();
            pushed.push(Notification::decode(&message.payload).unwrap().id.to_string());
        }
        let stored: Vec<String> = history(&stack, member, "mobile")
            .await
            .into_iter()
            .map(|notification| notification.id.to_string())
            .collect();
        total_inversions += inversions(&expected, &pushed) + inversions(&expected, &stored);
        assert_eq!(pushed, expected, "pushes of {member}");
        assert_eq!(stored, expected, "history of {member}");
    }
    println!("{} events of {MEMBERS} members through 3 workers: {total_inversions} inversions", events.len());
    // The three shared the work: each delivered some of it.
    for worker in workers {
        let delivered = stack.counter(worker, "reno_worker_events_total", &[("outcome", "delivered")]).await;
        assert!(delivered > 0, "worker {worker} delivered nothing:\n{}", stack.logs());
    }
}

#[tokio::test]
async fn events_stored_before_partitions_existed_are_still_delivered() {
    let mut stack = Stack::start().await;
    stack.start_pull_service().await;
    // The normal stream as an older reno left it: no transform, one consumer for everything.
    let stream = stack.jetstream.get_stream("RENO_NORMAL").await.unwrap();
    let mut config = stream.cached_info().config.clone();
    config.subject_transform = None;
    config.metadata.clear();
    for consumer in
        stack.partition_infos("RENO_NORMAL").await.into_iter().map(|info| info.name).collect::<Vec<_>>()
    {
        stream.delete_consumer(&consumer).await.unwrap();
    }
    stack.jetstream.update_stream(config).await.unwrap();
    let waiting: Vec<Envelope> =
        (0..20).map(|index| event("my_list_updated", "olga", Value::Integer(index.into()))).collect();
    publish_in_order(&stack, &waiting).await;
    let unpartitioned = stack.jetstream.get_stream("RENO_NORMAL").await.unwrap();
    assert_eq!(unpartitioned.cached_info().state.messages, 20);

    // The new reno provisions over it, and its workers take the waiting events as strays.
    stack.provision(&[]);
    let worker = stack.start_worker(&["--priority", "normal"]);
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 20).await;
    let ids = |list: &[Envelope]| list.iter().map(|event| event.id.to_string()).collect::<Vec<_>>();
    let stored = history(&stack, "olga", "mobile").await;
    assert_eq!(stored.len(), 20);
    let mut stored_ids: Vec<String> =
        stored.into_iter().map(|notification| notification.id.to_string()).collect();
    stored_ids.sort();
    let mut expected = ids(&waiting);
    expected.sort();
    assert_eq!(stored_ids, expected);
}

#[tokio::test]
async fn fewer_partitions_move_the_events_of_the_dropped_ones() {
    let mut stack = Stack::start().await;
    stack.start_pull_service().await;
    // Many members, so that nearly every one of the 32 partitions holds some.
    let waiting: Vec<Envelope> = (0..200)
        .map(|index| event("my_list_updated", &format!("moved{index}"), Value::Integer(index.into())))
        .collect();
    publish_in_order(&stack, &waiting).await;

    let output = stack.reno(&["provision", "--partitions", "4"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let said =
        String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("rehomed"), "provision says what it moved:\n{said}");
    let consumers = stack.partition_infos("RENO_NORMAL").await;
    assert_eq!(consumers.len(), 5, "4 partitions and the strays");
    let pending: u64 = consumers.iter().map(|info| info.num_pending).sum();
    assert_eq!(pending, 200, "every event is in a partition that has a consumer");

    let worker = stack.start_worker(&["--priority", "normal"]);
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 200).await;
    for envelope in waiting.iter().step_by(40) {
        let stored = history(&stack, envelope.member.as_str(), "tv").await;
        assert_eq!(stored.len(), 1, "{}", envelope.member);
        assert_eq!(stored[0].id, envelope.id);
    }
}

#[tokio::test]
async fn a_provision_that_stopped_half_way_is_finished_by_the_next() {
    let mut stack = Stack::start().await;
    stack.start_pull_service().await;
    let waiting: Vec<Envelope> = (0..200)
        .map(|index| event("my_list_updated", &format!("halfway{index}"), Value::Integer(index.into())))
        .collect();
    publish_in_order(&stack, &waiting).await;
    // As a provision killed after it changed the stream to 4 partitions, before it moved anything.
    let stream = stack.jetstream.get_stream("RENO_NORMAL").await.unwrap();
    let mut config = stream.cached_info().config.clone();
    let (source, destination) = subject::partition_transform(4);
    config.subject_transform = Some(async_nats::jetstream::stream::SubjectTransform { source, destination });
    config.metadata.insert("reno_partitions".into(), "4".into());
    stack.jetstream.update_stream(config).await.unwrap();

    stack.provision(&["--partitions", "4"]);
    let pending: u64 = stack.partition_infos("RENO_NORMAL").await.iter().map(|info| info.num_pending).sum();
    assert_eq!(pending, 200, "every event is in a partition that has a consumer");
    let worker = stack.start_worker(&["--priority", "normal"]);
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 200).await;
}

#[tokio::test]
async fn running_workers_take_up_partitions_added_while_they_run() {
    let mut stack = Stack::start().await;
    stack.start_pull_service().await;
    let worker = stack.start_worker(&["--priority", "normal"]);
    stack.wait_until_pulling("RENO_NORMAL", 1).await;
    stack.provision(&["--partitions", "64"]);
    // Many members, so that some fall into the partitions the worker did not start with.
    let events: Vec<Envelope> = (0..300)
        .map(|index| event("my_list_updated", &format!("grown{index}"), Value::Integer(index.into())))
        .collect();
    publish_in_order(&stack, &events).await;
    let infos = stack.partition_infos("RENO_NORMAL").await;
    assert_eq!(infos.len(), 65, "64 partitions and the strays");
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 300).await;
    assert!(stack.process(worker).output().contains("new partition; its lane started"));
}
