//! Faults under load on a 3-node hub cluster with replicated streams, each checked by a checker that
//! classifies every event acknowledged to its publisher as delivered (in its member's history),
//! dead-lettered (filed with its stream position) or lost, and fails on any lost one: workers killed
//! again and again mid-batch, the stream leader's server killed and restarted during a publish
//! flood, a hub node cut off (frozen) and healed, a poison event among good ones, publishers retrying
//! within and beyond the duplicate window, and a device too slow to read.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use futures::{StreamExt, stream};
use reno_model::{Envelope, Value, subject};
use reno_nats::PublishError;
use reno_testkit::Cluster;

use crate::support::*;

/// A 3-node hub (streams and buckets with 3 replicas) and an edge.
async fn cluster_stack(extra: &[&str]) -> Stack {
    let mut flags = vec!["--replicas", "3", "--ack-wait-secs", "2"];
    flags.extend_from_slice(extra);
    Stack::start_on(Cluster::start(3, 1).expect("a 3-node hub and an edge"), None, &flags).await
}

/// Publishes each event until a stream acknowledges it (a publisher that retries with the same event
/// while the cluster elects a leader or a node is away), and returns those acknowledged.
async fn publish_until_acked(stack: &Stack, envelopes: Vec<Envelope>) -> Vec<Envelope> {
    stream::iter(envelopes)
        .map(|envelope| async move {
            for _ in 0..200 {
                match stack.publisher().publish(&envelope).await {
                    Ok(_) => return Some(envelope),
                    Err(PublishError::Invalid(error)) => panic!("a valid event was refused: {error}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            None
        })
        .buffer_unordered(64)
        .filter_map(|acked| async move { acked })
        .collect()
        .await
}

/// What became of the events acknowledged to their publisher, once every priority stream is worked
/// off: delivered (in the history of a target device type), dead-lettered (filed with the stream
/// position it was stored at), or lost.
struct Verdict {
    delivered: usize,
    dead_lettered: usize,
    lost: Vec<String>,
}

async fn check(stack: &Stack, acked: &[Envelope], device_type: &str) -> Verdict {
    // A cluster that just lost or regained a node may not answer at once: ask again.
    eventually("every priority stream is worked off", || async {
        let mut left = 0;
        for name in ["RENO_HIGH", "RENO_NORMAL", "RENO_LOW"] {
            let Ok(mut stream) = stack.jetstream.get_stream(name).await else { return false };
            let Ok(info) = stream.info().await else { return false };
            left += info.state.messages;
        }
        left == 0
    })
    .await;
    let mut in_history: BTreeSet<String> = BTreeSet::new();
    let members: BTreeSet<String> = acked.iter().map(|envelope| envelope.member.to_string()).collect();
    for member in members {
        let mut cursor = 0;
        loop {
            let page = stack.pull_page(&member, device_type, cursor, 1000).await;
            in_history.extend(page.notifications.iter().map(|notification| notification.id.to_string()));
            cursor = page.next_cursor;
            if !page.more {
                break;
            }
        }
    }
    let mut dead_ids = BTreeSet::new();
    let mut dead = stack.jetstream.get_stream(subject::DEAD_LETTER_STREAM).await.unwrap();
    let last = dead.info().await.unwrap().state.last_sequence;
    for sequence in 1..=last {
        if let Ok(letter) = dead.get_raw_message(sequence).await
            && let Ok(envelope) = Envelope::decode(&letter.payload)
        {
            dead_ids.insert(envelope.id.to_string());
        }
    }
    let mut verdict = Verdict { delivered: 0, dead_lettered: 0, lost: vec![] };
    for envelope in acked {
        let id = envelope.id.to_string();
        if in_history.contains(&id) {
            verdict.delivered += 1;
        } else if dead_ids.contains(&id) {
            verdict.dead_lettered += 1;
        } else {
            verdict.lost.push(id);
        }
    }
    println!(
        "checked {}: delivered {}, dead-lettered {}, lost {}",
        acked.len(),
        verdict.delivered,
        verdict.dead_lettered,
        verdict.lost.len()
    );
    verdict
}

fn events(count: usize, members: usize) -> Vec<Envelope> {
    (0..count)
        .map(|index| event("my_list_updated", &format!("f{}", index % members), Value::Integer(index.into())))
        .collect()
}

#[tokio::test]
async fn heavy_workers_killed_again_and_again_mid_batch_lose_nothing() {
    let mut stack = cluster_stack(&[]).await;
    stack.start_pull_service().await;
    let mut workers =
        vec![stack.start_worker(&["--priority", "normal"]), stack.start_worker(&["--priority", "normal"])];
    let flood = tokio::spawn({
        let stack_events = events(3000, 50);
        let client = stack.client.clone();
        async move {
            let publisher = reno_nats::Publisher::new(client);
            let mut acked = Vec::new();
            for envelope in stack_events {
                if publisher.publish(&envelope).await.is_ok() {
                    acked.push(envelope);
                }
            }
            acked
        }
    });
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let victim = workers.remove(0);
        stack.process(victim).signal("KILL").unwrap();
        workers.push(stack.start_worker(&["--priority", "normal"]));
        println!("round {round}: killed a worker, started another");
    }
    let acked = flood.await.unwrap();
    assert_eq!(acked.len(), 3000, "every event was acknowledged");
    let verdict = check(&stack, &acked, "tv").await;
    assert!(verdict.lost.is_empty(), "lost: {:?}", verdict.lost);
    assert_eq!(verdict.delivered, acked.len());
}

/// The hub node that leads a stream now.
async fn leader_of(stack: &Stack, stream: &str) -> usize {
    let mut stream = stack.jetstream.get_stream(stream).await.unwrap();
    let info = stream.info().await.unwrap();
    let name = info.cluster.as_ref().and_then(|cluster| cluster.leader.clone()).expect("a leader");
    stack.cluster.hub_index(&name).expect("a hub node")
}

#[tokio::test]
async fn heavy_the_stream_leader_killed_and_restarted_during_a_flood_loses_nothing_acknowledged() {
    let mut stack = cluster_stack(&[]).await;
    stack.start_all().await;
    let leader = leader_of(&stack, "RENO_NORMAL").await;
    let (acked, ()) = tokio::join!(publish_until_acked(&stack, events(3000, 40)), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stack.cluster.hub(leader).crash().unwrap();
    });
    stack.cluster.hub_mut(leader).restart().unwrap();
    stack
        .cluster
        .hub(leader)
        .wait_until("the restarted node is healthy", |server| {
            matches!(server.monitor("/healthz"), Some((200, _)))
        })
        .unwrap();
    assert!(acked.len() >= 2900, "only {} acknowledged", acked.len());
    let verdict = check(&stack, &acked, "tv").await;
    assert!(verdict.lost.is_empty(), "lost: {:?}", verdict.lost);
}

#[tokio::test]
async fn heavy_a_hub_node_cut_off_and_healed_during_a_flood_loses_nothing_acknowledged() {
    let mut stack = cluster_stack(&[]).await;
    stack.start_all().await;
    // The leader is the node whose loss matters most: frozen, the others elect another and go on.
    let cut_off = leader_of(&stack, "RENO_NORMAL").await;
    let (acked, ()) = tokio::join!(publish_until_acked(&stack, events(3000, 40)), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stack.cluster.hub(cut_off).pause().unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        stack.cluster.hub(cut_off).resume().unwrap();
    });
    assert!(acked.len() >= 2900, "only {} acknowledged", acked.len());
    let verdict = check(&stack, &acked, "tv").await;
    assert!(verdict.lost.is_empty(), "lost: {:?}", verdict.lost);
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_while_the_others_flow() {
    let mut stack = cluster_stack(&[]).await;
    stack.start_pull_service().await;
    let worker = stack.start_worker(&["--max-deliveries", "3"]);
    // A history no worker can read: its member's next event fails on every delivery.
    stack
        .jetstream
        .publish(subject::history_subject(&member_id("pia")), b"\xa1\x63new\x01".to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut poison = event("plan_changed", "pia", text("poison"));
    poison.targets = Some(vec![device("tv")]);
    let mut all = vec![poison.clone()];
    all.extend(events(300, 10));
    let acked = publish_until_acked(&stack, all).await;
    stack
        .wait_for_counter(worker, "reno_worker_dead_letters_total", &[("reason", "retries_exhausted")], 1)
        .await;
    // The operator removes the history no worker can read; the checker reads every member's.
    let history = stack.jetstream.get_key_value(subject::HISTORY_BUCKET).await.unwrap();
    history.delete("pia").await.unwrap();
    let verdict = check(&stack, &acked, "tv").await;
    assert!(verdict.lost.is_empty(), "lost: {:?}", verdict.lost);
    assert_eq!((verdict.delivered, verdict.dead_lettered), (300, 1));
}

#[tokio::test]
async fn publishers_retrying_within_and_beyond_the_duplicate_window_deliver_once() {
    let mut stack = cluster_stack(&["--duplicate-window-secs", "2"]).await;
    let worker = stack.start_all().await;
    let mut tv = stack.device("quin", "tv", 0).await;
    let once = event("my_list_updated", "quin", text("once"));
    assert!(!stack.publisher().publish(&once).await.unwrap().duplicate);
    // Within the window JetStream drops the repeat; beyond it the worker's dedup does.
    assert!(stack.publisher().publish(&once).await.unwrap().duplicate);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !stack.publisher().publish(&once).await.unwrap().duplicate,
        "beyond the window it is stored again"
    );
    let sentinel = event("my_list_updated", "quin", text("after"));
    stack.publisher().publish(&sentinel).await.unwrap();
    assert_eq!(next_notification(&mut tv).await.id, once.id);
    assert_eq!(next_notification(&mut tv).await.id, sentinel.id);
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "duplicate")], 1).await;
    let verdict = check(&stack, &[once.clone(), sentinel], "tv").await;
    assert!(verdict.lost.is_empty());
    let page = stack.pull_page("quin", "tv", 0, 100).await;
    assert_eq!(page.notifications.iter().filter(|notification| notification.id == once.id).count(), 1);
}

