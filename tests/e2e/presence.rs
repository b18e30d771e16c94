//! Presence: devices announce themselves, reno knows which are online (`reno presence`), forgets one
//! that vanished within the presence time-to-live, and pushes only where a device of the targeted
//! type is online; the history keeps everything for the others.

use std::time::Duration;

use reno_device::Device;
use reno_model::DeviceId;
use reno_testkit::Relay;

use crate::support::*;

/// The devices `reno presence` lists for `member`, as (device type, device id).
fn listed(stack: &Stack, member: &str) -> Vec<(String, String)> {
    let output = stack.reno(&["presence", member]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let device: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                device["device_type"].as_str().unwrap().to_owned(),
                device["device_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_vanished_device_goes_offline_its_push_is_skipped_and_it_catches_up() {
    // A short time-to-live and heartbeat, so the test does not wait a minute.
    let mut stack = Stack::start_with(None, &["--presence-ttl-secs", "3"]).await;
    let worker = stack.start_all().await;
    let relay = Relay::start(stack.cluster.edge_url(0)).unwrap();
    let mut config = stack.device_config(&relay.url("wss"), "vic", "tv");
    config.token = Some(stack.token("vic", "tv", "living-room", 3600));
    config.device_id = Some(DeviceId::new("living-room").unwrap());
    config.presence_interval = Duration::from_secs(1);
    let mut tv = within("device connects", Device::connect(config)).await.unwrap();
    stack.known_online("vic").await;
    assert_eq!(listed(&stack, "vic"), [("tv".to_owned(), "living-room".to_owned())]);

    let first = event("my_list_updated", "vic", text("while online"));
    stack.publisher().publish(&first).await.unwrap();
    assert_eq!(next_notification(&mut tv).await.id, first.id);
    let sent = &[("device_type", "tv"), ("result", "sent")];
    assert!(stack.counter(worker, "reno_worker_pushes_total", sent).await >= 1);

    // Cut off without a goodbye: gone from presence within the time-to-live.
    relay.cut();
    eventually("the device is forgotten", || std::future::ready(listed(&stack, "vic").is_empty())).await;
    eventually("the worker knows", || async {
        stack.counter(worker, "reno_presence_devices_online", &[]).await == 0
    })
    .await;
    let missed = event("my_list_updated", "vic", text("while away"));
    stack.publisher().publish(&missed).await.unwrap();
    let skipped = &[("device_type", "tv"), ("result", "skipped_offline")];
    stack.wait_for_counter(worker, "reno_worker_pushes_total", skipped, 1).await;
    let page = stack.pull_page("vic", "tv", 0, 100).await;
    assert!(
        page.notifications.iter().any(|notification| notification.id == missed.id),
        "the history keeps it"
    );

    // Back on the network: online again, and what it missed arrives by pull.
    relay.restore();
    assert_eq!(next_notification(&mut tv).await.id, missed.id);
    eventually("online again", || std::future::ready(!listed(&stack, "vic").is_empty())).await;
}

#[tokio::test]
async fn a_device_that_closes_goes_offline_at_once_and_others_stay() {
    let mut stack = Stack::start().await;
    stack.start_all().await;
    let phone = stack.device("wim", "mobile", 0).await;
    let _tv = stack.device("wim", "tv", 0).await;
    let mut types: Vec<String> =
        listed(&stack, "wim").into_iter().map(|(device_type, _)| device_type).collect();
    types.sort();
    assert_eq!(types, ["mobile", "tv"]);
    phone.close().await;
    eventually("only the tv is left", || {
        let left = listed(&stack, "wim");
        std::future::ready(left.len() == 1 && left[0].0 == "tv")
    })
    .await;
    assert!(listed(&stack, "nobody").is_empty());
}
