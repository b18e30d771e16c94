//! The outcomes an event can have, and their counters. Every delivery attempt a worker receives is
//! counted once as received and once as exactly one outcome, so that
//! `received = delivered + stale + duplicate + collapsed + dead_lettered + retried` at all times.

use reno_model::Priority;

/// Counter of events by priority and outcome (`received` included).
pub const EVENTS_METRIC: &str = "reno_worker_events_total";
/// Counter of dead letters by priority and reason code.
pub const DEAD_LETTERS_METRIC: &str = "reno_worker_dead_letters_total";
/// Counter of retried deliveries by priority and reason (`history_full`, `unavailable`,
/// `contention`, `unknown_type`, `unreadable_entry`, `dead_letter_failed`).
pub const RETRIES_METRIC: &str = "reno_worker_retries_total";
/// Counter of pushes by priority, device type and result: `sent`, or `skipped_offline` when no
/// device of the type was online (the notification waits in the history).
pub const PUSHES_METRIC: &str = "reno_worker_pushes_total";
/// Histogram of seconds from the server receiving an event to the worker acking it.
pub const LATENCY_METRIC: &str = "reno_worker_event_seconds";

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

pub(crate) fn count_received(priority: Priority) {
    metrics::counter!(EVENTS_METRIC, "priority" => priority.as_str(), "outcome" => "received").increment(1);
}

pub(crate) fn count_retry(priority: Priority, reason: &'static str) {
    metrics::counter!(RETRIES_METRIC, "priority" => priority.as_str(), "reason" => reason).increment(1);
}

pub(crate) fn count_push(priority: Priority, device_type: &reno_model::DeviceType, result: &'static str) {
    let device_type = device_type.to_string();
    metrics::counter!(PUSHES_METRIC, "priority" => priority.as_str(), "device_type" => device_type, "result" => result)
        .increment(1);
}

pub(crate) fn count(priority: Priority, outcome: Outcome, seconds_since_published: f64) {
    metrics::counter!(EVENTS_METRIC, "priority" => priority.as_str(), "outcome" => outcome.label())
        .increment(1);
    if let Outcome::DeadLettered(reason) = outcome {
        metrics::counter!(DEAD_LETTERS_METRIC, "priority" => priority.as_str(), "reason" => reason)
            .increment(1);
    }
    if outcome == Outcome::Delivered {
        metrics::histogram!(LATENCY_METRIC, "priority" => priority.as_str()).record(seconds_since_published);
    }
}
