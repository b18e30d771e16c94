//! The worker's rules, with no IO and the clock passed in: when an event is stale, whose history
//! entry an existing one is, which state of a collapse key is newer, how the results of one event's
//! history writes fold into its outcome, and how long to wait before a retry.

use std::time::Duration;

use reno_model::Notification;

use crate::outcome::Outcome;

/// Which message of a priority stream an event came from: `<stream>:<sequence>`. Written with each
/// history entry (`Reno-Source`), so that a worker meeting an existing entry can tell its own
/// earlier write (a write that timed out but was stored, or an attempt that stopped before its push)
/// from another copy of the same event (published again after the duplicate window).
pub(crate) fn source(stream: &str, sequence: u64) -> String {
    format!("{stream}:{sequence}")
}

/// What the staleness gate says about one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Staleness {
    /// Young enough: deliver it.
    Fresh,
    /// Too old, and no attempt can have written anything for it yet: drop it.
    Stale,
    /// Too old, but an earlier delivery of this very message may have written some of its history
    /// entries: drop it only if none of them is there, otherwise finish what was started.
    StaleUnlessStarted,
}

/// Judges an event by its age on the server's clock (`age`: the worker's clock now minus the
/// server's receive time). A first delivery has no earlier attempt; a redelivery may have one (or
/// may never have been started: handed back at shutdown, or expired in a worker's buffer), which
/// only its history entries can tell.
pub(crate) fn staleness(age: Duration, stale_after: Duration, deliveries: i64) -> Staleness {
    match (age > stale_after, deliveries <= 1) {
        (false, _) => Staleness::Fresh,
        (true, true) => Staleness::Stale,
        (true, false) => Staleness::StaleUnlessStarted,
    }
}

/// What writing one device type's history entry found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// A new history entry at this position.
    New(u64),
    /// This very message's entry was already written, at this position (by an earlier attempt whose
    /// write timed out or whose push never went out): push it (again).
    Ours(u64),
    /// The event was already in the history, written from another copy of it: a duplicate.
    OtherCopy,
    /// A newer event with the same collapse key is in the history.
    Superseded,
}

/// Whose an existing entry of this event is: this message's own (same source) or another copy's.
pub(crate) fn existing(stored_source: Option<&str>, source: &str, revision: u64) -> Written {
    if stored_source == Some(source) { Written::Ours(revision) } else { Written::OtherCopy }
}

/// Whether `stored` is a newer state than `incoming` under the same collapse key: by when it
/// happened at the source (a publisher's late retry keeps its original time), then by when the
/// server received it. On a tie in both, the later write wins. A source time after the server's
/// receive time is a publisher's clock running ahead: it counts as the receive time, so that one
/// event from the future cannot shadow every later state of its key.
pub(crate) fn newer(stored: &Notification, incoming: &Notification) -> bool {
    let order = |notification: &Notification| {
        let source = notification.occurred_at_ms.min(notification.published_at_ms);
        (source, notification.published_at_ms)
    };
    order(stored) > order(incoming)
}

/// The outcome of an event whose history writes came out as `written`, one per target device type:
/// delivered if any entry was written or is this message's own, else a duplicate if another copy
/// wrote it, else collapsed (every target held a newer state).
pub(crate) fn fold(written: &[Written]) -> Outcome {
    let any = |wanted: fn(&Written) -> bool| written.iter().any(wanted);
    if any(|written| matches!(written, Written::New(_) | Written::Ours(_))) {
        Outcome::Delivered
    } else if any(|written| matches!(written, Written::OtherCopy)) {
        Outcome::Duplicate
    } else {
        Outcome::Collapsed
    }
}

/// Whether a delivery count this far past the bound means the event takes its workers down with
/// it (a crash or a panic every time): it never reached an outcome that would have stopped it.
pub(crate) fn is_poison(deliveries: i64, max_deliveries: i64) -> bool {
    deliveries > max_deliveries.saturating_mul(2)
}

