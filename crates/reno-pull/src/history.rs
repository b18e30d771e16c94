//! Reading one member's history for one device type, in pages, straight from the history bucket's
//! stream with a batched direct get: no consumer is created per device, so a reconnect storm costs
//! the server two requests per page (the stream's bounds, then the batch) and nothing it must clean
//! up afterwards.

use std::time::Duration;

use async_nats::{HeaderMap, StatusCode, jetstream};
use futures::StreamExt;
use reno_model::{
    DeviceType, MemberId, Notification, PullPage, PullRequest,
    notification::{DEFAULT_PAGE_LIMIT, MAX_PAGE_BYTES, MAX_PAGE_LIMIT},
    subject,
};
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
        // A cursor from another epoch, or beyond the end, comes from a history that was reset
        // (bucket recreated): start over. A cursor below the start has lost entries to retention:
        // go on from the start. Either way the device is told to resync.
        let reset = request.epoch.is_some_and(|epoch| epoch != bounds.epoch);
        let (start_after, resync) = if reset || request.cursor > bounds.last_seq {
            (0, true)
        } else if request.cursor > 0 && request.cursor + 1 < bounds.first_seq {
            (bounds.first_seq - 1, true)
        } else {
            (request.cursor, false)
        };
        let read = self.read(member, device_type, start_after + 1, limit).await?;
        // The last entry read, not the last notification returned: entries skipped as deleted or
        // unreadable must not be read again, or a page of them would repeat forever.
        let next_cursor = read.last_seq.unwrap_or(start_after);
        Ok(PullPage {
            notifications: read.notifications,
            next_cursor,
            more: read.remaining > 0,
            resync,
            epoch: bounds.epoch,
        })
    }

    async fn bounds(&self) -> Result<Bounds, HistoryError> {
        let stream_name = format!("KV_{}", subject::HISTORY_BUCKET);
        let stream = self
            .jetstream
            .get_stream_no_info(&stream_name)
            .await
            .map_err(|error| HistoryError::Unavailable(error.to_string()))?;
        let info = stream.get_info().await.map_err(|error| HistoryError::Unavailable(error.to_string()))?;
        let epoch = u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0);
        Ok(Bounds { first_seq: info.state.first_sequence, last_seq: info.state.last_sequence, epoch })
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
                format!("$JS.API.DIRECT.GET.KV_{}", subject::HISTORY_BUCKET),
                inbox,
                request.into(),
            )
            .await
            .map_err(|error| HistoryError::Unavailable(error.to_string()))?;

        let mut read = Read { notifications: Vec::new(), last_seq: None, remaining: 0, bytes: 0 };
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
            read.last_seq = Some(seq);
            let deleted = headers.and_then(|headers| headers.get("KV-Operation")).is_some();
            if deleted {
                continue;
            }
            match Notification::decode(&reply.payload) {
                Ok(mut notification) => {
                    notification.seq = seq;
                    read.notifications.push(notification);
                }
                Err(error) => warn!(seq, %error, "unreadable history entry skipped"),
            }
        }
        Ok(read)
    }
}

/// What one batched read found.
struct Read {
    /// The readable notifications, in order.
    notifications: Vec<Notification>,
    /// The seq of the last entry read, readable or not.
    last_seq: Option<u64>,
    /// Matching entries left after this batch.
    remaining: u64,
    /// The encoded size of the page so far, estimated from the stored entries.
    bytes: usize,
}

fn header_u64(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().parse().ok()
}
