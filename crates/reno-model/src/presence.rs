//! Presence on the wire: what a device announces (`reno.presence.<member>.<device_type>.<device_id>`)
//! and what reno keeps of it per device.

use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError};

/// The largest announcement accepted, encoded.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 256;

/// A device's announcement: CBOR `{"status": "online"}` when it connects and every heartbeat
/// interval, `{"status": "offline"}` when it closes cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announcement {
    pub status: Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Online,
    Offline,
}

impl Announcement {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes, MAX_ANNOUNCEMENT_BYTES)
    }
}

/// What reno keeps per online device: when it last announced itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceEntry {
    /// The last announcement, milliseconds since the Unix epoch (reno's clock).
    pub seen_ms: u64,
}

impl PresenceEntry {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes, MAX_ANNOUNCEMENT_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_read_back_and_refuse_anything_else() {
        let online = Announcement { status: Status::Online };
        assert_eq!(Announcement::decode(&online.encode()).unwrap(), online);
        let unknown = codec::encode(&ciborium::Value::Map(vec![(
            ciborium::Value::Text("status".into()),
            ciborium::Value::Text("away".into()),
        )]));
        assert!(Announcement::decode(&unknown).is_err());
        assert!(Announcement::decode(&[0u8; 300]).is_err());
    }
}