/// The longest wait before a retry. A retry holds the event's partition (the next event of its
/// members must wait for it), so it stays short; a dependency that is down for longer is retried
/// every ten seconds until the delivery bound.
pub(crate) const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// Delay before redelivery after the n-th failed delivery: 1 s, doubling, at most
/// [`MAX_RETRY_DELAY`].
pub(crate) fn retry_delay(deliveries: i64) -> Duration {
    let exponent = u32::try_from(deliveries.clamp(1, 7) - 1).unwrap_or(0);
    Duration::from_secs(2u64.pow(exponent)).min(MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    use reno_model::{DeviceType, EventId, EventType, MemberId, Value};

    use super::*;

    fn notification(occurred_at_ms: u64, published_at_ms: u64) -> Notification {
        Notification {
            seq: 0,
            id: EventId::new("e").unwrap(),
            event_type: EventType::new("plan_changed").unwrap(),
            member: MemberId::new("m").unwrap(),
            device_type: DeviceType::new("tv").unwrap(),
            occurred_at_ms,
            published_at_ms,
            payload: Value::Null,
            collapse_key: None,
        }
    }

    #[test]
    fn only_a_redelivery_can_have_started() {
        let limit = Duration::from_secs(10);
        assert_eq!(staleness(Duration::from_secs(5), limit, 1), Staleness::Fresh);
        assert_eq!(staleness(Duration::from_secs(5), limit, 3), Staleness::Fresh);
        assert_eq!(staleness(Duration::from_secs(11), limit, 1), Staleness::Stale);
        // Handed back at shutdown without being started, or started and stopped half way: only its
        // entries can tell.
        assert_eq!(staleness(Duration::from_secs(11), limit, 2), Staleness::StaleUnlessStarted);
    }

    #[test]
    fn an_existing_entry_is_ours_only_if_this_message_wrote_it() {
        let source = source("RENO_HIGH", 42);
        assert_eq!(source, "RENO_HIGH:42");
        // A write that timed out but was stored: this message's own, so it is pushed.
        assert_eq!(existing(Some("RENO_HIGH:42"), &source, 7), Written::Ours(7));
        // The same event published again after the duplicate window: another message.
        assert_eq!(existing(Some("RENO_HIGH:41"), &source, 7), Written::OtherCopy);
        assert_eq!(existing(None, &source, 7), Written::OtherCopy);
    }

    #[test]
    fn outcomes_fold_from_the_writes() {
        assert_eq!(fold(&[Written::Superseded, Written::New(3)]), Outcome::Delivered);
        assert_eq!(fold(&[Written::OtherCopy, Written::Ours(3)]), Outcome::Delivered);
        assert_eq!(fold(&[Written::OtherCopy, Written::Superseded]), Outcome::Duplicate);
        assert_eq!(fold(&[Written::Superseded, Written::Superseded]), Outcome::Collapsed);
    }

    #[test]
    fn collapse_orders_by_source_time_then_server_time() {
        // A publisher's late retry of an old state keeps its source time and loses.
        assert!(newer(&notification(200, 1_000), &notification(100, 9_000)));
        assert!(!newer(&notification(100, 9_000), &notification(200, 1_000)));
        // Same source time: the server's receive time decides; a full tie lets the write through.
        assert!(newer(&notification(100, 200), &notification(100, 150)));
        assert!(!newer(&notification(100, 150), &notification(100, 150)));
        // A source time in the future (a clock running ahead) counts as the receive time.
        assert!(!newer(&notification(9_999_999, 1_000), &notification(1_500, 2_000)));
    }

    #[test]
    fn poison_is_far_past_the_bound() {
        assert!(!is_poison(20, 10));
        assert!(is_poison(21, 10));
    }

    #[test]
    fn retry_delay_doubles_up_to_ten_seconds() {
        let delays: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10, 10, 10, 10]);
    }
}
