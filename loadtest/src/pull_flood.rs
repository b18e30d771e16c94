//! The flood of the pull run: events published through the workers as fast as they take them, in
//! three phases of the same size: without pulls, with pulls of random filled members at a fixed
//! rate, and without again. Each event is for a member of its own, outside the filled ones, so
//! that every phase costs the workers the same (one new document per event) and the filled
//! documents the pulls read do not change (every pulled page is checked). The workers' throughput
//! with pulls is compared with the mean of the two phases around it, which cancels a drift that is
//! linear in time (the machine's other work comes and goes).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use reno_model::{Envelope, EventId, EventType, MemberId};
use tokio::{sync::watch, task::JoinSet};

pub use crate::pull_summary::{CpuPerEvent, Flood, Phase, PullLoad};
use crate::{
    fleet::{Probe, member_name},
    probe,
    publish::{self, Limit, Outgoing, Rate},
    pull::{EVENT_TYPE, FloodVia, Picker, PullFailure, Puller, padding_for},
    stats::{self, Latency, now_us, round},
    topology::Topology,
};

/// What the flood does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Events per phase.
    pub events: u64,
    /// Pulls per second in the phase with pulls.
    pub pull_rate: f64,
    /// What answers them.
    pub via: FloodVia,
    /// Direct gets per second through all the phases, keeping the history's blocks cached.
    pub keep_warm_rate: f64,
    pub payload_bytes: usize,
    /// Publishes awaiting their acks at most.
    pub window: usize,
    /// How long each phase may take to drain.
    pub drain: Duration,
}

/// The phases: their labels and whether pulls run.
const PHASES: [(&str, bool); 3] =
    [("without pulls", false), ("with pulls", true), ("without pulls, again", false)];

/// CPU seconds used so far by the workers, the hub, the pull service and this process.
fn cpu_now(topology: &Topology) -> [f64; 4] {
    let of = |pid: Option<u32>| pid.and_then(probe::process_cpu_secs).unwrap_or(0.0);
    [
        topology.worker_pids().into_iter().map(|pid| of(Some(pid))).sum(),
        of(topology.hub_pid()),
        of(topology.pull_service_pid()),
        of(Some(std::process::id())),
    ]
}

