//! Running the pipelines: each priority on its own OS threads with its own tokio runtime and its own
//! NATS connection, with one lane per partition of the priority's stream pulling from that
//! partition's durable consumer, which hands its events to one worker at a time (the pinned
//! client of the consumer's priority group). A lane handles events of different members at once,
//! each member's in order. Workers hand partitions to each other until each holds its share.
//! Shutdown stops the pulling, lets in-flight events finish, hands back the rest in order, and
//! returns; the pins run out and the partitions move to the other workers.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::Duration,
};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{PullConsumer, pull},
    stream::RawMessageErrorKind,
};
use bytes::Bytes;
use futures::{FutureExt, StreamExt, TryStreamExt, future::BoxFuture, stream::FuturesUnordered};
use reno_model::{Priority, Registry, subject};
use reno_nats::{readiness::Needed, topology::partitions_of};
use reno_presence::PresenceView;
use tokio::{
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    config::{PoolConfig, WorkerConfig},
    history::History,
    outcome,
    pipeline::{Pipeline, Settled},
    roll_call, stream_gauges,
};

/// Why a worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("priority {priority}: {what} is missing or unreachable ({source}); run `reno provision` first")]
    Topology { priority: Priority, what: String, source: async_nats::Error },
    #[error("priority {priority}: cannot start its runtime: {source}")]
    Runtime { priority: Priority, source: std::io::Error },
    #[error("priority {priority}: its pipeline stopped unexpectedly")]
    Stopped { priority: Priority },
    #[error("cannot read the registry: {0}")]
    Registry(reno_nats::RegistryStoreError),
}

/// Runs the pipelines of every configured priority until `shutdown` completes, then drains them.
/// Returns early with an error if a priority cannot start or the registry cannot be read.
pub async fn run(config: WorkerConfig, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
    tokio::pin!(shutdown);
    let (registry, presence, jetstream) = tokio::select! {
        followed = follow(&config.nats) => followed?,
        // Told to stop before NATS was ever reached: nothing in flight, nothing to drain.
        () = &mut shutdown => return Ok(()),
    };
    // Once per process, until its priorities have stopped.
    let priorities = config.pools.iter().map(|(priority, _)| *priority).collect();
    let _gauges = stream_gauges::start(jetstream, priorities);
    let (stop_sender, stop_receiver) = watch::channel(false);
    let (done_sender, mut done_receiver) = mpsc::unbounded_channel();
    let mut threads = Vec::new();
    for (priority, pool) in config.pools.clone() {
        let config = config.clone();
        let registry = registry.clone();
        let presence = presence.clone();
        let stop = stop_receiver.clone();
        let done = done_sender.clone();
        let thread = std::thread::Builder::new()
            .name(format!("reno-{priority}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(pool.threads.max(1))
                    .thread_name(format!("reno-{priority}"))
                    .enable_all()
                    .build()
                    .map_err(|source| WorkerError::Runtime { priority, source })
                    .and_then(|runtime| {
                        runtime.block_on(run_priority(&config, registry, presence, priority, pool, stop))
                    });
                let _ = done.send((priority, result));
            })
            .map_err(|source| WorkerError::Runtime { priority, source })?;
        threads.push(thread);
    }
    drop(done_sender);

    let mut first_error = None;
    tokio::select! {
        () = &mut shutdown => {}
        Some((priority, result)) = done_receiver.recv() => {
            first_error = Some(result.err().unwrap_or(WorkerError::Stopped { priority }));
        }
    }
    let _ = stop_sender.send(true);
    while let Some((_, result)) = done_receiver.recv().await {
        if let (Err(error), None) = (result, &first_error) {
            first_error = Some(error);
        }
    }
    for thread in threads {
        let _ = thread.join();
    }
    first_error.map_or(Ok(()), Err)
}

