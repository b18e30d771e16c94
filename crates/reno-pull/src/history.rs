//! Reading one member's history for one device type, in pages: one direct get of the member's
//! document (see `reno_model::history`), so that a pull costs what that member's own history costs,
//! whatever the size of the whole history, and no consumer is created per device. The bucket's
//! epoch and retention come from its stream info, read at most once a second for all pulls. The
//! reads go out on connections of their own (see [`ReadLanes`]).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self,
    stream::{DirectGetErrorKind, LastRawMessageErrorKind, Stream},
};
use reno_model::{
    DeviceType, MemberId, PullPage, PullRequest, codec,
    history::MemberHistory,
    notification::{DEFAULT_PAGE_LIMIT, MAX_PAGE_BYTES, MAX_PAGE_LIMIT},
    subject,
};
use reno_nats::ServerClock;
use tracing::warn;

/// How long to wait for the server's answer to one read.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the bucket's bounds are reused between pulls.
const BOUNDS_TTL: Duration = Duration::from_secs(1);

/// What a notification adds to a page beyond its own encoding: the array's framing.
const PER_ENTRY_OVERHEAD: usize = 8;

/// Why a page could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("the history bucket is unreachable: {0}")]
    Unavailable(String),
    #[error("the history did not answer within {READ_TIMEOUT:?}")]
    TimedOut,
    #[error("unexpected answer from the history: {0}")]
    Protocol(String),
}

/// Reads pages of history. Cheap to clone.
#[derive(Clone)]
pub struct HistoryReader {
    jetstream: jetstream::Context,
    clock: ServerClock,
    bounds: Arc<Mutex<Option<CachedBounds>>>,
    lanes: Arc<ReadLanes>,
}

/// The bounds last read, and when.
struct CachedBounds {
    read_at: Instant,
    bounds: Bounds,
}

/// The connections the documents are read on. nats-server answers the direct gets that come in on
/// one client connection one after another, on that connection's read loop, and a read of a
/// document whose message block is not in the server's cache first loads the whole block (4–8
/// MiB): on one connection, every read behind it waits for that load. Each read takes a connected
/// lane with the fewest reads in flight, so that up to one slow read per lane proceeds at once and
/// the others keep moving. The search starts one lane further each time, so that among idle lanes
/// none is always first (a lane whose server stopped answering frees up when its reads time out,
/// and would otherwise take every next read).
struct ReadLanes {
    lanes: Box<[ReadLane]>,
    next: AtomicUsize,
}

struct ReadLane {
    client: async_nats::Client,
    /// The history stream on this lane's connection (a handle only: no stream info).
    stream: Stream<()>,
    /// Reads sent on this lane and not answered or timed out yet (the server may still be at a
    /// read that timed out here: a hint, not a count of the server's work).
    in_flight: AtomicUsize,
}

/// A lane taken for one read; gives it back when dropped.
struct Taken<'a>(&'a ReadLane);

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ReadLanes {
    async fn new(readers: Vec<async_nats::Client>) -> Self {
        let mut lanes = Vec::with_capacity(readers.len());
        for client in readers {
            let stream = jetstream::new(client.clone())
                .get_stream_no_info(subject::history_stream())
                .await
                .expect("the history stream's name is valid");
            lanes.push(ReadLane { client, stream, in_flight: AtomicUsize::new(0) });
        }
        ReadLanes { lanes: lanes.into(), next: AtomicUsize::new(0) }
    }

    /// The connected lane with the fewest reads in flight, the search starting one lane further
    /// each time; any lane when none is connected (its read then fails or waits for the
    /// reconnection, as a read on a single connection would).
    fn take(&self) -> Taken<'_> {
        let count = self.lanes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let lane = (0..count)
            .map(|offset| &self.lanes[(start + offset) % count])
            .filter(|lane| lane.client.connection_state() == async_nats::connection::State::Connected)
            .min_by_key(|lane| lane.in_flight.load(Ordering::Relaxed))
            .unwrap_or(&self.lanes[start % count]);
        lane.in_flight.fetch_add(1, Ordering::Relaxed);
        Taken(lane)
    }
}

/// The history bucket as a whole, at the time of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// When the bucket was created, in nanoseconds since the Unix epoch: a new value means a new
    /// history.
    pub epoch: u64,
    /// The bucket's last position: nothing written later can have a lower one.
    pub last_seq: u64,
    /// How long entries are kept, in milliseconds; `None` for as long as the bucket lives.
    pub retention_ms: Option<u64>,
}

