//! Clocks that disagree with the server's: staleness is decided by the time the server stamped on
//! an event and the server's clock now, so a worker whose clock runs minutes ahead or behind (run
//! here under libfaketime) drops exactly the events the server's time says are stale, and a
//! publisher's clock (the envelope's `occurred_at_ms`) plays no part in it.

use std::time::Duration;

use crate::support::*;

const REGISTRY: &str = r#"
device_types = ["tv"]

[types.lasting]
priority = "normal"
stale_after_secs = 60

[types.fleeting]
priority = "normal"
stale_after_secs = 1
"#;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

async fn with_worker_clock_off_by(skew: &str, skew_secs: f64) {
    assert!(std::path::Path::new(LIBFAKETIME).exists(), "libfaketime is missing; run scripts/install");
    let mut stack = Stack::start_with(Some(REGISTRY), &[]).await;
    stack.start_pull_service().await;
    // Stale by the server's clock by the time a worker sees it: published before any worker runs.
    let old = event("fleeting", "clara", text("too late"));
    stack.publisher().publish(&old).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let worker = stack.start_worker_with_env(
        &["--priority", "normal"],
        &[("LD_PRELOAD", LIBFAKETIME), ("FAKETIME", skew), ("DONT_FAKE_MONOTONIC", "1")],
    );
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "stale")], 1).await;
    // The worker's clock really is off, and it knows by how much.
    let offset = stack.gauge(worker, "reno_clock_offset_seconds", &[("stream", "RENO_NORMAL")]).await;
    let offset = offset.expect("the worker reports its clock offset");
    assert!((offset - skew_secs).abs() < 5.0, "offset {offset} s, expected about {skew_secs} s");

    // Fresh by the server's clock: delivered, whatever the worker's clock and the publisher's say.
    let fresh = event("lasting", "clara", text("just now"));
    let mut from_the_past = event("lasting", "clara", text("a publisher ten minutes behind"));
    from_the_past.occurred_at_ms -= 600_000;
    for envelope in [&fresh, &from_the_past] {
        stack.publisher().publish(envelope).await.unwrap();
    }
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 2).await;
    let page = stack.pull_page("clara", "tv", 0, 10).await;
    let ids: Vec<String> =
        page.notifications.iter().map(|notification| notification.id.to_string()).collect();
    assert_eq!(ids, [fresh.id.to_string(), from_the_past.id.to_string()]);
    assert_eq!(stack.counter(worker, "reno_worker_events_total", &[("outcome", "stale")]).await, 1);
}

#[tokio::test]
async fn a_worker_five_minutes_ahead_judges_staleness_by_the_servers_clock() {
    with_worker_clock_off_by("+5m", 300.0).await;
}

#[tokio::test]
async fn a_worker_five_minutes_behind_judges_staleness_by_the_servers_clock() {
    with_worker_clock_off_by("-5m", -300.0).await;
}