/// The JetStream objects a worker serving `priorities` cannot work without.
pub fn needs(priorities: &[Priority]) -> Vec<Needed> {
    let mut needs = Vec::new();
    for priority in priorities {
        let stream = subject::priority_stream(*priority);
        needs.push(Needed::Stream(stream.clone()));
        needs.push(Needed::Partitions(stream));
    }
    needs.push(Needed::Bucket(subject::HISTORY_BUCKET.to_owned()));
    needs.push(Needed::Bucket(subject::REGISTRY_BUCKET.to_owned()));
    needs
}

/// Reads the registry from NATS and keeps following it (every change is in the receiver at once,
/// for the next event each priority handles), and follows presence, on one connection of the
/// process's own, which it returns for the stream gauges.
async fn follow(
    nats: &reno_nats::Endpoint,
) -> Result<(watch::Receiver<Arc<Registry>>, PresenceView, jetstream::Context), WorkerError> {
    let client = reno_nats::connect_patiently(nats, "reno-worker-follow").await;
    let jetstream = jetstream::new(client);
    let presence = PresenceView::follow(jetstream.clone());
    let receiver =
        reno_nats::registry_store::follow(jetstream.clone()).await.map_err(WorkerError::Registry)?;
    Ok((receiver, presence, jetstream))
}

async fn run_priority(
    config: &WorkerConfig,
    registry: watch::Receiver<Arc<Registry>>,
    presence: PresenceView,
    priority: Priority,
    pool: PoolConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let span = info_span!("worker", %priority, stream = subject::priority_stream(priority));
    async move {
        let name = format!("reno-worker-{priority}");
        let connecting = reno_nats::connect_patiently(&config.nats, &name);
        let client = tokio::select! {
            client = connecting => client,
            // Told to stop before NATS was ever reached: nothing in flight, nothing to drain.
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
        };
        let jetstream = jetstream::new(client.clone());
        let stream_name = subject::priority_stream(priority);
        let stream = jetstream
            .get_stream(&stream_name)
            .await
            .map_err(|error| missing(priority, format!("stream {stream_name}"), error))?;
        let partitions = partitions_of(&stream.cached_info().config).ok_or_else(|| {
            missing(
                priority,
                format!("the partitions of stream {stream_name}"),
                "the stream was provisioned by an older reno",
            )
        })?;
        let mut consumers = Vec::with_capacity(usize::from(partitions) + 1);
        let names =
            (0..partitions).map(subject::worker_consumer).chain([subject::STRAYS_CONSUMER.to_owned()]);
        for name in names {
            let consumer: PullConsumer = stream
                .get_consumer(&name)
                .await
                .map_err(|error| missing(priority, format!("consumer {name}"), error))?;
            consumers.push(consumer);
        }
        // Four signs of life per ack wait: one lost or late still leaves the event with this worker.
        let ack_wait = consumers
            .first()
            .map_or(Duration::from_secs(30), |consumer| consumer.cached_info().config.ack_wait);
        let progress_every = (ack_wait / 4).max(Duration::from_millis(100));
        let history_stream = jetstream
            .get_stream(subject::history_stream())
            .await
            .map_err(|error| missing(priority, format!("bucket {}", subject::HISTORY_BUCKET), error))?;
        let history = History::new(jetstream.clone(), history_stream);
        let clock = reno_nats::ServerClock::follow(jetstream.clone(), stream_name.clone()).await;
        let tracer = reno_nats::Tracer::follow(client.clone(), "worker");
        let jetstream_for_lanes = jetstream.clone();
        let pipeline = Arc::new(Pipeline {
            priority,
            registry,
            client: client.clone(),
            jetstream,
            history,
            presence,
            clock,
            tracer,
            delivered_ids: moka::sync::Cache::builder()
                .max_capacity(config.dedup_capacity)
                .time_to_live(config.dedup_ttl)
                .build(),
            max_deliveries: config.max_deliveries,
            handling: tokio::sync::Semaphore::new(usize::from(partitions) + 1),
        });
        outcome::register(priority);
        info!(partitions, threads = pool.threads, ?ack_wait, "worker started");

        // Answered while this worker serves the priority: how the workers count each other.
        let answering = roll_call::answer(client.clone(), priority).await;
        let mut lanes = Lanes { pipeline, events: stream.clone(), progress_every, running: BTreeMap::new() };
        for consumer in consumers {
            lanes.start(consumer);
        }
        // The partition count can change while this worker runs (`reno provision --partitions`):
        // lanes follow it, so that new partitions are worked without a restart. And the workers
        // serving the priority can change: shares follow them.
        let mut check = tokio::time::interval(PARTITION_CHECK);
        check.tick().await;
        loop {
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => break,
                _ = check.tick() => {
                    lanes.follow(&jetstream_for_lanes, &stream_name).await;
                    if let Ok(stream) = jetstream_for_lanes.get_stream_no_info(&stream_name).await {
                        lanes.balance(&stream).await;
                    }
                }
            }
        }
        answering.abort();
        lanes.stop_all().await;
        // Acks are written to the connection's buffer; make sure they reach the server.
        let _ = client.flush().await;
        info!("worker stopped");
        Ok(())
    }
    .instrument(span)
    .await
}