pub async fn run(topology: &Topology, puller: &Puller, plan: &Plan) -> Result<Flood> {
    let run = nuid::next().to_string();
    let event_type = EventType::new(EVENT_TYPE).expect("an event type");
    // The flood's members come after the filled ones: `members + global index`.
    let padding = padding_for(puller.members, plan.payload_bytes);
    let (stop_warm, warm_stopped) = watch::channel(false);
    let keep_warm = (plan.keep_warm_rate > 0.0).then(|| {
        tokio::spawn(paced_pulls(
            Arc::new(puller.clone()),
            FloodVia::Hub,
            plan.keep_warm_rate,
            now_us(),
            warm_stopped,
        ))
    });
    let mut phases = Vec::new();
    for (number, (label, with_pulls)) in PHASES.into_iter().enumerate() {
        let first = number as u64 * plan.events;
        let members = u64::from(puller.members);
        let cpu_before = cpu_now(topology);
        let delivered_before = topology.workers_delivered();
        let (stop, stopped) = watch::channel(false);
        let load = with_pulls.then(|| {
            tokio::spawn(paced_pulls(
                Arc::new(puller.clone()),
                plan.via,
                plan.pull_rate,
                now_us() + first,
                stopped,
            ))
        });
        let limit = Limit { count: plan.events, duration: Duration::from_secs(24 * 3600) };
        let published = publish::publish(&topology.jetstream, Rate::Max, limit, plan.window, |index| {
            let global = first + index;
            let member_index = u32::try_from(members + global).expect("fewer than 2^32 members");
            let envelope = Envelope {
                id: EventId::new(format!("{run}-{global}")).expect("an event id token"),
                event_type: event_type.clone(),
                member: MemberId::new(member_name(member_index)).expect("a member token"),
                occurred_at_ms: now_us() / 1000,
                payload: Probe { member: member_index, index: 0, sent_us: now_us() }.payload(&padding),
                targets: Some(vec![puller.device_type.clone()]),
                collapse_key: None,
            };
            Outgoing::event(&envelope)
        })
        .await;
        let deadline = Instant::now() + plan.drain;
        let drained = topology.wait_until_idle(plan.drain).await;
        // The counters follow the acks closely: give them a moment to reach the events published.
        let counted_by = Instant::now() + Duration::from_secs(5);
        let delivered = loop {
            let delivered = match (delivered_before, topology.workers_delivered()) {
                (Some(before), Some(now)) => Some(now.saturating_sub(before)),
                _ => None,
            };
            if drained.is_none()
                || delivered.is_none_or(|count| count >= published.acked)
                || Instant::now() > counted_by
            {
                break delivered;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _ = stop.send(true);
        let pulls = match load {
            Some(load) => Some(load.await.context("the pulls")?),
            None => None,
        };
        let cpu_after = cpu_now(topology);
        let secs = drained.unwrap_or(deadline).duration_since(published.started).as_secs_f64();
        let per_event = |index: usize| {
            round((cpu_after[index] - cpu_before[index]) * 1e6 / (published.acked.max(1) as f64), 1)
        };
        let pull_service_us_per_pull = pulls.as_ref().map(|pulls: &PullLoad| {
            round((cpu_after[2] - cpu_before[2]) * 1e6 / (pulls.sent.max(1) as f64), 1)
        });
        phases.push(Phase {
            label,
            with_pulls,
            events: published.acked,
            publish_failed: published.failed,
            drained: drained.is_some(),
            delivered,
            secs: round(secs, 3),
            events_per_sec: round(published.acked as f64 / secs.max(1e-9), 1),
            cpu_us_per_event: CpuPerEvent {
                workers: per_event(0),
                hub: per_event(1),
                pull_service: per_event(2),
                load_generator: per_event(3),
            },
            pull_service_us_per_pull,
            pulls,
            loadavg: probe::loadavg(),
        });
    }
    let _ = stop_warm.send(true);
    let kept_warm = match keep_warm {
        Some(reads) => Some(reads.await.context("the keep-warm reads")?),
        None => None,
    };
    let rate = |with: bool| {
        let rates: Vec<f64> = phases
            .iter()
            .filter(|phase| phase.with_pulls == with)
            .map(|phase| phase.events_per_sec)
            .collect();
        rates.iter().sum::<f64>() / rates.len().max(1) as f64
    };
    let (without, with) = (rate(false), rate(true));
    let ok = phases.iter().all(|phase| {
        phase.drained
            && phase.delivered.is_none_or(|count| count == phase.events)
            && phase.publish_failed == 0
            && phase.events == plan.events
            && phase.pulls.as_ref().is_none_or(|pulls| pulls.failed == 0)
    }) && kept_warm.as_ref().is_none_or(|reads| reads.failed == 0);
    Ok(Flood {
        ok,
        events_per_phase: plan.events,
        pull_rate: plan.pull_rate,
        via: plan.via,
        keep_warm_rate: plan.keep_warm_rate,
        kept_warm,
        events_per_sec_without_pulls: round(without, 1),
        events_per_sec_with_pulls: round(with, 1),
        ratio: if without > 0.0 { round(with / without, 3) } else { 0.0 },
        phases,
    })
}

/// Pulls of random members by `via` at `rate` per second, each on its own task, until `stop` turns true;
/// then waits for the answers still due.
async fn paced_pulls(
    puller: Arc<Puller>,
    via: FloodVia,
    rate: f64,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) -> PullLoad {
    let mut histogram = stats::histogram();
    let mut picker = Picker::new(seed);
    let mut tasks = JoinSet::new();
    let (mut sent, mut failed, mut first_error) = (0u64, 0u64, None);
    let mut record = |result: Result<Result<u64, PullFailure>, tokio::task::JoinError>| match result {
        Ok(Ok(latency_us)) => {
            histogram.saturating_record(latency_us.max(1));
        }
        Ok(Err(PullFailure::Failed(error) | PullFailure::Wrong(error))) => {
            failed += 1;
            first_error.get_or_insert(error);
        }
        Err(error) => {
            failed += 1;
            first_error.get_or_insert(error.to_string());
        }
    };
    let started = Instant::now();
    while !*stop.borrow_and_update() {
        let due = (started.elapsed().as_secs_f64() * rate) as u64 + 1;
        while sent < due {
            let puller = puller.clone();
            let member = picker.next(puller.members);
            tasks.spawn(async move { puller.pull_via(via, member).await });
            sent += 1;
        }
        while let Some(result) = tasks.try_join_next() {
            record(result);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            // The sender gone (the run returned early) stops the pulls as a stop would.
            changed = stop.changed() => if changed.is_err() { break },
        }
    }
    let secs = started.elapsed().as_secs_f64();
    while let Some(result) = tasks.join_next().await {
        record(result);
    }
    PullLoad {
        sent,
        per_sec: round(sent as f64 / secs.max(1e-9), 1),
        failed,
        first_error,
        latency: Latency::of(&histogram),
    }
}
