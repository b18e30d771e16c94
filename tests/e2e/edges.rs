//! Devices spread over several edges: the devices of one member on two edges both get its pushes; an
//! edge killed under its devices sends them to another edge, where they pull what they missed; and
//! a device token's expiry ends its connection.

use std::{collections::BTreeSet, time::Duration};

use async_nats::Event;
use futures::StreamExt;
use reno_model::Value;
use reno_testkit::Cluster;

use crate::support::*;

/// The device connections an edge holds (its monitoring `/connz`, accounts other than the leaf's).
fn devices_on(stack: &Stack, edge: usize) -> u64 {
    stack
        .cluster
        .edge(edge)
        .monitor("/connz?acc=CONN")
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|connz| connz["num_connections"].as_u64())
        .unwrap_or(0)
}

#[tokio::test]
async fn devices_on_two_edges_both_get_pushes_and_a_killed_edge_sends_its_devices_to_the_other() {
    let mut stack = Stack::start_on(Cluster::start(1, 2).expect("a hub and two edges"), None, &[]).await;
    let worker = stack.start_all().await;
    let first_edge = stack.cluster.edge_url(0).to_owned();
    let second_edge = stack.cluster.edge_url(1).to_owned();

    // One device of the member on each edge.
    let mut on_first =
        reno_device::Device::connect(stack.device_config(&first_edge, "lou", "tv")).await.unwrap();
    stack.known_online("lou").await;
    let mut on_second =
        reno_device::Device::connect(stack.device_config(&second_edge, "lou", "mobile")).await.unwrap();
    stack.known_online("lou").await;
    assert_eq!((devices_on(&stack, 0), devices_on(&stack, 1)), (1, 1));
    let both = event("my_list_updated", "lou", text("to both"));
    stack.publisher().publish(&both).await.unwrap();
    assert_eq!(next_notification(&mut on_first).await.id, both.id);
    assert_eq!(next_notification(&mut on_second).await.id, both.id);

    // A device that knows both edges, on the first; the first edge dies under it.
    let mut config = stack.device_config(&format!("{first_edge},{second_edge}"), "lou", "browser");
    config.presence_interval = Duration::from_secs(1);
    let mut roaming = reno_device::Device::connect(config).await.unwrap();
    stack.known_online("lou").await;
    let on_first_edge = devices_on(&stack, 0) == 2;
    let (dying, surviving) = if on_first_edge { (0, 1) } else { (1, 0) };
    let before = devices_on(&stack, surviving);
    stack.cluster.kill_edge(dying);
    let mut missed = BTreeSet::new();
    for index in 0..10u32 {
        let update = event("my_list_updated", "lou", Value::Integer(index.into()));
        stack.publisher().publish(&update).await.unwrap();
        missed.insert(update.id.to_string());
    }
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 11).await;

    // It comes back on the other edge and pulls what it missed, each once.
    let mut received = BTreeSet::new();
    while received.len() < missed.len() {
        let notification = next_notification(&mut roaming).await;
        if notification.id != both.id {
            assert!(received.insert(notification.id.to_string()), "{} twice", notification.id);
        }
    }
    assert_eq!(received, missed);
    eventually("the device moved to the surviving edge", || {
        std::future::ready(devices_on(&stack, surviving) > before)
    })
    .await;
    let after = event("my_list_updated", "lou", text("after the move"));
    stack.publisher().publish(&after).await.unwrap();
    assert_eq!(next_notification(&mut roaming).await.id, after.id);
    stack.cluster.restart_edge(dying).unwrap();
}

#[tokio::test]
async fn a_connection_ends_when_its_token_expires() {
    let mut stack = Stack::start().await;
    stack.start_all().await;
    let (events, mut disconnected) = tokio::sync::mpsc::unbounded_channel();
    let token = stack.token("mae", "tv", "short-lived", 3);
    let client = async_nats::ConnectOptions::new()
        .token(token)
        .custom_inbox_prefix("_INBOX.mae.tv.short-lived")
        .add_root_certificates(stack.cluster.secrets.path("ca.pem"))
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                if matches!(event, Event::Disconnected | Event::ServerError(_)) {
                    let _ = events.send(event.to_string());
                }
            }
        })
        .connect(stack.cluster.edge_url(0))
        .await
        .expect("a token valid for 3 s connects");
    let mut pushes = client.subscribe("reno.ntf.mae.tv").await.unwrap();
    client.flush().await.unwrap();
    stack.announce("mae", "tv").await;
    let early = event("my_list_updated", "mae", text("in time"));
    stack.publisher().publish(&early).await.unwrap();
    assert!(within("a push before expiry", pushes.next()).await.is_some());

    // The server ends the connection at the token's expiry.
    let reason = within("the expiry disconnect", disconnected.recv()).await.unwrap();
    assert!(reason.to_lowercase().contains("expired") || reason.contains("disconnected"), "{reason}");
    let late = event("my_list_updated", "mae", text("too late"));
    stack.publisher().publish(&late).await.unwrap();
    let after = tokio::time::timeout(Duration::from_secs(1), pushes.next()).await;
    assert!(!matches!(after, Ok(Some(_))), "nothing reaches an expired connection");
}