/// Gauge of the partitions (the strays included) pinned to this worker, per priority.
pub const PARTITIONS_HELD_METRIC: &str = "reno_worker_partitions_held";
/// Gauge of the workers serving a priority, this one included, as this one last counted them.
pub const WORKERS_METRIC: &str = "reno_worker_peers";

/// How often a priority's partition count and the shares of its workers are looked at again.
const PARTITION_CHECK: Duration = Duration::from_secs(5);

/// The lanes of one priority, by consumer name.
struct Lanes {
    pipeline: Arc<Pipeline>,
    /// The priority stream, for the order checks.
    events: jetstream::stream::Stream,
    progress_every: Duration,
    running: BTreeMap<String, Lane>,
}

/// One partition's lane, as the priority's runtime sees it.
struct Lane {
    stop: watch::Sender<bool>,
    /// Tells the lane to let its partition go to another worker.
    hand_over: Arc<Notify>,
    /// The pin the partition's events last came to this lane with.
    pin: watch::Receiver<Option<String>>,
    task: JoinHandle<()>,
}

impl Lanes {
    fn start(&mut self, consumer: PullConsumer) {
        let name = consumer.cached_info().name.clone();
        let (stop, stopped) = watch::channel(false);
        let (pin_sender, pin) = watch::channel(None);
        let hand_over = Arc::new(Notify::new());
        let span = info_span!("lane", consumer = name);
        let signals = Signals { stop: stopped, hand_over: hand_over.clone(), pin: pin_sender };
        let lane =
            run_partition(self.pipeline.clone(), consumer, self.events.clone(), signals, self.progress_every);
        self.running.insert(name, Lane { stop, hand_over, pin, task: tokio::spawn(lane.instrument(span)) });
    }

    /// Hands partitions to other workers while this one holds more than its share: the
    /// partitions of the priority (and its strays) divided by the workers serving it, rounded up.
    /// Workers that start later get partitions this way; nothing is moved while the shares are even.
    ///
    /// A lane that still takes its partition for its own while the pin has moved (the hub
    /// restarted, the consumer's leader changed) is told to hand back what it holds, so that the
    /// worker pinned now gets those events instead of waiting behind them.
    async fn balance(&self, stream: &jetstream::stream::Stream<()>) {
        let workers = roll_call::count(&self.pipeline.client, self.pipeline.priority).await;
        // The lanes' pins before the consumers' infos: a pin that moved to a lane after this is
        // only counted at the next look.
        let pins: Vec<(&String, &Lane, String)> = self
            .running
            .iter()
            .filter_map(|(name, lane)| lane.pin.borrow().clone().map(|pin| (name, lane, pin)))
            .collect();
        let Ok(infos) = stream.consumers().try_collect::<Vec<_>>().await else { return };
        let mut held = Vec::new();
        for (name, lane, pin) in pins {
            let Some(info) = infos.iter().find(|info| &info.name == name) else { continue };
            let ours = info.priority_groups.iter().any(|group| {
                group.group == subject::WORKER_GROUP
                    && group.pinned_client_id.as_deref() == Some(pin.as_str())
            });
            if ours {
                held.push(lane);
            } else {
                info!(
                    consumer = name,
                    "the partition's pin moved to another worker; handing back what this one holds"
                );
                lane.hand_over.notify_one();
            }
        }
        let share = self.running.len().div_ceil(workers.max(1));
        let priority = self.pipeline.priority.as_str();
        metrics::gauge!(PARTITIONS_HELD_METRIC, "priority" => priority).set(held.len() as f64);
        metrics::gauge!(WORKERS_METRIC, "priority" => priority).set(workers as f64);
        if held.len() > share {
            info!(workers, held = held.len(), share, "handing partitions over to other workers");
            for lane in &held[share..] {
                lane.hand_over.notify_one();
            }
        }
    }

