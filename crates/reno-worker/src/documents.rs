//! The members' documents one priority wrote last, kept so that a member's next event is written on
//! top of its document without reading it first (decision 26). Bounded by the bytes of the
//! documents as stored; the ones written longest ago leave first. A plain map behind a mutex: it
//! costs a hash and two small allocations per event, where a general-purpose cache with admission
//! and expiry cost the worker tens of microseconds per event when nearly every member is new.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use bytes::Bytes;
use reno_model::{MemberId, history::MemberHistory};

/// A member's document as this worker wrote it. It is where the member's history stands unless
/// another writer moved it on since (another priority's worker, another worker that took the
/// partition over, an operator's delete, its expiry); the next write is conditional on its
/// revision, so a document moved on is found out by the server's refusal and read again.
pub(crate) struct Document {
    pub revision: u64,
    /// When it was written, by this worker's reading of the server's clock: the time of the
    /// entries that write added (the server's own stamp is not in its answer).
    pub written_ms: u64,
    /// As stored, so that what it weighs is what it holds.
    pub encoded: Bytes,
}

impl Document {
    /// The history it holds, settled as a read of it would be; `None` if it cannot be decoded
    /// (never expected: this worker encoded it).
    pub fn history(&self) -> Option<(u64, MemberHistory)> {
        let mut history = MemberHistory::decode(&self.encoded).ok()?;
        history.settle(self.revision, self.written_ms);
        Some((self.revision, history))
    }

    /// Its bytes and what keeping it costs besides: the member's id twice, the map's and the
    /// queue's slots.
    fn weight(&self) -> usize {
        self.encoded.len() + 256
    }
}

/// The documents of one priority, at most `capacity` bytes of them.
pub(crate) struct Documents {
    capacity: usize,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    /// Each document with the number of the write that kept it.
    by_member: HashMap<MemberId, (u64, Document)>,
    /// Members in the order their documents were kept, with that number: an entry whose number is
    /// no longer the member's was taken or kept again since, and is skipped.
    order: VecDeque<(MemberId, u64)>,
    bytes: usize,
    writes: u64,
}

impl Documents {
    pub fn new(capacity: usize) -> Self {
        Documents { capacity, kept: Mutex::new(Kept::default()) }
    }

    /// Takes `member`'s document out, if it is kept: while its event is written, and for good if
    /// the write fails.
    pub fn take(&self, member: &MemberId) -> Option<Document> {
        let mut kept = self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (_, document) = kept.by_member.remove(member)?;
        kept.bytes -= document.weight();
        Some(document)
    }

    /// Keeps `member`'s document as just written, making room by dropping the oldest.
    pub fn keep(&self, member: &MemberId, document: Document) {
        let weight = document.weight();
        if weight > self.capacity {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let kept = &mut *kept;
        kept.writes += 1;
        let number = kept.writes;
        if let Some((_, replaced)) = kept.by_member.insert(member.clone(), (number, document)) {
            kept.bytes -= replaced.weight();
        }
        kept.bytes += weight;
        kept.order.push_back((member.clone(), number));
        while kept.bytes > self.capacity {
            let Some((oldest, number)) = kept.order.pop_front() else { break };
            if kept.by_member.get(&oldest).is_some_and(|(kept_as, _)| *kept_as == number)
                && let Some((_, dropped)) = kept.by_member.remove(&oldest)
            {
                kept.bytes -= dropped.weight();
            }
        }
        // Entries left behind by documents taken or kept again: dropped once they outnumber the rest.
        if kept.order.len() > 2 * kept.by_member.len() + 1024 {
            let by_member = &kept.by_member;
            kept.order.retain(|(member, number)| {
                by_member.get(member).is_some_and(|(kept_as, _)| kept_as == number)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str) -> MemberId {
        MemberId::new(name).unwrap()
    }

    fn document(revision: u64, bytes: usize) -> Document {
        Document { revision, written_ms: 0, encoded: Bytes::from(vec![0; bytes]) }
    }

    #[test]
    fn the_oldest_written_leave_first_and_the_bytes_stay_bounded() {
        let documents = Documents::new(3 * (100 + 256));
        for (index, name) in ["a", "b", "c", "d"].iter().enumerate() {
            documents.keep(&member(name), document(index as u64 + 1, 100));
        }
        assert!(documents.take(&member("a")).is_none(), "a was written first and made room for d");
        assert_eq!(documents.take(&member("b")).map(|document| document.revision), Some(2));
        assert!(documents.take(&member("b")).is_none(), "taken out");
        // Kept again: now the newest, so c goes first.
        documents.keep(&member("b"), document(5, 100));
        documents.keep(&member("e"), document(6, 100));
        documents.keep(&member("f"), document(7, 100));
        assert!(documents.take(&member("c")).is_none());
        assert!(documents.take(&member("d")).is_none());
        assert_eq!(documents.take(&member("b")).map(|document| document.revision), Some(5));
        let kept = documents.kept.lock().unwrap();
        assert!(kept.bytes <= documents.capacity);
        assert_eq!(kept.bytes, kept.by_member.values().map(|(_, document)| document.weight()).sum::<usize>());
    }

    #[test]
    fn one_member_written_again_and_again_leaves_no_trail() {
        let documents = Documents::new(1 << 20);
        for revision in 0..100_000 {
            documents.keep(&member("busy"), document(revision, 10));
        }
        let kept = documents.kept.lock().unwrap();
        assert_eq!(kept.by_member.len(), 1);
        assert!(kept.order.len() <= 2 + 1024, "{}", kept.order.len());
    }

    #[test]
    fn nothing_is_kept_without_room() {
        let documents = Documents::new(0);
        documents.keep(&member("a"), document(1, 10));
        assert!(documents.take(&member("a")).is_none());
    }
}
