//! Gauges of what waits in JetStream, polled every few seconds: each served priority's backlog on
//! its partition consumers (summed), and the size and age of its stream, of the history and of the dead letters. Every
//! worker process reports them for what it serves, so copies report the same values: aggregate
//! them with `max`, not `sum`.

use std::time::Duration;

use async_nats::jetstream;
use futures::TryStreamExt;
use reno_model::{Priority, subject};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Gauge of events a priority's consumer has not delivered yet (`num_pending`).
pub const PENDING_METRIC: &str = "reno_consumer_pending_messages";
/// Gauge of events delivered to workers and not yet acked (`num_ack_pending`), retries waiting out
/// their delay included.
pub const ACK_PENDING_METRIC: &str = "reno_consumer_ack_pending_messages";
/// Gauge of unacked events that were delivered more than once (`num_redelivered`).
pub const REDELIVERED_METRIC: &str = "reno_consumer_redelivered_messages";
/// Gauge of messages a stream holds.
pub const MESSAGES_METRIC: &str = "reno_stream_messages";
/// Gauge of bytes a stream holds.
pub const BYTES_METRIC: &str = "reno_stream_bytes";
/// Gauge of a stream's byte limit.
pub const MAX_BYTES_METRIC: &str = "reno_stream_max_bytes";
/// Gauge of the age of the oldest message a stream holds (0 when empty): for a priority stream, the
/// oldest event not yet acked.
pub const OLDEST_AGE_METRIC: &str = "reno_stream_oldest_message_age_seconds";
/// Counter of stream or consumer infos that could not be read; the gauges keep their last values.
pub const POLL_FAILURES_METRIC: &str = "reno_stream_poll_failures_total";

/// How often the gauges are read: often enough for a backlog, rare enough to cost the server
/// nothing (two requests per priority, or a few more with hundreds of partitions, two more for
/// history and dead letters).
const INTERVAL: Duration = Duration::from_secs(5);

/// Polls until dropped.
pub(crate) struct StreamGauges {
    task: JoinHandle<()>,
}

impl Drop for StreamGauges {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts polling, on `jetstream`'s connection, in a task of the current runtime.
pub(crate) fn start(jetstream: jetstream::Context, priorities: Vec<Priority>) -> StreamGauges {
    metrics::counter!(POLL_FAILURES_METRIC).increment(0);
    let task = tokio::spawn(async move {
        let mut interval = tokio::time::interval(INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            interval.tick().await;
            let failures = poll(&jetstream, &priorities).await;
            // Said once when polling starts failing and once when it recovers, not every round.
            match (failures.first(), failing) {
                (Some(error), false) => warn!(%error, "cannot read stream gauges; retrying"),
                (None, true) => info!("stream gauges read again"),
                _ => {}
            }
            failing = !failures.is_empty();
        }
    });
    StreamGauges { task }
}

/// Reads every gauge once; returns what could not be read.
async fn poll(jetstream: &jetstream::Context, priorities: &[Priority]) -> Vec<async_nats::Error> {
    let mut failures = Vec::new();
    for priority in priorities {
        let stream_name = subject::priority_stream(*priority);
        match consumer_totals(jetstream, &stream_name).await {
            Ok(totals) => {
                let label = priority.as_str();
                metrics::gauge!(PENDING_METRIC, "priority" => label).set(totals.pending as f64);
                metrics::gauge!(ACK_PENDING_METRIC, "priority" => label).set(totals.ack_pending as f64);
                metrics::gauge!(REDELIVERED_METRIC, "priority" => label).set(totals.redelivered as f64);
            }
            Err(error) => failures.push(error),
        }
        if let Err(error) = stream_gauges(jetstream, stream_name).await {
            failures.push(error);
        }
    }
    for stream_name in [subject::history_stream(), subject::DEAD_LETTER_STREAM.to_owned()] {
        if let Err(error) = stream_gauges(jetstream, stream_name).await {
            failures.push(error);
        }
    }
    metrics::counter!(POLL_FAILURES_METRIC).increment(failures.len() as u64);
    debug!(failures = failures.len(), "stream gauges read");
    failures
}

/// The backlog of a priority across its partition consumers.
#[derive(Default)]
struct ConsumerTotals {
    pending: u64,
    ack_pending: usize,
    redelivered: usize,
}

async fn consumer_totals(
    jetstream: &jetstream::Context,
    stream_name: &str,
) -> Result<ConsumerTotals, async_nats::Error> {
    let stream = jetstream.get_stream_no_info(stream_name).await?;
    let mut infos = stream.consumers();
    let mut totals = ConsumerTotals::default();
    while let Some(info) = infos.try_next().await? {
        if info.name.starts_with(subject::WORKER_CONSUMER_PREFIX) {
            totals.pending += info.num_pending;
            totals.ack_pending += info.num_ack_pending;
            totals.redelivered += info.num_redelivered;
        }
    }
    Ok(totals)
}

async fn stream_gauges(jetstream: &jetstream::Context, stream_name: String) -> Result<(), async_nats::Error> {
    let stream = jetstream.get_stream(&stream_name).await?;
    let info = stream.cached_info();
    let state = &info.state;
    let oldest_age = if state.messages == 0 {
        0.0
    } else {
        (OffsetDateTime::now_utc() - state.first_timestamp).as_seconds_f64().max(0.0)
    };
    let max_bytes = info.config.max_bytes;
    metrics::gauge!(MESSAGES_METRIC, "stream" => stream_name.clone()).set(state.messages as f64);
    metrics::gauge!(BYTES_METRIC, "stream" => stream_name.clone()).set(state.bytes as f64);
    metrics::gauge!(OLDEST_AGE_METRIC, "stream" => stream_name.clone()).set(oldest_age);
    // -1 is "no limit": no gauge, so that a fullness ratio is simply absent.
    if max_bytes > 0 {
        metrics::gauge!(MAX_BYTES_METRIC, "stream" => stream_name).set(max_bytes as f64);
    }
    Ok(())
}
