//! Reading one member's history for one device type, in pages, straight from the history bucket's
//! stream with a batched direct get: no consumer is created per device, so a reconnect storm costs
//! the server two requests per page (the stream's bounds, then the batch) and nothing it must clean
//! up afterwards.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::{HeaderMap, StatusCode, jetstream};
use futures::StreamExt;
use reno_model::{
    DeviceType, MemberId, Notification, PullPage, PullRequest,
    notification::{DEFAULT_PAGE_LIMIT, MAX_PAGE_BYTES, MAX_PAGE_LIMIT},
    subject,
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tracing::warn;

/// What a notification adds to a page beyond its stored bytes: its real `seq` (stored as 0) and
/// the array's framing.
const PER_ENTRY_OVERHEAD: usize = 16;

/// How long to wait for the server's answer to one page.
const PAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a page could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("the history bucket is unreachable: {0}")]
    Unavailable(String),
    #[error("the history did not answer within {PAGE_TIMEOUT:?}")]
    TimedOut,
    #[error("unexpected answer from the history: {0}")]
    Protocol(String),
}

/// Reads pages of history. Cheap to clone.
#[derive(Clone)]
pub struct HistoryReader {
    client: async_nats::Client,
    jetstream: jetstream::Context,
}

/// The history stream's bounds at the time of a request.
struct Bounds {
    first_seq: u64,
    last_seq: u64,
    /// When the bucket was created: a new value means a new history.
    epoch: u64,
    /// How long entries are kept; `None` for as long as the bucket lives.
    retention: Option<Duration>,
    /// When the first retained entry was written, milliseconds since the Unix epoch.
    first_time_ms: u64,
}

impl Bounds {
    /// When the bucket was created, in milliseconds: before any of its entries.
    fn created_ms(&self) -> u64 {
        self.epoch / 1_000_000
    }
}

/// Where a page starts.
#[derive(Debug, PartialEq, Eq)]
struct Start {
    /// The page holds entries after this seq.
    after: u64,
    /// When the entry at `after` was written, if known.
    after_time_ms: Option<u64>,
    /// Notifications after the device's cursor may be gone.
    resync: bool,
}

/// How far apart the clocks of the servers of a cluster may be, for retention decisions.
const CLOCK_SLACK_MS: u64 = 60_000;