impl Bounds {
    /// When the bucket was created, in milliseconds: before any of its entries.
    fn created_ms(&self) -> u64 {
        self.epoch / 1_000_000
    }
}

/// A member's document as read: settled (every entry has its position and time).
pub(crate) struct Document {
    pub revision: u64,
    /// When the server stored it, milliseconds since the Unix epoch.
    pub stored_ms: u64,
    pub history: MemberHistory,
}

/// How far apart the clocks of the servers of a cluster may be, for retention decisions.
const CLOCK_SLACK_MS: u64 = 60_000;

impl HistoryReader {
    /// A reader that asks for the bucket's bounds on `client`'s connection and reads documents on
    /// the `readers`' connections (at least one), following the history servers' clock.
    pub async fn start(client: async_nats::Client, readers: Vec<async_nats::Client>) -> Self {
        assert!(!readers.is_empty(), "a history reader needs at least one read connection");
        let jetstream = jetstream::new(client);
        let clock = ServerClock::follow(jetstream.clone(), subject::history_stream()).await;
        let lanes = Arc::new(ReadLanes::new(readers).await);
        HistoryReader { jetstream, clock, bounds: Arc::default(), lanes }
    }

    /// One page of `member`'s notifications for `device_type` above `request.cursor`.
    pub async fn page(
        &self,
        member: &MemberId,
        device_type: &DeviceType,
        request: PullRequest,
    ) -> Result<PullPage, HistoryError> {
        let mut bounds = self.bounds(false).await?;
        let mut document = read(&self.lanes, member, Copy::Any).await?;
        if document.as_ref().is_none_or(|document| request.cursor > document.revision) {
            // Nothing of the member, or a cursor beyond its history: confirm with the bucket's
            // current bounds, then the leader's copy, in that order, so that a write the first
            // read missed (answered by a replica a moment behind, or made between the reads) is
            // never taken for no history, nor for a reset.
            bounds = self.bounds(true).await?;
            document = read(&self.lanes, member, Copy::Leader).await?;
        }
        let now_ms = u64::try_from(self.clock.now().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        Ok(page_of(document.as_ref(), member, device_type, &request, &bounds, now_ms))
    }

    /// The bucket's bounds, read again if `fresh` or older than [`BOUNDS_TTL`].
    async fn bounds(&self, fresh: bool) -> Result<Bounds, HistoryError> {
        if let Some(cached) = self.bounds.lock().expect("not poisoned").as_ref()
            && !fresh
            && cached.read_at.elapsed() < BOUNDS_TTL
        {
            return Ok(cached.bounds);
        }
        let stream = tokio::time::timeout(READ_TIMEOUT, self.jetstream.get_stream(subject::history_stream()))
            .await
            .map_err(|_| HistoryError::TimedOut)?
            .map_err(|error| HistoryError::Unavailable(error.to_string()))?;
        let info = stream.cached_info();
        let max_age = info.config.max_age;
        let bounds = Bounds {
            epoch: u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0),
            last_seq: info.state.last_sequence,
            retention_ms: (!max_age.is_zero())
                .then(|| u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX)),
        };
        *self.bounds.lock().expect("not poisoned") = Some(CachedBounds { read_at: Instant::now(), bounds });
        Ok(bounds)
    }
}

/// Which copy of the bucket answers a read.
#[derive(Clone, Copy)]
enum Copy {
    /// Any replica (a direct get): what most pulls use.
    Any,
    /// The stream's leader, which has every acknowledged write.
    Leader,
}

