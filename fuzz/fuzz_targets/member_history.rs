//! A member's history document as workers and the pull service read it from the history bucket:
//! `MemberHistory::decode`, then what a worker does to it before writing it back (`settle` with the
//! document's revision, `prune` by age, count and size). What is accepted has safe tokens, reads
//! back as the same history, serves notifications devices can read, and keeps its entries in order
//! through `settle` and `prune`; `prune` drops only the oldest entries and records what it dropped.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reno_fuzz::{assert_round_trip, depth, is_token};
use reno_model::{
    MemberId, Notification, PullPage, Value,
    codec::{self, DecodeError, MAX_NESTING},
    history::{Entry, MAX_BYTES, MAX_DOCUMENT_BYTES, MemberHistory},
};

fuzz_target!(|data: &[u8]| {
    let decoded = MemberHistory::decode(data);
    if data.len() > MAX_DOCUMENT_BYTES {
        assert!(matches!(decoded, Err(DecodeError::TooLarge { .. })));
    }
    let Ok(history) = decoded else { return };
    check_tokens(&history);
    check_round_trip(&history, data);
    check_served(&history);

    let choice = Choice::of(data, &history);
    let mut settled = history.clone();
    settled.settle(choice.revision, choice.stored_ms);
    check_settled(&history, &settled, &choice);
    check_round_trip(&settled, data);

    let mut pruned = settled.clone();
    pruned.prune(choice.now_ms, Some(choice.retention_ms), choice.max_entries);
    check_pruned(&settled, &pruned, &choice);
    check_round_trip(&pruned, data);
});

fn check_tokens(history: &MemberHistory) {
    for entry in &history.entries {
        let tokens = [entry.id.as_str(), entry.event_type.as_str()].into_iter();
        let targets = entry.targets.iter().map(|target| target.as_str());
        for token in tokens.chain(targets).chain(entry.collapse_key.as_ref().map(|key| key.as_str())) {
            assert!(is_token(token), "{token:?} was accepted as a token");
        }
    }
    for device_type in history.pruned.keys() {
        assert!(is_token(device_type.as_str()), "{device_type:?} was accepted as a token");
    }
}

/// Encoded and read again, the history is the same value (the same bytes for one holding a NaN,
/// which is not equal to itself).
fn check_round_trip(history: &MemberHistory, input: &[u8]) {
    let encoded = assert_round_trip(history, input, MemberHistory::encode, MemberHistory::decode);
    if let Ok(again) = MemberHistory::decode(&encoded)
        && !history.entries.iter().any(|entry| has_nan(&entry.payload))
    {
        assert_eq!(&again, history, "a history reads back as another");
    }
}

fn has_nan(value: &Value) -> bool {
    match value {
        Value::Float(float) => float.is_nan(),
        Value::Array(items) => items.iter().any(has_nan),
        Value::Map(entries) => entries.iter().any(|(key, item)| has_nan(key) || has_nan(item)),
        Value::Tag(_, inner) => has_nan(inner),
        _ => false,
    }
}

/// Every entry whose payload an envelope can carry (its map above the payload) becomes a
/// notification a device reads, by push and in a pull page.
fn check_served(history: &MemberHistory) {
    let member = MemberId::new("m1").expect("a valid member");
    for entry in history.entries.iter().filter(|entry| depth(&entry.payload) < MAX_NESTING) {
        let Some(device_type) = entry.targets.first() else { continue };
        let notification = entry.notification(&member, device_type);
        let encoded = notification.encode();
        let read = Notification::decode(&encoded).expect("devices read the push of a stored entry");
        assert_eq!(read.encode(), encoded);
        let page = PullPage {
            notifications: vec![read],
            next_cursor: entry.seq,
            more: false,
            resync: false,
            epoch: history.created,
            next_cursor_time_ms: Some(entry.written_ms),
        };
        if let Err(error) = PullPage::decode(&page.encode()) {
            panic!("devices cannot read the page of a stored entry: {error}");
        }
    }
}

/// The revision, times and limits a worker would use, made from the input: what a fuzzer mutates
/// changes them too, and the revision is mostly, as in the bucket, above every seq written.
struct Choice {
    revision: u64,
    stored_ms: u64,
    now_ms: u64,
    retention_ms: u64,
    max_entries: usize,
}