/// Decides where a page starts and whether the device must resync.
///
/// - A cursor from another epoch, or beyond the end, is from a history that was reset: start over.
/// - A cursor below the first retained entry has a gap after it. The gap is a loss only if entries
///   may have expired there: entries after the cursor were written after it, so they can have
///   expired only if the cursor's own time is older than the retention. Otherwise they were
///   replaced by collapse (their newer state is still there): read on from the cursor. Without a
///   cursor time, assume the loss.
/// - A cursor given with its epoch is a position in that history even at 0, and the history's
///   creation time stands in for a missing cursor time (every entry was written after it). Only a
///   bare cursor 0 is a device with nothing yet, which cannot have missed anything.
fn start_of_page(request: &PullRequest, bounds: &Bounds, now_ms: u64) -> Start {
    let same_epoch = request.epoch == Some(bounds.epoch);
    let reset = (request.epoch.is_some() && !same_epoch) || request.cursor > bounds.last_seq;
    if reset {
        return Start { after: 0, after_time_ms: Some(bounds.created_ms()), resync: true };
    }
    let cursor_time_ms = request.cursor_time_ms.or(same_epoch.then(|| bounds.created_ms()));
    let gap = (request.cursor > 0 || same_epoch) && request.cursor + 1 < bounds.first_seq;
    let may_have_expired = match (cursor_time_ms, bounds.retention) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(time_ms), Some(retention)) => {
            time_ms.saturating_add(retention.as_millis() as u64) <= now_ms.saturating_add(CLOCK_SLACK_MS)
        }
    };
    if gap && may_have_expired {
        // Every entry from the first retained one on was written at or after its time.
        return Start {
            after: bounds.first_seq - 1,
            after_time_ms: Some(bounds.first_time_ms),
            resync: true,
        };
    }
    Start { after: request.cursor, after_time_ms: cursor_time_ms, resync: false }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl HistoryReader {
    pub fn new(client: async_nats::Client) -> Self {
        HistoryReader { jetstream: jetstream::new(client.clone()), client }
    }

    /// One page of `member`'s notifications for `device_type` above `request.cursor`.
    pub async fn page(
        &self,
        member: &MemberId,
        device_type: &DeviceType,
        request: PullRequest,
    ) -> Result<PullPage, HistoryError> {
        let limit = request.limit.unwrap_or(DEFAULT_PAGE_LIMIT).clamp(1, MAX_PAGE_LIMIT);
        let bounds = self.bounds().await?;
        let start = start_of_page(&request, &bounds, now_ms());
        let read = self.read(member, device_type, start.after + 1, limit).await?;
        // The last entry read, not the last notification returned: entries skipped as deleted or
        // unreadable must not be read again, or a page of them would repeat forever.
        let (next_cursor, next_cursor_time_ms) = match read.last {
            Some((seq, time_ms)) => (seq, time_ms),
            None => (start.after, start.after_time_ms),
        };
        Ok(PullPage {
            notifications: read.notifications,
            next_cursor,
            more: read.remaining > 0,
            resync: start.resync,
            epoch: bounds.epoch,
            next_cursor_time_ms,
        })
    }

    async fn bounds(&self) -> Result<Bounds, HistoryError> {
        let stream_name = subject::history_stream();
        let stream = self
            .jetstream
            .get_stream_no_info(&stream_name)
            .await
            .map_err(|error| HistoryError::Unavailable(error.to_string()))?;
        let info = stream.get_info().await.map_err(|error| HistoryError::Unavailable(error.to_string()))?;
        let epoch = u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0);
        let retention = (!info.config.max_age.is_zero()).then_some(info.config.max_age);
        // An empty stream reports a first time before 1970: clamp it, as the oldest possible.
        let first_time_ms =
            u64::try_from(info.state.first_timestamp.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        Ok(Bounds {
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
            epoch,
            retention,
            first_time_ms,
        })
    }

    /// Batched direct get (ADR-31): up to `limit` messages matching the filter from `start_seq` on,
    /// answered as a series of messages closed by a 204 "EOB" status (or 404 when none match).
    /// A 204 carries `Nats-Num-Pending`: how many matching messages remain after the batch.
    async fn read(
        &self,
        member: &MemberId,
        device_type: &DeviceType,
        start_seq: u64,
        limit: u32,
    ) -> Result<Read, HistoryError> {
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|error| HistoryError::Unavailable(error.to_string()))?;
        let request = format!(
            r#"{{"seq":{start_seq},"next_by_subj":"{filter}","batch":{limit},"max_bytes":{MAX_PAGE_BYTES}}}"#,
            filter = subject::history_filter(member, device_type),
        );
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", subject::history_stream()),
                inbox,
                request.into(),
            )
            .await
            .map_err(|error| HistoryError::Unavailable(error.to_string()))?;

        let mut read = Read { notifications: Vec::new(), last: None, remaining: 0, bytes: 0 };
        loop {
            let reply = tokio::time::timeout(PAGE_TIMEOUT, replies.next())
                .await
                .map_err(|_| HistoryError::TimedOut)?
                .ok_or_else(|| HistoryError::Unavailable("connection closed".into()))?;
            match reply.status {
                Some(StatusCode::NOT_FOUND) => break,
                Some(status) if status.as_u16() == 204 => {
                    read.remaining = header_u64(reply.headers.as_ref(), "Nats-Num-Pending").unwrap_or(0);
                    break;
                }
                Some(StatusCode::NO_RESPONDERS) => {
                    return Err(HistoryError::Unavailable("no server answers for the history bucket".into()));
                }
                Some(status) if status != StatusCode::OK => {
                    let description = reply.description.unwrap_or_default();
                    return Err(HistoryError::Protocol(format!("status {status} {description}")));
                }
                _ => {}
            }
            let headers = reply.headers.as_ref();
            let Some(seq) = header_u64(headers, "Nats-Sequence") else {
                return Err(HistoryError::Protocol("a history entry came without Nats-Sequence".into()));
            };
            // The server stops a batch only after `max_bytes` is passed, by up to one entry: keep
            // the page itself within its limit and leave the entry that would overflow it for the
            // next page.
            let cost = reply.payload.len() + PER_ENTRY_OVERHEAD;
            if !read.notifications.is_empty() && read.bytes + cost > MAX_PAGE_BYTES {
                read.remaining = read.remaining.max(1);
                break;
            }
            read.bytes += cost;
            let written_ms = headers
                .and_then(|headers| headers.get("Nats-Time-Stamp"))
                .and_then(|stamp| OffsetDateTime::parse(stamp.as_str(), &Rfc3339).ok())
                .and_then(|time| u64::try_from(time.unix_timestamp_nanos() / 1_000_000).ok());
            read.last = Some((seq, written_ms));
            let deleted = headers.and_then(|headers| headers.get("KV-Operation")).is_some();
            if deleted {
                continue;
            }
            match Notification::decode(&reply.payload) {
                Ok(mut notification) => {
                    notification.seq = seq;
                    read.notifications.push(notification);
                }
                Err(error) => {
                    warn!(seq, %error, "unreadable history entry skipped");
                    metrics::counter!("reno_pull_unreadable_entries_total").increment(1);
                }
            }
        }
        Ok(read)
    }
}

