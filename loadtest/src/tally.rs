//! The collector of an end-to-end run: every arrival at a device (or at the hub subscriber) is
//! checked against what was published: exactly once per device, for the device's own member, in
//! the order the member's events were published; and its latency recorded.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use hdrhistogram::Histogram;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    fleet::{Arrival, DeviceSpec, HUB_SUBSCRIBER},
    stats,
};

/// What one device received.
#[derive(Debug, Clone, Default)]
struct DeviceTally {
    member: u32,
    /// How often each of its member's events (by per-member index) arrived.
    seen: Vec<u8>,
    /// The highest per-member index handed out so far.
    highest: Option<u32>,
    /// Arrivals whose index is below one handed out before: out of publish order.
    inversions: u64,
}

/// Everything collected.
pub struct Tally {
    devices: Vec<DeviceTally>,
    /// Publish → device latency, microseconds.
    pub edge: Histogram<u64>,
    /// Publish → hub subscriber latency, microseconds.
    pub hub: Histogram<u64>,
    /// Notifications for a member other than the device's own (must be 0).
    pub misrouted: u64,
    /// (send time, receive time) of every arrival, when asked for (to time a recovery).
    pub timeline: Vec<(u64, u64)>,
}

/// What the run checks at the end.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Delivery {
    pub expected: u64,
    /// Distinct expected notifications that arrived.
    pub delivered: u64,
    pub missing: u64,
    /// Arrivals beyond the first of the same notification at the same device.
    pub duplicates: u64,
    /// Arrivals of events never published to that member (must be 0).
    pub unexpected: u64,
    pub inversions: u64,
    pub misrouted: u64,
}

impl Tally {
    /// Starts collecting arrivals for the devices in `specs`; `progress` counts distinct
    /// notifications delivered so far, for the caller to wait on.
    pub fn spawn(
        specs: &[DeviceSpec],
        keep_timeline: bool,
        mut arrivals: mpsc::UnboundedReceiver<Arrival>,
        progress: Arc<AtomicU64>,
    ) -> JoinHandle<Tally> {
        let mut tally = Tally {
            devices: specs
                .iter()
                .map(|spec| DeviceTally { member: spec.member, ..DeviceTally::default() })
                .collect(),
            edge: stats::histogram(),
            hub: stats::histogram(),
            misrouted: 0,
            timeline: Vec::new(),
        };
        tokio::spawn(async move {
            while let Some(arrival) = arrivals.recv().await {
                let latency = arrival.received_us.saturating_sub(arrival.probe.sent_us).max(1);
                if arrival.device == HUB_SUBSCRIBER {
                    tally.hub.saturating_record(latency);
                    continue;
                }
                tally.edge.saturating_record(latency);
                if keep_timeline {
                    tally.timeline.push((arrival.probe.sent_us, arrival.received_us));
                }
                let Some(device) = tally.devices.get_mut(arrival.device as usize) else { continue };
                if arrival.probe.member != device.member {
                    tally.misrouted += 1;
                    continue;
                }
                let index = arrival.probe.index as usize;
                if device.seen.len() <= index {
                    device.seen.resize(index + 1, 0);
                }
                if device.seen[index] == 0 {
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                device.seen[index] = device.seen[index].saturating_add(1);
                match device.highest {
                    Some(highest) if arrival.probe.index < highest => device.inversions += 1,
                    _ => device.highest = Some(arrival.probe.index),
                }
            }
            tally
        })
    }

    /// Checks what arrived against `events_per_member` (events published to each member, by index).
    pub fn delivery(&self, events_per_member: &[u32]) -> Delivery {
        let mut delivery = Delivery { misrouted: self.misrouted, ..Delivery::default() };
        for device in &self.devices {
            let expected = events_per_member.get(device.member as usize).copied().unwrap_or(0) as usize;
            delivery.expected += expected as u64;
            for (index, &count) in device.seen.iter().enumerate() {
                if count == 0 {
                    continue;
                }
                if index < expected {
                    delivery.delivered += 1;
                    delivery.duplicates += u64::from(count - 1);
                } else {
                    delivery.unexpected += u64::from(count);
                }
            }
            delivery.inversions += device.inversions;
        }
        delivery.missing = delivery.expected - delivery.delivered;
        delivery
    }
}
