//! The reno device SDK: connects a device to its edge over websocket, subscribes to the pushes for its
//! member and device type, pulls what it missed since its cursor on start, after every reconnect and
//! whenever the app asks (lifecycle points), drops what arrives twice by push and pull, and hands the
//! app one stream of notifications. Push is best effort; pull makes it reliable.
//!
//! May touch: NATS, only the device's own subjects: its push subject, its pull subject and its
//! presence subject (an edge allows a device nothing else).

#![forbid(unsafe_code)]

mod merge;
#[cfg(test)]
mod merge_properties;
mod presence;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::{Event, Subscriber};
use futures::StreamExt;
use merge::Merge;
use presence::Heartbeat;
use reno_model::{
    DeviceId, DeviceType, MemberId, Notification, Position, PullPage, notification::DEFAULT_PAGE_LIMIT,
    subject,
};
use tokio::sync::Notify;
use tracing::{debug, warn};

/// How often a connected device pulls even when nothing says it missed a push: keeps its position
/// and that position's time fresh (well inside any sensible history retention), and picks up
/// anything a silently lost push left out.
const ROUTINE_CATCH_UP: Duration = Duration::from_secs(600);
/// How long one pull page may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after (re)connecting the device pulls once more: reno pushes only to devices it knows
/// are online, and a push written before its announcement reached the workers went nowhere.
const AFTER_CONNECT_CATCH_UP: Duration = Duration::from_secs(2);
/// How often a device announces itself by default; reno forgets a device after its presence
/// time-to-live (60 s by default), which must cover three of these.
pub const DEFAULT_PRESENCE_INTERVAL: Duration = Duration::from_secs(20);

/// The servers of a comma-separated list of URLs (the edges a device may use).
fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, async_nats::ConnectError> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            url.parse::<async_nats::ServerAddr>().map_err(|error| {
                async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::ServerParse, error)
            })
        })
        .collect()
}

/// Who the device is and where it connects.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The edges' websocket addresses (`wss://`, comma-separated: it moves to another when its edge
    /// goes); `nats://` works too.
    pub url: String,
    pub member: MemberId,
    pub device_type: DeviceType,
    /// Where the app stands ([`Device::position`] when it last saved it; the default for a new
    /// device): what it missed is pulled from here.
    pub position: Position,
    /// Notifications per pull page.
    pub page_limit: u32,
    /// The device's own id, as its token names it. With it the device takes replies on its own
    /// inbox prefix and announces its presence, both of which an edge requires.
    pub device_id: Option<DeviceId>,
    /// The device token from the operator's identity system, sent as the NATS auth token.
    pub token: Option<String>,
    /// A CA certificate (PEM) to verify the edge's TLS certificate by, besides the system's.
    pub root_certificates: Option<PathBuf>,
    /// How often the device announces itself (with a `device_id`).
    pub presence_interval: Duration,
}

impl DeviceConfig {
    pub fn new(url: impl Into<String>, member: MemberId, device_type: DeviceType) -> Self {
        DeviceConfig {
            url: url.into(),
            member,
            device_type,
            position: Position::default(),
            page_limit: DEFAULT_PAGE_LIMIT,
            device_id: None,
            token: None,
            root_certificates: None,
            presence_interval: DEFAULT_PRESENCE_INTERVAL,
        }
    }
}

/// What the app gets from the device.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceEvent {
    /// A notification, once, whether it came by push or by pull.
    Notification(Notification),
    /// Notifications after the app's cursor are gone from the history (retention, or a reset
    /// history): the app should reload its state from the source of truth. Notifications that
    /// follow are the ones still retained.
    Resync,
}

/// Why the device could not go on.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: async_nats::ConnectError },
    #[error("cannot subscribe to pushes: {0}")]
    Subscribe(async_nats::SubscribeError),
    #[error("pull failed: {0}")]
    Pull(String),
    #[error("the pull service refused the request ({code}): {message}")]
    Refused { code: String, message: String },
    #[error("the connection is closed")]
    Closed,
}

