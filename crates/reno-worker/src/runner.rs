//! Running the pipelines: each priority on its own OS threads with its own tokio runtime and its own
//! NATS connection, with one lane per partition of the priority's stream pulling from that
//! partition's durable consumer, one event at a time. Shutdown stops the pulling, lets in-flight
//! events finish, and returns.

use std::{collections::BTreeMap, future::Future, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{
        PullConsumer,
        pull::{self, MessagesError},
    },
};
use futures::{FutureExt, StreamExt};
use reno_model::{Priority, Registry, subject};
use reno_nats::{readiness::Needed, topology::partitions_of};
use reno_presence::PresenceView;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tracing::{Instrument, info, info_span, warn};

use crate::{
    config::{PoolConfig, WorkerConfig},
    history::History,
    outcome,
    pipeline::Pipeline,
    stream_gauges,
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
        });
        outcome::register(priority);
        info!(partitions, threads = pool.threads, ?ack_wait, "worker started");

        let mut lanes = Lanes { pipeline, progress_every, running: BTreeMap::new() };
        for consumer in consumers {
            lanes.start(consumer);
        }
        // The partition count can change while this worker runs (`reno provision --partitions`):
        // lanes follow it, so that new partitions are worked without a restart.
        let mut check = tokio::time::interval(PARTITION_CHECK);
        check.tick().await;
        loop {
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => break,
                _ = check.tick() => lanes.follow(&jetstream_for_lanes, &stream_name).await,
            }
        }
        lanes.stop_all().await;
        // Acks are written to the connection's buffer; make sure they reach the server.
        let _ = client.flush().await;
        info!("worker stopped");
        Ok(())
    }
    .instrument(span)
    .await
}

/// How often a priority's partition count is read again.
const PARTITION_CHECK: Duration = Duration::from_secs(10);

/// The lanes of one priority, by consumer name, each with its own stop signal.
struct Lanes {
    pipeline: Arc<Pipeline>,
    progress_every: Duration,
    running: BTreeMap<String, (watch::Sender<bool>, JoinHandle<()>)>,
}

impl Lanes {
    fn start(&mut self, consumer: PullConsumer) {
        let name = consumer.cached_info().name.clone();
        let (stop, stopped) = watch::channel(false);
        let span = info_span!("lane", consumer = name);
        let lane = run_partition(self.pipeline.clone(), consumer, stopped, self.progress_every);
        self.running.insert(name, (stop, tokio::spawn(lane.instrument(span))));
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
            if let Some((stop, lane)) = self.running.remove(&name) {
                let _ = stop.send(true);
                let _ = lane.await;
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
        for (stop, _) in self.running.values() {
            let _ = stop.send(true);
        }
        for (name, (_, lane)) in self.running {
            if let Err(error) = lane.await {
                warn!(%error, consumer = name, "a lane stopped unexpectedly");
            }
        }
    }
}

/// Events of one partition (or the strays) pulled from its consumer and handled one after another: the consumer
/// hands out the next only when this one is settled, so handling them at once would gain nothing.
async fn run_partition(
    pipeline: Arc<Pipeline>,
    consumer: PullConsumer,
    mut stop: watch::Receiver<bool>,
    progress_every: Duration,
) {
    while !*stop.borrow() {
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
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
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => break,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => handle(&pipeline, &message, progress_every).await,
                // A missed heartbeat or a failed pull is not fatal: the stream goes on.
                Some(Err(error)) => warn!(%error, "pull stream error"),
                None => {
                    warn!("pull stream ended; starting a new one");
                    break;
                }
            }
        }
        if *stop.borrow() {
            hand_back_buffered(&mut messages).await;
        }
    }
}

/// Messages one pull request asks for. The consumer still hands out one at a time; a larger request
/// only spares a new request per event.
const PULL_BATCH: usize = 64;

/// Handles one delivery and tells JetStream it is still being worked on while it takes long, so
/// that the ack wait can be short and a killed worker's event comes back soon. A panic is caught
/// here and the event retried later, like any transient failure, until the delivery bound
/// dead-letters it as poison.
async fn handle(pipeline: &Pipeline, message: &jetstream::Message, progress_every: Duration) {
    let handling = AssertUnwindSafe(pipeline.handle(message)).catch_unwind();
    tokio::pin!(handling);
    let mut progress = tokio::time::interval_at(Instant::now() + progress_every, progress_every);
    let finished = loop {
        tokio::select! {
            finished = &mut handling => break finished,
            _ = progress.tick() => {
                if let Err(error) = message.ack_with(AckKind::Progress).await {
                    warn!(%error, "cannot tell JetStream the event is in progress");
                }
            }
        }
    };
    if finished.is_err() {
        pipeline.panicked(message).await;
    }
}

/// On shutdown, an event already fetched but not yet started goes straight back to JetStream for
/// another worker instead of waiting out its ack wait. With one event in flight per partition there
/// is at most one.
async fn hand_back_buffered(
    messages: &mut (impl futures::Stream<Item = Result<jetstream::Message, MessagesError>> + Unpin),
) {
    let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_millis(5), messages.next()).await else {
        return;
    };
    // A short delay, so that the pull this worker still has open cannot bring it straight back.
    if message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await.is_ok() {
        info!("an unstarted event handed back");
    }
}

fn missing(priority: Priority, what: String, source: impl Into<async_nats::Error>) -> WorkerError {
    WorkerError::Topology { priority, what, source: source.into() }
}

async fn wait_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) {
    let _ = tokio::time::timeout(delay, stop.wait_for(|stopped| *stopped)).await;
}
