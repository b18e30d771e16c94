//! Publishing at a paced rate, or as fast as the acks allow, with a bounded window of JetStream
//! publishes waiting for their acks: one loop for reno's events and for the raw baseline, so that
//! the two are measured the same way.

use std::{
    str::FromStr,
    time::{Duration, Instant},
};

use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;
use reno_model::{Envelope, subject};
use tokio::sync::mpsc;

/// How fast to publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Messages per second, spread evenly.
    PerSec(f64),
    /// As fast as the window of unacknowledged publishes allows.
    Max,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "max" {
            return Ok(Rate::Max);
        }
        match text.parse::<f64>() {
            Ok(rate) if rate > 0.0 => Ok(Rate::PerSec(rate)),
            _ => Err(format!("a rate is messages per second (> 0) or `max`, not {text:?}")),
        }
    }
}

/// When to stop publishing: after `count` messages or `duration`, whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub count: u64,
    pub duration: Duration,
}

/// One message to publish.
pub struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

impl Outgoing {
    /// An event as a service publishes it: on its event subject, with its scoped `Nats-Msg-Id`.
    pub fn event(envelope: &Envelope) -> Outgoing {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", envelope.dedup_id().as_str());
        Outgoing {
            subject: subject::event_subject(&envelope.event_type, &envelope.member),
            headers,
            payload: envelope.encode().into(),
        }
    }
}

/// What a publishing run did.
#[derive(Debug, Clone)]
pub struct Published {
    pub sent: u64,
    pub acked: u64,
    /// Acked as duplicates (the stream had the message id already).
    pub duplicates: u64,
    /// Sends or acks that failed.
    pub failed: u64,
    pub first_error: Option<String>,
    /// When the first message was sent.
    pub started: Instant,
    /// When the last message was sent.
    pub last_sent: Instant,
    /// When the last ack arrived.
    pub last_ack: Instant,
}

impl Published {
    /// Acked messages per second from the first send to the last ack.
    pub fn acked_per_sec(&self) -> f64 {
        self.acked as f64 / self.last_ack.duration_since(self.started).as_secs_f64().max(1e-9)
    }

    /// Messages sent per second while sending.
    pub fn sent_per_sec(&self) -> f64 {
        self.sent as f64 / self.last_sent.duration_since(self.started).as_secs_f64().max(1e-9)
    }
}

/// Tallies the acks as they come; runs beside the sender.
struct Acks {
    acked: u64,
    duplicates: u64,
    failed: u64,
    first_error: Option<String>,
    last_ack: Instant,
}

/// Publishes what `next` makes (called with the message's index at its send time) at `rate` until
/// `limit`, with at most `window` publishes awaiting their acks.
pub async fn publish(
    jetstream: &jetstream::Context,
    rate: Rate,
    limit: Limit,
    window: usize,
    mut next: impl FnMut(u64) -> Outgoing,
) -> Published {
    let (acks_in, mut acks_out) = mpsc::channel::<jetstream::context::PublishAckFuture>(window.max(1));
    let collector = tokio::spawn(async move {
        let mut acks =
            Acks { acked: 0, duplicates: 0, failed: 0, first_error: None, last_ack: Instant::now() };
        while let Some(ack) = acks_out.recv().await {
            match ack.await {
                Ok(ack) => {
                    acks.acked += 1;
                    acks.duplicates += u64::from(ack.duplicate);
                }
                Err(error) => {
                    acks.failed += 1;
                    acks.first_error.get_or_insert_with(|| error.to_string());
                }
            }
            acks.last_ack = Instant::now();
        }
        acks
    });

    let started = Instant::now();
    let mut sent = 0u64;
    let mut send_failed = 0u64;
    let mut send_error = None;
    while sent < limit.count {
        let elapsed = started.elapsed();
        if elapsed >= limit.duration {
            break;
        }
        if let Rate::PerSec(per_sec) = rate {
            let due = (elapsed.as_secs_f64() * per_sec) as u64 + 1;
            if sent >= due {
                let next_due = Duration::from_secs_f64((sent as f64) / per_sec);
                tokio::time::sleep(next_due.saturating_sub(elapsed).max(Duration::from_micros(200))).await;
                continue;
            }
        }
        let message = next(sent);
        sent += 1;
        match jetstream.publish_with_headers(message.subject, message.headers, message.payload).await {
            Ok(ack) => {
                if acks_in.send(ack).await.is_err() {
                    break;
                }
            }
            Err(error) => {
                send_failed += 1;
                send_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
    let last_sent = Instant::now();
    drop(acks_in);
    let acks = collector.await.unwrap_or(Acks {
        acked: 0,
        duplicates: 0,
        failed: sent,
        first_error: Some("the ack collector failed".into()),
        last_ack: Instant::now(),
    });
    Published {
        sent,
        acked: acks.acked,
        duplicates: acks.duplicates,
        failed: acks.failed + send_failed,
        first_error: send_error.or(acks.first_error),
        started,
        last_sent,
        last_ack: acks.last_ack.max(last_sent),
    }
}

/// Raw JetStream async publish of `payload`-sized messages into a stream of its own on the same
/// hub, as fast as the window allows, for `duration`: the ceiling every throughput is divided by.
/// The stream is deleted afterwards.
pub async fn raw_baseline(
    jetstream: &jetstream::Context,
    payload: Bytes,
    members: u64,
    duration: Duration,
    window: usize,
) -> anyhow::Result<Published> {
    let run = nuid::next().to_string();
    let name = format!("LOADTEST_RAW_{run}");
    jetstream
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("loadtest.raw.{run}.>")],
            storage: jetstream::stream::StorageType::File,
            // The hub's store (8 GB) is nearly all reserved by reno's own streams' limits: a small
            // stream that drops its oldest messages costs the same per publish.
            max_bytes: 128 * 1024 * 1024,
            discard: jetstream::stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await?;
    let members = members.max(1);
    let published = publish(jetstream, Rate::Max, Limit { count: u64::MAX, duration }, window, |index| {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("raw:{run}:{index}").as_str());
        Outgoing {
            subject: format!("loadtest.raw.{run}.m{}", index % members),
            headers,
            payload: payload.clone(),
        }
    })
    .await;
    jetstream.delete_stream(&name).await?;
    Ok(published)
}
