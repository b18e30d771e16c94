//! What devices receive, by push and by pull: a notification with its position in the history, and
//! the pull request and page that carry catch-up.

use ciborium::Value;
use serde::{Deserialize, Serialize};

use crate::{
    codec::{self, DecodeError, MAX_EVENT_BYTES},
    envelope::Envelope,
    token::{CollapseKey, DeviceType, EventId, EventType, MemberId},
};

/// The largest notification accepted: an event plus the fields reno adds.
pub const MAX_NOTIFICATION_BYTES: usize = MAX_EVENT_BYTES + 1024;
/// The largest pull page, encoded; stays below nats-server's default `max_payload` of 1 MiB. A
/// page holds at least one notification whatever its size, and more only while they fit.
pub const MAX_PAGE_BYTES: usize = 900 * 1024;
/// Notifications per pull page when the request does not say.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
/// The most notifications per pull page a device may ask for.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// One notification for one device type of one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// Position in the history: increases with every history write, so a device keeps the highest
    /// it has pulled as its cursor. The same notification has the same `seq` by push and by pull.
    pub seq: u64,
    /// The event id the service gave.
    pub id: EventId,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub member: MemberId,
    /// The device type this copy is for.
    pub device_type: DeviceType,
    /// When it happened at the source (publisher's clock), milliseconds since the Unix epoch.
    pub occurred_at_ms: u64,
    /// When nats-server received the event, milliseconds since the Unix epoch.
    pub published_at_ms: u64,
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<CollapseKey>,
}

impl Notification {
    /// The notification for one device type, before its history position is known (`seq` 0).
    pub fn from_event(envelope: &Envelope, device_type: &DeviceType, published_at_ms: u64) -> Self {
        Notification {
            seq: 0,
            id: envelope.id.clone(),
            event_type: envelope.event_type.clone(),
            member: envelope.member.clone(),
            device_type: device_type.clone(),
            occurred_at_ms: envelope.occurred_at_ms,
            published_at_ms,
            payload: envelope.payload.clone(),
            collapse_key: envelope.collapse_key.clone(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes, MAX_NOTIFICATION_BYTES)
    }
}

/// A device's request for what it missed (CBOR, on `reno.pull.<member>.<device_type>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// The highest `seq` the device has; 0 for a device with nothing yet.
    pub cursor: u64,
    /// The most notifications wanted in this page (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The `epoch` of the page the cursor came from: if the history was reset since, the cursor
    /// means nothing there and the device is told to resync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

impl PullRequest {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes, 1024)
    }
}

/// One page of a member's history for a device type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullPage {
    /// In `seq` order, all above the request's cursor.
    pub notifications: Vec<Notification>,
    /// The cursor for the next request: the `seq` of the last notification, or the history's end.
    pub next_cursor: u64,
    /// More notifications wait after this page: ask again with `next_cursor`.
    pub more: bool,
    /// The cursor is older than the retained history, or from a history that was reset: some
    /// notifications may be gone, so the device should resync its state from the source of truth.
    pub resync: bool,
    /// Identifies this incarnation of the history (when its bucket was created, in nanoseconds
    /// since the Unix epoch): keep it with the cursor and send it back with the next request.
    pub epoch: u64,
}

impl PullPage {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes, MAX_PAGE_BYTES + 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_messages_round_trip() {
        let request = PullRequest { cursor: 7, limit: Some(10), epoch: Some(3) };
        assert_eq!(PullRequest::decode(&request.encode()).unwrap(), request);
        let page = PullPage { notifications: vec![], next_cursor: 7, more: false, resync: true, epoch: 3 };
        assert_eq!(PullPage::decode(&page.encode()).unwrap(), page);
    }
}
