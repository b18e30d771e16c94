//! The tracker: turns device announcements into presence entries. Announcements come often (every
//! device, every heartbeat interval); an entry is written only when a device's status changes or
//! its entry would otherwise come close to expiring, so a device announcing itself too often costs
//! no more writes than an honest one.

use std::{
    collections::HashMap,
    future::Future,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream;
use futures::StreamExt;
use reno_model::{
    presence::{Announcement, PresenceEntry, Status},
    subject,
};
use tracing::{debug, info, warn};

/// Counter of announcements by result: `written`, `skipped` (nothing new to write), `refused`.
pub const ANNOUNCEMENTS_METRIC: &str = "reno_presence_announcements_total";
const QUEUE_GROUP: &str = "reno-presence";

/// What the tracker needs to know.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// How long an entry lives without a new announcement: the bucket's max age.
    pub ttl: Duration,
}

/// Why the tracker could not run.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("the presence bucket {bucket} is missing; run `reno provision` first: {0}", bucket = subject::PRESENCE_BUCKET)]
    Missing(String),
    #[error("cannot subscribe to announcements: {0}")]
    Subscribe(async_nats::SubscribeError),
}

/// The last write for one device.
struct Written {
    status: Status,
    at: Instant,
}

/// Tracks announcements on `client` until `shutdown` completes.
pub async fn run(
    client: async_nats::Client,
    config: TrackerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TrackerError> {
    let jetstream = jetstream::new(client.clone());
    let bucket = jetstream
        .get_key_value(subject::PRESENCE_BUCKET)
        .await
        .map_err(|error| TrackerError::Missing(error.to_string()))?;
    let mut announcements = client
        .queue_subscribe(subject::PRESENCE_SUBJECTS, QUEUE_GROUP.to_owned())
        .await
        .map_err(TrackerError::Subscribe)?;
    // Rewritten once a third of the time-to-live has passed, so that an entry never expires while
    // its device keeps announcing itself.
    let refresh = config.ttl / 3;
    let mut written: HashMap<String, Written> = HashMap::new();
    let mut last_sweep = Instant::now();
    info!(ttl = ?config.ttl, "presence tracker started");
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            () = &mut shutdown => break,
            message = announcements.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let parsed = subject::parse_presence_subject(message.subject.as_str())
            .zip(Announcement::decode(&message.payload).ok());
        let Some(((member, device_type, device_id), announcement)) = parsed else {
            debug!(subject = %message.subject, "malformed announcement ignored");
            metrics::counter!(ANNOUNCEMENTS_METRIC, "result" => "refused").increment(1);
            continue;
        };
        let key = subject::presence_key(&member, &device_type, &device_id);
        let due = match written.get(&key) {
            Some(last) => last.status != announcement.status || last.at.elapsed() >= refresh,
            None => true,
        };
        if !due {
            metrics::counter!(ANNOUNCEMENTS_METRIC, "result" => "skipped").increment(1);
            continue;
        }
        let result = match announcement.status {
            Status::Online => {
                let entry = PresenceEntry { seen_ms: now_ms() };
                bucket.put(&key, entry.encode().into()).await.map(|_| ()).map_err(async_nats::Error::from)
            }
            Status::Offline => bucket.delete(&key).await.map_err(async_nats::Error::from),
        };
        match result {
            Ok(()) => {
                written.insert(key, Written { status: announcement.status, at: Instant::now() });
                metrics::counter!(ANNOUNCEMENTS_METRIC, "result" => "written").increment(1);
            }
            Err(error) => warn!(%error, "presence not written"),
        }
        // Forget devices whose entries have expired anyway, so the map stays as small as the
        // set of online devices.
        if last_sweep.elapsed() >= config.ttl {
            written.retain(|_, last| last.at.elapsed() < config.ttl);
            last_sweep = Instant::now();
        }
    }
    let _ = announcements.unsubscribe().await;
    info!("presence tracker stopped");
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}
