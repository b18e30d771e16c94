//! Event types change at run time: `reno registry` changes a type while workers run and events flow,
//! the workers follow without a restart, and no event is lost or mis-routed.

use std::{collections::BTreeSet, time::Duration};

use futures::{StreamExt, stream};
use reno_model::Value;
use reno_nats::PublishError;

use crate::support::*;

const REGISTRY: &str = r#"
device_types = ["tv"]

[types.lasting]
priority = "normal"
stale_after_secs = 3600

[types.moving]
priority = "low"
stale_after_secs = 3600
"#;

/// Publishes `count` events of one type, retrying each while no stream captures its type (the
/// moment a type moves between priorities), as a careful publisher does.
async fn publish_retrying(stack: &Stack, event_type: &str, member: &str, count: usize) -> BTreeSet<String> {
    let envelopes: Vec<_> =
        (0..count).map(|index| event(event_type, member, Value::Integer(index.into()))).collect();
    let ids = envelopes.iter().map(|envelope| envelope.id.to_string()).collect();
    stream::iter(envelopes)
        .for_each_concurrent(32, |envelope| async move {
            loop {
                match stack.publisher().publish(&envelope).await {
                    Ok(_) => return,
                    Err(PublishError::UnknownType { .. }) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(error) => panic!("publish failed: {error}"),
                }
            }
        })
        .await;
    ids
}

fn registry(stack: &Stack, args: &[&str]) -> String {
    let output = stack.reno(args).output().unwrap();
    assert!(output.status.success(), "reno {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn heavy_a_type_moves_to_another_priority_under_load_without_losing_an_event() {
    // A history that holds all of mia's, so that the device can pull whatever push did not bring.
    let mut stack = Stack::start_with(Some(REGISTRY), &["--history-max-entries", "1000"]).await;
    let worker = stack.start_all().await;
    let mut tv = stack.device("mia", "tv", 0).await;

    let (before, (), after) = tokio::join!(
        publish_retrying(&stack, "moving", "mia", 600),
        async {
            // Mid-flood: the type moves from low to high while its events are being published.
            tokio::time::sleep(Duration::from_millis(100)).await;
            registry(&stack, &["registry", "set", "moving", "--priority", "high"]);
        },
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            publish_retrying(&stack, "moving", "mia", 200).await
        }
    );
    let mut high = stack.jetstream.get_stream("RENO_HIGH").await.unwrap();
    assert!(high.info().await.unwrap().config.subjects.contains(&"reno.evt.moving.*".to_owned()));
    let shown = registry(&stack, &["registry", "show"]);
    assert!(shown.contains("[types.moving]\npriority = \"high\""), "{shown}");

    let published: BTreeSet<String> = before.union(&after).cloned().collect();
    let mut received = BTreeSet::new();
    while received.len() < published.len() {
        received.insert(next_notification(&mut tv).await.id.to_string());
    }
    assert_eq!(received, published);
    stack.wait_for_counter(worker, "reno_registry_updates_total", &[], 1).await;
    assert_eq!(stack.counter(worker, "reno_worker_events_total", &[("outcome", "dead_lettered")]).await, 0);
}

#[tokio::test]
async fn a_staleness_threshold_changes_without_a_restart() {
    let mut stack = Stack::start_with(Some(REGISTRY), &[]).await;
    let worker = stack.start_all().await;
    stack.wait_until_pulling("RENO_NORMAL", 1).await;
    let early = publish_retrying(&stack, "lasting", "noa", 200).await;

    registry(&stack, &["registry", "set", "lasting", "--stale-after-secs", "1"]);
    stack.wait_for_counter(worker, "reno_registry_updates_total", &[], 1).await;
    // The same running worker now drops an event that waited longer than the new threshold: it is
    // frozen while the event waits, then let go.
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 200).await;
    stack.process(worker).signal("STOP").unwrap();
    let late = event("lasting", "noa", text("waited too long"));
    stack.publisher().publish(&late).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.process(worker).signal("CONT").unwrap();
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "stale")], 1).await;

    let ids: BTreeSet<String> = stack
        .pull_page("noa", "tv", 0, 1000)
        .await
        .notifications
        .into_iter()
        .map(|notification| notification.id.to_string())
        .collect();
    assert_eq!(ids, early, "every early event delivered; the late one dropped as stale");

    // A change the registry refuses is refused before anything is applied.
    let output = stack.reno(&["registry", "set", "lasting", "--target", "watch"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("target watch is not in device_types"));
    let output = stack.reno(&["registry", "set", "brand_new", "--stale-after-secs", "5"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("give at least --priority and --stale-after-secs")
    );
}
