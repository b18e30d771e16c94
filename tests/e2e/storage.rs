//! Storage stays bounded without losing events: dead letters keep at most 64 KiB of an event and
//! the oldest make room for new ones, and a full history refuses writes, so events wait in their
//! priority stream until there is room again.

use futures::{StreamExt, stream};
use reno_model::{Value, subject};

use crate::support::*;

const REGISTRY: &str = r#"
device_types = ["mobile", "tv"]

[types.lasting]
priority = "normal"
stale_after_secs = 3600
"#;

#[tokio::test]
async fn dead_letters_keep_a_bounded_copy_and_the_oldest_make_room() {
    let mut stack = Stack::start_with(Some(REGISTRY), &["--dead-letter-max-bytes", "1048576"]).await;
    let worker = stack.start_worker(&[]);
    // Junk just under what a priority stream stores (960 KiB): a publisher flooding reno with it
    // must not be able to fill the store through the dead letters.
    let junk = vec![0xffu8; 900 * 1024];
    for _ in 0..40 {
        stack.jetstream.publish("reno.evt.lasting.junk", junk.clone().into()).await.unwrap().await.unwrap();
    }
    stack.wait_for_counter(worker, "reno_worker_dead_letters_total", &[("reason", "too_large")], 40).await;

    let mut dead = stack.jetstream.get_stream(subject::DEAD_LETTER_STREAM).await.unwrap();
    let state = dead.info().await.unwrap().state.clone();
    assert!(state.bytes <= 1_048_576, "dead letters hold {} bytes", state.bytes);
    assert_eq!(state.last_sequence, 40, "the newest dead letter is kept");
    assert!(state.first_sequence > 1, "the oldest made room");
    let newest = dead.get_raw_message(state.last_sequence).await.unwrap();
    assert_eq!(newest.payload.len(), 64 * 1024);
    assert_eq!(newest.headers.get("Reno-Original-Size").unwrap().as_str(), (900 * 1024).to_string());
}

#[tokio::test]
async fn a_full_history_holds_events_back_until_there_is_room() {
    let mut stack = Stack::start_with(Some(REGISTRY), &["--history-max-bytes", "1048576"]).await;
    stack.start_pull_service().await;
    let worker = stack.start_worker(&["--max-deliveries", "1000"]);
    // 60 events of 30 KB for two device types, of six members: 1.8 MB of entries (each member's
    // history is rewritten whole with each event, too), more than the history may hold.
    let payload = |index: usize| Value::Text(format!("{index}:{}", "x".repeat(30_000)));
    let events: Vec<_> =
        (0..60).map(|index| event("lasting", &format!("liz{}", index % 6), payload(index))).collect();
    stream::iter(&events)
        .for_each_concurrent(16, |envelope| async {
            stack.publisher().publish(envelope).await.unwrap();
        })
        .await;
    stack.wait_for_counter(worker, "reno_worker_retries_total", &[("reason", "history_full")], 1).await;
    let history_bytes =
        stack.jetstream.get_stream(subject::history_stream()).await.unwrap().cached_info().state.bytes;
    assert!(history_bytes <= 1_048_576, "the history holds {history_bytes} bytes");

    // The operator raises the limit: the events waiting in the priority stream get through.
    stack.provision(&["--history-max-bytes", "100000000"]);
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 60).await;
    for device_type in ["mobile", "tv"] {
        let mut seen = Vec::new();
        for member in 0..6 {
            let page = stack.pull_page(&format!("liz{member}"), device_type, 0, 1000).await;
            assert!(!page.more && !page.resync);
            seen.extend(page.notifications.iter().map(|notification| notification.id.clone()));
        }
        seen.sort();
        let mut expected: Vec<_> = events.iter().map(|envelope| envelope.id.clone()).collect();
        expected.sort();
        assert_eq!(seen, expected, "{device_type}");
    }
    assert_eq!(stack.counter(worker, "reno_worker_events_total", &[("outcome", "dead_lettered")]).await, 0);
}
