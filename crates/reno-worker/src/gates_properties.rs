//! Properties of the worker's pure rules (`gates`), each against a small model written from
//! docs/architecture.md: staleness, how history writes fold into an outcome, the collapse order
//! (`newer`) and what replaying collapsing writes leaves in the history, and the retry delay.

use std::time::Duration;

use proptest::{collection::vec, prelude::*};
use reno_model::{DeviceType, EventId, EventType, MemberId, Notification, Value};

use crate::{
    gates::{MAX_RETRY_DELAY, Staleness, Written, fold, is_poison, newer, retry_delay, staleness},
    outcome::Outcome,
};

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..120).prop_map(Duration::from_secs),
        (0u64..120_000_000).prop_map(Duration::from_micros),
        any::<(u64, u32)>().prop_map(|(secs, nanos)| Duration::new(secs, nanos % 1_000_000_000)),
    ]
}

fn written() -> impl Strategy<Value = Written> {
    prop_oneof![
        any::<u64>().prop_map(Written::New),
        any::<u64>().prop_map(Written::Ours),
        Just(Written::OtherCopy),
        Just(Written::Superseded),
    ]
}

/// A state of one collapse key, numbered by `id` so that replays can tell which write survived.
/// Times are drawn from a small range, so that ties in one or both times are common.
fn state(id: usize, occurred_at_ms: u64, published_at_ms: u64) -> Notification {
    Notification {
        seq: 0,
        id: EventId::new(format!("e{id}")).expect("a token"),
        event_type: EventType::new("plan_changed").expect("a token"),
        member: MemberId::new("m").expect("a token"),
        device_type: DeviceType::new("tv").expect("a token"),
        occurred_at_ms,
        published_at_ms,
        payload: Value::Null,
        collapse_key: None,
    }
}

fn states(count: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Notification>> {
    vec((0u64..6, 0u64..6), count).prop_map(|times| {
        times
            .into_iter()
            .enumerate()
            .map(|(id, (occurred, published))| state(id, occurred, published))
            .collect()
    })
}

/// The collapse order of docs/architecture.md: the source time, taken as the receive time when it
/// is later (a publisher's clock running ahead), then the receive time.
fn order(notification: &Notification) -> (u64, u64) {
    (notification.occurred_at_ms.min(notification.published_at_ms), notification.published_at_ms)
}

/// What a key holds after `writes` in this order, each replacing the stored state unless the stored
/// one is newer (the history's compare-and-set, one write at a time).
fn replay<'a>(writes: impl IntoIterator<Item = &'a Notification>) -> Option<&'a Notification> {
    writes.into_iter().fold(None, |stored, incoming| match stored {
        Some(stored) if newer(stored, incoming) => Some(stored),
        _ => Some(incoming),
    })
}

