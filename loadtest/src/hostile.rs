//! Hostile valid-size input: envelopes of up to 64 KiB whose payloads take the CBOR shapes that
//! cost a decoder most (tens of thousands of tiny items, wide trees, many keys, one level too deep),
//! published as fast as the workers take them, while the workers' memory is watched.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use reno_model::{Envelope, EventId, EventType, MemberId, Value, codec::MAX_EVENT_BYTES, subject};
use serde::Serialize;

use crate::{
    fleet::member_name,
    probe,
    publish::{self, Limit, Outgoing, Rate},
    stats::{now_us, round},
    topology::{Needs, Topology, TopologyArgs},
};

#[derive(Debug, Clone, clap::Args)]
pub struct HostileArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Envelopes to publish (the shapes take turns)
    #[arg(long, default_value_t = 2000)]
    pub events: u64,
    /// Members they are spread over
    #[arg(long, default_value_t = 1000)]
    pub members: u32,
    /// Publishes awaiting their acks at most
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Seconds to wait for the workers to finish
    #[arg(long, default_value_t = 300.0)]
    pub drain_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostileSummary {
    pub scenario: &'static str,
    /// The workers finished every envelope.
    pub ok: bool,
    pub events: u64,
    pub shapes: Vec<(&'static str, usize)>,
    pub publish_failed: u64,
    pub secs: f64,
    pub events_per_sec: f64,
    pub worker_peak_rss_mib: Vec<f64>,
    pub worker_rss_before_mib: Vec<f64>,
    pub dead_letters: u64,
    pub loadavg: [String; 2],
}

/// The payload shapes: (name, payload for a budget of bytes).
const SHAPES: [&str; 6] = ["tiny_ints", "empty_maps", "wide_tree", "many_keys", "long_text", "too_deep"];

fn payload(shape: &str, budget: usize) -> Value {
    let small = |count: usize, item: Value| Value::Array(vec![item; count]);
    match shape {
        "tiny_ints" => small(budget, Value::Integer(0.into())),
        "empty_maps" => small(budget, Value::Map(Vec::new())),
        "wide_tree" => tree(14, 2),
        "many_keys" => Value::Map(
            (0..budget / 4)
                .map(|index| (Value::Text(format!("{:02x}", index % 256)), Value::Integer(0.into())))
                .collect(),
        ),
        "long_text" => Value::Text("x".repeat(budget)),
        _ => (0..20).fold(Value::Null, |inner, _| Value::Array(vec![inner])),
    }
}

fn tree(depth: u32, width: usize) -> Value {
    if depth == 0 { Value::Integer(0.into()) } else { Value::Array(vec![tree(depth - 1, width); width]) }
}

/// The largest envelope of `shape` for `member` that stays within 64 KiB.
fn envelope(shape: &str, event_type: &EventType, member: &MemberId, id: String) -> Envelope {
    let mut envelope = Envelope {
        id: EventId::new(id).expect("an event id token"),
        event_type: event_type.clone(),
        member: member.clone(),
        occurred_at_ms: now_us() / 1000,
        payload: Value::Null,
        targets: None,
        collapse_key: None,
    };
    let mut budget = MAX_EVENT_BYTES.saturating_sub(envelope.encode().len() + 8);
    loop {
        envelope.payload = payload(shape, budget);
        let size = envelope.encode().len();
        if size <= MAX_EVENT_BYTES || budget == 0 {
            return envelope;
        }
        budget = budget.saturating_sub(size - MAX_EVENT_BYTES);
    }
}

pub async fn run(args: &HostileArgs) -> Result<HostileSummary> {
    let load_before = probe::loadavg();
    let topology = Topology::start(&args.topology, Needs::Pipeline).await?;
    if !topology.is_own() {
        bail!("the hostile run watches its own workers' memory: start it without --hub");
    }
    let event_type = EventType::new("my_list_updated").expect("a type");
    let run = nuid::next().to_string();
    let members: Vec<MemberId> =
        (0..args.members.max(1)).map(|index| MemberId::new(member_name(index)).expect("a member")).collect();
    let samples: Vec<(String, bytes::Bytes)> = SHAPES
        .iter()
        .map(|shape| {
            (
                shape.to_string(),
                envelope(shape, &event_type, &members[0], format!("{run}-sample")).encode().into(),
            )
        })
        .collect();
    let shapes = SHAPES.iter().zip(&samples).map(|(shape, (_, bytes))| (*shape, bytes.len())).collect();
    let rss = |pid: u32| {
        probe::process_memory_kib(pid).map(|(now, peak)| (now as f64 / 1024.0, peak as f64 / 1024.0))
    };
    let before: Vec<f64> =
        topology.worker_pids().into_iter().filter_map(rss).map(|(now, _)| round(now, 1)).collect();

    let started = Instant::now();
    let published = publish::publish(
        &topology.jetstream,
        Rate::Max,
        Limit { count: args.events, duration: Duration::from_secs(3600) },
        args.window,
        |index| {
            let member = &members[(index % members.len() as u64) as usize];
            let shape = SHAPES[(index % SHAPES.len() as u64) as usize];
            let envelope = envelope(shape, &event_type, member, format!("{run}-{index}"));
            Outgoing::event(&envelope)
        },
    )
    .await;
    let finished = topology.wait_until_idle(Duration::from_secs_f64(args.drain_secs)).await.is_some();
    let secs = started.elapsed().as_secs_f64();
    let mut dead = topology.jetstream.get_stream(subject::DEAD_LETTER_STREAM).await?;
    let dead_letters = dead.info().await?.state.messages;
    Ok(HostileSummary {
        scenario: "hostile",
        ok: finished && published.failed == 0,
        events: published.acked,
        shapes,
        publish_failed: published.failed,
        secs: round(secs, 2),
        events_per_sec: round(published.acked as f64 / secs, 1),
        worker_peak_rss_mib: topology
            .worker_pids()
            .into_iter()
            .filter_map(rss)
            .map(|(_, peak)| round(peak, 1))
            .collect(),
        worker_rss_before_mib: before,
        dead_letters,
        loadavg: [load_before, probe::loadavg()],
    })
}

impl HostileSummary {
    pub fn table(&self) -> String {
        format!(
            "hostile | {} envelopes, shapes (bytes) {:?}\nworked off in {:.1} s ({:.0}/s), {} dead letters, publish failures {}\n\
             worker RSS before {:?} MiB, peak {:?} MiB\nloadavg {:?}\nok: {}",
            self.events,
            self.shapes,
            self.secs,
            self.events_per_sec,
            self.dead_letters,
            self.publish_failed,
            self.worker_rss_before_mib,
            self.worker_peak_rss_mib,
            self.loadavg,
            self.ok
        )
    }
}
