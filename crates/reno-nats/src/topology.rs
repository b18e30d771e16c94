//! Provisioning: turns the registry into JetStream objects, idempotently. One stream per priority
//! capturing exactly `reno.evt.<type>.*` of that priority's types (so an unknown type has no stream
//! and its publisher gets an error at once), the dead-letter stream, the history bucket and the
//! workers' durable consumers. Run again after a registry change, it moves types between priorities
//! without losing events: what a stream already holds stays there and is still worked off.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, pull},
    kv,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};
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
    /// How long a worker may hold an event before JetStream gives it to another worker.
    pub ack_wait: Duration,
    /// Events in flight per priority across all workers.
    pub max_ack_pending: i64,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            replicas: 1,
            event_retention: Duration::from_secs(7 * 24 * 3600),
            event_max_bytes: 1 << 30,
            history_retention: Duration::from_secs(7 * 24 * 3600),
            history_max_bytes: 4 << 30,
            dead_letter_retention: Duration::from_secs(14 * 24 * 3600),
            dead_letter_max_bytes: 256 << 20,
            presence_ttl: Duration::from_secs(60),
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
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
    #[error("cannot provision consumer {consumer} on {stream}: {source}")]
    Consumer { stream: String, consumer: String, source: async_nats::Error },
}

/// What provisioning did, for the operator.
#[derive(Debug, Clone, Default)]
pub struct ProvisionReport {
    /// Each priority stream with the subjects it now captures.
    pub streams: Vec<(String, Vec<String>)>,
}

/// Subjects of a priority stream with no event types: streams need at least one subject, and this
/// one is outside `reno.evt.>`, so it captures nothing a service publishes.
fn idle_subject(priority: Priority) -> String {
    format!("reno.idle.{priority}")
}

/// The subjects one priority's stream must capture under `registry`.
pub fn stream_subjects(registry: &Registry, priority: Priority) -> Vec<String> {
    let subjects: Vec<String> = registry.types_of(priority).map(subject::event_type_filter).collect();
    if subjects.is_empty() { vec![idle_subject(priority)] } else { subjects }
}

fn priority_stream_config(topology: &Topology, priority: Priority, subjects: Vec<String>) -> stream::Config {
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
        ..Default::default()
    }
}

/// Makes `registry` the one every process uses, while everything runs: stores it (workers and the
/// gateway watch it), then moves the streams' subjects to it. The streams must exist.
pub async fn apply_registry(
    jetstream: &jetstream::Context,
    registry: &Registry,
    replicas: usize,
) -> Result<ProvisionReport, ProvisionError> {
    // Stored first, so that workers know a new type before any event of it can be stored.
    registry_store::store(jetstream, registry, replicas).await?;
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
    for priority in Priority::ALL {
        let subjects = stream_subjects(registry, priority);
        let config = priority_stream_config(topology, priority, subjects.clone());
        let name = config.name.clone();
        jetstream.create_or_update_stream(config).await.map_err(|source| stream_error(&name, source))?;
        let consumer = pull::Config {
            durable_name: Some(subject::WORKER_CONSUMER.to_owned()),
            description: Some(format!("reno workers of priority {priority}")),
            ack_policy: AckPolicy::Explicit,
            ack_wait: topology.ack_wait,
            max_ack_pending: topology.max_ack_pending,
            // Unlimited on the server: the worker itself dead-letters an event after its own bound
            // of deliveries, so that no event is ever parked where nobody sees it.
            max_deliver: -1,
            ..Default::default()
        };
        jetstream.create_consumer_on_stream(consumer, &name).await.map_err(|source| {
            ProvisionError::Consumer {
                stream: name.clone(),
                consumer: subject::WORKER_CONSUMER.to_owned(),
                source: source.into(),
            }
        })?;
        report.streams.push((name, subjects));
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
        description: "reno notification history per member and device type, for devices to pull".into(),
        // One revision per key: a collapsed key keeps only its latest notification.
        history: 1,
        max_age: topology.history_retention,
        // Discard new (the KV default): a full history refuses writes rather than dropping the
        // oldest entries, which the pull service would take for collapsed ones and not resync.
        max_bytes: topology.history_max_bytes,
        storage: StorageType::File,
        num_replicas: topology.replicas,
        ..Default::default()
    };
    jetstream
        .create_or_update_key_value(history)
        .await
        .map_err(|source| ProvisionError::History { source: source.into() })?;

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
    Ok(report)
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
        assert_eq!(stream_subjects(&registry, Priority::Normal), ["reno.idle.normal"]);
    }
}