    /// Starts lanes for partitions the stream gained and stops those of partitions it lost.
    async fn follow(&mut self, jetstream: &jetstream::Context, stream_name: &str) {
        let Ok(stream) = jetstream.get_stream(stream_name).await else { return };
        let Some(partitions) = partitions_of(&stream.cached_info().config) else { return };
        let wanted: Vec<String> = (0..partitions)
            .map(subject::worker_consumer)
            .chain([subject::STRAYS_CONSUMER.to_owned()])
            .collect();
        let gone: Vec<String> = self.running.keys().filter(|name| !wanted.contains(name)).cloned().collect();
        for name in gone {
            if let Some(Lane { stop, task, .. }) = self.running.remove(&name) {
                let _ = stop.send(true);
                let _ = task.await;
                info!(consumer = name, "partition gone; its lane stopped");
            }
        }
        let new: Vec<&String> = wanted.iter().filter(|name| !self.running.contains_key(*name)).collect();
        for name in new {
            // A consumer provisioning has not created yet is tried again at the next check.
            if let Ok(consumer) = stream.get_consumer::<pull::Config>(name).await {
                info!(consumer = name, "new partition; its lane started");
                self.start(consumer);
            }
        }
    }

    /// Stops every lane, letting the events in flight finish.
    async fn stop_all(self) {
        for lane in self.running.values() {
            let _ = lane.stop.send(true);
        }
        for (name, lane) in self.running {
            if let Err(error) = lane.task.await {
                warn!(%error, consumer = name, "a lane stopped unexpectedly");
            }
        }
    }
}

