//! The floor: how fast the hub does, on this machine, the JetStream work that an event of reno's
//! design cannot do without, with none of reno's code in the way. Streams of its own on the same
//! hub, shaped as reno provisions them, and plain client code in this process: each step adds one
//! kind of work per event to the one before, so that the steps' throughputs, divided by raw
//! JetStream publish measured in the same run, show the highest ratio any worker could reach.
//!
//! - `queue`: the event is published with `Nats-Msg-Id` into a work-queue file stream partitioned
//!   with `partition()`, taken by one pull consumer per partition (`max_ack_pending` 1, as reno's
//!   per-member order needs) and acked.
//! - `write`: also one store of the member's document (a publish into a stream that keeps one
//!   message per subject, as the history bucket does) awaited before the ack.
//! - `read_write`: also the read before the write (a direct get of the member's last message), the
//!   write conditional on it (`Nats-Expected-Last-Subject-Sequence`), and a core publish (the push;
//!   `--pushes` of them, as a worker pushes once per device type the event targets): every server
//!   operation a reno worker does for an event.
//!
//! - `kept_write` (run only when `--steps` names it): the conditional write on the revision this
//!   process wrote last for the member, and the push, without the read: what a worker would do if
//!   it saw every event of its partitions (pinned partitions) and kept the documents it wrote.
//!
//! `--max-ack-pending` lets each consumer hand out more than one event at a time, and
//! `--concurrent` handles that many of a lane's events at once, in no order: the most the hub does
//! for the queue and a write per event when no order is kept at all.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        consumer::{AckPolicy, PullConsumer, pull},
        stream::{self, DirectGetErrorKind, DiscardPolicy, RetentionPolicy, StorageType},
    },
};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use crate::{
    probe,
    publish::{self, Limit, Outgoing, Rate},
    stats::round,
    topology::{Needs, Topology, TopologyArgs},
};

#[derive(Debug, Clone, clap::Args)]
pub struct FloorArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Events per step
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Members the events are spread over (one document each)
    #[arg(long, default_value_t = 30_000)]
    pub members: u64,
    /// Partitions of the work queue, one consumer each
    #[arg(long, default_value_t = 32)]
    pub partitions: u16,
    /// Events each consumer hands out before an ack (reno: 1, for per-member order)
    #[arg(long, default_value_t = 1)]
    pub max_ack_pending: i64,
    /// Handle a lane's events at once, up to --max-ack-pending of them, in no order: the most the
    /// hub does with no order to keep (the queue and write steps only; a conditional write would
    /// race itself)
    #[arg(long)]
    pub concurrent: bool,
    /// The steps to run, comma-separated (default queue,write,read_write, or queue,write with
    /// --concurrent); `kept_write` is the
    /// conditional write on the revision this process wrote last for the member, and the push,
    /// without the read: what a worker that sees every event of its partitions would do
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<Step>,
    /// Pushes (core publishes) per event in the steps that push: one per device type the event
    /// targets (1 to 16)
    #[arg(long, default_value_t = 1)]
    pub pushes: u32,
    /// Bytes of each event and document
    #[arg(long, default_value_t = 200)]
    pub bytes: usize,
    /// Publishes awaiting their acks at most
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
    /// Seconds of raw JetStream publish measured first
    #[arg(long, default_value_t = 5.0)]
    pub raw_secs: f64,
    /// Seconds to wait for a step's consumers to finish
    #[arg(long, default_value_t = 300.0)]
    pub drain_secs: f64,
}

/// What each event costs the hub in a step, cumulatively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Step {
    Queue,
    Write,
    ReadWrite,
    KeptWrite,
}

impl Step {
    fn label(self) -> &'static str {
        match self {
            Step::Queue => "queue",
            Step::Write => "write",
            Step::ReadWrite => "read_write",
            Step::KeptWrite => "kept_write",
        }
    }
}

/// The steps run when `--steps` does not name others.
const STEPS: [Step; 3] = [Step::Queue, Step::Write, Step::ReadWrite];

