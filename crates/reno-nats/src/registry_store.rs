//! The registry where every process sees it: one key (`registry`) of the KV bucket `RENO_REGISTRY`,
//! holding the registry file's text. `reno provision` and `reno registry` write it; workers and the
//! gateway read it at start and watch it, so a change takes effect without a restart.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::{Stream, StreamExt};
use reno_model::{Registry, RegistryError, subject};

/// Why the stored registry could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RegistryStoreError {
    #[error("no registry in {bucket}; run `reno provision` first", bucket = subject::REGISTRY_BUCKET)]
    Missing,
    #[error("the registry bucket {bucket} is unreachable: {0}", bucket = subject::REGISTRY_BUCKET)]
    Unavailable(String),
    #[error("the stored registry is invalid: {0}")]
    Invalid(#[from] RegistryError),
}

fn unavailable(error: impl std::fmt::Display) -> RegistryStoreError {
    RegistryStoreError::Unavailable(error.to_string())
}

/// Creates the bucket if needed and stores `registry` as the current one.
pub async fn store(
    jetstream: &jetstream::Context,
    registry: &Registry,
    replicas: usize,
) -> Result<u64, RegistryStoreError> {
    let bucket = jetstream
        .create_or_update_key_value(kv::Config {
            bucket: subject::REGISTRY_BUCKET.to_owned(),
            description: "reno's event-type registry, watched by every worker".into(),
            // A few earlier versions, to see what changed.
            history: 16,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            max_bytes: 16 << 20,
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
    bucket.put(subject::REGISTRY_KEY, registry.to_toml().into()).await.map_err(unavailable)
}

/// The current registry.
pub async fn load(jetstream: &jetstream::Context) -> Result<Registry, RegistryStoreError> {
    let bucket =
        jetstream.get_key_value(subject::REGISTRY_BUCKET).await.map_err(|_| RegistryStoreError::Missing)?;
    let value =
        bucket.get(subject::REGISTRY_KEY).await.map_err(unavailable)?.ok_or(RegistryStoreError::Missing)?;
    Ok(Registry::from_toml(&String::from_utf8_lossy(&value))?)
}

/// The current registry, then every one stored after it, in order; an invalid one (written around
/// `reno registry`) comes as an error and can be skipped.
pub async fn watch(
    jetstream: &jetstream::Context,
) -> Result<impl Stream<Item = Result<Registry, RegistryStoreError>> + use<>, RegistryStoreError> {
    let bucket =
        jetstream.get_key_value(subject::REGISTRY_BUCKET).await.map_err(|_| RegistryStoreError::Missing)?;
    let updates = bucket.watch_with_history(subject::REGISTRY_KEY).await.map_err(unavailable)?;
    Ok(updates.filter_map(|update| async move {
        match update {
            Ok(entry) if entry.operation == kv::Operation::Put => Some(
                Registry::from_toml(&String::from_utf8_lossy(&entry.value)).map_err(RegistryStoreError::from),
            ),
            Ok(_) => None,
            Err(error) => Some(Err(unavailable(error))),
        }
    }))
}

/// How long a watcher waits before it watches again after its watch ended.
pub const REWATCH_DELAY: Duration = Duration::from_secs(1);
