//! The outcomes an event can have, and their counters. Every delivery attempt a worker receives is
//! counted once as received and once as exactly one outcome, both under the same `priority` and
//! `type`, so that `received = delivered + stale + duplicate + collapsed + dead_lettered + retried`
//! per priority and type, give or take the deliveries in flight.

use reno_model::Priority;

/// Counter of events by priority, type and outcome (`received` included).
pub const EVENTS_METRIC: &str = "reno_worker_events_total";
/// Counter of dead letters by priority, type and reason code.
pub const DEAD_LETTERS_METRIC: &str = "reno_worker_dead_letters_total";
/// Counter of retried deliveries by priority and reason ([`RETRY_REASONS`]).
pub const RETRIES_METRIC: &str = "reno_worker_retries_total";
/// Counter of pushes by priority, device type and result: `sent`, or `skipped_offline` when no
/// device of the type was online (the notification waits in the history).
pub const PUSHES_METRIC: &str = "reno_worker_pushes_total";
/// Histogram of seconds from the server receiving an event to the worker acking it.
pub const LATENCY_METRIC: &str = "reno_worker_event_seconds";
/// Histogram of seconds from the server receiving an event to the worker pushing a notification
/// of it.
pub const PUSH_LATENCY_METRIC: &str = "reno_worker_push_seconds";

/// Why a delivery may be retried. Each is counted from zero as soon as a priority starts, so that an
/// alert on one (`history_full`) sees a series before the first retry.
pub const RETRY_REASONS: [&str; 7] = [
    "history_full",
    "unavailable",
    "contention",
    "unknown_type",
    "unreadable_entry",
    "dead_letter_failed",
    "panicked",
];

/// The `type` label of a delivery whose subject names no event type.
pub const UNKNOWN_TYPE: &str = "unknown";

/// How the handling of one delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written to the history of at least one device type and pushed; acked.
    Delivered,
    /// Older than its type's staleness threshold; acked and dropped.
    Stale,
    /// Already delivered under the same event id; acked and dropped.
    Duplicate,
    /// A newer event with the same collapse key is already in the history; acked and dropped.
    Collapsed,
    /// Can never be delivered; filed in the dead-letter stream with its reason, then terminated.
    DeadLettered(&'static str),
    /// A transient failure; handed back to JetStream for redelivery after a delay.
    Retried,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Stale => "stale",
            Outcome::Duplicate => "duplicate",
            Outcome::Collapsed => "collapsed",
            Outcome::DeadLettered(_) => "dead_lettered",
            Outcome::Retried => "retried",
        }
    }
}

/// The `type` label of a delivery, known before its payload is decoded: the event type its subject
/// names (the priority streams capture only `reno.evt.<type>.*` of registry types, so the label
/// takes no more values than the registry has types), or [`UNKNOWN_TYPE`] for a subject that is not
/// an event subject.
pub(crate) fn type_label(subject: &str) -> String {
    reno_model::subject::parse_event_subject(subject)
        .map_or_else(|_| UNKNOWN_TYPE.to_owned(), |(event_type, _)| event_type.to_string())
}

/// Counts every retry reason of `priority` from zero.
pub(crate) fn register(priority: Priority) {
    for reason in RETRY_REASONS {
        count_retries(priority, reason, 0);
    }
}

pub(crate) fn count_received(priority: Priority, event_type: &str) {
    let (priority, event_type) = (priority.as_str(), event_type.to_owned());
    metrics::counter!(EVENTS_METRIC, "priority" => priority, "type" => event_type, "outcome" => "received")
        .increment(1);
}

pub(crate) fn count_retry(priority: Priority, reason: &'static str) {
    count_retries(priority, reason, 1);
}

fn count_retries(priority: Priority, reason: &'static str, retries: u64) {
    metrics::counter!(RETRIES_METRIC, "priority" => priority.as_str(), "reason" => reason).increment(retries);
}

pub(crate) fn count_push(priority: Priority, device_type: &reno_model::DeviceType, result: &'static str) {
    let device_type = device_type.to_string();
    metrics::counter!(PUSHES_METRIC, "priority" => priority.as_str(), "device_type" => device_type, "result" => result)
        .increment(1);
}

/// Records how long after the server received it an event's notification was pushed.
pub(crate) fn observe_push(priority: Priority, seconds_since_published: f64) {
    metrics::histogram!(PUSH_LATENCY_METRIC, "priority" => priority.as_str())
        .record(seconds_since_published.max(0.0));
}

pub(crate) fn count(priority: Priority, event_type: &str, outcome: Outcome, seconds_since_published: f64) {
    let (priority, event_type) = (priority.as_str(), event_type.to_owned());
    let label = outcome.label();
    metrics::counter!(EVENTS_METRIC, "priority" => priority, "type" => event_type.clone(), "outcome" => label)
        .increment(1);
    if let Outcome::DeadLettered(reason) = outcome {
        metrics::counter!(DEAD_LETTERS_METRIC, "priority" => priority, "type" => event_type, "reason" => reason)
            .increment(1);
    }
    if outcome == Outcome::Delivered {
        metrics::histogram!(LATENCY_METRIC, "priority" => priority).record(seconds_since_published);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_label_comes_from_an_event_subject_or_is_unknown() {
        assert_eq!(type_label("reno.evt.plan_changed.m1"), "plan_changed");
        assert_eq!(type_label("reno.evt.plan_changed"), UNKNOWN_TYPE);
        assert_eq!(type_label("reno.evt.bad type.m1"), UNKNOWN_TYPE);
        assert_eq!(type_label("_INBOX.abc"), UNKNOWN_TYPE);
    }
}
