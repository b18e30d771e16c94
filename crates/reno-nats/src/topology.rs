//! Provisioning: turns the registry into JetStream objects, idempotently. One stream per priority
//! capturing exactly `reno.evt.<type>.*` of that priority's types (so an unknown type has no stream
//! and its publisher gets an error at once) and storing each event under its member's partition,
//! one durable consumer per partition taking one event at a time (per-member order), the
//! dead-letter stream and the history, presence and trace buckets. Run again after a registry change, it
//! moves types between priorities without losing events: what a stream already holds stays there
//! and is still worked off. Run with fewer partitions, it moves the events of the dropped ones to
//! their new partitions; events stored before partitions existed are taken by a consumer of their
//! own.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, pull},
    kv,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};
use futures::{StreamExt, TryStreamExt};
use reno_model::{Priority, Registry, subject};

use crate::registry_store::{self, RegistryStoreError};

/// Settings of the topology that are not in the registry: they depend on the deployment.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Copies of each stream and of the history: 1 on a single node, 3 on the hub cluster.
    pub replicas: usize,
    /// How long an event waits in its priority stream for a worker before it expires. Keep it well
    /// above the longest worker outage you plan for.
    pub event_retention: Duration,
    /// Bytes each priority stream may hold; when full, publishers are refused (nothing is dropped).
    pub event_max_bytes: i64,
    /// How long notifications stay in the history for devices to pull.
    pub history_retention: Duration,
    /// Notifications a member's history holds; the oldest make room for new ones, and a device
    /// further behind is told to resync.
    pub history_max_entries: u32,
    /// Bytes the history may hold. When full it refuses new entries (nothing is dropped): workers
    /// retry the events, which wait in their priority streams, until entries expire or the limit
    /// is raised.
    pub history_max_bytes: i64,
    /// How long dead letters are kept for inspection and replay.
    pub dead_letter_retention: Duration,
    /// Bytes the dead letters may hold. When full, the oldest dead letters are dropped to make room:
    /// filing must never stop the pipeline, and every dead letter is counted in metrics anyway.
    pub dead_letter_max_bytes: i64,
    /// How long a priority stream remembers a `Nats-Msg-Id` to drop a repeat of the same event.
    pub duplicate_window: Duration,
    /// How long a device counts as online after its last announcement (keep it at least three of
    /// the devices' heartbeat intervals).
    pub presence_ttl: Duration,
    /// How long a worker may go without a sign of progress on an event before JetStream gives it
    /// to another worker: bounds how long a killed worker's events wait. Workers say they are
    /// still busy four times per ack wait.
    pub ack_wait: Duration,
    /// Partitions of each priority stream: every member's events fall into one, handled one at a
    /// time and in order, so this is also how many events of a priority are in flight at most.
    pub partitions: u16,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            replicas: 1,
            event_retention: Duration::from_secs(7 * 24 * 3600),
            event_max_bytes: 1 << 30,
            history_retention: Duration::from_secs(7 * 24 * 3600),
            history_max_entries: reno_model::history::DEFAULT_MAX_ENTRIES as u32,
            history_max_bytes: 4 << 30,
            dead_letter_retention: Duration::from_secs(14 * 24 * 3600),
            dead_letter_max_bytes: 256 << 20,
            presence_ttl: Duration::from_secs(60),
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(4),
            partitions: 32,
        }
    }
}

/// The largest message a priority stream stores: well above the envelope's own limit, so that an
/// oversized event still reaches a worker and is dead-lettered with its reason instead of vanishing;
/// and 64 KiB below nats-server's `max_payload` (1 MiB), so that the dead letter, the same bytes plus
/// the `Reno-*` headers, can always be published.
const STREAM_MAX_MESSAGE_BYTES: i32 = 1024 * 1024 - 64 * 1024;

