//! A soak: a steady flow for a while, with the worker's memory and the backlog sampled every second;
//! memory stays flat, the backlog does not grow, and nothing is lost. The suite runs a short one
//! (20 s); the long one recorded in docs/benchmarks.md is
//! `RENO_SOAK_SECS=600 RENO_SOAK_RATE=750 RENO_SOAK_MEMBERS=200 cargo nextest run --release
//! --profile soak -p reno --test e2e soak`. The events spread over the members in turn, so each
//! member's history grows by rate × seconds ÷ members entries (to the cap).

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use reno_model::Value;

use crate::support::*;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied().unwrap_or(0)
}

#[tokio::test]
async fn heavy_a_steady_flow_keeps_memory_flat_and_loses_nothing() {
    let seconds = env_number("RENO_SOAK_SECS", 20);
    let rate = env_number("RENO_SOAK_RATE", 400);
    let mut stack = Stack::start().await;
    let worker = stack.start_all().await;
    let pid = stack.process(worker).id();
    let members = env_number("RENO_SOAK_MEMBERS", 200);

    let started = Instant::now();
    let mut published = 0u64;
    let mut samples = Vec::new();
    let mut backlog = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        let second = Instant::now();
        let batch: Vec<_> = (0..rate)
            .map(|index| {
                event(
                    "my_list_updated",
                    &format!("soak{}", (published + index) % members),
                    Value::Integer(index.into()),
                )
            })
            .collect();
        let publisher = stack.publisher();
        stream::iter(batch)
            .for_each_concurrent(64, |envelope| {
                let publisher = publisher.clone();
                async move {
                    publisher.publish(&envelope).await.expect("published");
                }
            })
            .await;
        published += rate;
        samples.push(rss_kib(pid));
        backlog.push(stack.stored("RENO_NORMAL").await);
        if let Some(rest) = Duration::from_secs(1).checked_sub(second.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", "delivered")], published).await;
    assert_eq!(
        stack.counter(worker, "reno_worker_events_total", &[("outcome", "received")]).await,
        published
    );

    // Every minute (or every tenth of the run, if shorter): the worker's RSS and the backlog.
    let step = (samples.len() / 10).clamp(1, 60);
    let course: Vec<String> = (0..samples.len())
        .step_by(step)
        .map(|second| format!("{second} s: {} KiB, backlog {}", samples[second], backlog[second]))
        .collect();
    println!("soak course: {}", course.join("; "));
    let quarter = (samples.len() / 4).max(1);
    let (early, late) = (median(&samples[..quarter]), median(&samples[samples.len() - quarter..]));
    println!(
        "soak: {seconds} s at {rate}/s, {published} events, worker RSS {early} KiB early, {late} KiB late, backlog max {}",
        backlog.iter().max().unwrap_or(&0)
    );
    assert!(late <= early + early / 2 + 20 * 1024, "the worker grew from {early} KiB to {late} KiB");
    let backlog_late = median(&backlog[backlog.len() - quarter..]);
    assert!(backlog_late < rate * 2, "the backlog grows: {backlog:?}");
}
