//! Running the pipelines: each priority on its own OS threads with its own tokio runtime and its own
//! NATS connection, pulling from the priority's durable consumer with a bounded number of events in
//! flight. Shutdown stops the pulling, lets in-flight events finish, and returns.

use std::{future::Future, sync::Arc, time::Duration};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{PullConsumer, pull::MessagesError},
};
use futures::StreamExt;
use reno_model::{Priority, Registry, subject};
use reno_nats::readiness::Needed;
use reno_presence::PresenceView;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info, info_span, warn};

use crate::{
    config::{PoolConfig, WorkerConfig},
    history::History,
    outcome::{self, Outcome},
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
        needs.push(Needed::Consumer { stream, consumer: subject::WORKER_CONSUMER.to_owned() });
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
    let span = info_span!("worker", %priority, stream = subject::priority_stream(priority), consumer = subject::WORKER_CONSUMER);
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
        let consumer: PullConsumer = stream
            .get_consumer(subject::WORKER_CONSUMER)
            .await
            .map_err(|error| missing(priority, format!("consumer {}", subject::WORKER_CONSUMER), error))?;
        let history_stream = jetstream
            .get_stream(subject::history_stream())
            .await
            .map_err(|error| missing(priority, format!("bucket {}", subject::HISTORY_BUCKET), error))?;
        let history = History::new(jetstream.clone(), history_stream);
        let pipeline = Arc::new(Pipeline {
            priority,
            registry,
            client: client.clone(),
            jetstream,
            history,
            presence,
            delivered_ids: moka::sync::Cache::builder()
                .max_capacity(config.dedup_capacity)
                .time_to_live(config.dedup_ttl)
                .build(),
            max_deliveries: config.max_deliveries,
        });
        outcome::register(priority);
        info!(concurrency = pool.concurrency, threads = pool.threads, "worker started");

        let batch = pool.concurrency.clamp(1, 1000);
        while !*stop.borrow() {
            let mut messages = match consumer
                .stream()
                .max_messages_per_batch(batch)
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
            let mut stop_for_stream = stop.clone();
            let stopped = async move {
                let _ = stop_for_stream.wait_for(|stopped| *stopped).await;
            };
            (&mut messages)
                .take_until(stopped)
                .for_each_concurrent(pool.concurrency.max(1), |message| {
                    let pipeline = pipeline.clone();
                    async move {
                        match message {
                            // A task of its own, so that the pool's threads share the work.
                            Ok(message) => {
                                let event_type = outcome::type_label(message.subject.as_str());
                                let handled = tokio::spawn(
                                    async move { pipeline.handle(message).await }.in_current_span(),
                                );
                                if let Err(error) = handled.await {
                                    // Unacked, so JetStream redelivers it after the ack wait.
                                    warn!(%error, "event handler failed; the event will be redelivered");
                                    outcome::count(priority, &event_type, Outcome::Retried, 0.0);
                                }
                            }
                            // A missed heartbeat or a failed pull is not fatal: the stream goes on.
                            Err(error) => warn!(%error, "pull stream error"),
                        }
                    }
                })
                .await;
            if *stop.borrow() {
                hand_back_buffered(&mut messages, 2 * batch).await;
            } else {
                warn!("pull stream ended; starting a new one");
            }
        }
        // Acks are written to the connection's buffer; make sure they reach the server.
        let _ = client.flush().await;
        info!("worker stopped");
        Ok(())
    }
    .instrument(span)
    .await
}

/// On shutdown, events already fetched but not yet started go straight back to JetStream for
/// another worker instead of waiting out their ack wait. At most `limit` (what the pull stream can
/// have buffered): the stream itself would go on fetching for as long as it is polled.
async fn hand_back_buffered(
    messages: &mut (impl futures::Stream<Item = Result<jetstream::Message, MessagesError>> + Unpin),
    limit: usize,
) {
    let mut handed_back = 0;
    while handed_back < limit {
        let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_millis(5), messages.next()).await
        else {
            break;
        };
        // A short delay, so that the pull this worker still has open cannot bring it straight back.
        if message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await.is_ok() {
            handed_back += 1;
        }
    }
    if handed_back > 0 {
        info!(handed_back, "unstarted events handed back");
    }
}

fn missing(priority: Priority, what: String, source: impl Into<async_nats::Error>) -> WorkerError {
    WorkerError::Topology { priority, what, source: source.into() }
}

async fn wait_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) {
    let _ = tokio::time::timeout(delay, stop.wait_for(|stopped| *stopped)).await;
}