/// Events of one partition (or the strays), pulled from its consumer while this worker is the one
/// the consumer is pinned to. Events of different members are handled at once, each member's one
/// after another in the order the partition handed them out; a transient failure is retried in
/// place, so that no later event of the member overtakes it. Every event held here gets progress
/// acks while any of them takes long, in stream order (see [`Held::keep_alive`]).
async fn run_partition(
    pipeline: Arc<Pipeline>,
    consumer: PullConsumer,
    events: jetstream::stream::Stream,
    signals: Signals,
    progress_every: Duration,
) {
    let Signals { mut stop, hand_over, pin } = signals;
    let config = &consumer.cached_info().config;
    let batch = usize::try_from(config.max_ack_pending).unwrap_or(1).clamp(1, PULL_BATCH_MAX);
    // Pulled at least twice per ack wait: a pin lasts two ack waits without a pull (see
    // `reno_nats::topology::pin_timeout`), so a working worker never loses it.
    let expires = (config.ack_wait / 2).max(Duration::from_millis(100));
    // Long enough for the pin to run out and go to a worker waiting for it.
    let hand_over_pause = config.priority_timeout + config.ack_wait;
    // After a new pin, for as long as the previous worker's unacked events may still be coming
    // back (they run out of their ack wait before the pin could move, or the previous worker hands
    // them back within a look at the pins once it sees the pin moved), every event is checked
    // against the stream; a redelivery always is.
    let settling = config.ack_wait * 2 + PARTITION_CHECK;
    let order = Order { events };
    let mut checking_until = Instant::now();
    let mut members = Members::default();
    let mut held = Held { events: BTreeMap::new(), delivery: 0, pin };
    // Told to the events being handled when the lane stops or hands its partition over: an event
    // waiting to retry is handed back instead of retried.
    let (give_up, giving_up) = watch::channel(false);
    let lane = LaneContext { pipeline: pipeline.clone(), stop: giving_up };
    let check = |message: &jetstream::Message, checking_until: Instant| {
        let redelivered = message.info().map_or(true, |info| info.delivered > 1);
        (redelivered || Instant::now() < checking_until).then_some(&order)
    };
    let mut keep_alive = tokio::time::interval_at(Instant::now() + progress_every, progress_every);
    'pulls: while !*stop.borrow() {
        let mut messages = match consumer
            .stream()
            .group(subject::WORKER_GROUP)
            .max_messages_per_batch(batch)
            .expires(expires)
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(error) => {
                warn!(%error, "cannot pull; retrying in 1 s");
                wait_or_stop(&mut stop, Duration::from_secs(1)).await;
                continue;
            }
        };
        let handing_over = loop {
            // Not biased: under load every branch must still be polled, the pull stream above all,
            // which renews the pin with each pull, and the keep-alive.
            tokio::select! {
                () = stopped(&mut stop) => break 'pulls,
                () = hand_over.notified() => break true,
                Some(Finished { member, sequence, end }) = members.running.next() => {
                    match end {
                        // An event given up on is only put back until it is handed back.
                        End::Behind(message) | End::Unsettled(message) => members.put_back(&member, message),
                        End::Settled => {
                            held.settled(sequence);
                            members.settled(&member, sequence);
                        }
                    }
                    if let Some(next) = members.next_of(&member) {
                        let order = check(&next, checking_until);
                        members.start(&lane, member, next, order);
                    }
                }
                _ = keep_alive.tick() => held.keep_alive(&pipeline.client, progress_every).await,
                next = messages.next() => match next {
                    Some(Ok(message)) => {
                        if held.received(&message) {
                            checking_until = Instant::now() + settling;
                        }
                        if let Some((member, message)) = members.queue(message) {
                            let order = check(&message, checking_until);
                            members.start(&lane, member, message, order);
                        }
                    }
                    // A failed pull or a pin that moved is not fatal: the stream pulls again.
                    Some(Err(error)) => debug!(%error, "pull stream error"),
                    None => {
                        warn!("pull stream ended; starting a new one");
                        break false;
                    }
                },
            }
        };
        if handing_over {
            // No more pulls: the pin runs out and goes to another worker. What this worker holds
            // goes back first, in order; an event on its way here when the pull stopped comes
            // back after its ack wait, before the pin runs out.
            drop(messages);
            give_up.send_replace(true);
            hand_back(std::mem::take(&mut members), &mut held).await;
            // Whatever comes next comes with a pin of its own.
            held.pin.send_replace(None);
            held.delivery = 0;
            info!("partition handed over");
            wait_or_stop(&mut stop, hand_over_pause).await;
            give_up.send_replace(false);
        }
    }
    give_up.send_replace(true);
    hand_back(members, &mut held).await;
}

/// What a lane is told and tells.
struct Signals {
    stop: watch::Receiver<bool>,
    hand_over: Arc<Notify>,
    pin: watch::Sender<Option<String>>,
}

/// Messages one pull request asks for at most.
const PULL_BATCH_MAX: usize = 1024;

/// The events of one lane by member: the one being handled and those waiting behind it, in
/// stream order.
#[derive(Default)]
struct Members {
    /// Per member with an event being handled, its events waiting behind it.
    waiting: HashMap<String, Queue>,
    /// The events being handled, one per member.
    running: FuturesUnordered<BoxFuture<'static, Finished>>,
    /// Numbers the events that are not deliveries of the consumer (no stream sequence), so that
    /// each gets a key of its own.
    strangers: u64,
}

