//! Merging push and pull into the one stream the app sees, with no IO: which notifications to hand
//! out, in what order, and the position that holds after each. Pushes can repeat what a pull brings
//! (and the other way round), arrive out of history order, or be missing; pages are in order.

use std::collections::{BTreeSet, HashMap, VecDeque};

use reno_model::{CollapseKey, DeviceType, EventType, MemberId, Notification, Position, PullPage};
use tracing::warn;

use crate::DeviceEvent;

/// Seqs remembered above the pulled cursor (or collapse keys) before a catch-up should move on.
pub(crate) const MAX_SEEN: usize = 10_000;

pub(crate) struct Merge {
    /// Only this member's notifications for this device type are handed out.
    member: MemberId,
    device_type: DeviceType,
    /// Every history entry up to here has been pulled: the next pull starts after it.
    pulled: Position,
    /// Every history entry up to here has been handed to the app: the position to persist.
    handed: Position,
    /// For collapsing notifications, the newest seq handed out per (type, collapse key): an older
    /// one arriving late (pushes from concurrent workers can cross) is stale state and dropped.
    newest: HashMap<(EventType, CollapseKey), u64>,
    /// Seqs above `pulled` already queued or handed (pushes), so that a pull does not repeat them.
    seen: BTreeSet<u64>,
    /// Events ready for the app, in order, each with the position that holds once it is handed out.
    ready: VecDeque<(DeviceEvent, Option<Position>)>,
}

impl Merge {
    pub(crate) fn new(member: MemberId, device_type: DeviceType, position: Position) -> Self {
        Merge {
            member,
            device_type,
            pulled: position,
            handed: position,
            newest: HashMap::new(),
            seen: BTreeSet::new(),
            ready: VecDeque::new(),
        }
    }

    /// Where the next pull starts.
    pub(crate) fn pulled(&self) -> Position {
        self.pulled
    }

    /// The position to persist: every notification up to its cursor has been handed out.
    pub(crate) fn handed(&self) -> Position {
        self.handed
    }

    /// Takes one pull page, in order.
    pub(crate) fn on_page(&mut self, page: PullPage) {
        let end = page.next_position();
        if page.resync {
            // The history restarts below or beyond our cursor: take the page as it comes. Seqs
            // stay unique within an epoch, so what came by push is still known then; a new epoch
            // starts its seqs over.
            self.ready.push_back((DeviceEvent::Resync, None));
            if self.pulled.epoch != Some(page.epoch) {
                self.seen.clear();
            }
            self.pulled = Position { cursor: 0, ..end };
        }
        for notification in page.notifications {
            let at = Position {
                cursor: notification.seq,
                epoch: Some(page.epoch),
                // The event's receive time comes before its history write: a safe stand-in.
                cursor_time_ms: Some(notification.published_at_ms),
            };
            self.accept(notification, Some(at));
        }
        // The page's end becomes the app's position once everything queued before it is handed
        // out (within an epoch, no queued position lies beyond it).
        self.pulled = end;
        match self.ready.back_mut() {
            Some((_, position)) => *position = Some(end),
            None => self.handed = end,
        }
        self.seen.retain(|seq| *seq > end.cursor);
    }

    /// Takes one push. Returns whether so many pushes are remembered that a catch-up should move
    /// the pulled cursor past them.
    pub(crate) fn on_push(&mut self, notification: Notification) -> bool {
        self.accept(notification, None);
        self.seen.len() > MAX_SEEN
    }

    /// The next event for the app, if one is ready.
    pub(crate) fn pop(&mut self) -> Option<DeviceEvent> {
        while let Some((event, position)) = self.ready.pop_front() {
            if let Some(position) = position {
                self.handed = position;
            }
            match &event {
                DeviceEvent::Notification(notification) if self.superseded(notification) => continue,
                // Collapse state from before a resync says nothing about the history after it.
                DeviceEvent::Resync => self.newest.clear(),
                DeviceEvent::Notification(_) => {}
            }
            return Some(event);
        }
        None
    }

    /// Queues a notification unless it was queued before or is not this device's; `position` is
    /// what the app's position becomes once it is handed out (pushes leave it as is).
    fn accept(&mut self, notification: Notification, position: Option<Position>) {
        if notification.member != self.member || notification.device_type != self.device_type {
            warn!(seq = notification.seq, "notification for another member or device type dropped");
            return;
        }
        if notification.seq <= self.pulled.cursor || !self.seen.insert(notification.seq) {
            return;
        }
        self.ready.push_back((DeviceEvent::Notification(notification), position));
    }

    /// Whether a newer notification with the same collapse key was handed out already; if not,
    /// this one becomes the newest.
    fn superseded(&mut self, notification: &Notification) -> bool {
        let Some(collapse_key) = &notification.collapse_key else { return false };
        if self.newest.len() >= MAX_SEEN {
            self.newest.clear();
        }
        let newest = self.newest.entry((notification.event_type.clone(), collapse_key.clone())).or_insert(0);
        if notification.seq < *newest {
            return true;
        }
        *newest = notification.seq;
        false
    }
}

#[cfg(test)]
mod tests {
    use reno_model::{EventId, Value};

    use super::*;

    const EPOCH: u64 = 7;

    fn merge() -> Merge {
        Merge::new(MemberId::new("m").unwrap(), DeviceType::new("tv").unwrap(), Position::default())
    }

