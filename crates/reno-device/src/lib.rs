//! The reno device SDK: connects a device to its edge over websocket, subscribes to the pushes for its
//! member and device type, pulls what it missed since its cursor on start, after every reconnect and
//! whenever the app asks (lifecycle points), drops what arrives twice by push and pull, and hands the
//! app one stream of notifications. Push is best effort; pull makes it reliable.

#![forbid(unsafe_code)]

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    time::Duration,
};

use async_nats::{Event, Subscriber};
use futures::StreamExt;
use reno_model::{
    CollapseKey, DeviceType, EventType, MemberId, Notification, Position, PullPage,
    notification::DEFAULT_PAGE_LIMIT, subject,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Pushes remembered above the cursor before the SDK pulls to move its cursor on.
const MAX_SEEN: usize = 10_000;
/// How often a connected device pulls even when nothing says it missed a push: keeps its position
/// and that position's time fresh (well inside any sensible history retention), and picks up
/// anything a silently lost push left out.
const ROUTINE_CATCH_UP: Duration = Duration::from_secs(600);
/// How long one pull page may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(10);

/// Who the device is and where it connects.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The edge's websocket address (`ws://` or `wss://`); `nats://` works too.
    pub url: String,
    pub member: MemberId,
    pub device_type: DeviceType,
    /// Where the app stands ([`Device::position`] when it last saved it; the default for a new
    /// device): what it missed is pulled from here.
    pub position: Position,
    /// Notifications per pull page.
    pub page_limit: u32,
}