/// A member's events waiting behind the one being handled.
#[derive(Default)]
struct Queue {
    /// By stream sequence.
    events: BTreeMap<u64, jetstream::Message>,
    /// The stream sequence of the member's event this lane settled last (0: none yet): the order
    /// check looks for earlier events only after it, since the stream may not have removed an
    /// event acked a moment ago.
    settled: u64,
}

/// How the handling of one event ended.
struct Finished {
    member: String,
    sequence: u64,
    end: End,
}

enum End {
    /// Acked or terminated.
    Settled,
    /// Shutdown or a hand-over stopped it before it was settled.
    Unsettled(jetstream::Message),
    /// Not started: an earlier event of its member still waits in the stream.
    Behind(jetstream::Message),
}

impl Members {
    /// The key `message` is queued under: its member, or a key of its own for a message that is
    /// not a delivery of the consumer (it is dead-lettered, never acked).
    fn key(&mut self, message: &jetstream::Message) -> String {
        if message.info().is_ok() {
            member_token(message).to_owned()
        } else {
            self.strangers += 1;
            format!("\0{}", self.strangers)
        }
    }

    /// Queues `message` behind its member's event being handled, or returns it with its key to be
    /// started now.
    fn queue(&mut self, message: jetstream::Message) -> Option<(String, jetstream::Message)> {
        let key = self.key(&message);
        match self.waiting.get_mut(&key) {
            Some(queue) => {
                queue.events.insert(stream_sequence(&message), message);
                None
            }
            None => {
                self.waiting.insert(key.clone(), Queue::default());
                Some((key, message))
            }
        }
    }

    /// The member's next event once its last one is over, or `None` when it has none waiting.
    fn next_of(&mut self, member: &str) -> Option<jetstream::Message> {
        let next = self
            .waiting
            .get_mut(member)
            .and_then(|queue| queue.events.pop_first())
            .map(|(_, message)| message);
        if next.is_none() {
            self.waiting.remove(member);
        }
        next
    }

    /// Notes that the member's event at `sequence` is settled.
    fn settled(&mut self, member: &str, sequence: u64) {
        if let Some(queue) = self.waiting.get_mut(member) {
            queue.settled = queue.settled.max(sequence);
        }
    }

    /// Puts back an event that could not start yet, for the member's next turn.
    fn put_back(&mut self, member: &str, message: jetstream::Message) {
        let queue = self.waiting.entry(member.to_owned()).or_default();
        queue.events.insert(stream_sequence(&message), message);
    }

    /// Starts handling `message`; first, when `order` says so, makes sure no earlier event of its
    /// member still waits in the stream.
    fn start(
        &mut self,
        lane: &LaneContext,
        member: String,
        message: jetstream::Message,
        order: Option<&Order>,
    ) {
        let (pipeline, stop, order) = (lane.pipeline.clone(), lane.stop.clone(), order.cloned());
        let after = self.waiting.get(&member).map_or(0, |queue| queue.settled);
        self.running.push(Box::pin(async move {
            let sequence = stream_sequence(&message);
            if let Some(order) = order {
                // Its turn comes again after a moment, or as soon as the earlier event arrives.
                let wait = match order.place(&message, sequence, after).await {
                    Place::First => None,
                    Place::Behind => Some(BEHIND_RECHECK),
                    Place::Unknown => Some(UNKNOWN_RECHECK),
                };
                if let Some(wait) = wait {
                    tokio::time::sleep(wait).await;
                    return Finished { member, sequence, end: End::Behind(message) };
                }
            }
            let end = match handle(&pipeline, message, stop).await {
                Some(message) => End::Unsettled(message),
                None => End::Settled,
            };
            Finished { member, sequence, end }
        }));
    }
}

