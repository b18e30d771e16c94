//! A member's history as it is stored: one document per member, holding the notifications of every
//! device type of that member in the order they were written, so that a pull reads one message
//! whatever the size of the whole history. Workers rewrite the document with a compare-and-set for
//! each event; the pull service reads it and picks out one device type's notifications above a
//! cursor.
//!
//! An entry's `seq` is the history position of the write that added it: the revision of the
//! document that first held it. A document cannot contain its own revision, so an entry added by
//! the write that produced the document carries `seq` 0 and takes the document's revision (and
//! time) when read; the next write fills it in.

use std::collections::BTreeMap;

use ciborium::Value;
use serde::{Deserialize, Serialize};

use crate::{
    codec::{self, DecodeError, MAX_NESTING},
    notification::Notification,
    token::{CollapseKey, DeviceType, EventId, EventType, MemberId},
};

/// How many notifications a member's history holds by default; the oldest make room for new ones.
/// Provisioning sets the number in force (`streams.history_max_entries`).
pub const DEFAULT_MAX_ENTRIES: usize = 200;
/// The most bytes a member's history holds, encoded; the oldest entries make room for new ones
/// (the newest stays, whatever its size). Below the server's message limit (1 MiB) with room for
/// one more maximal entry, and what one write of the document costs at most.
pub const MAX_BYTES: usize = 768 * 1024;
/// The largest document read back: one more maximal entry than [`MAX_BYTES`] allows, for margin.
pub const MAX_DOCUMENT_BYTES: usize = MAX_BYTES + 2 * crate::notification::MAX_NOTIFICATION_BYTES;

/// The stored history of one member.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberHistory {
    /// In the order they were written: ascending `seq`, entries of the last write (seq 0) last.
    pub entries: Vec<Entry>,
    /// Per device type, the highest `seq` of an entry dropped for room or age: a device whose
    /// cursor is below it may have missed that entry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pruned: BTreeMap<DeviceType, u64>,
    /// The position of the write that created this document (0: the document's own revision).
    /// A cursor below it comes from an earlier document of the member that expired.
    pub created: u64,
    /// The position of an operator's delete or purge of the member's history that this document
    /// replaced (0: none): a cursor below it lost whatever came after it, for certain.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost_before: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// One notification of a member, for the device types in `targets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Its history position (0: the document's revision, see the module documentation).
    pub seq: u64,
    /// When the write that added it was stored, by the server's clock, in milliseconds since the
    /// Unix epoch (0: the document's own time).
    pub written_ms: u64,
    /// The device types it is for. Collapse takes device types away from an older entry; an entry
    /// left with none is removed.
    pub targets: Vec<DeviceType>,
    /// The priority stream message it was written from (`<stream>:<seq>`): tells a redelivery of
    /// the same message from another copy of the event.
    pub source: String,
    pub id: EventId,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub occurred_at_ms: u64,
    pub published_at_ms: u64,
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<CollapseKey>,
}

impl Entry {
    /// Whether it is the same notification as `other` (same type, and same collapse key for
    /// collapsing types, same event id for the others).
    pub fn same_key(&self, event_type: &EventType, id: &EventId, collapse_key: Option<&CollapseKey>) -> bool {
        self.event_type == *event_type
            && match (&self.collapse_key, collapse_key) {
                (Some(stored), Some(incoming)) => stored == incoming,
                (None, None) => self.id == *id,
                _ => false,
            }
    }

    /// This entry as the notification a device of `device_type` receives.
    pub fn notification(&self, member: &MemberId, device_type: &DeviceType) -> Notification {
        Notification {
            seq: self.seq,
            id: self.id.clone(),
            event_type: self.event_type.clone(),
            member: member.clone(),
            device_type: device_type.clone(),
            occurred_at_ms: self.occurred_at_ms,
            published_at_ms: self.published_at_ms,
            payload: self.payload.clone(),
            collapse_key: self.collapse_key.clone(),
        }
    }

    /// The encoded size of this entry in a document.
    pub fn encoded_len(&self) -> usize {
        codec::encoded_len(self)
    }
}

impl MemberHistory {
    /// Gives the entries of the write that produced this document (seq 0) their position and time:
    /// the document's `revision` and the time the server stored it.
    pub fn settle(&mut self, revision: u64, stored_ms: u64) {
        for entry in self.entries.iter_mut().filter(|entry| entry.seq == 0) {
            entry.seq = revision;
            entry.written_ms = stored_ms;
        }
        if self.created == 0 {
            self.created = revision;
        }
    }