/// The member's document, if there is one. A delete marker is an empty history that lost what
/// came before it; a document this service cannot read (written by a newer reno) is an error, not
/// an empty history.
async fn read(lanes: &ReadLanes, member: &MemberId, copy: Copy) -> Result<Option<Document>, HistoryError> {
    let subject = subject::history_subject(member);
    let lane = lanes.take();
    let stream = &lane.0.stream;
    let got = match copy {
        Copy::Any => tokio::time::timeout(READ_TIMEOUT, stream.direct_get_last_for_subject(subject))
            .await
            .map_err(|_| HistoryError::TimedOut)?
            .map(Some)
            .or_else(|error| match error.kind() {
                DirectGetErrorKind::NotFound => Ok(None),
                _ => Err(HistoryError::Unavailable(error.to_string())),
            }),
        Copy::Leader => tokio::time::timeout(READ_TIMEOUT, stream.get_last_raw_message_by_subject(&subject))
            .await
            .map_err(|_| HistoryError::TimedOut)?
            .map(Some)
            .or_else(|error| match error.kind() {
                LastRawMessageErrorKind::NoMessageFound => Ok(None),
                _ => Err(HistoryError::Unavailable(error.to_string())),
            }),
    };
    drop(lane);
    let Some(message) = got? else {
        return Ok(None);
    };
    let stored_ms = u64::try_from(message.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    if message.headers.get("KV-Operation").is_some() {
        let history = MemberHistory { lost_before: message.sequence, ..MemberHistory::default() };
        return Ok(Some(Document { revision: message.sequence, stored_ms, history }));
    }
    let mut history = MemberHistory::decode(&message.payload).map_err(|error| {
        warn!(%member, %error, "unreadable history document");
        metrics::counter!("reno_pull_unreadable_entries_total").increment(1);
        HistoryError::Protocol(format!("the history of {member} cannot be read: {error}"))
    })?;
    history.settle(message.sequence, stored_ms);
    Ok(Some(Document { revision: message.sequence, stored_ms, history }))
}

/// The page for `request`, and whether the device must resync:
///
/// - A cursor from another epoch, or beyond the member's last write (or the bucket's end, when the
///   member has none), is from a history that was reset: the page starts over, with resync.
/// - Entries of the device type dropped for room or age after the cursor (the document's `pruned`,
///   or entries past the retention still in it), or an operator's delete of the member's history
///   after the cursor (`lost_before`), are a loss: resync, and the page holds everything retained.
/// - A cursor below the document's creation, or with no document at all, may have lost an earlier
///   document that expired: a loss only if entries written after the cursor can have expired by
///   now (the cursor's time, or the bucket's creation, plus the retention). Only a bare cursor 0
///   (no epoch) is a device with nothing yet, which cannot have missed anything.
///
/// Entries replaced by collapse leave no trace and are no loss: the newer state is in the page.
pub(crate) fn page_of(
    document: Option<&Document>,
    member: &MemberId,
    device_type: &DeviceType,
    request: &PullRequest,
    bounds: &Bounds,
    now_ms: u64,
) -> PullPage {
    let limit = request.limit.unwrap_or(DEFAULT_PAGE_LIMIT).clamp(1, MAX_PAGE_LIMIT) as usize;
    let cursor = request.cursor;
    let known = request.epoch.is_some() || cursor > 0;
    let expired = |written_ms: u64| {
        bounds.retention_ms.is_some_and(|retention| written_ms.saturating_add(retention) <= now_ms)
    };
    let may_have_expired = || {
        let since = request.cursor_time_ms.unwrap_or(bounds.created_ms());
        known
            && bounds.retention_ms.is_some_and(|retention| {
                since.saturating_add(retention) <= now_ms.saturating_add(CLOCK_SLACK_MS)
            })
    };
    let reset = request.epoch.is_some_and(|epoch| epoch != bounds.epoch)
        || document.map_or(cursor > bounds.last_seq, |document| cursor > document.revision);
    let Some(document) = document else {
        // Nothing of this member is retained: anything written for it from now on comes after the
        // bucket's last position and after this moment.
        return PullPage {
            notifications: Vec::new(),
            next_cursor: if reset { bounds.last_seq } else { cursor.max(bounds.last_seq) },
            more: false,
            resync: reset || may_have_expired(),
            epoch: bounds.epoch,
            next_cursor_time_ms: Some(now_ms),
        };
    };
    let history = &document.history;
    let mine = |entry: &&reno_model::history::Entry| entry.targets.contains(device_type);
    let lost = known
        && (cursor < history.lost_before
            || history.pruned.get(device_type).is_some_and(|pruned| *pruned > cursor)
            || history
                .entries
                .iter()
                .filter(mine)
                .any(|entry| entry.seq > cursor && expired(entry.written_ms))
            || (cursor < history.created && may_have_expired()));
    let resync = reset || lost;
    let after = if resync { 0 } else { cursor };
    let mut visible = history
        .entries
        .iter()
        .filter(mine)
        .filter(|entry| entry.seq > after && !expired(entry.written_ms))
        .peekable();
    let mut notifications = Vec::new();
    let mut bytes = 0;
    let mut last = None;
    while let Some(entry) = visible.peek() {
        let notification = entry.notification(member, device_type);
        let cost = codec::encoded_len(&notification) + PER_ENTRY_OVERHEAD;
        if notifications.len() == limit || (!notifications.is_empty() && bytes + cost > MAX_PAGE_BYTES) {
            break;
        }
        bytes += cost;
        last = Some((entry.seq, entry.written_ms));
        notifications.push(notification);
        visible.next();
    }
    let more = visible.peek().is_some();
    // The end of the page; past the whole document when nothing of this device type remains, so
    // that the cursor keeps up with the member's history and a gap before it is judged only once.
    let (next_cursor, next_cursor_time_ms) = match (last, more) {
        (Some(last), true) => last,
        (Some((seq, time)), false) if seq >= document.revision => (seq, time),
        _ => (document.revision, document.stored_ms),
    };
    PullPage {
        notifications,
        next_cursor,
        more,
        resync,
        epoch: bounds.epoch,
        next_cursor_time_ms: Some(next_cursor_time_ms),
    }
}

#[cfg(test)]
mod tests {
    use reno_model::{
        EventId, EventType, Value,
        history::{Entry, MemberHistory},
    };

    use super::*;

    const DAY_MS: u64 = 24 * 3600 * 1000;
    const NOW: u64 = 100 * DAY_MS;
    /// The history's epoch: created on day 50 (in nanoseconds).
    const EPOCH: u64 = 50 * DAY_MS * 1_000_000;

    fn bounds() -> Bounds {
        Bounds { epoch: EPOCH, last_seq: 500, retention_ms: Some(7 * DAY_MS) }
    }

    fn entry(seq: u64, written_ms: u64, targets: &[&str]) -> Entry {
        Entry {
            seq,
            written_ms,
            targets: targets.iter().map(|target| DeviceType::new(*target).unwrap()).collect(),
            source: format!("RENO_NORMAL:{seq}"),
            id: EventId::new(format!("e{seq}")).unwrap(),
            event_type: EventType::new("t").unwrap(),
            occurred_at_ms: written_ms,
            published_at_ms: written_ms,
            payload: Value::Null,
            collapse_key: None,
        }
    }

    /// A member's document with entries at `seqs`, all for the tv, written a day ago, created at
    /// `created`; its revision is the last seq.
    fn document(seqs: &[u64], created: u64) -> Document {
        let entries = seqs.iter().map(|seq| entry(*seq, NOW - DAY_MS, &["tv"])).collect();
        let revision = *seqs.last().unwrap_or(&created);
        Document {
            revision,
            stored_ms: NOW - DAY_MS,
            history: MemberHistory { entries, created, ..MemberHistory::default() },
        }
    }

    fn request(cursor: u64, epoch: Option<u64>, cursor_time_ms: Option<u64>) -> PullRequest {
        PullRequest { cursor, limit: None, epoch, cursor_time_ms }
    }

    fn page(document: Option<&Document>, request: PullRequest) -> PullPage {
        page_of(
            document,
            &MemberId::new("m").unwrap(),
            &DeviceType::new("tv").unwrap(),
            &request,
            &bounds(),
            NOW,
        )
    }

    fn seqs(page: &PullPage) -> Vec<u64> {
        page.notifications.iter().map(|notification| notification.seq).collect()
    }

    #[test]
    fn a_cursor_inside_the_history_reads_on() {
        let doc = document(&[10, 20, 30], 10);
        let first = page(Some(&doc), request(0, None, None));
        assert_eq!(
            (seqs(&first), first.resync, first.more, first.next_cursor),
            (vec![10, 20, 30], false, false, 30)
        );
        let rest = page(Some(&doc), request(20, Some(EPOCH), Some(NOW - DAY_MS)));
        assert_eq!((seqs(&rest), rest.resync), (vec![30], false));
        let limited = page(Some(&doc), PullRequest { limit: Some(2), ..request(0, None, None) });
        assert_eq!((seqs(&limited), limited.more, limited.next_cursor), (vec![10, 20], true, 20));
    }

    #[test]
    fn only_the_device_types_own_entries_are_handed_out_and_the_cursor_keeps_up() {
        let mut doc = document(&[10], 10);
        doc.history.entries.push(entry(40, NOW - DAY_MS, &["mobile"]));
        doc.revision = 40;
        let page = page(Some(&doc), request(0, None, None));
        assert_eq!((seqs(&page), page.next_cursor), (vec![10], 40));
    }

    #[test]
    fn a_reset_history_starts_over() {
        let doc = document(&[10, 20], 10);
        for stale in [request(20, Some(EPOCH + 1), None), request(60, Some(EPOCH), None)] {
            let page = page(Some(&doc), stale);
            assert_eq!((seqs(&page), page.resync), (vec![10, 20], true));
        }
        let empty = page(None, request(20, Some(EPOCH + 1), None));
        assert!(empty.resync);
        let beyond = page(None, request(600, None, None));
        assert!(beyond.resync);
    }

    #[test]
    fn entries_dropped_after_the_cursor_are_a_loss() {
        let mut doc = document(&[30, 40], 10);
        doc.history.pruned.insert(DeviceType::new("tv").unwrap(), 25);
        let behind = page(Some(&doc), request(20, Some(EPOCH), Some(NOW - DAY_MS)));
        assert_eq!((seqs(&behind), behind.resync), (vec![30, 40], true));
        let past = page(Some(&doc), request(25, Some(EPOCH), Some(NOW - DAY_MS)));
        assert_eq!((seqs(&past), past.resync), (vec![30, 40], false));
        // Deleted by an operator after the cursor: lost, whatever the cursor's time.
        let mut deleted = document(&[30, 40], 10);
        deleted.history.lost_before = 25;
        assert!(page(Some(&deleted), request(20, Some(EPOCH), Some(NOW - DAY_MS))).resync);
        assert!(!page(Some(&deleted), request(25, Some(EPOCH), Some(NOW - DAY_MS))).resync);
        // Dropped for another device type only: nothing lost for this one.
        let mut other = document(&[30], 10);
        other.history.pruned.insert(DeviceType::new("mobile").unwrap(), 25);
        assert!(!page(Some(&other), request(20, Some(EPOCH), Some(NOW - DAY_MS))).resync);
        // Past its retention, still in the document: lost too, and not handed out.
        let mut old = document(&[30, 40], 10);
        old.history.entries[0].written_ms = NOW - 8 * DAY_MS;
        let aged = page(Some(&old), request(20, Some(EPOCH), Some(NOW - 9 * DAY_MS)));
        assert_eq!((seqs(&aged), aged.resync), (vec![40], true));
    }

    #[test]
    fn an_earlier_document_that_expired_is_a_loss_only_where_it_may_have() {
        // Recreated at 100; the device's cursor is from the member's earlier document.
        let doc = document(&[100], 100);
        assert!(page(Some(&doc), request(20, Some(EPOCH), Some(NOW - 8 * DAY_MS))).resync);
        assert!(!page(Some(&doc), request(20, Some(EPOCH), Some(NOW - DAY_MS))).resync);
        // Unknown cursor time: the bucket's creation (day 50) stands in, long ago: a loss.
        assert!(page(Some(&doc), request(20, None, None)).resync);
        // A device with nothing yet has missed nothing, even where entries were dropped.
        assert!(!page(Some(&doc), request(0, None, None)).resync);
        let mut pruned = document(&[30], 10);
        pruned.history.pruned.insert(DeviceType::new("tv").unwrap(), 25);
        assert!(!page(Some(&pruned), request(0, None, None)).resync);
        // No document at all: the same rule, and the cursor moves past the bucket's end.
        let gone = page(None, request(20, Some(EPOCH), Some(NOW - 8 * DAY_MS)));
        assert!(gone.resync);
        assert_eq!((gone.next_cursor, gone.next_cursor_time_ms), (500, Some(NOW)));
        let fresh = page(None, request(20, Some(EPOCH), Some(NOW - DAY_MS)));
        assert!(!fresh.resync);
        let new_device = page(None, request(0, None, None));
        assert!(!new_device.resync);
        // A device that saw an empty history on day 50 (its epoch, cursor 0) and comes back now.
        assert!(page(None, request(0, Some(EPOCH), None)).resync);
    }
}
