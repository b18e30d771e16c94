//! What an end-to-end run reports: one JSON summary (every figure and check) and a table for
//! people.

use serde::Serialize;

use crate::{stats::Latency, tally::Delivery};

#[derive(Debug, Clone, Serialize)]
pub struct E2eSummary {
    pub scenario: &'static str,
    /// Every expected notification arrived exactly once, for its own member, in publish order.
    pub ok: bool,
    pub devices: u32,
    pub devices_connected: usize,
    pub device_connect_failures: u64,
    pub members: u32,
    pub device_types: Vec<String>,
    pub event_type: String,
    pub workers: usize,
    pub burst: u32,
    pub envelope_bytes: usize,
    pub rate: String,
    pub published: u64,
    pub publish_failed: u64,
    pub publish_duplicates: u64,
    pub publish_per_sec: f64,
    pub first_publish_error: Option<String>,
    pub delivery: Delivery,
    /// Missing before the devices were asked to pull at the end: pushes that never came.
    pub missing_before_final_pull: u64,
    /// From the first publish until every notification arrived and the workers had nothing left.
    pub pipeline_secs: f64,
    pub events_per_sec: f64,
    pub notifications_per_sec: f64,
    pub raw_msgs_per_sec: f64,
    /// events_per_sec ÷ raw_msgs_per_sec
    pub ratio: f64,
    pub latency: Latency,
    pub hub_latency: Option<Latency>,
    pub kill: Option<KillReport>,
    /// CPU microseconds per event, by process (own topology).
    pub cpu_us_per_event: CpuPerEvent,
    pub worker_peak_rss_mib: Vec<f64>,
    /// /proc/loadavg at the start and at the end.
    pub loadavg: [String; 2],
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuPerEvent {
    pub workers: f64,
    pub hub: f64,
    pub edge: f64,
    pub load_generator: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KillReport {
    pub killed_after_secs: f64,
    /// From the kill until the last notification of an event published before it arrived.
    pub recovery_secs: f64,
    /// Notifications of events published before the kill that took longer than 5 s.
    pub later_than_5s: u64,
    /// The slowest notification of an event published from 1 s before to 5 s after the kill.
    pub worst_latency_near_kill_ms: f64,
    /// Notifications of events published in that window that took longer than 1 s.
    pub slower_than_1s_near_kill: u64,
}

impl E2eSummary {
    /// The human table.
    pub fn table(&self) -> String {
        let mut text = format!(
            "{} | {} devices ({} connected) of {} members, types {:?}, {} worker(s), burst {}, envelope {} B\n",
            self.scenario,
            self.devices,
            self.devices_connected,
            self.members,
            self.device_types,
            self.workers,
            self.burst,
            self.envelope_bytes
        );
        text.push_str(&format!(
            "published {} at {} (rate {}), failed {}\n",
            self.published, self.publish_per_sec, self.rate, self.publish_failed
        ));
        text.push_str(&format!(
            "throughput {:.0} events/s ({:.0} notifications/s) over {:.2} s; raw JetStream {:.0} msgs/s; ratio {:.3}\n",
            self.events_per_sec, self.notifications_per_sec, self.pipeline_secs, self.raw_msgs_per_sec, self.ratio
        ));
        let delivery = &self.delivery;
        text.push_str(&format!(
            "delivered {}/{} (missing {}, before final pull {}), duplicates {}, unexpected {}, misrouted {}, inversions {}\n",
            delivery.delivered,
            delivery.expected,
            delivery.missing,
            self.missing_before_final_pull,
            delivery.duplicates,
            delivery.unexpected,
            delivery.misrouted,
            delivery.inversions
        ));
        text.push_str(&self.latency.row("publish → device (edge)"));
        text.push('\n');
        if let Some(hub) = &self.hub_latency {
            text.push_str(&hub.row("publish → hub subscriber"));
            text.push('\n');
        }
        if let Some(kill) = &self.kill {
            text.push_str(&format!(
                "worker killed at {} s: events published before it all in {} s later, {} later than 5 s; \
                 published around it: worst {} ms, {} slower than 1 s\n",
                kill.killed_after_secs,
                kill.recovery_secs,
                kill.later_than_5s,
                kill.worst_latency_near_kill_ms,
                kill.slower_than_1s_near_kill
            ));
        }
        let cpu = &self.cpu_us_per_event;
        text.push_str(&format!(
            "CPU µs/event: workers {} hub {} edge {} load generator {}; worker peak RSS MiB {:?}; loadavg {:?}\n",
            cpu.workers, cpu.hub, cpu.edge, cpu.load_generator, self.worker_peak_rss_mib, self.loadavg
        ));
        text.push_str(&format!("ok: {}", self.ok));
        text
    }
}