proptest! {
    #[test]
    fn staleness_follows_the_age_and_the_delivery_count(
        age in duration(),
        stale_after in duration(),
        deliveries in prop_oneof![-2i64..12, any::<i64>()],
    ) {
        let expected = if age <= stale_after {
            Staleness::Fresh
        } else if deliveries <= 1 {
            Staleness::Stale
        } else {
            Staleness::StaleUnlessStarted
        };
        prop_assert_eq!(staleness(age, stale_after, deliveries), expected);
    }

    #[test]
    fn never_stale_at_or_below_the_threshold(
        age in duration(),
        extra in duration(),
        deliveries in any::<i64>(),
    ) {
        let stale_after = age.saturating_add(extra);
        prop_assert_eq!(staleness(age, stale_after, deliveries), Staleness::Fresh);
    }

    #[test]
    fn a_first_delivery_past_the_threshold_is_stale(
        stale_after in duration(),
        past in (1u64..u64::MAX).prop_map(Duration::from_nanos),
    ) {
        let age = stale_after.saturating_add(past);
        prop_assume!(age > stale_after);
        prop_assert_eq!(staleness(age, stale_after, 1), Staleness::Stale);
        prop_assert_eq!(staleness(age, stale_after, 2), Staleness::StaleUnlessStarted);
    }

    #[test]
    fn the_outcome_folds_from_the_writes_in_any_order(
        (writes, shuffled) in vec(written(), 0..8).prop_flat_map(|writes| (Just(writes.clone()), Just(writes).prop_shuffle())),
    ) {
        let delivered = writes.iter().any(|written| matches!(written, Written::New(_) | Written::Ours(_)));
        let duplicate = writes.contains(&Written::OtherCopy);
        let expected = match (delivered, duplicate) {
            (true, _) => Outcome::Delivered,
            (false, true) => Outcome::Duplicate,
            (false, false) => Outcome::Collapsed,
        };
        prop_assert_eq!(fold(&writes), expected);
        prop_assert_eq!(fold(&shuffled), expected);
    }

    #[test]
    fn newer_is_the_model_order(states in states(2..3)) {
        let (a, b) = (&states[0], &states[1]);
        prop_assert_eq!(newer(a, b), order(a) > order(b));
        // With clocks that agree (the source time not after the receive time), the source time
        // decides, then the receive time.
        if a.occurred_at_ms <= a.published_at_ms && b.occurred_at_ms <= b.published_at_ms {
            let expected = a.occurred_at_ms > b.occurred_at_ms
                || (a.occurred_at_ms == b.occurred_at_ms && a.published_at_ms > b.published_at_ms);
            prop_assert_eq!(newer(a, b), expected);
        }
    }

    #[test]
    fn newer_is_a_strict_weak_order(states in states(3..4)) {
        let (a, b, c) = (&states[0], &states[1], &states[2]);
        let tied = |x: &Notification, y: &Notification| !newer(x, y) && !newer(y, x);
        prop_assert!(!newer(a, a), "irreflexive");
        prop_assert!(!(newer(a, b) && newer(b, a)), "asymmetric");
        if newer(a, b) && newer(b, c) {
            prop_assert!(newer(a, c), "transitive");
        }
        if tied(a, b) && tied(b, c) {
            prop_assert!(tied(a, c), "ties are transitive");
        }
    }

    #[test]
    fn replaying_collapsing_writes_in_any_order_keeps_the_newest(
        (writes, shuffled) in states(1..10).prop_flat_map(|writes| (Just(writes.clone()), Just(writes).prop_shuffle())),
    ) {
        for order_of_writes in [&writes, &shuffled] {
            let kept = replay(order_of_writes.iter()).expect("at least one write");
            let newest = order_of_writes.iter().map(order).max().expect("at least one write");
            prop_assert_eq!(order(kept), newest, "the kept state is a newest one");
            // Among states tied for newest, the later write wins.
            let last_newest = order_of_writes.iter().rev().find(|state| order(state) == newest);
            prop_assert_eq!(Some(&kept.id), last_newest.map(|state| &state.id));
        }
        let distinct_newest = writes.iter().filter(|state| order(state) == writes.iter().map(order).max().unwrap()).count();
        if distinct_newest == 1 {
            prop_assert_eq!(replay(writes.iter()).map(|state| &state.id), replay(shuffled.iter()).map(|state| &state.id));
        }
    }

    #[test]
    fn the_retry_delay_grows_to_ten_seconds_and_stays_there(
        deliveries in prop_oneof![-3i64..20, any::<i64>()],
        later in prop_oneof![0i64..20, any::<i64>()],
    ) {
        let delay = retry_delay(deliveries);
        let expected = match deliveries {
            ..=1 => Duration::from_secs(1),
            2..=4 => Duration::from_secs(1 << (deliveries - 1)),
            _ => Duration::from_secs(10),
        };
        prop_assert_eq!(delay, expected);
        prop_assert!(Duration::from_secs(1) <= delay && delay <= MAX_RETRY_DELAY);
        let further = deliveries.saturating_add(later.max(0));
        prop_assert!(retry_delay(further) >= delay, "monotone: {} then {}", deliveries, further);
    }

    #[test]
    fn poison_is_more_than_twice_the_bound(
        deliveries in any::<i64>(),
        // Up to half of i64::MAX only: above it `2 * max_deliveries` overflows (see the test below).
        max_deliveries in 1i64..=i64::MAX / 2,
    ) {
        prop_assert_eq!(is_poison(deliveries, max_deliveries), i128::from(deliveries) > 2 * i128::from(max_deliveries));
    }
}

/// Found by the property tests: a delivery bound above `i64::MAX / 2` (say `i64::MAX`, meant as "never
/// give up") made `2 * max_deliveries` overflow. The bound saturates.
#[test]
fn a_bound_near_the_largest_integer_never_makes_every_delivery_poison() {
    assert!(!is_poison(1, i64::MAX));
    assert!(!is_poison(i64::MAX, i64::MAX));
}