/// Signals that pushes may have been missed, coalesced: any number of them before a catch-up ask
/// for that one catch-up.
#[derive(Default)]
struct MissedPushes {
    /// Set by a signal, cleared by the catch-up that answers it.
    owed: AtomicBool,
    /// Set by a reconnect: the catch-up it owes is followed by one more shortly after.
    reconnected: AtomicBool,
    /// Wakes a device waiting for pushes.
    wake: Notify,
}

impl MissedPushes {
    fn raise(&self) {
        self.owed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn raise_reconnected(&self) {
        self.reconnected.store(true, Ordering::SeqCst);
        self.raise();
    }

    /// Whether a signal came since the last call.
    fn take(&self) -> bool {
        self.owed.swap(false, Ordering::SeqCst)
    }
}

/// A connected device. Call [`Device::next`] in a loop.
pub struct Device {
    config: DeviceConfig,
    client: async_nats::Client,
    /// Pushes for this member and device type.
    pushes: Subscriber,
    /// Set by the connection when pushes may have been missed (reconnected, slow consumer).
    missed: Arc<MissedPushes>,
    /// A catch-up pull is owed (after a reconnect, or when too many pushes are remembered); kept
    /// until one succeeds.
    catch_up_owed: bool,
    /// When the next routine catch-up is due.
    next_routine_catch_up: tokio::time::Instant,
    /// The next catch-up is the one shortly after a (re)connect.
    after_connect: bool,
    /// What the app gets, merged from pushes and pages.
    merge: Merge,
    /// Announces the device while it is connected (with a device id).
    heartbeat: Option<Heartbeat>,
}

impl Device {
    /// Connects, subscribes, and pulls everything after `config.position` (or leaves that owed to the
    /// first `next` when the pull service does not answer yet).
    pub async fn connect(config: DeviceConfig) -> Result<Self, DeviceError> {
        let missed = Arc::new(MissedPushes::default());
        let reconnected = Arc::new(Notify::new());
        let (signal, announce) = (missed.clone(), reconnected.clone());
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("reno-device-{}", config.device_type))
            .event_callback(move |event| {
                let (signal, announce) = (signal.clone(), announce.clone());
                async move {
                    match event {
                        Event::Connected => {
                            debug!(%event, "reconnected; announcing and catching up");
                            announce.notify_one();
                            signal.raise_reconnected();
                        }
                        Event::SlowConsumer(_) => {
                            debug!(%event, "may have missed pushes; catching up");
                            signal.raise();
                        }
                        _ => {}
                    }
                }
            });
        if let Some(device_id) = &config.device_id {
            options = options.custom_inbox_prefix(subject::device_inbox_prefix(
                &config.member,
                &config.device_type,
                device_id,
            ));
        }
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        if let Some(certificates) = &config.root_certificates {
            options = options.add_root_certificates(certificates.clone());
        }
        let client = options
            .connect(
                server_addrs(&config.url)
                    .map_err(|source| DeviceError::Connect { url: config.url.clone(), source })?,
            )
            .await
            .map_err(|source| DeviceError::Connect { url: config.url.clone(), source })?;
        let pushes = client
            .subscribe(subject::push_subject(&config.member, &config.device_type))
            .await
            .map_err(DeviceError::Subscribe)?;
        let merge = Merge::new(config.member.clone(), config.device_type.clone(), config.position);
        // Announced before the first pull, so that what is written after that pull is pushed.
        let heartbeat = config.device_id.as_ref().map(|device_id| {
            let identity = (&config.member, &config.device_type, device_id);
            Heartbeat::start(client.clone(), identity, config.presence_interval, reconnected)
        });
        let mut device = Device {
            config,
            client,
            pushes,
            missed,
            catch_up_owed: true,
            next_routine_catch_up: tokio::time::Instant::now() + ROUTINE_CATCH_UP,
            after_connect: true,
            merge,
            heartbeat,
        };
        // The push subscription is in place, so nothing is missed from here on. If the pull service
        // cannot answer yet, the catch-up stays owed and the first `next` tries again.
        if let Err(error) = device.catch_up().await {
            warn!(%error, "catch-up at connect failed; will retry");
        }
        Ok(device)
    }

