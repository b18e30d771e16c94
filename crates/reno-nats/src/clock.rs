//! The clock of the server that stamps a stream's messages, as this process sees it. An event's age
//! is the server's time now minus the time the server stamped on it when storing it; a process whose
//! own clock is minutes off would otherwise take fresh events for stale ones, or stale ones for
//! fresh. The offset is measured from the stream's info, which the stream's leader answers with its
//! own time (`ts`), placed halfway through the request's round trip: the best of a few probes, again
//! every half minute. Until the first measurement succeeds, the local clock stands in, and users that
//! must not trust it (the staleness gate) can tell.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, response::Response};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Gauge of how far this process's clock is ahead of the server's, in seconds, per stream.
pub const OFFSET_METRIC: &str = "reno_clock_offset_seconds";

/// How often the offset is measured again.
const INTERVAL: Duration = Duration::from_secs(30);

/// Probes per measurement; the one with the shortest round trip is kept.
const PROBES: usize = 3;

/// The server's clock for one stream. Cheap to clone; the measuring stops when the last clone is
/// dropped.
#[derive(Clone)]
pub struct ServerClock {
    /// Local time minus server time, in nanoseconds.
    offset_nanos: Arc<AtomicI64>,
    /// Whether the offset was measured at least once.
    measured: Arc<AtomicBool>,
    _measuring: Arc<Measuring>,
}

struct Measuring(Option<JoinHandle<()>>);

impl Drop for Measuring {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// The part of a stream info this needs: the server's time when it answered.
#[derive(Deserialize)]
struct Stamped {
    #[serde(with = "time::serde::rfc3339")]
    ts: OffsetDateTime,
}

impl ServerClock {
    /// Measures the offset to the server that leads `stream` once, then keeps measuring it in a task
    /// of the current runtime.
    pub async fn follow(jetstream: jetstream::Context, stream: String) -> ServerClock {
        let offset_nanos = Arc::new(AtomicI64::new(0));
        let measured = Arc::new(AtomicBool::new(false));
        match measure(&jetstream, &stream).await {
            Ok(offset) => {
                record(&offset_nanos, &stream, offset);
                info!(stream, offset_ms = offset.whole_milliseconds(), "server clock measured");
                measured.store(true, Ordering::SeqCst);
            }
            Err(error) => warn!(stream, %error, "cannot read the server's clock yet; trying again"),
        }
        let task = {
            let (offset_nanos, measured) = (offset_nanos.clone(), measured.clone());
            tokio::spawn(async move {
                let mut failing = !measured.load(Ordering::SeqCst);
                loop {
                    // Soon again until a first measurement, then every half minute.
                    let wait =
                        if measured.load(Ordering::SeqCst) { INTERVAL } else { Duration::from_secs(1) };
                    tokio::time::sleep(wait).await;
                    match measure(&jetstream, &stream).await {
                        Ok(offset) => {
                            record(&offset_nanos, &stream, offset);
                            if failing {
                                info!(
                                    stream,
                                    offset_ms = offset.whole_milliseconds(),
                                    "server clock measured"
                                );
                            }
                            measured.store(true, Ordering::SeqCst);
                            failing = false;
                        }
                        Err(error) if !failing => {
                            warn!(stream, %error, "cannot read the server's clock; keeping the last offset");
                            failing = true;
                        }
                        Err(error) => debug!(stream, %error, "server clock still unreadable"),
                    }
                }
            })
        };
        ServerClock { offset_nanos, measured, _measuring: Arc::new(Measuring(Some(task))) }
    }

    /// Whether the server's clock was read at least once; until then [`ServerClock::now`] is the
    /// local clock.
    pub fn is_measured(&self) -> bool {
        self.measured.load(Ordering::Relaxed)
    }

    /// The server's time now.
    pub fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() - self.offset()
    }

    /// How far the local clock is ahead of the server's (negative: behind).
    pub fn offset(&self) -> time::Duration {
        time::Duration::nanoseconds(self.offset_nanos.load(Ordering::Relaxed))
    }
}

fn record(offset_nanos: &AtomicI64, stream: &str, offset: time::Duration) {
    let nanos = i64::try_from(offset.whole_nanoseconds()).unwrap_or(i64::MAX);
    offset_nanos.store(nanos, Ordering::Relaxed);
    metrics::gauge!(OFFSET_METRIC, "stream" => stream.to_owned()).set(offset.as_seconds_f64());
}

/// Local time minus server time, from the probe with the shortest round trip.
async fn measure(jetstream: &jetstream::Context, stream: &str) -> Result<time::Duration, async_nats::Error> {
    let mut best: Option<(time::Duration, time::Duration)> = None;
    for _ in 0..PROBES {
        let sent = OffsetDateTime::now_utc();
        let answer: Response<Stamped> = jetstream.request(format!("STREAM.INFO.{stream}"), &()).await?;
        let received = OffsetDateTime::now_utc();
        let stamped = match answer {
            Response::Ok(stamped) => stamped.ts,
            Response::Err { error } => return Err(error.into()),
        };
        let round_trip = received - sent;
        let offset = sent + round_trip / 2 - stamped;
        if best.is_none_or(|(shortest, _)| round_trip < shortest) {
            best = Some((round_trip, offset));
        }
    }
    Ok(best.map_or(time::Duration::ZERO, |(_, offset)| offset))
}