/// Which JetStream object could not be provisioned, and why.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("cannot store the registry: {0}")]
    Registry(#[from] RegistryStoreError),
    #[error("cannot provision stream {name}: {source}")]
    Stream { name: String, source: async_nats::Error },
    #[error("cannot provision the history bucket {HISTORY}: {source}", HISTORY = subject::HISTORY_BUCKET)]
    History { source: async_nats::Error },
    #[error("cannot provision the presence bucket {PRESENCE}: {source}", PRESENCE = subject::PRESENCE_BUCKET)]
    Presence { source: async_nats::Error },
    #[error("cannot provision the trace bucket {TRACE}: {source}", TRACE = subject::TRACE_BUCKET)]
    Trace { source: async_nats::Error },
    #[error("cannot provision consumer {consumer} on {stream}: {source}")]
    Consumer { stream: String, consumer: String, source: async_nats::Error },
    #[error("the partitions of a priority stream must be 1 to {max}, not {partitions}", max = subject::MAX_PARTITIONS)]
    Partitions { partitions: u16 },
    #[error(
        "cannot move the events of {stream} into its new partitions: {source}; they stay where they are until provision runs again"
    )]
    Rehome { stream: String, source: async_nats::Error },
}

/// What provisioning did, for the operator.
#[derive(Debug, Clone, Default)]
pub struct ProvisionReport {
    /// Each priority stream with the subjects it now captures.
    pub streams: Vec<(String, Vec<String>)>,
    /// Events moved into their partition because they were stored under another layout.
    pub rehomed: u64,
}

/// The stream metadata key that holds a priority stream's partition count, for workers to read.
pub const PARTITIONS_METADATA: &str = "reno_partitions";

/// The history bucket's stream metadata key that holds how many notifications a member's history
/// holds, for workers to read.
pub const HISTORY_MAX_ENTRIES_METADATA: &str = "reno_history_max_entries";

/// How many notifications a member's history holds, from the history stream's metadata (the
/// default for a bucket provisioned before the setting existed).
pub fn history_max_entries_of(config: &stream::Config) -> usize {
    config
        .metadata
        .get(HISTORY_MAX_ENTRIES_METADATA)
        .and_then(|entries| entries.parse().ok())
        .unwrap_or(reno_model::history::DEFAULT_MAX_ENTRIES)
}

/// The partition count of a priority stream, from its metadata; `None` for a stream that was
/// provisioned before partitions existed.
pub fn partitions_of(config: &stream::Config) -> Option<u16> {
    config.metadata.get(PARTITIONS_METADATA)?.parse().ok()
}

/// Subjects of a priority stream with no event types: streams need at least one subject, and no
/// event type can be spelled `~idle-<priority>`, so no valid event is ever captured by it; an
/// invalid one that is reaches a worker and is dead-lettered like any bad subject.
fn idle_subject(priority: Priority) -> String {
    format!("reno.evt.~idle-{priority}.*")
}

/// The subjects one priority's stream must capture under `registry`.
pub fn stream_subjects(registry: &Registry, priority: Priority) -> Vec<String> {
    let subjects: Vec<String> = registry.types_of(priority).map(subject::event_type_filter).collect();
    if subjects.is_empty() { vec![idle_subject(priority)] } else { subjects }
}

fn priority_stream_config(topology: &Topology, priority: Priority, subjects: Vec<String>) -> stream::Config {
    let (source, destination) = subject::partition_transform(topology.partitions);
    stream::Config {
        name: subject::priority_stream(priority),
        description: Some(format!("reno events of priority {priority}")),
        subjects,
        retention: RetentionPolicy::WorkQueue,
        discard: DiscardPolicy::New,
        max_bytes: topology.event_max_bytes,
        max_age: topology.event_retention,
        max_message_size: STREAM_MAX_MESSAGE_BYTES,
        storage: StorageType::File,
        num_replicas: topology.replicas,
        duplicate_window: topology.duplicate_window,
        subject_transform: Some(stream::SubjectTransform { source, destination }),
        metadata: [(PARTITIONS_METADATA.to_owned(), topology.partitions.to_string())].into(),
        ..Default::default()
    }
}

/// Makes `registry` the one every process uses, while everything runs: stores it (workers and the
/// gateway watch it), then moves the streams' subjects to it. The streams and the registry bucket
/// must exist; their settings stay as provisioning made them.
pub async fn apply_registry(
    jetstream: &jetstream::Context,
    registry: &Registry,
) -> Result<ProvisionReport, ProvisionError> {
    // Stored first, so that workers know a new type before any event of it can be stored.
    registry_store::replace(jetstream, registry).await?;
    release_moved_subjects(jetstream, registry).await?;
    let mut report = ProvisionReport::default();
    for priority in Priority::ALL {
        let name = subject::priority_stream(priority);
        let mut stream = jetstream.get_stream(&name).await.map_err(|source| stream_error(&name, source))?;
        let current = stream.info().await.map_err(|source| stream_error(&name, source))?.config.clone();
        let subjects = stream_subjects(registry, priority);
        if current.subjects != subjects {
            let config = stream::Config { subjects: subjects.clone(), ..current };
            jetstream.update_stream(config).await.map_err(|source| stream_error(&name, source))?;
        }
        report.streams.push((name, subjects));
    }
    Ok(report)
}