#[tokio::test]
async fn heavy_a_device_too_slow_to_read_is_cut_off_alone_and_recovers_by_pull() {
    let mut stack = Stack::start().await;
    let worker = stack.start_all().await;
    // A watcher process that stops reading: frozen, its socket fills and the edge cuts it.
    let slow = reno_testkit::Process::spawn(stack.reno(&[
        "device",
        "--member",
        "rex",
        "--device-type",
        "tv",
        "--device-id",
        "slow",
    ]))
    .unwrap();
    stack.known_online("rex").await;
    let mut other = stack.device("sol", "tv", 0).await;
    slow.signal("STOP").unwrap();
    let big = "x".repeat(60_000);
    let mut sent = BTreeMap::new();
    for index in 0..80u32 {
        // 80 x 60 KB: far more than the edge queues for one device (2 MiB).
        let update = event("viewing_activity", "rex", text(&format!("{index}:{big}")));
        stack.publisher().publish(&update).await.unwrap();
        sent.insert(update.id.to_string(), index);
    }
    // Everyone else is unaffected meanwhile.
    let fine = event("my_list_updated", "sol", text("unaffected"));
    stack.publisher().publish(&fine).await.unwrap();
    assert_eq!(next_notification(&mut other).await.id, fine.id);
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 81).await;
    let edge_log = || stack.cluster.edge(0).log();
    eventually("the edge cut the slow device", || std::future::ready(edge_log().contains("Slow Consumer")))
        .await;
    slow.signal("CONT").unwrap();
    // Back, it reconnects and pulls. Rex's history keeps the newest that fit in one message (about
    // a dozen of these), so the device is told it missed some (resync) and gets every one still
    // kept, each once.
    let kept: BTreeSet<String> = stack
        .pull_page("rex", "tv", 0, 1000)
        .await
        .notifications
        .iter()
        .map(|notification| notification.id.to_string())
        .collect();
    assert!(kept.len() < sent.len(), "the history kept all {} of rex's", kept.len());
    eventually("the slow device caught up", || {
        let lines: Vec<serde_json::Value> =
            slow.output().lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
        let printed: Vec<String> =
            lines.iter().filter_map(|line| line["id"].as_str().map(str::to_owned)).collect();
        let distinct: BTreeSet<&String> = printed.iter().collect();
        assert_eq!(distinct.len(), printed.len(), "a notification printed twice");
        let resynced = lines.iter().any(|line| line["resync"] == true);
        std::future::ready(resynced && kept.iter().all(|id| distinct.contains(id)))
    })
    .await;
}