    /// The next notification (or resync signal). Pulls first when a catch-up is owed; an error
    /// leaves the device usable: call again to retry.
    pub async fn next(&mut self) -> Result<DeviceEvent, DeviceError> {
        loop {
            // What is queued came before anything a catch-up would bring: hand it out first, even
            // while the pull service is unreachable.
            if let Some(event) = self.merge.pop() {
                return Ok(event);
            }
            if self.missed.take() {
                self.catch_up_owed = true;
            }
            if self.catch_up_owed {
                self.catch_up().await?;
                continue;
            }
            tokio::select! {
                // A missed-pushes signal first: what it owes comes before pushes that follow it.
                biased;
                () = self.missed.wake.notified() => {}
                // Now and then, so the position (and its time) keeps up with what came by push.
                () = tokio::time::sleep_until(self.next_routine_catch_up) => self.catch_up_owed = true,
                push = self.pushes.next() => {
                    let Some(message) = push else { return Err(DeviceError::Closed) };
                    match Notification::decode(&message.payload) {
                        Ok(notification) => {
                            if self.merge.on_push(notification) {
                                self.catch_up_owed = true;
                            }
                        }
                        Err(error) => warn!(%error, "unreadable push dropped"),
                    }
                }
            }
        }
    }

    /// The position to persist and give back in [`DeviceConfig::position`]: every notification up
    /// to its cursor has been handed out by `next`. Pushes handed out above it come again after a
    /// restart from it (apply notifications idempotently).
    pub fn position(&self) -> Position {
        self.merge.handed()
    }

    /// The cursor of [`Device::position`].
    pub fn cursor(&self) -> u64 {
        self.merge.handed().cursor
    }

    /// Pulls every page after the cursor now (call at app lifecycle points such as resume).
    pub async fn catch_up(&mut self) -> Result<(), DeviceError> {
        // Whatever signals came before this catch-up are answered by it: one catch-up, however
        // many of them there were.
        self.missed.take();
        if self.missed.reconnected.swap(false, Ordering::SeqCst) {
            self.after_connect = true;
        }
        loop {
            let page = self.pull_page().await?;
            let more = page.more;
            self.merge.on_page(page);
            if !more {
                break;
            }
        }
        self.catch_up_owed = false;
        let next =
            if std::mem::take(&mut self.after_connect) { AFTER_CONNECT_CATCH_UP } else { ROUTINE_CATCH_UP };
        self.next_routine_catch_up = tokio::time::Instant::now() + next;
        Ok(())
    }

    /// Says goodbye (presence offline) and closes the connection, after what was sent is flushed.
    pub async fn close(mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.stop(&self.client).await;
        }
        let _ = self.client.drain().await;
    }

    async fn pull_page(&self) -> Result<PullPage, DeviceError> {
        let request = self.merge.pulled().request(self.config.page_limit);
        let subject = subject::pull_subject(&self.config.member, &self.config.device_type);
        let response =
            tokio::time::timeout(PULL_TIMEOUT, self.client.request(subject, request.encode().into()))
                .await
                .map_err(|_| DeviceError::Pull(format!("no answer within {PULL_TIMEOUT:?}")))?
                .map_err(|error| DeviceError::Pull(error.to_string()))?;
        if let Some(headers) = &response.headers
            && let Some(message) = headers.get("Nats-Service-Error")
        {
            let code =
                headers.get("Nats-Service-Error-Code").map(|code| code.to_string()).unwrap_or_default();
            return Err(DeviceError::Refused { code, message: message.to_string() });
        }
        PullPage::decode(&response.payload).map_err(|error| DeviceError::Pull(error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_missed_push_signals_ask_for_one_catch_up() {
        let missed = MissedPushes::default();
        for _ in 0..5 {
            missed.raise();
        }
        assert!(missed.take());
        assert!(!missed.take(), "one catch-up answers them all");
        missed.raise();
        assert!(missed.take(), "a signal after the catch-up asks for another");
    }
}
