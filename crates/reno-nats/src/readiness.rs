//! What a process needs from NATS to do its work, and a check of it for readiness probes: a
//! connected client, and the streams, consumers and buckets the process reads or writes.

use std::time::Duration;

use async_nats::jetstream;
use futures::TryStreamExt;
use reno_model::subject;

use crate::topology::partitions_of;

/// One JetStream object a process cannot work without.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Needed {
    Stream(String),
    Consumer {
        stream: String,
        consumer: String,
    },
    /// A KV bucket, by bucket name.
    Bucket(String),
    /// A priority stream's worker consumers, every partition's and the strays', by stream name.
    Partitions(String),
}

impl std::fmt::Display for Needed {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Needed::Stream(name) => write!(formatter, "stream {name}"),
            Needed::Consumer { stream, consumer } => write!(formatter, "consumer {consumer} on {stream}"),
            Needed::Bucket(name) => write!(formatter, "bucket {name}"),
            Needed::Partitions(stream) => write!(formatter, "the partition consumers of {stream}"),
        }
    }
}

/// How long one check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What keeps the process from working: an empty list when it is ready.
pub async fn problems(client: &async_nats::Client, needed: &[Needed]) -> Vec<String> {
    if client.connection_state() != async_nats::connection::State::Connected {
        return vec![format!("not connected to NATS ({})", client.connection_state())];
    }
    let jetstream = jetstream::new(client.clone());
    let mut problems = Vec::new();
    for need in needed {
        let found = tokio::time::timeout(CHECK_TIMEOUT, exists(&jetstream, need)).await;
        match found {
            Ok(Ok(())) => {}
            Ok(Err(error)) => problems.push(format!("{need} is missing or unreachable: {error}")),
            Err(_) => problems.push(format!("{need} did not answer within {CHECK_TIMEOUT:?}")),
        }
    }
    problems
}

async fn exists(jetstream: &jetstream::Context, need: &Needed) -> Result<(), async_nats::Error> {
    match need {
        Needed::Stream(name) => {
            jetstream.get_stream(name).await?;
        }
        Needed::Consumer { stream, consumer } => {
            let stream = jetstream.get_stream_no_info(stream).await?;
            stream.consumer_info(consumer).await?;
        }
        Needed::Bucket(name) => {
            jetstream.get_key_value(name).await?;
        }
        Needed::Partitions(name) => {
            let stream = jetstream.get_stream(name).await?;
            let partitions = partitions_of(&stream.cached_info().config)
                .ok_or("the stream has no partitions: it was provisioned by an older reno")?;
            let names: Vec<String> = stream.consumer_names().try_collect().await?;
            let missing: Vec<String> = (0..partitions)
                .map(subject::worker_consumer)
                .chain([subject::STRAYS_CONSUMER.to_owned()])
                .filter(|consumer| !names.contains(consumer))
                .collect();
            if !missing.is_empty() {
                return Err(format!("consumers {} are missing", missing.join(", ")).into());
            }
        }
    }
    Ok(())
}