#[derive(Debug, Clone, Serialize)]
pub struct StepSummary {
    step: Step,
    /// Every event was published, taken and acked, and every write stored.
    complete: bool,
    events: u64,
    /// Members' documents stored at the end (one per member in the steps that write them).
    documents: u64,
    secs: f64,
    events_per_sec: f64,
    ratio: f64,
    /// `None` on a hub this run did not start.
    hub_cpu_us_per_event: Option<f64>,
    this_process_cpu_us_per_event: f64,
    failures: u64,
    first_failure: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FloorSummary {
    pub scenario: &'static str,
    pub ok: bool,
    pub members: u64,
    pub partitions: u16,
    pub max_ack_pending: i64,
    pub concurrent: bool,
    /// Pushes per event in the steps that push.
    pub pushes: u32,
    pub bytes: usize,
    pub raw_msgs_per_sec: f64,
    pub steps: Vec<StepSummary>,
    pub loadavg: [String; 2],
}

impl FloorSummary {
    pub fn table(&self) -> String {
        let mut table = format!(
            "floor: {} members, {} partitions, max_ack_pending {}, concurrent {}, {} push(es), {} B; raw JetStream publish {:.0} msgs/s\n\
             step        events/s   ratio  hub µs/event  complete\n",
            self.members,
            self.partitions,
            self.max_ack_pending,
            self.concurrent,
            self.pushes,
            self.bytes,
            self.raw_msgs_per_sec
        );
        for step in &self.steps {
            table.push_str(&format!(
                "{:<10} {:>9.0} {:>7.3} {:>13.1}  {}\n",
                step.step.label(),
                step.events_per_sec,
                step.ratio,
                step.hub_cpu_us_per_event.unwrap_or(f64::NAN),
                step.complete
            ));
        }
        table
    }
}

pub async fn run(args: &FloorArgs) -> Result<FloorSummary> {
    if args.partitions == 0 || args.members == 0 || args.events == 0 {
        bail!("--partitions, --members and --events must be above 0");
    }
    if !(1..=16).contains(&args.pushes) {
        bail!("--pushes must be 1 to 16 (one per device type an event targets)");
    }
    let load_before = probe::loadavg();
    let topology = Topology::start(&args.topology, Needs::Hub).await?;
    let payload = Bytes::from(vec![b'x'; args.bytes]);
    let raw = publish::raw_baseline(
        &topology.jetstream,
        payload.clone(),
        args.members,
        Duration::from_secs_f64(args.raw_secs),
        args.window,
    )
    .await
    .context("raw JetStream baseline")?
    .acked_per_sec();
    let mut steps = Vec::new();
    let chosen: Vec<Step> = match (args.steps.is_empty(), args.concurrent) {
        (false, _) => args.steps.clone(),
        (true, false) => STEPS.to_vec(),
        (true, true) => STEPS[..2].to_vec(),
    };
    let conditional = |step: &Step| matches!(step, Step::ReadWrite | Step::KeptWrite);
    if args.concurrent && chosen.iter().any(conditional) {
        bail!(
            "--concurrent runs the queue and write steps only: conditional writes of one member would race"
        );
    }
    for step in chosen {
        let mut summary = run_step(&topology, args, step, payload.clone()).await?;
        summary.ratio = if raw > 0.0 { round(summary.events_per_sec / raw, 3) } else { 0.0 };
        eprintln!("{}: {:.0} events/s, ratio {}", step.label(), summary.events_per_sec, summary.ratio);
        steps.push(summary);
    }
    Ok(FloorSummary {
        scenario: "floor",
        ok: steps.iter().all(|step| step.complete),
        members: args.members,
        partitions: args.partitions,
        max_ack_pending: args.max_ack_pending,
        concurrent: args.concurrent,
        pushes: args.pushes,
        bytes: args.bytes,
        raw_msgs_per_sec: round(raw, 1),
        steps,
        loadavg: [load_before, probe::loadavg()],
    })
}

/// What the lanes of a step share.
struct Lanes {
    /// For the document writes.
    jetstream: jetstream::Context,
    /// For the pushes, core publishes.
    client: async_nats::Client,
    /// Pushes per event.
    pushes: u32,
    /// The documents' stream, for the reads (direct gets).
    documents: stream::Stream,
    /// `loadtest.floor.<run>`: this step's subjects, apart from any other run's.
    prefix: String,
    step: Step,
    /// The revision each member's document was last written at by this step (kept_write).
    revisions: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Events handled and acked: the step is over when it reaches the events published.
    done: AtomicU64,
    /// Events whose handling failed; any makes the step incomplete.
    failures: AtomicU64,
    first_failure: std::sync::Mutex<Option<String>>,
}

async fn run_step(topology: &Topology, args: &FloorArgs, step: Step, payload: Bytes) -> Result<StepSummary> {
    let run = nuid::next().to_string();
    let prefix = format!("loadtest.floor.{run}");
    let jetstream = &topology.jetstream;
    let queue_name = format!("LOADTEST_FLOOR_Q_{run}");
    let queue = jetstream
        .create_stream(stream::Config {
            name: queue_name.clone(),
            subjects: vec![format!("{prefix}.e.*")],
            retention: RetentionPolicy::WorkQueue,
            discard: DiscardPolicy::New,
            storage: StorageType::File,
            max_bytes: 128 << 20,
            duplicate_window: Duration::from_secs(120),
            subject_transform: Some(stream::SubjectTransform {
                source: format!("{prefix}.e.*"),
                destination: format!(
                    "{prefix}.p.{{{{partition({},1)}}}}.{{{{wildcard(1)}}}}",
                    args.partitions
                ),
            }),
            ..Default::default()
        })
        .await?;
    let documents_name = format!("LOADTEST_FLOOR_D_{run}");
    let documents = jetstream
        .create_stream(stream::Config {
            name: documents_name.clone(),
            subjects: vec![format!("{prefix}.d.*")],
            max_messages_per_subject: 1,
            allow_direct: true,
            discard: DiscardPolicy::New,
            storage: StorageType::File,
            max_bytes: 128 << 20,
            ..Default::default()
        })
        .await?;
    let mut consumers: Vec<PullConsumer> = Vec::new();
    for partition in 0..args.partitions {
        consumers.push(
            queue
                .create_consumer(pull::Config {
                    durable_name: Some(format!("p{partition}")),
                    filter_subject: format!("{prefix}.p.{partition}.*"),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(4),
                    max_ack_pending: args.max_ack_pending,
                    max_deliver: -1,
                    ..Default::default()
                })
                .await?,
        );
    }
    let lanes = Arc::new(Lanes {
        jetstream: jetstream.clone(),
        client: topology.client.clone(),
        pushes: args.pushes,
        documents,
        prefix: prefix.clone(),
        step,
        revisions: std::sync::Mutex::new(std::collections::HashMap::new()),
        done: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        first_failure: std::sync::Mutex::new(None),
    });
    let concurrency = if args.concurrent { usize::try_from(args.max_ack_pending).unwrap_or(1) } else { 1 };
    let workers: Vec<_> = consumers
        .into_iter()
        .map(|consumer| tokio::spawn(lane(lanes.clone(), consumer, concurrency)))
        .collect();

    let cpu_before = cpu_now(topology);
    let members = args.members;
    let limit = Limit { count: args.events, duration: Duration::from_secs(3600) };
    let published = publish::publish(jetstream, Rate::Max, limit, args.window, |index| {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{run}:{index}").as_str());
        Outgoing { subject: format!("{prefix}.e.m{}", index % members), headers, payload: payload.clone() }
    })
    .await;
    // Finished when every event was handled and the queue is empty (its acks reached the server).
    let deadline = Instant::now() + Duration::from_secs_f64(args.drain_secs);
    let mut left = u64::MAX;
    while Instant::now() < deadline {
        if lanes.done.load(Ordering::Relaxed) >= published.acked {
            left = jetstream.get_stream(&queue_name).await?.info().await?.state.messages;
            if left == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let finished = Instant::now();
    let cpu_after = cpu_now(topology);
    for worker in workers {
        worker.abort();
    }
    let done = lanes.done.load(Ordering::Relaxed);
    // One document per member the events named, in the steps that write them.
    let documents = jetstream.get_stream(&documents_name).await?.info().await?.state.messages;
    let expected_documents = if step == Step::Queue { 0 } else { args.members.min(args.events) };
    jetstream.delete_stream(&queue_name).await?;
    jetstream.delete_stream(&documents_name).await?;
    let secs = finished.duration_since(published.started).as_secs_f64();
    let per_event =
        |index: usize| round((cpu_after[index] - cpu_before[index]) * 1e6 / done.max(1) as f64, 1);
    let failures = lanes.failures.load(Ordering::Relaxed) + published.failed;
    let first_failure =
        lanes.first_failure.lock().ok().and_then(|first| first.clone()).or(published.first_error);
    Ok(StepSummary {
        step,
        complete: done == args.events
            && published.acked == args.events
            && left == 0
            && documents == expected_documents
            && failures == 0,
        events: done,
        documents,
        secs: round(secs, 3),
        events_per_sec: round(done as f64 / secs.max(1e-9), 1),
        ratio: 0.0,
        hub_cpu_us_per_event: Some(per_event(0)).filter(|value| value.is_finite()),
        this_process_cpu_us_per_event: per_event(1),
        failures,
        first_failure,
    })
}

/// One partition's consumer: one event at a time, as a reno lane takes them, or with `concurrency`
/// above 1 that many at once, in no order.
async fn lane(lanes: Arc<Lanes>, consumer: PullConsumer, concurrency: usize) {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    loop {
        let Ok(mut messages) = consumer.stream().max_messages_per_batch(64).messages().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while let Some(Ok(message)) = messages.next().await {
            if concurrency <= 1 {
                settle(&lanes, &message).await;
                continue;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let lanes = lanes.clone();
            tokio::spawn(async move {
                settle(&lanes, &message).await;
                drop(permit);
            });
        }
    }
}

/// Handles one event and counts what came of it.
async fn settle(lanes: &Lanes, message: &jetstream::Message) {
    match handle(lanes, message).await {
        Ok(()) => {
            lanes.done.fetch_add(1, Ordering::Relaxed);
        }
        Err(error) => {
            lanes.failures.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = lanes.first_failure.lock() {
                first.get_or_insert(error.to_string());
            }
        }
    }
}

async fn handle(lanes: &Lanes, message: &jetstream::Message) -> Result<()> {
    let member = message.subject.rsplit('.').next().unwrap_or_default();
    let document = format!("{}.d.{member}", lanes.prefix);
    if lanes.step != Step::Queue {
        let mut headers = HeaderMap::new();
        let expected = match lanes.step {
            Step::ReadWrite => match lanes.documents.direct_get_last_for_subject(document.as_str()).await {
                Ok(last) => Some(last.sequence),
                Err(error) if error.kind() == DirectGetErrorKind::NotFound => Some(0),
                Err(error) => return Err(error.into()),
            },
            Step::KeptWrite => {
                Some(lanes.revisions.lock().ok().and_then(|kept| kept.get(member).copied()).unwrap_or(0))
            }
            Step::Queue | Step::Write => None,
        };
        if let Some(expected) = expected {
            headers.insert("Nats-Expected-Last-Subject-Sequence", expected.to_string().as_str());
        }
        let stored =
            lanes.jetstream.publish_with_headers(document, headers, message.payload.clone()).await?.await?;
        if lanes.step == Step::KeptWrite
            && let Ok(mut kept) = lanes.revisions.lock()
        {
            kept.insert(member.to_owned(), stored.sequence);
        }
        if expected.is_some() {
            for push in 0..lanes.pushes {
                lanes
                    .client
                    .publish(format!("{}.push.{push}.{member}", lanes.prefix), message.payload.clone())
                    .await?;
            }
        }
    }
    message.ack().await.map_err(|error| anyhow::anyhow!("ack: {error}"))?;
    Ok(())
}

/// CPU seconds of the hub (`NaN` when it is not this run's, so that it shows as unmeasured) and of
/// this process.
fn cpu_now(topology: &Topology) -> [f64; 2] {
    let hub = topology.hub_pid().and_then(probe::process_cpu_secs).unwrap_or(f64::NAN);
    let own = probe::process_cpu_secs(std::process::id()).unwrap_or(0.0);
    [hub, own]
}