impl DeviceConfig {
    pub fn new(url: impl Into<String>, member: MemberId, device_type: DeviceType) -> Self {
        DeviceConfig {
            url: url.into(),
            member,
            device_type,
            position: Position::default(),
            page_limit: DEFAULT_PAGE_LIMIT,
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

/// A connected device. Call [`Device::next`] in a loop.
pub struct Device {
    config: DeviceConfig,
    client: async_nats::Client,
    /// Pushes for this member and device type.
    pushes: Subscriber,
    /// Signals from the connection that pushes may have been missed (reconnected, slow consumer).
    missed: mpsc::UnboundedReceiver<()>,
    /// A catch-up pull is owed (after a reconnect, or when `seen` is full); kept until one succeeds.
    catch_up_owed: bool,
    /// When the next routine catch-up is due.
    next_routine_catch_up: tokio::time::Instant,
    /// Every history entry up to here has been pulled: the next pull starts after it.
    pulled: Position,
    /// Every history entry up to here has been handed to the app: the position to persist.
    handed: Position,
    /// For collapsing notifications, the newest seq handed out per (type, collapse key): an older
    /// one arriving late (pushes from concurrent workers can cross) is stale state and dropped.
    newest: HashMap<(EventType, CollapseKey), u64>,
    /// Seqs above `pulled` already queued or handed (pushes), so that a pull does not repeat them.
    seen: BTreeSet<u64>,
    /// Events ready for the app, in order, each with the position that holds once it is handed out.
    ready: VecDeque<(DeviceEvent, Option<Position>)>,
}

impl Device {
    /// Connects, subscribes, and pulls everything after `config.position` (or leaves that owed to the
    /// first `next` when the pull service does not answer yet).
    pub async fn connect(config: DeviceConfig) -> Result<Self, DeviceError> {
        let (missed_sender, missed) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name(format!("reno-device-{}", config.device_type))
            .event_callback(move |event| {
                let missed_sender = missed_sender.clone();
                async move {
                    if matches!(event, Event::Connected | Event::SlowConsumer(_)) {
                        debug!(%event, "may have missed pushes; catching up");
                        let _ = missed_sender.send(());
                    }
                }
            })
            .connect(&config.url)
            .await
            .map_err(|source| DeviceError::Connect { url: config.url.clone(), source })?;
        let pushes = client
            .subscribe(subject::push_subject(&config.member, &config.device_type))
            .await
            .map_err(DeviceError::Subscribe)?;
        let position = config.position;
        let mut device = Device {
            config,
            client,
            pushes,
            missed,
            catch_up_owed: true,
            next_routine_catch_up: tokio::time::Instant::now() + ROUTINE_CATCH_UP,
            pulled: position,
            handed: position,
            newest: HashMap::new(),
            seen: BTreeSet::new(),
            ready: VecDeque::new(),
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
            if let Some((event, position)) = self.ready.pop_front() {
                if let Some(position) = position {
                    self.handed = position;
                }
                match &event {
                    DeviceEvent::Notification(notification) if self.superseded(notification) => continue,
                    // Collapse state from before a resync says nothing about the history after it.
                    DeviceEvent::Resync => self.newest.clear(),
                    DeviceEvent::Notification(_) => {}
                }
                return Ok(event);
            }
            if self.catch_up_owed {
                self.catch_up().await?;
                continue;
            }
            tokio::select! {
                // A missed-pushes signal first: what it owes comes before pushes that follow it.
                biased;
                Some(()) = self.missed.recv() => self.catch_up_owed = true,
                // Now and then, so the position (and its time) keeps up with what came by push.
                () = tokio::time::sleep_until(self.next_routine_catch_up) => self.catch_up_owed = true,
                push = self.pushes.next() => {
                    let Some(message) = push else { return Err(DeviceError::Closed) };
                    match Notification::decode(&message.payload) {
                        Ok(notification) => self.accept(notification, None),
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
        self.handed
    }

    /// The cursor of [`Device::position`].
    pub fn cursor(&self) -> u64 {
        self.handed.cursor
    }

    /// Whether a newer notification with the same collapse key was handed out already; if not,
    /// this one becomes the newest.
    fn superseded(&mut self, notification: &Notification) -> bool {
        let Some(collapse_key) = &notification.collapse_key else { return false };
        if self.newest.len() >= MAX_SEEN {
            self.newest.clear();
        }
        let newest = self.newest.entry((notification.event_type.clone(), collapse_key.clone())).or_insert(0);
        if notification.seq < *newest {
            return true;
        }
        *newest = notification.seq;
        false
    }

    /// Pulls every page after the cursor now (call at app lifecycle points such as resume).
    pub async fn catch_up(&mut self) -> Result<(), DeviceError> {
        loop {
            let page = self.pull_page().await?;
            let end = page.next_position();
            if page.resync {
                // The history restarts below or beyond our cursor: take the page as it comes. Seqs
                // stay unique within an epoch, so what came by push is still known then; a new
                // epoch starts its seqs over.
                self.ready.push_back((DeviceEvent::Resync, None));
                if self.pulled.epoch != Some(page.epoch) {
                    self.seen.clear();
                }
                self.pulled = Position { cursor: 0, ..end };
            }
            for notification in page.notifications {
                let at = Position {
                    cursor: notification.seq,
                    epoch: Some(page.epoch),
                    // The event's receive time comes before its history write: a safe stand-in.
                    cursor_time_ms: Some(notification.published_at_ms),
                };
                self.accept(notification, Some(at));
            }
            // The page's end becomes the app's position once everything queued before it is
            // handed out (within an epoch, no queued position lies beyond it).
            self.pulled = end;
            match self.ready.back_mut() {
                Some((_, position)) => *position = Some(end),
                None => self.handed = end,
            }
            self.seen.retain(|seq| *seq > end.cursor);
            if !page.more {
                break;
            }
        }
        self.catch_up_owed = false;
        self.next_routine_catch_up = tokio::time::Instant::now() + ROUTINE_CATCH_UP;
        Ok(())
    }

    async fn pull_page(&self) -> Result<PullPage, DeviceError> {
        let request = self.pulled.request(self.config.page_limit);
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

    /// Queues a notification for the app unless it was queued before or is not this device's;
    /// `position` is what the app's position becomes once it is handed out (pushes leave it as is).
    fn accept(&mut self, notification: Notification, position: Option<Position>) {
        if notification.member != self.config.member || notification.device_type != self.config.device_type {
            warn!(seq = notification.seq, "notification for another member or device type dropped");
            return;
        }
        if notification.seq <= self.pulled.cursor || !self.seen.insert(notification.seq) {
            return;
        }
        if self.seen.len() > MAX_SEEN {
            self.catch_up_owed = true;
        }
        self.ready.push_back((DeviceEvent::Notification(notification), position));
    }
}
