//! Events published the three ways a service can (Rust API, CLI, a non-Rust NATS client) reach an
//! online device over websocket, and only the device types they target.

use std::collections::BTreeSet;

use reno_model::Value;

use crate::support::*;

#[tokio::test]
async fn rust_cli_and_python_publishers_reach_a_websocket_device() {
    let mut stack = Stack::start().await;
    stack.start_all().await;
    let mut tv = stack.device("alice", "tv", 0).await;

    // Rust publisher API.
    let from_rust = event("plan_changed", "alice", text("from rust"));
    let published = stack.publisher().publish(&from_rust).await.expect("rust publish");
    assert_eq!(published.stream, "RENO_HIGH");
    let notification = next_notification(&mut tv).await;
    assert_eq!(notification.id, from_rust.id);
    assert_eq!(notification.payload, text("from rust"));
    assert_eq!(notification.device_type.as_str(), "tv");
    assert!(notification.seq > 0);

    // The CLI.
    let output = stack
        .reno(&[
            "publish",
            "--type",
            "my_list_updated",
            "--member",
            "alice",
            "--payload",
            r#"{"added":"t1"}"#,
            "--id",
            "cli-1",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "reno publish: {}", String::from_utf8_lossy(&output.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["stream"], "RENO_NORMAL");
    let notification = next_notification(&mut tv).await;
    assert_eq!(notification.id.as_str(), "cli-1");
    assert_eq!(notification.payload, Value::Map(vec![(text("added"), text("t1"))]));

    // Python with the plain NATS client (nats-py) and cbor2: what docs/protocol.md shows.
    let python = reno_testkit::repo_root().join(".tools/venv/bin/python");
    let script = reno_testkit::repo_root().join("examples/python/publish.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .args(["--url", &stack.cluster.hub_url(), "--type", "profile_updated", "--member", "alice"])
        .arg("--nkey-seed")
        .arg(stack.cluster.secrets.path("publisher.nk"))
        .args(["--payload", r#"{"name":"Al"}"#, "--id", "py-1"])
        .output()
        .expect("run the python publisher (scripts/install sets up .tools/venv)");
    assert!(output.status.success(), "python publish: {}", String::from_utf8_lossy(&output.stderr));
    let notification = next_notification(&mut tv).await;
    assert_eq!(notification.id.as_str(), "py-1");
    assert_eq!(notification.event_type.as_str(), "profile_updated");
    assert_eq!(notification.payload, Value::Map(vec![(text("name"), text("Al"))]));
}

#[tokio::test]
async fn python_publisher_learns_an_unknown_type_is_refused() {
    let stack = Stack::start().await;
    let python = reno_testkit::repo_root().join(".tools/venv/bin/python");
    let script = reno_testkit::repo_root().join("examples/python/publish.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .args(["--url", &stack.cluster.hub_url(), "--type", "title_watched", "--member", "alice"])
        .arg("--nkey-seed")
        .arg(stack.cluster.secrets.path("publisher.nk"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no stream captures reno.evt.title_watched.alice")
    );
}

#[tokio::test]
async fn a_notification_targeted_at_mobile_never_reaches_a_tv() {
    let mut stack = Stack::start().await;
    let worker = stack.start_all().await;
    let mut tv = stack.device("bob", "tv", 0).await;
    let mut mobile = stack.device("bob", "mobile", 0).await;

    let mut targeted = event("my_list_updated", "bob", text("mobile only"));
    targeted.targets = Some(vec![device("mobile")]);
    stack.publisher().publish(&targeted).await.unwrap();
    let first = event("my_list_updated", "bob", text("everyone"));
    stack.publisher().publish(&first).await.unwrap();

    // The mobile gets both (in either order: the two are handled concurrently).
    let ids: BTreeSet<_> =
        [next_notification(&mut mobile).await.id, next_notification(&mut mobile).await.id].into();
    assert_eq!(ids, BTreeSet::from([targeted.id.clone(), first.id.clone()]));
    // Once both are fully handled, a second event for everyone: anything the targeted event sent
    // to the tv would have reached it before this one.
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 2).await;
    let second = event("my_list_updated", "bob", text("everyone again"));
    stack.publisher().publish(&second).await.unwrap();
    assert_eq!(next_notification(&mut tv).await.id, first.id);
    assert_eq!(next_notification(&mut tv).await.id, second.id);

    // The tv's history holds exactly the two events for everyone.
    let page = stack.pull_page("bob", "tv", 0, 100).await;
    let pulled: BTreeSet<_> = page.notifications.into_iter().map(|notification| notification.id).collect();
    assert_eq!(pulled, BTreeSet::from([first.id, second.id]));
}
