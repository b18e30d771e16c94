//! The device side over an unreliable network and a changing deployment: a device cut off the
//! network catches up on reconnect, a history of large notifications stays within the message limit, and
//! an event type added while a worker runs is delivered by that worker.

use std::collections::BTreeSet;

use futures::StreamExt;

use reno_model::notification::MAX_PAGE_BYTES;
use reno_testkit::Relay;

use crate::support::*;

#[tokio::test]
async fn a_device_cut_off_the_network_catches_up_on_reconnect() {
    let mut stack = Stack::start().await;
    let worker = stack.start_all().await;
    let relay = Relay::start(stack.cluster.edge_url(0)).unwrap();
    let config = stack.device_config(&relay.url("wss"), "uma", "tv");
    let mut tv = within("device connects", reno_device::Device::connect(config)).await.unwrap();
    stack.known_online("uma").await;
    // A plain subscriber behind the same relay shows what push alone delivers.
    let token = stack.token("uma", "tv", "spy", 3600);
    let spy_client = stack.device_client(&relay.url("wss"), ("uma", "tv", "spy"), Some(token)).await.unwrap();
    let mut spy = spy_client.subscribe("reno.ntf.uma.tv").await.unwrap();
    spy_client.flush().await.unwrap();
    let before = event("my_list_updated", "uma", text("before"));
    stack.publisher().publish(&before).await.unwrap();
    assert_eq!(next_notification(&mut tv).await.id, before.id);
    assert_eq!(decode(within("spy", spy.next()).await.unwrap()).id, before.id);

    // While the device is off the network, 30 events are delivered: their pushes are lost to it.
    relay.cut();
    let mut missed = BTreeSet::new();
    for index in 0..30u32 {
        let update = event("my_list_updated", "uma", reno_model::Value::Integer(index.into()));
        stack.publisher().publish(&update).await.unwrap();
        missed.insert(update.id.to_string());
    }
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 31).await;
    relay.restore();

    // Back online, it pulls exactly those, once each, and then goes on by push.
    // Thirty notifications, all different (a repeat would leave one of the missed out).
    let mut received = BTreeSet::new();
    for _ in 0..30 {
        received.insert(next_notification(&mut tv).await.id.to_string());
    }
    assert_eq!(received, missed);
    // The spy reconnects on a backoff of its own: wait until it is back and subscribed again.
    within("spy reconnects", async {
        while spy_client.connection_state() != async_nats::connection::State::Connected {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        spy_client.flush().await.unwrap();
    })
    .await;
    let after = event("my_list_updated", "uma", text("after"));
    stack.publisher().publish(&after).await.unwrap();
    assert_eq!(next_notification(&mut tv).await.id, after.id);
    // The cut was real: push alone lost all 30, the spy's next message is the one after.
    assert_eq!(decode(within("spy", spy.next()).await.unwrap()).id, after.id);
}

fn decode(message: async_nats::Message) -> reno_model::Notification {
    reno_model::Notification::decode(&message.payload).unwrap()
}

#[tokio::test]
async fn a_history_of_large_notifications_stays_within_the_message_limit() {
    let mut stack = Stack::start().await;
    let worker = stack.start_all().await;
    let mut published = Vec::new();
    for index in 0..20 {
        // Close to the 64 KiB envelope limit each: 1.2 MB in all, more than one message may carry.
        let update = event("viewing_activity", "vera", text(&format!("{index:02}{}", "x".repeat(60_000))));
        stack.publisher().publish(&update).await.unwrap();
        published.push(update.id.to_string());
    }
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 20).await;

    // The member's history keeps the newest that fit, within the limit, and knows what it dropped.
    let page = stack.pull_page("vera", "tv", 0, 100).await;
    assert!(page.encode().len() <= MAX_PAGE_BYTES, "page of {} bytes", page.encode().len());
    let kept: Vec<String> =
        page.notifications.iter().map(|notification| notification.id.to_string()).collect();
    assert!((10..20).contains(&kept.len()), "kept {}", kept.len());
    assert_eq!(kept, published[20 - kept.len()..]);
    assert!(!page.more);
    // A device that was there from the start (its epoch, cursor 0) is told it missed some.
    let behind = stack.pull_page_in("vera", "tv", 0, Some(page.epoch), 100).await;
    assert!(behind.resync);

    // A device connecting now gets what is kept.
    let mut tv = stack.device("vera", "tv", 0).await;
    let mut received = Vec::new();
    for _ in 0..kept.len() {
        received.push(next_notification(&mut tv).await.id.to_string());
    }
    assert_eq!(received, kept);
}

const OLD_REGISTRY: &str = r#"
device_types = ["tv"]
[types.established]
priority = "normal"
stale_after_secs = 3600
"#;

#[tokio::test]
async fn a_type_added_while_a_worker_runs_is_delivered_by_it() {
    let mut stack = Stack::start_with(Some(OLD_REGISTRY), &[]).await;
    stack.start_pull_service().await;
    let worker = stack.start_worker(&["--priority", "normal"]);
    stack.wait_until_pulling("RENO_NORMAL", 1).await;
    // The new type is provisioned while the worker runs with the registry it read at start.
    let new_registry =
        format!("{OLD_REGISTRY}\n[types.newcomer]\npriority = \"normal\"\nstale_after_secs = 3600\n");
    stack.rewrite_registry(&new_registry);
    stack.provision(&[]);
    let newcomer = event("newcomer", "wes", text("hello"));
    stack.publisher().publish(&newcomer).await.unwrap();

    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 1).await;
    let page = stack.pull_page("wes", "tv", 0, 100).await;
    assert_eq!(page.notifications.len(), 1);
    assert_eq!(page.notifications[0].id, newcomer.id);
    assert_eq!(stack.counter(worker, "reno_worker_events_total", &[("outcome", "dead_lettered")]).await, 0);
    assert_eq!(stack.counter(worker, "reno_registry_updates_total", &[]).await, 1);
}
