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

/// Where a device stands in the history: what it persists between runs and sends with each pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// The highest `seq` it has; 0 for a device with nothing yet.
    pub cursor: u64,
    /// The history epoch the cursor belongs to (a page's `epoch`).
    pub epoch: Option<u64>,
    /// When the history entry at the cursor was written (or any earlier time), in milliseconds
    /// since the Unix epoch: tells entries lost to retention from entries replaced by collapse.
    pub cursor_time_ms: Option<u64>,
}

impl Position {
    /// The request for the page after this position.
    pub fn request(&self, limit: u32) -> PullRequest {
        PullRequest {
            cursor: self.cursor,
            limit: Some(limit),
            epoch: self.epoch,
            cursor_time_ms: self.cursor_time_ms,
        }
    }
}

/// `cursor[:epoch[:cursor_time_ms]]`, with empty parts for unknown values: one string to keep.
impl std::fmt::Display for Position {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let part = |value: Option<u64>| value.map(|value| value.to_string()).unwrap_or_default();
        match (self.epoch, self.cursor_time_ms) {
            (None, None) => write!(formatter, "{}", self.cursor),
            (epoch, None) => write!(formatter, "{}:{}", self.cursor, part(epoch)),
            (epoch, time) => write!(formatter, "{}:{}:{}", self.cursor, part(epoch), part(time)),
        }
    }
}

impl std::str::FromStr for Position {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let malformed =
            || format!("{text:?} is not a position: use CURSOR[:EPOCH[:CURSOR_TIME_MS]] with whole numbers");
        let number = |part: &str| part.parse::<u64>().map_err(|_| malformed());
        let optional = |part: Option<&str>| match part {
            None | Some("") => Ok(None),
            Some(part) => number(part).map(Some),
        };
        let mut parts = text.split(':');
        let cursor = number(parts.next().unwrap_or_default())?;
        let epoch = optional(parts.next())?;
        let cursor_time_ms = optional(parts.next())?;
        if parts.next().is_some() {
            return Err(malformed());
        }
        Ok(Position { cursor, epoch, cursor_time_ms })
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
    /// The `next_cursor_time_ms` of the page the cursor came from (or the `published_at_ms` of
    /// the notification at the cursor): lets the service tell entries after the cursor that
    /// expired (resync) from entries that were only replaced by collapse (no resync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_time_ms: Option<u64>,
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
    /// When the history entry at `next_cursor` was written, milliseconds since the Unix epoch, if
    /// known: keep it with the cursor and send it back as `cursor_time_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor_time_ms: Option<u64>,
}

impl PullPage {
    /// The position after this page.
    pub fn next_position(&self) -> Position {
        Position {
            cursor: self.next_cursor,
            epoch: Some(self.epoch),
            cursor_time_ms: self.next_cursor_time_ms,
        }
    }
}

impl PullPage {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// A page holds each payload two levels deeper than an envelope (its own map and array), so it
    /// is read with two more levels, and any page of valid notifications reads back.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_nested(bytes, MAX_PAGE_BYTES + 1024, codec::MAX_NESTING + 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_back_as_written() {
        let cases = [
            (Position { cursor: 7, epoch: None, cursor_time_ms: None }, "7"),
            (Position { cursor: 7, epoch: Some(3), cursor_time_ms: None }, "7:3"),
            (Position { cursor: 7, epoch: Some(3), cursor_time_ms: Some(9) }, "7:3:9"),
            (Position { cursor: 7, epoch: None, cursor_time_ms: Some(9) }, "7::9"),
        ];
        for (position, text) in cases {
            assert_eq!(position.to_string(), text);
            assert_eq!(text.parse::<Position>().unwrap(), position);
        }
        for bad in ["", "x", "7:y", "7:3:9:1", "-1"] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pull_messages_round_trip() {
        let request = PullRequest { cursor: 7, limit: Some(10), epoch: Some(3), cursor_time_ms: Some(5) };
        assert_eq!(PullRequest::decode(&request.encode()).unwrap(), request);
        let page = PullPage {
            notifications: vec![],
            next_cursor: 7,
            more: false,
            resync: true,
            epoch: 3,
            next_cursor_time_ms: None,
        };
        assert_eq!(PullPage::decode(&page.encode()).unwrap(), page);
    }
}