/// What every event of a lane is handled with.
struct LaneContext {
    pipeline: Arc<Pipeline>,
    stop: watch::Receiver<bool>,
}

/// How long an event behind an earlier one of its member waits before the next check.
const BEHIND_RECHECK: Duration = Duration::from_millis(5);
/// How long an event waits before the next check when the stream did not answer one: an
/// overloaded hub is not asked again at once.
const UNKNOWN_RECHECK: Duration = Duration::from_millis(500);

/// Where an event stands among its member's events in the stream.
enum Place {
    /// No earlier event of the member waits: handle it.
    First,
    /// An earlier one waits: handle that first.
    Behind,
    /// The stream did not say.
    Unknown,
}

/// The check that keeps a member's order across a change of pin: JetStream hands a pinned
/// consumer's redeliveries out in no reliable order once its pin has moved (it puts a redelivery
/// it cannot hand out at the back of its queue), so an event is only handled while it is the
/// earliest event of its member the stream still holds (a work-queue stream holds only events
/// not yet acked).
#[derive(Clone)]
struct Order {
    events: jetstream::stream::Stream,
}

impl Order {
    /// Whether an earlier event of the member waits in the stream.
    /// `after`: the member's event this lane settled last, which the stream may still hold.
    async fn place(&self, message: &jetstream::Message, sequence: u64, after: u64) -> Place {
        let Some(filter) = member_filter(message.subject.as_str()) else { return Place::First };
        match self.events.get_first_raw_message_by_subject(&filter, after + 1).await {
            Ok(first) if first.sequence >= sequence => Place::First,
            Ok(_) => Place::Behind,
            // Nothing of the member left: this event was settled meanwhile, and the gates will
            // see it as the duplicate it is.
            Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => Place::First,
            Err(error) => {
                debug!(%error, "cannot read the member's earliest event; checking again");
                Place::Unknown
            }
        }
    }
}

/// The subjects of every event of the member an event's stored subject names, of any type:
/// `reno.evt.<partition>.*.<member>` (or `reno.evt.*.<member>` for a stray).
fn member_filter(stored: &str) -> Option<String> {
    let (rest, member) = stored.rsplit_once('.')?;
    let (prefix, _event_type) = rest.rsplit_once('.')?;
    Some(format!("{prefix}.*.{member}"))
}

/// The member an event is about: the last token of its subject. An event whose subject is not an
/// event subject is dead-lettered; its key only has to be the same for the same subject.
fn member_token(message: &jetstream::Message) -> &str {
    message.subject.as_str().rsplit('.').next().unwrap_or_default()
}

fn stream_sequence(message: &jetstream::Message) -> u64 {
    message.info().map_or(0, |info| info.stream_sequence)
}

/// The events a lane holds unacked, by stream sequence, with when each was last known to be alive.
struct Held {
    events: BTreeMap<u64, (Instant, async_nats::Subject)>,
    /// The consumer sequence of the last delivery received (0: none yet).
    delivery: u64,
    /// The `Nats-Pin-Id` the partition's events last came with.
    pin: watch::Sender<Option<String>>,
}

impl Held {
    /// Keeps `message` until it is settled. True when it came with a new pin, or after a gap in
    /// the consumer's deliveries (a delivery lost on its way here comes back later, after events
    /// of its member that were handed out behind it): either way an earlier event of a member may
    /// be elsewhere, and the lane checks the order for a while.
    fn received(&mut self, message: &jetstream::Message) -> bool {
        let mut unsure = false;
        if let (Ok(info), Some(reply)) = (message.info(), &message.reply) {
            self.events.insert(info.stream_sequence, (Instant::now(), reply.clone()));
            if self.delivery != 0 && info.consumer_sequence != self.delivery + 1 {
                debug!(after = self.delivery, delivery = info.consumer_sequence, "a gap in the deliveries");
                unsure = true;
            }
            self.delivery = info.consumer_sequence;
        }
        // The server's header is the last one: a publisher's own comes first.
        if let Some(pin) = message.headers.as_ref().and_then(|headers| headers.get_last(PIN_HEADER))
            && self.pin.borrow().as_deref() != Some(pin.as_str())
        {
            info!("the partition is pinned to this worker");
            self.pin.send_replace(Some(pin.as_str().to_owned()));
            unsure = true;
        }
        unsure
    }

