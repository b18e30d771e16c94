//! What a new user does after `scripts/dev`: `reno up` runs everything against the server, `reno
//! device` watches as a device and `reno publish` sends an event; and a worker told to stop drains
//! what it holds and exits cleanly.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use futures::StreamExt;

use reno_testkit::Process;

use crate::support::*;

/// Waits for a process to exit and returns whether it succeeded.
async fn exits(process: &mut Process) -> bool {
    let mut status = None;
    eventually("the process exits", || {
        status = process.try_wait().unwrap();
        std::future::ready(status.is_some())
    })
    .await;
    status.unwrap().success()
}

#[tokio::test]
async fn reno_up_then_publish_from_the_cli_reaches_reno_device() {
    let stack = Stack::start().await;
    let _up = Process::spawn(stack.reno(&["up", "--admin-addr", "off"])).unwrap();
    stack.wait_for_pull_service().await;
    let mut device = Process::spawn(stack.reno(&[
        "device",
        "--member",
        "quinn",
        "--device-type",
        "browser",
        "--count",
        "1",
    ]))
    .unwrap();

    let output = stack
        .reno(&[
            "publish",
            "--type",
            "plan_changed",
            "--member",
            "quinn",
            "--payload",
            r#"{"plan":"premium"}"#,
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    assert!(exits(&mut device).await, "reno device failed: {}", device.output());
    let line = device.output().lines().find(|line| line.starts_with('{')).map(str::to_owned);
    let notification: serde_json::Value = serde_json::from_str(&line.expect("a JSON line")).unwrap();
    assert_eq!(notification["type"], "plan_changed");
    assert_eq!(notification["device_type"], "browser");
    assert_eq!(notification["payload"]["plan"], "premium");
}

#[tokio::test]
async fn heavy_a_terminated_worker_drains_and_exits_cleanly() {
    let mut stack = Stack::start_with(None, &["--ack-wait-secs", "2", "--history-max-entries", "1000"]).await;
    stack.start_pull_service().await;
    let mut mobile = stack.device("rose", "mobile", 0).await;
    let mut published = BTreeSet::new();
    for index in 0..600u32 {
        let update = event("my_list_updated", "rose", reno_model::Value::Integer(index.into()));
        published.insert(update.id.to_string());
        stack.publisher().publish(&update).await.unwrap();
    }
    // Counts every push of every event: an event acked by the first worker and delivered again by
    // the second would be pushed twice.
    let mut pushes = stack.client.subscribe("reno.ntf.rose.mobile").await.unwrap();
    let first = stack.start_worker(&["--priority", "normal"]);
    let mut received = BTreeSet::new();
    while received.len() < 200 {
        received.insert(next_notification(&mut mobile).await.id.to_string());
    }
    stack.process(first).signal("TERM").unwrap();
    let clean = exits(stack.process_mut(first)).await;
    let output = stack.process(first).output();
    assert!(clean, "the worker failed after SIGTERM:\n{output}");
    assert!(output.contains("worker stopped"), "the worker did not drain:\n{output}");

    let second = stack.start_worker(&["--priority", "normal"]);
    while received.len() < published.len() {
        received.insert(next_notification(&mut mobile).await.id.to_string());
    }
    assert_eq!(received, published);

    // What the second worker received, it delivered: nothing came back to it that was done.
    // (An event is counted as received when it arrives and by its outcome after its ack: wait for
    // the last outcomes.)
    let taken = stack.counter(second, "reno_worker_events_total", &[("outcome", "received")]).await;
    assert!(taken <= 400, "the second worker took {taken} events: the first left too many");
    stack.wait_for_counter(second, "reno_worker_events_total", &[("outcome", "delivered")], taken).await;
    let outcomes = ["duplicate", "stale", "collapsed", "retried", "dead_lettered"];
    for outcome in outcomes {
        assert_eq!(
            stack.counter(second, "reno_worker_events_total", &[("outcome", outcome)]).await,
            0,
            "{outcome}"
        );
    }
    let mut pushed: BTreeMap<String, usize> = BTreeMap::new();
    while let Ok(Some(push)) = tokio::time::timeout(Duration::from_millis(200), pushes.next()).await {
        let notification = reno_model::Notification::decode(&push.payload).unwrap();
        *pushed.entry(notification.id.to_string()).or_default() += 1;
    }
    assert_eq!(pushed.len(), 600);
    let repeated: Vec<_> = pushed.iter().filter(|(_, count)| **count > 1).collect();
    assert!(repeated.is_empty(), "pushed more than once: {repeated:?}");
}
