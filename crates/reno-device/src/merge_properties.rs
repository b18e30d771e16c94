//! Properties of the push/pull merge against a model of the history: notifications written with
//! increasing seqs (some collapsing under shared keys, some for other members or device types),
//! pushes lost, repeated and reordered, pages of random sizes, catch-ups interleaved with pushes
//! and with the app taking events. Whatever happens, each notification is handed out at most once,
//! everything the history still holds is handed out after a final catch-up, the last state handed
//! out per collapse key is the newest, and the handed position never moves back nor past a
//! notification the app has not had.

use std::collections::{BTreeMap, HashMap};

use proptest::{collection::vec, prelude::*};
use reno_model::{CollapseKey, DeviceType, EventId, EventType, MemberId, Notification, Position, PullPage};

use crate::{DeviceEvent, merge::Merge};

/// The history's epoch: no reset happens in this model.
const EPOCH: u64 = 1_795_599_990_000_000_000;

fn member() -> MemberId {
    MemberId::new("m").expect("a token")
}

fn device_type() -> DeviceType {
    DeviceType::new("tv").expect("a token")
}

/// What happens next.
#[derive(Debug, Clone)]
enum Step {
    /// A worker writes a notification to the history and pushes it (or the push is lost, or sent
    /// twice). `key` picks one of three collapse keys, or none; `foreign` writes for another member
    /// or device type.
    Write { key: Option<u8>, foreign: Option<bool>, lost: bool, twice: bool },
    /// One of the pushes in flight arrives (which one: reordering).
    Push(prop::sample::Index),
    /// A push for another member or device type arrives on this device's subscription, with a
    /// seq that may be one of this device's.
    ForeignPush { seq_back: u64, other_member: bool },
    /// A catch-up starts (or goes on): one page of at most this many notifications. While a
    /// catch-up is under way the device only pulls (pages and concurrent writes come in between).
    Page(u32),
    /// The app takes up to this many events.
    Take(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (prop::option::of(0u8..3), prop::option::weighted(0.2, any::<bool>()), prop::bool::weighted(0.3), prop::bool::weighted(0.15))
            .prop_map(|(key, foreign, lost, twice)| Step::Write { key, foreign, lost, twice }),
        4 => any::<prop::sample::Index>().prop_map(Step::Push),
        1 => (0u64..4, any::<bool>()).prop_map(|(seq_back, other_member)| Step::ForeignPush { seq_back, other_member }),
        2 => (1u32..5).prop_map(Step::Page),
        3 => (1usize..4).prop_map(Step::Take),
    ]
}

/// One history entry as the model keeps it.
#[derive(Debug, Clone)]
struct Entry {
    notification: Notification,
    /// When the entry was written (after the event was received): its `Nats-Time-Stamp`.
    written_at_ms: u64,
}

/// The history, the pushes in flight and everything the app was handed.
#[derive(Default)]
struct World {
    /// Every entry ever written, by seq (this device's and others').
    written: BTreeMap<u64, Entry>,
    /// The entries the history still holds (collapse removes the replaced one).
    live: BTreeMap<u64, Entry>,
    /// For each collapse key, the seq of its newest entry.
    newest_of_key: HashMap<CollapseKey, u64>,
    /// Pushes sent but not yet arrived.
    in_flight: Vec<Notification>,
    /// The seqs handed to the app, in order.
    handed: Vec<u64>,
    /// A catch-up is under way (the last page said `more`).
    catching_up: bool,
    /// The clock, in milliseconds.
    now_ms: u64,
}

impl World {
    fn ours(notification: &Notification) -> bool {
        notification.member == member() && notification.device_type == device_type()
    }

