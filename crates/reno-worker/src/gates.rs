//! The worker's rules, with no IO and the clock passed in: when an event is stale, what an event
//! does to its member's history (new, already there, or superseded, per device type), which state
//! of a collapse key is newer, how the results fold into the event's outcome, and how long to wait
//! before a retry.

use std::time::Duration;

use reno_model::{
    DeviceType, Notification,
    history::{Entry, MemberHistory},
};

use crate::outcome::Outcome;

/// Which message of a priority stream an event came from: `<stream>:<sequence>`. Written with each
/// history entry (its `source`), so that a worker meeting an existing entry can tell its own
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

impl Written {
    /// What the history held, for trace records.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Written::New(_) => "new",
            Written::Ours(_) => "written_before_by_this_message",
            Written::OtherCopy => "duplicate",
            Written::Superseded => "superseded",
        }
    }

    /// The position of the notification, where there is one.
    pub(crate) fn seq(self) -> Option<u64> {
        match self {
            Written::New(seq) | Written::Ours(seq) => Some(seq),
            Written::OtherCopy | Written::Superseded => None,
        }
    }
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
pub(crate) fn newer(stored: &impl Stamped, incoming: &impl Stamped) -> bool {
    let order = |(occurred_at_ms, published_at_ms): (u64, u64)| {
        (occurred_at_ms.min(published_at_ms), published_at_ms)
    };
    order(stored.stamps()) > order(incoming.stamps())
}

/// What collapse orders by: when it happened at the source, and when the server received it.
pub(crate) trait Stamped {
    fn stamps(&self) -> (u64, u64);
}

impl Stamped for Notification {
    fn stamps(&self) -> (u64, u64) {
        (self.occurred_at_ms, self.published_at_ms)
    }
}

impl Stamped for Entry {
    fn stamps(&self) -> (u64, u64) {
        (self.occurred_at_ms, self.published_at_ms)
    }
}

/// Adds one event to a member's history, for each of its target device types: a new entry where
/// the history has nothing under its key for that device type (or an older state, which loses that
/// device type); nothing where it already holds this event (this message's write or another copy's)
/// or a newer state of the key. Returns what it found per target, in `incoming`'s target order;
/// `Written::New(0)` marks the targets of the entry appended, whose position the write gives.
pub(crate) fn apply(history: &mut MemberHistory, mut incoming: Entry) -> Vec<(DeviceType, Written)> {
    let mut results = Vec::with_capacity(incoming.targets.len());
    let mut fresh = Vec::with_capacity(incoming.targets.len());
    for device_type in std::mem::take(&mut incoming.targets) {
        let holder = history.entries.iter_mut().find(|stored| {
            stored.targets.contains(&device_type)
                && stored.same_key(&incoming.event_type, &incoming.id, incoming.collapse_key.as_ref())
        });
        let written = match holder {
            None => Written::New(0),
            Some(stored) if stored.id == incoming.id => {
                existing(Some(&stored.source), &incoming.source, stored.seq)
            }
            Some(stored) if newer(stored, &incoming) => Written::Superseded,
            Some(stored) => {
                stored.targets.retain(|target| *target != device_type);
                Written::New(0)
            }
        };
        if written == Written::New(0) {
            fresh.push(device_type.clone());
        }
        results.push((device_type, written));
    }
    history.entries.retain(|stored| !stored.targets.is_empty());
    if !fresh.is_empty() {
        incoming.targets = fresh;
        incoming.seq = 0;
        incoming.written_ms = 0;
        history.entries.push(incoming);
    }
    results
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

    fn entry(id: &str, source: &str, targets: &[&str], times: (u64, u64), collapse: Option<&str>) -> Entry {
        Entry {
            seq: 0,
            written_ms: 0,
            targets: targets.iter().map(|target| DeviceType::new(*target).unwrap()).collect(),
            source: source.to_owned(),
            id: EventId::new(id).unwrap(),
            event_type: EventType::new("plan_changed").unwrap(),
            occurred_at_ms: times.0,
            published_at_ms: times.1,
            payload: Value::Null,
            collapse_key: collapse.map(|key| reno_model::CollapseKey::new(key).unwrap()),
        }
    }

    fn written(results: &[(DeviceType, Written)]) -> Vec<(String, Written)> {
        results.iter().map(|(device_type, written)| (device_type.to_string(), *written)).collect()
    }

    #[test]
    fn an_event_is_added_once_per_device_type() {
        let mut history = MemberHistory::default();
        let first = apply(&mut history, entry("e1", "S:1", &["tv", "mobile"], (1, 1), None));
        assert_eq!(written(&first), [("tv".into(), Written::New(0)), ("mobile".into(), Written::New(0))]);
        history.settle(10, 100);
        // The same message again (a retry after a lost answer): ours, at its position.
        let again = apply(&mut history, entry("e1", "S:1", &["tv", "mobile"], (1, 1), None));
        assert_eq!(written(&again), [("tv".into(), Written::Ours(10)), ("mobile".into(), Written::Ours(10))]);
        // Another copy of the event, published again: a duplicate.
        let copy = apply(&mut history, entry("e1", "S:9", &["tv"], (1, 5), None));
        assert_eq!(written(&copy), [("tv".into(), Written::OtherCopy)]);
        // Another event: appended.
        let other = apply(&mut history, entry("e2", "S:2", &["tv"], (2, 2), None));
        assert_eq!(written(&other), [("tv".into(), Written::New(0))]);
        assert_eq!(history.entries.len(), 2);
    }

    #[test]
    fn collapse_takes_only_the_device_types_the_newer_state_targets() {
        let mut history = MemberHistory::default();
        apply(&mut history, entry("a", "S:1", &["tv", "mobile"], (1, 1), Some("plan")));
        history.settle(10, 100);
        // A newer state for the tv only: the older one stays for the mobile.
        let newer_state = apply(&mut history, entry("b", "S:2", &["tv"], (2, 2), Some("plan")));
        assert_eq!(written(&newer_state), [("tv".into(), Written::New(0))]);
        history.settle(11, 110);
        let targets: Vec<(String, Vec<String>)> = history
            .entries
            .iter()
            .map(|stored| (stored.id.to_string(), stored.targets.iter().map(ToString::to_string).collect()))
            .collect();
        assert_eq!(targets, [("a".into(), vec!["mobile".into()]), ("b".into(), vec!["tv".into()])]);
        // An older state than what the tv holds is superseded there, new for the mobile.
        let late = apply(&mut history, entry("c", "S:3", &["tv", "mobile"], (1, 3), Some("plan")));
        assert_eq!(written(&late), [("tv".into(), Written::Superseded), ("mobile".into(), Written::New(0))]);
        // The entry left with no device type is gone.
        assert_eq!(
            history.entries.iter().map(|stored| stored.id.to_string()).collect::<Vec<_>>(),
            ["b", "c"]
        );
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
