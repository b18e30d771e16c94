//! Live tracing of one member's events across processes (`reno trace <member>`). A session puts a
//! key `<member>.<session>` in the trace bucket and renews it while it runs; every process that
//! handles events or pulls follows the bucket into a local set, and only for a member in that set
//! publishes trace records (JSON) on `reno.trace.<member>`, where the session listens. When nobody
//! traces, the cost per event is one set lookup and nothing is published.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use reno_model::{MemberId, subject};
use time::OffsetDateTime;
use tracing::{debug, warn};

/// Gauge of members this process traces now.
pub const TRACED_METRIC: &str = "reno_trace_members";

/// How long a session's key lives without a renewal; sessions renew it three times as often.
pub const SESSION_TTL: Duration = Duration::from_secs(30);

/// Publishes trace records for traced members. Cheap to clone; every clone sees the same set.
#[derive(Clone)]
pub struct Tracer {
    client: async_nats::Client,
    process: &'static str,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    /// Member → its running sessions.
    sessions: RwLock<HashMap<String, HashSet<String>>>,
    /// Whether the set is read and followed now; until then nobody counts as traced.
    current: AtomicBool,
}

impl Tracer {
    /// Follows the trace bucket on `client`'s connection, in a task of the current runtime, for as
    /// long as any clone lives. `process` names the sender in every record (`worker`, `pull`).
    pub fn follow(client: async_nats::Client, process: &'static str) -> Self {
        let tracer = Tracer { client: client.clone(), process, state: Arc::default() };
        let state = Arc::downgrade(&tracer.state);
        let jetstream = jetstream::new(client);
        metrics::gauge!(TRACED_METRIC).set(0.0);
        tokio::spawn(async move {
            let mut said = false;
            loop {
                let Some(state) = state.upgrade() else { return };
                if let Err(error) = follow_once(&jetstream, &state).await
                    && !said
                {
                    // Without the bucket (a topology provisioned before tracing existed) nobody
                    // is traced; said once.
                    warn!(%error, "trace sessions not followed; nobody is traced meanwhile");
                    said = true;
                }
                state.current.store(false, Ordering::SeqCst);
                drop(state);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
        tracer
    }

    /// Whether someone traces `member` now.
    pub fn is_traced(&self, member: &MemberId) -> bool {
        self.state.current.load(Ordering::Relaxed)
            && self.state.sessions.read().expect("trace lock").contains_key(member.as_str())
    }

    /// Publishes `record` (a JSON object) for `member` if someone traces it, with the time and
    /// this process added. Best effort: a record that cannot be sent is dropped.
    pub async fn emit(&self, member: &MemberId, mut record: serde_json::Value) {
        if !self.is_traced(member) {
            return;
        }
        if let Some(fields) = record.as_object_mut() {
            let now_ms =
                u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
            fields.insert("at_ms".into(), now_ms.into());
            fields.insert("process".into(), self.process.into());
            fields.insert("member".into(), member.as_str().into());
        }
        let body = Bytes::from(record.to_string());
        if let Err(error) = self.client.publish(subject::trace_subject(member), body).await {
            debug!(%error, "trace record dropped");
        }
    }
}

async fn follow_once(jetstream: &jetstream::Context, state: &State) -> Result<(), async_nats::Error> {
    let bucket = jetstream.get_key_value(subject::TRACE_BUCKET).await?;
    let mut updates = bucket.watch_with_history(">").await?;
    state.sessions.write().expect("trace lock").clear();
    if bucket.status().await?.values() == 0 {
        state.current.store(true, Ordering::SeqCst);
    }
    while let Some(entry) = updates.next().await {
        let entry = entry?;
        apply(state, &entry);
        if entry.delta == 0 {
            state.current.store(true, Ordering::SeqCst);
        }
    }
    Ok(())
}

fn apply(state: &State, entry: &kv::Entry) {
    let Some((member, session)) = entry.key.split_once('.') else { return };
    let mut sessions = state.sessions.write().expect("trace lock");
    match entry.operation {
        kv::Operation::Put => {
            sessions.entry(member.to_owned()).or_default().insert(session.to_owned());
        }
        kv::Operation::Delete | kv::Operation::Purge => {
            if let Some(running) = sessions.get_mut(member) {
                running.remove(session);
                if running.is_empty() {
                    sessions.remove(member);
                }
            }
        }
    }
    metrics::gauge!(TRACED_METRIC).set(sessions.len() as f64);
}

/// Why a trace session could not run.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the trace bucket {bucket} is missing or unreachable; run `reno provision`: {0}", bucket = subject::TRACE_BUCKET)]
    Bucket(async_nats::Error),
    #[error("cannot subscribe to the trace records: {0}")]
    Subscribe(async_nats::Error),
}

/// Traces `member` until `stop` completes: registers a session (renewed while it runs, deleted at
/// the end), and hands every trace record of the member, from any process, to `on_record`.
pub async fn session(
    client: async_nats::Client,
    member: &MemberId,
    mut on_record: impl FnMut(serde_json::Value),
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), SessionError> {
    let jetstream = jetstream::new(client.clone());
    let bucket = jetstream
        .get_key_value(subject::TRACE_BUCKET)
        .await
        .map_err(|error| SessionError::Bucket(error.into()))?;
    // Listening first, so that no record of the first traced event is missed.
    let mut records = client
        .subscribe(subject::trace_subject(member))
        .await
        .map_err(|error| SessionError::Subscribe(error.into()))?;
    let key = format!("{member}.{}", nuid::next());
    bucket.put(&key, Bytes::new()).await.map_err(|error| SessionError::Bucket(error.into()))?;
    let mut renew = tokio::time::interval(SESSION_TTL / 3);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = renew.tick() => {
                if let Err(error) = bucket.put(&key, Bytes::new()).await {
                    warn!(%error, "cannot renew the trace session; retrying");
                }
            }
            record = records.next() => match record {
                Some(message) => match serde_json::from_slice(&message.payload) {
                    Ok(record) => on_record(record),
                    Err(error) => debug!(%error, "unreadable trace record"),
                },
                None => break,
            },
        }
    }
    // Best effort: a session that cannot say goodbye expires on its own.
    let _ = bucket.delete(&key).await;
    Ok(())
}