/// What one batched read found.
struct Read {
    /// The readable notifications, in order.
    notifications: Vec<Notification>,
    /// The seq of the last entry read, readable or not, with when it was written.
    last: Option<(u64, Option<u64>)>,
    /// Matching entries left after this batch.
    remaining: u64,
    /// The encoded size of the page so far, estimated from the stored entries.
    bytes: usize,
}

fn header_u64(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 24 * 3600 * 1000;
    const NOW: u64 = 100 * DAY_MS;
    /// The history's epoch: created on day 50 (in nanoseconds).
    const EPOCH: u64 = 50 * DAY_MS * 1_000_000;
    /// The first retained entry was written on day 95.
    const FIRST_TIME: u64 = 95 * DAY_MS;

    fn bounds(first_seq: u64, last_seq: u64) -> Bounds {
        Bounds {
            first_seq,
            last_seq,
            epoch: EPOCH,
            retention: Some(Duration::from_millis(7 * DAY_MS)),
            first_time_ms: FIRST_TIME,
        }
    }

    fn request(cursor: u64, epoch: Option<u64>, cursor_time_ms: Option<u64>) -> PullRequest {
        PullRequest { cursor, limit: None, epoch, cursor_time_ms }
    }

    fn start(after: u64, after_time_ms: Option<u64>, resync: bool) -> Start {
        Start { after, after_time_ms, resync }
    }

    #[test]
    fn a_cursor_inside_the_history_reads_on() {
        assert_eq!(start_of_page(&request(0, None, None), &bounds(1, 50), NOW), start(0, None, false));
        let inside = request(20, Some(EPOCH), Some(NOW - DAY_MS));
        assert_eq!(start_of_page(&inside, &bounds(10, 50), NOW), start(20, Some(NOW - DAY_MS), false));
        // Just below the first entry: nothing between them is missing.
        assert_eq!(start_of_page(&request(9, None, None), &bounds(10, 50), NOW), start(9, None, false));
    }

    #[test]
    fn a_bare_cursor_zero_has_missed_nothing() {
        assert_eq!(start_of_page(&request(0, None, None), &bounds(10, 50), NOW), start(0, None, false));
    }

    #[test]
    fn a_reset_history_starts_over() {
        let created = Some(EPOCH / 1_000_000);
        assert_eq!(start_of_page(&request(20, Some(2), None), &bounds(1, 50), NOW), start(0, created, true));
        assert_eq!(start_of_page(&request(60, None, None), &bounds(1, 50), NOW), start(0, created, true));
    }

    #[test]
    fn a_gap_is_a_loss_only_where_entries_may_have_expired() {
        // Unknown cursor time and epoch: assume the gap is a loss.
        assert_eq!(
            start_of_page(&request(5, None, None), &bounds(10, 50), NOW),
            start(9, Some(FIRST_TIME), true)
        );
        // A cursor older than the retention: entries after it may have expired.
        let old = request(5, Some(EPOCH), Some(NOW - 8 * DAY_MS));
        assert_eq!(start_of_page(&old, &bounds(10, 50), NOW), start(9, Some(FIRST_TIME), true));
        // A recent cursor: nothing after it can have expired, the gap is collapsed entries.
        let recent = request(5, Some(EPOCH), Some(NOW - DAY_MS));
        assert_eq!(start_of_page(&recent, &bounds(10, 50), NOW), start(5, Some(NOW - DAY_MS), false));
        // No retention limit: nothing expires.
        let forever = Bounds { retention: None, ..bounds(10, 50) };
        let ancient = request(5, Some(EPOCH), Some(1));
        assert_eq!(start_of_page(&ancient, &forever, NOW), start(5, Some(1), false));
    }

    #[test]
    fn a_cursor_with_its_epoch_is_a_position_even_at_zero() {
        // A device that saw an empty history on day 50 and comes back on day 100: what was written
        // for it since may have expired.
        let created = EPOCH / 1_000_000;
        let empty_then = request(0, Some(EPOCH), None);
        assert_eq!(start_of_page(&empty_then, &bounds(10, 50), NOW), start(9, Some(FIRST_TIME), true));
        // The same a day after the history was created: nothing can have expired yet.
        let day_after = created + DAY_MS;
        assert_eq!(start_of_page(&empty_then, &bounds(10, 50), day_after), start(0, Some(created), false));
        // The creation time also stands in for a missing cursor time.
        let no_time = request(5, Some(EPOCH), None);
        assert_eq!(start_of_page(&no_time, &bounds(10, 50), NOW), start(9, Some(FIRST_TIME), true));
        assert_eq!(start_of_page(&no_time, &bounds(10, 50), day_after), start(5, Some(created), false));
    }
}