/// The first of two phases, because one subject may not be captured by two streams at once: every
/// existing stream lets go of the types that left its priority; then every stream can take its new
/// set. In between, a moved type is refused at publish time (publishers retry); events a stream
/// already holds stay there and its workers still deliver them.
async fn release_moved_subjects(
    jetstream: &jetstream::Context,
    registry: &Registry,
) -> Result<(), ProvisionError> {
    for priority in Priority::ALL {
        let name = subject::priority_stream(priority);
        let Ok(mut stream) = jetstream.get_stream(&name).await else {
            continue;
        };
        let current = stream.info().await.map_err(|source| stream_error(&name, source))?.config.clone();
        let wanted = stream_subjects(registry, priority);
        let mut kept: Vec<String> =
            current.subjects.iter().filter(|subject| wanted.contains(subject)).cloned().collect();
        if kept.len() != current.subjects.len() {
            if kept.is_empty() {
                kept.push(idle_subject(priority));
            }
            let config = stream::Config { subjects: kept, ..current };
            jetstream.update_stream(config).await.map_err(|source| stream_error(&name, source))?;
        }
    }
    Ok(())
}

/// Creates or updates every JetStream object reno needs, and stores `registry` as the one every
/// process uses. Safe to run any number of times.
pub async fn provision(
    jetstream: &jetstream::Context,
    registry: &Registry,
    topology: &Topology,
) -> Result<ProvisionReport, ProvisionError> {
    registry_store::store(jetstream, registry, topology.replicas).await?;
    release_moved_subjects(jetstream, registry).await?;
    let mut report = ProvisionReport::default();
    if topology.partitions == 0 || topology.partitions > subject::MAX_PARTITIONS {
        return Err(ProvisionError::Partitions { partitions: topology.partitions });
    }
    for priority in Priority::ALL {
        let subjects = stream_subjects(registry, priority);
        let config = priority_stream_config(topology, priority, subjects.clone());
        let name = config.name.clone();
        jetstream.create_or_update_stream(config).await.map_err(|source| stream_error(&name, source))?;
        let stream = jetstream.get_stream(&name).await.map_err(|source| stream_error(&name, source))?;
        drop_foreign_consumers(&stream, topology.partitions).await?;
        for consumer in worker_consumer_configs(topology, priority) {
            let consumer_name = consumer.durable_name.clone().unwrap_or_default();
            stream.create_consumer(consumer).await.map_err(|source| ProvisionError::Consumer {
                stream: name.clone(),
                consumer: consumer_name,
                source: source.into(),
            })?;
        }
        report.streams.push((name, subjects));
    }
    // Once every stream captures its new subjects, so that a moved event finds its stream.
    for priority in Priority::ALL {
        let name = subject::priority_stream(priority);
        let mut stream = jetstream.get_stream(&name).await.map_err(|source| stream_error(&name, source))?;
        report.rehomed += rehome(jetstream, &mut stream, topology.partitions)
            .await
            .map_err(|source| ProvisionError::Rehome { stream: name.clone(), source })?;
    }

    let dead_letters = stream::Config {
        name: subject::DEAD_LETTER_STREAM.to_owned(),
        description: Some("reno events that can never be delivered, with the reason in Reno-Reason".into()),
        subjects: vec![subject::DEAD_LETTER_SUBJECTS.to_owned()],
        retention: RetentionPolicy::Limits,
        max_age: topology.dead_letter_retention,
        max_bytes: topology.dead_letter_max_bytes,
        discard: DiscardPolicy::Old,
        max_message_size: -1,
        storage: StorageType::File,
        num_replicas: topology.replicas,
        ..Default::default()
    };
    jetstream
        .create_or_update_stream(dead_letters)
        .await
        .map_err(|source| stream_error(subject::DEAD_LETTER_STREAM, source))?;

    let history = kv::Config {
        bucket: subject::HISTORY_BUCKET.to_owned(),
        description: "reno notification history, one document per member, for devices to pull".into(),
        // One revision per key: a member's document is rewritten whole by each event.
        history: 1,
        // A document not written for this long goes: every entry in it is older. Entries inside a
        // document are dropped by the same age when it is next written, and ignored by pulls.
        max_age: topology.history_retention,
        // Discard new (the KV default): a full history refuses writes rather than dropping the
        // oldest documents, whole members' histories, without a trace.
        max_bytes: topology.history_max_bytes,
        storage: StorageType::File,
        num_replicas: topology.replicas,
        ..Default::default()
    };
    jetstream
        .create_or_update_key_value(history)
        .await
        .map_err(|source| ProvisionError::History { source: source.into() })?;
    // KV settings have no metadata of their own: it goes on the bucket's stream.
    let history_error = |source: async_nats::Error| ProvisionError::History { source };
    let mut stream =
        jetstream.get_stream(subject::history_stream()).await.map_err(|error| history_error(error.into()))?;
    let mut config = stream.info().await.map_err(|error| history_error(error.into()))?.config.clone();
    config.metadata.insert(HISTORY_MAX_ENTRIES_METADATA.to_owned(), topology.history_max_entries.to_string());
    jetstream.update_stream(config).await.map_err(|error| history_error(error.into()))?;

    let presence = kv::Config {
        bucket: subject::PRESENCE_BUCKET.to_owned(),
        description: "reno's online devices, one key per device, forgotten after the presence time-to-live"
            .into(),
        history: 1,
        // A device that stops announcing itself expires; the marker left in its place tells the
        // workers' views at once.
        max_age: topology.presence_ttl,
        limit_markers: Some(topology.presence_ttl),
        // Presence is rebuilt by the devices' next announcements after a restart.
        storage: StorageType::Memory,
        num_replicas: topology.replicas,
        max_bytes: 256 << 20,
        ..Default::default()
    };
    jetstream
        .create_or_update_key_value(presence)
        .await
        .map_err(|source| ProvisionError::Presence { source: source.into() })?;

    let trace = kv::Config {
        bucket: subject::TRACE_BUCKET.to_owned(),
        description: "reno trace sessions: one key per running `reno trace`, forgotten when not renewed"
            .into(),
        history: 1,
        max_age: crate::trace::SESSION_TTL,
        limit_markers: Some(crate::trace::SESSION_TTL),
        storage: StorageType::Memory,
        num_replicas: topology.replicas,
        max_bytes: 1 << 20,
        ..Default::default()
    };
    jetstream
        .create_or_update_key_value(trace)
        .await
        .map_err(|source| ProvisionError::Trace { source: source.into() })?;
    Ok(report)
}