    fn settled(&mut self, sequence: u64) {
        self.events.remove(&sequence);
    }

    /// Once any held event has gone `every` without an ack, tells JetStream that every held event
    /// is still being worked on, in stream order. All of them, not only the slow one: if this
    /// worker dies, JetStream hands them out again in the order their ack waits run out, and a
    /// member's later event, left to run out first, would overtake the earlier one it waits behind.
    async fn keep_alive(&mut self, client: &async_nats::Client, every: Duration) {
        let now = Instant::now();
        if !self.events.values().any(|(alive, _)| now.duration_since(*alive) >= every) {
            return;
        }
        for (alive, reply) in self.events.values_mut() {
            if let Err(error) = client.publish(reply.clone(), Bytes::from_static(b"+WPI")).await {
                warn!(%error, "cannot tell JetStream an event is in progress");
                return;
            }
            *alive = now;
        }
    }
}

/// The header JetStream marks each event of a pinned consumer with: the pin's id.
const PIN_HEADER: &str = "Nats-Pin-Id";

/// Handles one delivery, retrying a transient failure in place after its delay, until it is
/// settled. Returns the message unsettled if the worker stops while it waits to retry.
async fn handle(
    pipeline: &Pipeline,
    message: jetstream::Message,
    mut stop: watch::Receiver<bool>,
) -> Option<jetstream::Message> {
    let mut retries = 0;
    loop {
        // A panic is caught here and retried like any transient failure, until the delivery bound
        // dead-letters the event as poison.
        let handled = {
            // Closed never: the pipeline owns it.
            let _permit = pipeline.handling.acquire().await;
            AssertUnwindSafe(pipeline.handle(&message, retries)).catch_unwind().await
        };
        let delay = match handled {
            Ok(Settled::Done) => return None,
            Ok(Settled::Retry(delay)) => delay,
            Err(_) => match pipeline.panicked(&message, retries).await {
                Settled::Done => return None,
                Settled::Retry(delay) => delay,
            },
        };
        retries += 1;
        if tokio::time::timeout(delay, stop.wait_for(|stopped| *stopped)).await.is_ok() {
            return Some(message);
        }
    }
}

/// On shutdown or hand-over: waits for the events being handled, then gives every event not
/// settled back to JetStream at once, in stream order, so that the worker the partition moves to
/// takes a member's events in their order. The pin is left to run out rather than released: an
/// event already on its way to this worker comes back after its ack wait, which is shorter than the
/// pin timeout, so it is handed out again before any later event of its member.
async fn hand_back(mut members: Members, held: &mut Held) {
    let mut unsettled = BTreeMap::new();
    while let Some(Finished { sequence, end, .. }) = members.running.next().await {
        held.settled(sequence);
        if let End::Unsettled(message) | End::Behind(message) = end {
            unsettled.insert(sequence, message);
        }
    }
    for (sequence, message) in members.waiting.into_values().flat_map(|queue| queue.events) {
        held.settled(sequence);
        unsettled.insert(sequence, message);
    }
    let count = unsettled.len();
    for message in unsettled.into_values() {
        if let Err(error) = message.ack_with(AckKind::Nak(None)).await {
            warn!(%error, "cannot hand an event back; it comes back after its ack wait");
        }
    }
    if count > 0 {
        info!(count, "unsettled events handed back");
    }
}

fn missing(priority: Priority, what: String, source: impl Into<async_nats::Error>) -> WorkerError {
    WorkerError::Topology { priority, what, source: source.into() }
}

/// Completes once the worker is told to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn wait_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) {
    let _ = tokio::time::timeout(delay, stop.wait_for(|stopped| *stopped)).await;
}