    /// Drops entries older than `retention` and, oldest first, those beyond `max_entries` and
    /// [`MAX_BYTES`] (never the newest), recording what each device type lost.
    pub fn prune(&mut self, now_ms: u64, retention_ms: Option<u64>, max_entries: usize) {
        if let Some(retention_ms) = retention_ms {
            let expired =
                |entry: &Entry| entry.seq != 0 && entry.written_ms.saturating_add(retention_ms) <= now_ms;
            while self.entries.first().is_some_and(expired) {
                let dropped = self.entries.remove(0);
                self.record_pruned(&dropped);
            }
        }
        let mut bytes: usize = self.entries.iter().map(Entry::encoded_len).sum();
        while self.entries.len() > 1 && (self.entries.len() > max_entries || bytes > MAX_BYTES) {
            let dropped = self.entries.remove(0);
            bytes -= dropped.encoded_len();
            self.record_pruned(&dropped);
        }
    }

    fn record_pruned(&mut self, dropped: &Entry) {
        for device_type in &dropped.targets {
            let pruned = self.pruned.entry(device_type.clone()).or_default();
            *pruned = (*pruned).max(dropped.seq);
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Each payload is three levels deeper than in an envelope (the document, its list, the entry).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_nested(bytes, MAX_DOCUMENT_BYTES, MAX_NESTING + 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, written_ms: u64, targets: &[&str], bytes: usize) -> Entry {
        Entry {
            seq,
            written_ms,
            targets: targets.iter().map(|target| DeviceType::new(*target).unwrap()).collect(),
            source: format!("RENO_NORMAL:{seq}"),
            id: EventId::new(format!("e{seq}")).unwrap(),
            event_type: EventType::new("t").unwrap(),
            occurred_at_ms: written_ms,
            published_at_ms: written_ms,
            payload: Value::Bytes(vec![0; bytes]),
            collapse_key: None,
        }
    }

    fn device(name: &str) -> DeviceType {
        DeviceType::new(name).unwrap()
    }

    #[test]
    fn a_document_over_the_limit_is_refused_before_it_is_parsed() {
        // A valid document whose encoding is over the limit (the fuzz target's inputs stay small).
        let history = MemberHistory {
            entries: (1..=20).map(|seq| entry(seq, seq, &["tv"], 60 * 1024)).collect(),
            ..Default::default()
        };
        let bytes = history.encode();
        assert!(bytes.len() > MAX_DOCUMENT_BYTES);
        assert_eq!(
            MemberHistory::decode(&bytes),
            Err(DecodeError::TooLarge { size: bytes.len(), max: MAX_DOCUMENT_BYTES })
        );
        // At the limit, the same kind of document reads back.
        let fits = MemberHistory { entries: history.entries[..12].to_vec(), ..Default::default() };
        assert!(fits.encode().len() <= MAX_DOCUMENT_BYTES);
        assert_eq!(MemberHistory::decode(&fits.encode()).unwrap(), fits);
    }

    #[test]
    fn the_last_write_takes_the_documents_position() {
        let mut history = MemberHistory {
            entries: vec![entry(7, 70, &["tv"], 1), entry(0, 0, &["tv"], 1)],
            ..Default::default()
        };
        history.settle(12, 120);
        assert_eq!(
            history.entries.iter().map(|entry| (entry.seq, entry.written_ms)).collect::<Vec<_>>(),
            [(7, 70), (12, 120)]
        );
        assert_eq!(history.created, 12);
        let decoded = MemberHistory::decode(&history.encode()).unwrap();
        assert_eq!(decoded, history);
    }

    #[test]
    fn old_and_excess_entries_make_room_and_are_recorded() {
        let mut history = MemberHistory {
            entries: vec![
                entry(1, 10, &["tv", "mobile"], 1),
                entry(2, 20, &["tv"], 1),
                entry(3, 1000, &["mobile"], 1),
            ],
            ..Default::default()
        };
        history.prune(1010, Some(100), DEFAULT_MAX_ENTRIES);
        assert_eq!(history.entries.iter().map(|entry| entry.seq).collect::<Vec<_>>(), [3]);
        assert_eq!(history.pruned, BTreeMap::from([(device("tv"), 2), (device("mobile"), 1)]));

        let mut full = MemberHistory {
            entries: (1..=13).map(|seq| entry(seq, seq, &["tv"], 1)).collect(),
            ..Default::default()
        };
        full.prune(0, None, 10);
        assert_eq!(full.entries.len(), 10);
        assert_eq!(full.pruned[&device("tv")], 3);

        let mut big = MemberHistory {
            entries: vec![entry(1, 1, &["tv"], 500_000), entry(2, 2, &["tv"], 500_000)],
            ..Default::default()
        };
        big.prune(0, None, DEFAULT_MAX_ENTRIES);
        assert_eq!(big.entries.iter().map(|entry| entry.seq).collect::<Vec<_>>(), [2]);
        // The newest stays, whatever its size.
        let mut alone = MemberHistory { entries: vec![entry(1, 1, &["tv"], 800_000)], ..Default::default() };
        alone.prune(0, None, DEFAULT_MAX_ENTRIES);
        assert_eq!(alone.entries.len(), 1);
    }
}