/// The workers' consumers of one priority stream: one per partition, and one for the strays (see
/// [`subject::STRAYS_CONSUMER`]). Each hands out one event at a time, so that the next event of a
/// member is only handed out once the one before it is settled, by whichever worker. An event
/// waiting out a retry delay still counts, so a retry holds its partition too.
fn worker_consumer_configs(topology: &Topology, priority: Priority) -> Vec<pull::Config> {
    let consumer = |name: String, description: String, filter_subject: String| pull::Config {
        durable_name: Some(name),
        description: Some(description),
        filter_subject,
        ack_policy: AckPolicy::Explicit,
        ack_wait: topology.ack_wait,
        max_ack_pending: 1,
        // Unlimited on the server: the worker itself dead-letters an event after its own bound of
        // deliveries, so that no event is ever parked where nobody sees it.
        max_deliver: -1,
        ..Default::default()
    };
    let mut consumers: Vec<pull::Config> = (0..topology.partitions)
        .map(|partition| {
            consumer(
                subject::worker_consumer(partition),
                format!("reno workers of priority {priority}, partition {partition}"),
                subject::partition_filter(partition),
            )
        })
        .collect();
    consumers.push(consumer(
        subject::STRAYS_CONSUMER.to_owned(),
        format!("reno workers of priority {priority}: events stored outside the partitions"),
        subject::STRAYS_FILTER.to_owned(),
    ));
    consumers
}

/// Name of the consumer that moves events between layouts while provisioning.
const REHOME_CONSUMER: &str = "reno-rehome";