    fn notification(seq: u64) -> Notification {
        Notification {
            seq,
            id: EventId::new(format!("e{seq}")).unwrap(),
            event_type: EventType::new("my_list_updated").unwrap(),
            member: MemberId::new("m").unwrap(),
            device_type: DeviceType::new("tv").unwrap(),
            occurred_at_ms: 1_000 + seq,
            published_at_ms: 2_000 + seq,
            payload: Value::Null,
            collapse_key: None,
        }
    }

    fn collapsing(seq: u64) -> Notification {
        Notification {
            event_type: EventType::new("plan_changed").unwrap(),
            collapse_key: Some(CollapseKey::new("plan").unwrap()),
            ..notification(seq)
        }
    }

    fn page(seqs: &[u64], next_cursor: u64) -> PullPage {
        PullPage {
            notifications: seqs.iter().map(|seq| notification(*seq)).collect(),
            next_cursor,
            more: false,
            resync: false,
            epoch: EPOCH,
            next_cursor_time_ms: Some(9_000 + next_cursor),
        }
    }

    /// Hands out everything ready, as seqs (0 for a resync).
    fn drain(merge: &mut Merge) -> Vec<u64> {
        std::iter::from_fn(|| merge.pop())
            .map(|event| match event {
                DeviceEvent::Notification(notification) => notification.seq,
                DeviceEvent::Resync => 0,
            })
            .collect()
    }

    #[test]
    fn what_came_by_push_is_not_repeated_by_pull_and_the_other_way_round() {
        let mut merge = merge();
        merge.on_push(notification(5));
        merge.on_push(notification(3));
        assert_eq!(drain(&mut merge), [5, 3], "pushes in arrival order");
        merge.on_page(page(&[3, 4, 5], 6));
        assert_eq!(drain(&mut merge), [4]);
        merge.on_push(notification(4));
        merge.on_push(notification(6));
        assert_eq!(drain(&mut merge), Vec::<u64>::new(), "at or below the pulled cursor");
        merge.on_push(notification(7));
        merge.on_push(notification(7));
        assert_eq!(drain(&mut merge), [7]);
    }

    #[test]
    fn the_position_moves_only_past_what_was_handed_out_by_pull() {
        let mut merge = merge();
        merge.on_push(notification(9));
        assert_eq!(drain(&mut merge), [9]);
        assert_eq!(merge.handed().cursor, 0, "a push does not move the position");
        merge.on_page(page(&[2, 4], 6));
        assert_eq!(merge.handed().cursor, 0, "queued is not handed out");
        assert_eq!(
            merge.pop().map(|_| merge.handed()),
            Some(Position { cursor: 2, epoch: Some(EPOCH), cursor_time_ms: Some(2_002) })
        );
        merge.pop();
        // The last one carries the page's end: the entry after it (6) was read too.
        assert_eq!(merge.handed(), Position { cursor: 6, epoch: Some(EPOCH), cursor_time_ms: Some(9_006) });
        // An empty page moves it at once.
        merge.on_page(page(&[], 8));
        assert_eq!(merge.handed().cursor, 8);
    }

    #[test]
    fn a_resync_within_the_epoch_still_knows_what_came_by_push() {
        let mut merge = merge();
        merge.on_page(page(&[2], 2));
        merge.on_push(notification(30));
        assert_eq!(drain(&mut merge), [2, 30]);
        let resync = PullPage { resync: true, ..page(&[20, 30], 30) };
        merge.on_page(resync);
        assert_eq!(drain(&mut merge), [0, 20]);
        assert_eq!(merge.handed().cursor, 30);
    }

    #[test]
    fn a_new_epoch_starts_the_seqs_over() {
        let mut merge = merge();
        merge.on_page(page(&[], 40));
        merge.on_push(notification(41));
        assert_eq!(drain(&mut merge), [41]);
        let reset = PullPage { resync: true, epoch: EPOCH + 1, ..page(&[1, 41], 41) };
        merge.on_page(reset);
        assert_eq!(drain(&mut merge), [0, 1, 41], "seq 41 of the new history is another notification");
        assert_eq!(merge.handed().epoch, Some(EPOCH + 1));
    }

    #[test]
    fn an_older_state_of_a_collapse_key_arriving_late_is_dropped() {
        let mut merge = merge();
        merge.on_push(collapsing(11));
        merge.on_push(collapsing(10));
        merge.on_push(collapsing(12));
        assert_eq!(drain(&mut merge), [11, 12]);
    }

    #[test]
    fn another_members_or_device_types_notification_is_dropped() {
        let mut merge = merge();
        merge.on_push(Notification { member: MemberId::new("other").unwrap(), ..notification(1) });
        merge.on_push(Notification { device_type: DeviceType::new("mobile").unwrap(), ..notification(2) });
        assert_eq!(drain(&mut merge), Vec::<u64>::new());
    }

    #[test]
    fn too_many_remembered_pushes_ask_for_a_catch_up() {
        let mut merge = merge();
        let asked = (1..=MAX_SEEN as u64 + 1).map(|seq| merge.on_push(notification(seq))).collect::<Vec<_>>();
        assert!(!asked[MAX_SEEN - 1]);
        assert!(asked[MAX_SEEN]);
    }
}