impl Choice {
    fn of(data: &[u8], history: &MemberHistory) -> Choice {
        // FNV-1a of the input.
        let hash = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        });
        let highest = history.entries.iter().map(|entry| entry.seq).max().unwrap_or(0);
        let revision = match hash % 8 {
            0 => hash >> 3,
            1 => highest,
            _ => highest.saturating_add(1 + (hash >> 3) % 4),
        };
        let written: Vec<u64> = history.entries.iter().map(|entry| entry.written_ms).collect();
        let pick = |shift: u32| written.get((hash >> shift) as usize % written.len().max(1)).copied();
        let retention_ms = 1u64 << ((hash >> 8) % 48);
        Choice {
            revision,
            stored_ms: written.iter().max().map_or(hash >> 16, |latest| latest.saturating_add(1)),
            // Often the moment an entry of the history expires, so that some do and some do not.
            now_ms: pick(20).map_or(hash >> 24, |time| time.saturating_add(retention_ms)),
            retention_ms,
            max_entries: ((hash >> 40) % 6) as usize,
        }
    }
}

/// Ascending seqs, entries of the last write (seq 0) last, as the module documents.
fn in_order(entries: &[Entry]) -> bool {
    let written = entries.iter().take_while(|entry| entry.seq != 0).count();
    entries[..written].windows(2).all(|pair| pair[0].seq <= pair[1].seq)
        && entries[written..].iter().all(|entry| entry.seq == 0)
}

fn check_settled(before: &MemberHistory, after: &MemberHistory, choice: &Choice) {
    assert_eq!(after.entries.len(), before.entries.len());
    for (old, new) in before.entries.iter().zip(&after.entries) {
        let expected = match old.seq {
            0 => (choice.revision, choice.stored_ms),
            _ => (old.seq, old.written_ms),
        };
        assert_eq!((new.seq, new.written_ms), expected);
    }
    assert_eq!(after.created, if before.created == 0 { choice.revision } else { before.created });
    assert_eq!(after.lost_before, before.lost_before);
    let highest = before.entries.iter().map(|entry| entry.seq).max().unwrap_or(0);
    if in_order(&before.entries) && choice.revision > highest {
        assert!(in_order(&after.entries), "settle({}) put entries out of order", choice.revision);
    }
}

fn check_pruned(before: &MemberHistory, after: &MemberHistory, choice: &Choice) {
    // Only the oldest go: what is left is the end of what was there.
    let dropped = before.entries.len() - after.entries.len();
    // Compared as bytes: a payload may hold a NaN, which is not equal to itself.
    let bytes = |entries: &[Entry]| entries.iter().map(codec::encode).collect::<Vec<_>>();
    assert_eq!(
        bytes(&after.entries),
        bytes(&before.entries[dropped..]),
        "prune dropped other than the oldest"
    );
    assert_eq!((after.created, after.lost_before), (before.created, before.lost_before));
    if in_order(&before.entries) {
        assert!(in_order(&after.entries));
    }
    // The model: first every expired entry at the front, then the oldest beyond the count (and
    // size), never the last one.
    let expired = |entry: &Entry| {
        entry.seq != 0 && entry.written_ms.saturating_add(choice.retention_ms) <= choice.now_ms
    };
    let old = before.entries.iter().take_while(|entry| expired(entry)).count();
    let bytes: usize = before.entries[old..].iter().map(Entry::encoded_len).sum();
    if bytes <= MAX_BYTES {
        let excess = (before.entries.len() - old).saturating_sub(choice.max_entries.max(1));
        assert_eq!(dropped, old + excess, "prune dropped {dropped} entries");
    }
    // Each device type remembers the highest seq it lost; the others are as they were.
    for (device_type, seq) in &after.pruned {
        let lost = before.entries[..dropped]
            .iter()
            .filter(|entry| entry.targets.contains(device_type))
            .map(|entry| entry.seq)
            .max();
        let had = before.pruned.get(device_type).copied();
        assert_eq!(Some(*seq), had.max(lost), "pruned seq of {device_type}");
    }
    for (device_type, seq) in &before.pruned {
        assert!(after.pruned.get(device_type).is_some_and(|now| now >= seq), "{device_type} forgot");
    }
}
