//! A local view of presence: which member and device type has a device online, followed from the
//! bucket with a watch, so that asking costs a map lookup. Until it has read the whole bucket, or
//! while it cannot follow it, it answers "online" for everyone: a push nobody receives costs little,
//! a push withheld from an online device is a notification it waits for.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use reno_model::{DeviceType, MemberId, subject};
use tracing::{info, warn};

/// Gauge of devices online, as this view sees them.
pub const ONLINE_METRIC: &str = "reno_presence_devices_online";

/// Follows the presence bucket. Cheap to clone; every clone sees the same state.
#[derive(Clone, Default)]
pub struct PresenceView {
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    /// `<member>.<device_type>` → the ids of its online devices.
    online: RwLock<HashMap<String, HashSet<String>>>,
    /// Whether the view has read the whole bucket and is following it now.
    current: AtomicBool,
}

impl PresenceView {
    /// Starts following the bucket on `jetstream`, in a task of the current runtime, for as long as
    /// any clone of the view lives.
    pub fn follow(jetstream: jetstream::Context) -> Self {
        let view = PresenceView::default();
        let state = Arc::downgrade(&view.state);
        tokio::spawn(async move {
            loop {
                let Some(state) = state.upgrade() else { return };
                if let Err(error) = follow_once(&jetstream, &state).await {
                    warn!(%error, "presence not followed; treating every device as online meanwhile");
                }
                state.current.store(false, Ordering::SeqCst);
                drop(state);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        view
    }

    /// Whether a device of `device_type` of `member` is online (or the view cannot tell).
    pub fn is_online(&self, member: &MemberId, device_type: &DeviceType) -> bool {
        if !self.state.current.load(Ordering::Relaxed) {
            return true;
        }
        let key = format!("{member}.{device_type}");
        self.state.online.read().expect("presence lock").get(&key).is_some_and(|devices| !devices.is_empty())
    }

    /// Whether the view has read the whole bucket and follows it now.
    pub fn is_current(&self) -> bool {
        self.state.current.load(Ordering::SeqCst)
    }
}

async fn follow_once(jetstream: &jetstream::Context, state: &State) -> Result<(), async_nats::Error> {
    let bucket = jetstream.get_key_value(subject::PRESENCE_BUCKET).await?;
    let mut updates = bucket.watch_with_history(">").await?;
    state.online.write().expect("presence lock").clear();
    let mut empty = bucket.status().await?.values() == 0;
    if empty {
        state.current.store(true, Ordering::SeqCst);
        info!("presence followed (empty)");
    }
    while let Some(entry) = updates.next().await {
        let entry = entry?;
        apply(state, &entry);
        if !empty && entry.delta == 0 {
            empty = true;
            state.current.store(true, Ordering::SeqCst);
            info!("presence followed");
        }
    }
    Ok(())
}

fn apply(state: &State, entry: &kv::Entry) {
    let Some((member, device_type, device_id)) = subject::parse_presence_key(&entry.key) else { return };
    let group = format!("{member}.{device_type}");
    let mut online = state.online.write().expect("presence lock");
    match entry.operation {
        kv::Operation::Put => {
            online.entry(group).or_default().insert(device_id.to_string());
        }
        kv::Operation::Delete | kv::Operation::Purge => {
            if let Some(devices) = online.get_mut(&group) {
                devices.remove(device_id.as_str());
                if devices.is_empty() {
                    online.remove(&group);
                }
            }
        }
    }
    let devices: usize = online.values().map(HashSet::len).sum();
    metrics::gauge!(ONLINE_METRIC).set(devices as f64);
}
