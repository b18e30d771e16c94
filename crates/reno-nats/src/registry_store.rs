//! The registry where every process sees it: one key (`registry`) of the KV bucket `RENO_REGISTRY`,
//! holding the registry file's text. `reno provision` and `reno registry` write it; workers and the
//! gateway read it at start and watch it, so a change takes effect without a restart.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, kv};
use futures::{Stream, StreamExt};
use reno_model::{Registry, RegistryError, subject};
use tokio::sync::watch;
use tracing::{info, warn};

/// Counter of registry changes a process has taken on since it started.
pub const UPDATES_METRIC: &str = "reno_registry_updates_total";

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

/// Replaces the registry in the existing bucket, leaving the bucket's settings (its replicas above
/// all) as provisioning made them.
pub async fn replace(jetstream: &jetstream::Context, registry: &Registry) -> Result<u64, RegistryStoreError> {
    let bucket =
        jetstream.get_key_value(subject::REGISTRY_BUCKET).await.map_err(|_| RegistryStoreError::Missing)?;
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
const REWATCH_DELAY: Duration = Duration::from_secs(1);

/// Reads the registry in force and keeps following it, in a task of the current runtime: every change
/// is in the receiver at once, for whoever reads it next. Follows until every receiver is gone.
pub async fn follow(
    jetstream: jetstream::Context,
) -> Result<watch::Receiver<Arc<Registry>>, RegistryStoreError> {
    let registry = load(&jetstream).await?;
    info!(types = registry.type_names(), "registry read");
    let (sender, receiver) = watch::channel(Arc::new(registry));
    tokio::spawn(async move {
        loop {
            match watch(&jetstream).await {
                Ok(updates) => {
                    let mut updates = std::pin::pin!(updates);
                    while let Some(update) = updates.next().await {
                        match update {
                            // The first one is the registry already read, unless it just changed.
                            Ok(registry) if **sender.borrow() == registry => {}
                            Ok(registry) => {
                                info!(types = registry.type_names(), "registry changed");
                                metrics::counter!(UPDATES_METRIC).increment(1);
                                if sender.send(Arc::new(registry)).is_err() {
                                    return;
                                }
                            }
                            Err(error) => warn!(%error, "registry update ignored"),
                        }
                    }
                }
                Err(error) => warn!(%error, "cannot watch the registry"),
            }
            if sender.is_closed() {
                return;
            }
            tokio::time::sleep(REWATCH_DELAY).await;
        }
    });
    Ok(receiver)
}