/// Deletes the consumers of an earlier layout (the single consumer from before partitions, the
/// partitions beyond the new count): a work-queue stream lets no two consumers take the same
/// subject. The events they held stay in the stream, for the strays consumer or [`rehome`].
async fn drop_foreign_consumers(stream: &stream::Stream, partitions: u16) -> Result<(), ProvisionError> {
    let mut wanted: Vec<String> = (0..partitions).map(subject::worker_consumer).collect();
    wanted.push(subject::STRAYS_CONSUMER.to_owned());
    let name = stream.cached_info().config.name.clone();
    let names: Vec<String> =
        stream.consumer_names().try_collect().await.map_err(|source| stream_error(&name, source))?;
    for consumer in names.into_iter().filter(|consumer| !wanted.contains(consumer)) {
        stream.delete_consumer(&consumer).await.map_err(|source| ProvisionError::Consumer {
            stream: name.clone(),
            consumer: consumer.clone(),
            source: source.into(),
        })?;
    }
    Ok(())
}

/// Moves every event the stream holds in a partition at or beyond `partitions` (left by an earlier,
/// larger count: no consumer takes them any more) to the partition of its member, by publishing it
/// again on the subject its service published it on, then removing the old copy: a crash in
/// between leaves a repeat, which the workers drop as a duplicate. The partitions are found from
/// what the stream holds, not from what was provisioned before, so that a run that stopped half
/// way is finished by the next. Returns how many were moved.
async fn rehome(
    jetstream: &jetstream::Context,
    stream: &mut stream::Stream,
    partitions: u16,
) -> Result<u64, async_nats::Error> {
    let held: Vec<(String, usize)> =
        stream.info_with_subjects(format!("{}.*.*.*", subject::EVENT_PREFIX)).await?.try_collect().await?;
    let dropped: std::collections::BTreeSet<u16> = held
        .iter()
        .filter_map(|(stored, _)| stored.split('.').nth(2)?.parse::<u16>().ok())
        .filter(|partition| *partition >= partitions)
        .collect();
    if dropped.is_empty() {
        return Ok(0);
    }
    let config = pull::Config {
        durable_name: Some(REHOME_CONSUMER.to_owned()),
        description: Some("reno provision: moves events into their partitions".to_owned()),
        filter_subjects: dropped.into_iter().map(subject::partition_filter).collect(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: -1,
        ..Default::default()
    };
    let mut consumer: jetstream::consumer::PullConsumer = stream.create_consumer(config).await?;
    let mut moved = 0;
    while consumer.info().await?.num_pending > 0 {
        let mut batch = consumer.fetch().max_messages(256).expires(Duration::from_secs(1)).messages().await?;
        while let Some(message) = batch.next().await {
            let message = message?;
            // All headers but the message id: the stream still remembers the id of the first
            // copy and would drop this one.
            let mut headers = async_nats::HeaderMap::new();
            for (name, values) in message.headers.iter().flat_map(|headers| headers.iter()) {
                if !name.to_string().eq_ignore_ascii_case("Nats-Msg-Id") {
                    values.iter().for_each(|value| headers.append(name.clone(), value.clone()));
                }
            }
            let published = subject::published_event_subject(message.subject.as_str()).into_owned();
            jetstream.publish_with_headers(published, headers, message.payload.clone()).await?.await?;
            message.double_ack().await?;
            moved += 1;
        }
    }
    stream.delete_consumer(REHOME_CONSUMER).await?;
    Ok(moved)
}

fn stream_error(name: &str, source: impl Into<async_nats::Error>) -> ProvisionError {
    ProvisionError::Stream { name: name.to_owned(), source: source.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_priority_captures_exactly_its_types() {
        let registry = Registry::from_toml(
            r#"
            device_types = ["tv"]
            [types.plan_changed]
            priority = "high"
            stale_after_secs = 1
            [types.diagnostics]
            priority = "low"
            stale_after_secs = 1
            "#,
        )
        .unwrap();
        assert_eq!(stream_subjects(&registry, Priority::High), ["reno.evt.plan_changed.*"]);
        assert_eq!(stream_subjects(&registry, Priority::Low), ["reno.evt.diagnostics.*"]);
        assert_eq!(stream_subjects(&registry, Priority::Normal), ["reno.evt.~idle-normal.*"]);
    }
}
