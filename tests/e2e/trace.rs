//! `reno trace <member>`: one member's events followed live across processes (worker and pull
//! service), nothing of other members, and nothing published for anyone once nobody traces.

use std::time::Duration;

use futures::StreamExt;
use reno_testkit::Process;

use crate::support::*;

/// Lines of a running `reno trace --json`, parsed.
fn records(trace: &Process) -> Vec<serde_json::Value> {
    trace.output().lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

#[tokio::test]
async fn a_trace_follows_one_members_events_live_and_costs_nothing_after() {
    let mut stack = Stack::start().await;
    let pull_service = stack.start_pull_service().await;
    let worker = stack.start_worker(&[]);
    stack.announce("tina", "tv").await;
    let trace = Process::spawn(stack.reno(&["trace", "tina", "--json"])).unwrap();
    // Each process follows the sessions on its own: both must know this one before the event and
    // the pull, or the pull's record is never written.
    stack.wait_for_counter(worker, "reno_trace_members", &[], 1).await;
    stack.wait_for_counter(pull_service, "reno_trace_members", &[], 1).await;

    let traced = event("my_list_updated", "tina", text("traced"));
    let other = event("my_list_updated", "ugo", text("not traced"));
    stack.publisher().publish(&other).await.unwrap();
    stack.publisher().publish(&traced).await.unwrap();
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 2).await;
    let page = stack.pull_page("tina", "tv", 0, 10).await;
    let seq = page.notifications[0].seq;

    let id = traced.id.to_string();
    eventually("the trace shows the event from reception to pull", || {
        let seen = records(&trace);
        let stage = |name: &'static str| seen.iter().filter(move |record| record["stage"] == name);
        let received = stage("received")
            .any(|record| record["process"] == "worker" && record["type"] == "my_list_updated");
        let written = stage("history").any(|record| record["event_id"] == id.as_str());
        let pushed = stage("push").any(|record| {
            record["device_type"] == "tv" && record["seq"] == seq && record["result"] == "sent"
        });
        let delivered = stage("outcome").any(|record| record["outcome"] == "delivered");
        let pulled = stage("pull").any(|record| record["process"] == "pull" && record["returned"][0] == seq);
        std::future::ready(received && written && pushed && delivered && pulled)
    })
    .await;
    assert!(records(&trace).iter().all(|record| record["member"] == "tina"), "only tina's records");
    assert!(!trace.output().contains(other.id.as_str()), "nothing of another member");

    // Stopped: the worker forgets the session, and nothing is published for tina any more.
    trace.signal("INT").unwrap();
    eventually("the session is gone", || async {
        stack.counter(worker, "reno_trace_members", &[]).await == 0
    })
    .await;
    let mut listener = stack.client.subscribe("reno.trace.tina").await.unwrap();
    stack.client.flush().await.unwrap();
    stack.publisher().publish(&event("my_list_updated", "tina", text("untraced"))).await.unwrap();
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], 3).await;
    let silent = tokio::time::timeout(Duration::from_millis(500), listener.next()).await;
    assert!(silent.is_err(), "a trace record with nobody tracing");
}

#[tokio::test]
async fn a_trace_of_an_unsafe_member_is_refused() {
    let stack = Stack::start().await;
    let output = stack.reno(&["trace", "a.b"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("use 1 to 64 ASCII letters"));
}