    fn write(&mut self, key: Option<u8>, foreign: Option<bool>, lost: bool, twice: bool) {
        let seq = self.written.keys().next_back().map_or(1, |last| last + 1);
        self.now_ms += 10;
        let collapse_key = key.map(|key| CollapseKey::new(format!("k{key}")).expect("a token"));
        let notification = Notification {
            seq,
            id: EventId::new(format!("e{seq}")).expect("a token"),
            event_type: EventType::new(if key.is_some() { "plan_changed" } else { "my_list_updated" })
                .expect("a token"),
            member: if foreign == Some(true) { MemberId::new("other").expect("a token") } else { member() },
            device_type: if foreign == Some(false) {
                DeviceType::new("mobile").expect("a token")
            } else {
                device_type()
            },
            occurred_at_ms: self.now_ms - 2,
            published_at_ms: self.now_ms - 1,
            payload: reno_model::Value::Null,
            collapse_key: collapse_key.clone(),
        };
        let entry = Entry { notification: notification.clone(), written_at_ms: self.now_ms };
        self.written.insert(seq, entry.clone());
        self.live.insert(seq, entry);
        // Collapse keys are per member and device type in the history; only this device's are
        // tracked (the others never reach its pages).
        if let Some(collapse_key) = collapse_key.filter(|_| foreign.is_none())
            && let Some(replaced) = self.newest_of_key.insert(collapse_key, seq)
        {
            self.live.remove(&replaced);
        }
        // The worker pushes on the entry's own subject: another member's or device type's push
        // never reaches this device's subscription.
        if foreign.is_none() && !lost {
            self.in_flight.push(notification.clone());
            if twice {
                self.in_flight.push(notification);
            }
        }
    }

    /// The pull service: this device's entries after the request's cursor, in seq order.
    fn page(&self, position: Position, limit: u32) -> PullPage {
        assert_eq!(position.epoch.unwrap_or(EPOCH), EPOCH, "a request for another epoch");
        let mut after = self
            .live
            .range(position.cursor + 1..)
            .map(|(_, entry)| entry)
            .filter(|entry| World::ours(&entry.notification));
        let entries: Vec<&Entry> = after.by_ref().take(limit as usize).collect();
        let more = after.next().is_some();
        let (next_cursor, next_cursor_time_ms) = match entries.last() {
            Some(last) => (last.notification.seq, Some(last.written_at_ms)),
            None => (position.cursor, position.cursor_time_ms),
        };
        PullPage {
            notifications: entries.iter().map(|entry| entry.notification.clone()).collect(),
            next_cursor,
            more,
            resync: false,
            epoch: EPOCH,
            next_cursor_time_ms,
        }
    }

    /// Whether a later write of the same collapse key replaced this entry.
    fn superseded(&self, seq: u64) -> bool {
        let notification = &self.written[&seq].notification;
        notification.collapse_key.as_ref().is_some_and(|key| self.newest_of_key[key] > seq)
    }
}

/// Runs the steps, checking what must hold after each, then a final full catch-up.
fn run(steps: &[Step], final_limits: &[u32]) -> Result<(), TestCaseError> {
    let mut world = World::default();
    let mut merge = Merge::new(member(), device_type(), Position::default());
    for step in steps {
        match step {
            Step::Write { key, foreign, lost, twice } => world.write(*key, *foreign, *lost, *twice),
            Step::Page(limit) => page(&mut world, &mut merge, *limit)?,
            // During a catch-up the device only pulls; anything else waits until it is done.
            _ if world.catching_up => page(&mut world, &mut merge, 2)?,
            Step::Push(index) => {
                if !world.in_flight.is_empty() {
                    let push = world.in_flight.remove(index.index(world.in_flight.len()));
                    merge.on_push(push);
                }
            }
            Step::ForeignPush { seq_back, other_member } => {
                let seq =
                    world.written.keys().next_back().map_or(1, |last| last + 1).saturating_sub(*seq_back);
                let mut push = world.written.values().next().map_or_else(
                    || template(seq),
                    |entry| Notification { seq, ..entry.notification.clone() },
                );
                if *other_member {
                    push.member = MemberId::new("other").expect("a token");
                } else {
                    push.device_type = DeviceType::new("browser").expect("a token");
                }
                merge.on_push(push);
            }
            Step::Take(count) => take(&mut world, &mut merge, *count)?,
        }
    }
    // The final full catch-up, then whatever pushes were still in flight, then the app takes all.
    page(&mut world, &mut merge, final_limits.first().copied().unwrap_or(3))?;
    for limit in final_limits.iter().cycle().skip(1) {
        if !world.catching_up {
            break;
        }
        page(&mut world, &mut merge, *limit)?;
    }
    take(&mut world, &mut merge, usize::MAX)?;
    for push in std::mem::take(&mut world.in_flight) {
        merge.on_push(push);
    }
    take(&mut world, &mut merge, usize::MAX)?;

    // Everything the history still holds for this device was handed out.
    for (seq, entry) in &world.live {
        if World::ours(&entry.notification) {
            prop_assert!(
                world.handed.contains(seq),
                "seq {} is in the history but was never handed out",
                seq
            );
        }
    }
    // For each collapse key, the last state handed out is the newest one.
    for (key, newest) in &world.newest_of_key {
        let last = world
            .handed
            .iter()
            .rev()
            .find(|seq| world.written[seq].notification.collapse_key.as_ref() == Some(key));
        prop_assert_eq!(last, Some(newest), "key {}: handed {:?}", key, world.handed);
    }
    Ok(())
}

fn template(seq: u64) -> Notification {
    Notification {
        seq,
        id: EventId::new("x").expect("a token"),
        event_type: EventType::new("my_list_updated").expect("a token"),
        member: member(),
        device_type: device_type(),
        occurred_at_ms: 1,
        published_at_ms: 1,
        payload: reno_model::Value::Null,
        collapse_key: None,
    }
}

fn page(world: &mut World, merge: &mut Merge, limit: u32) -> Result<(), TestCaseError> {
    let before = merge.handed();
    let pulled = merge.pulled();
    let page = world.page(pulled, limit);
    world.catching_up = page.more;
    merge.on_page(page);
    prop_assert!(merge.pulled().cursor >= pulled.cursor, "the pulled cursor moved back");
    check_handed(world, merge, before)
}

fn take(world: &mut World, merge: &mut Merge, count: usize) -> Result<(), TestCaseError> {
    for _ in 0..count {
        let before = merge.handed();
        let Some(event) = merge.pop() else { break };
        let DeviceEvent::Notification(notification) = event else {
            return Err(TestCaseError::fail("a resync, although the history never lost anything"));
        };
        prop_assert!(World::ours(&notification), "handed out another's notification: {:?}", notification);
        let seq = notification.seq;
        prop_assert_eq!(world.written.get(&seq).map(|entry| &entry.notification), Some(&notification));
        prop_assert!(!world.handed.contains(&seq), "seq {} handed out twice: {:?}", seq, world.handed);
        world.handed.push(seq);
        check_handed(world, merge, before)?;
    }
    Ok(())
}

/// The handed position never moves back, stays in the epoch, has a time no later than when the
/// entry at its cursor was written, and never passes one of this device's notifications that was
/// not handed out (unless a later state of its collapse key replaced it).
fn check_handed(world: &World, merge: &Merge, before: Position) -> Result<(), TestCaseError> {
    let handed = merge.handed();
    prop_assert!(
        handed.cursor >= before.cursor,
        "the handed cursor moved back: {:?} to {:?}",
        before,
        handed
    );
    if handed.cursor > 0 {
        prop_assert_eq!(handed.epoch, Some(EPOCH));
        let written_at_ms = world.written[&handed.cursor].written_at_ms;
        prop_assert!(handed.cursor_time_ms.is_some_and(|time| time <= written_at_ms), "{:?}", handed);
    }
    for (seq, entry) in world.written.range(..=handed.cursor) {
        if World::ours(&entry.notification) && !world.handed.contains(seq) {
            prop_assert!(
                world.superseded(*seq),
                "the handed position {} passed seq {}, never handed out (handed {:?})",
                handed.cursor,
                seq,
                world.handed
            );
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn the_merge_hands_out_the_history_once_and_in_order(
        steps in vec(step(), 0..80),
        final_limits in vec(1u32..6, 1..4),
    ) {
        run(&steps, &final_limits)?;
    }
}
