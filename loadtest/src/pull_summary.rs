//! What a pull run reports: one JSON summary (every figure and check) and a table for people.

use serde::Serialize;

use crate::{pull::FloodVia, stats::Latency};

#[derive(Debug, Clone, Serialize)]
pub struct PullSummary {
    pub scenario: &'static str,
    /// Every document written, every pull answered with the member's whole history in order, and
    /// every flood phase drained without a failed pull.
    pub ok: bool,
    pub members: u32,
    /// Entries per member.
    pub entries: u32,
    /// members × entries.
    pub history_entries: u64,
    pub payload_bytes: usize,
    /// Seconds waited between filling and measuring.
    pub idle_secs: f64,
    pub fill: Fill,
    /// The direct gets that warmed the hub's cache before the pulls (`--warm-reads`).
    pub warm: Option<Warm>,
    pub pulls: Pulls,
    pub flood: Option<Flood>,
    /// /proc/loadavg at the start, when the pulls were measured, and at the end.
    pub loadavg: [String; 3],
}

/// Filling the history.
#[derive(Debug, Clone, Serialize)]
pub struct Fill {
    pub documents: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// The encoded size of one member's document.
    pub document_bytes: usize,
    pub secs: f64,
    pub documents_per_sec: f64,
    /// The history stream's state after the fill.
    pub history_messages: u64,
    pub history_bytes: u64,
    /// The hub's resident memory after the fill.
    pub hub_rss_mib: Option<f64>,
}

/// Direct gets of random members before the pulls were measured, not timed one by one.
#[derive(Debug, Clone, Serialize)]
pub struct Warm {
    pub reads: u32,
    pub failed: u64,
    pub first_error: Option<String>,
    pub secs: f64,
}

/// The pulls measured one at a time.
#[derive(Debug, Clone, Serialize)]
pub struct Pulls {
    /// Request → page, of the pulls answered with the right page.
    pub latency: Latency,
    /// The first pull after the fill (and the idle time).
    pub first_pull_ms: Option<f64>,
    /// No answer, or an error answer.
    pub failed: u64,
    /// A page other than the member's whole history in order.
    pub wrong: u64,
    pub first_error: Option<String>,
    /// Between the pulls, the hub's own direct get of another random member's document, straight
    /// from this process (no pull service): what the server alone takes at the same moments.
    pub server_gets: Latency,
    /// Direct gets that failed or returned something other than a document.
    pub server_gets_failed: u64,
}

/// The workers' throughput with and without a flood of pulls.
#[derive(Debug, Clone, Serialize)]
pub struct Flood {
    /// Every phase published and drained all its events, and no pull of the flood failed.
    pub ok: bool,
    pub events_per_phase: u64,
    pub pull_rate: f64,
    /// What answered the pulls.
    pub via: FloodVia,
    /// Direct gets per second through every phase that kept the history's blocks cached (0: none),
    /// and how they went.
    pub keep_warm_rate: f64,
    pub kept_warm: Option<PullLoad>,
    /// The mean of the phases without pulls.
    pub events_per_sec_without_pulls: f64,
    pub events_per_sec_with_pulls: f64,
    /// events_per_sec_with_pulls ÷ events_per_sec_without_pulls
    pub ratio: f64,
    pub phases: Vec<Phase>,
}

/// One phase of the flood.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub label: &'static str,
    pub with_pulls: bool,
    pub events: u64,
    pub publish_failed: u64,
    /// The priority streams were empty before the deadline.
    pub drained: bool,
    /// Events the workers counted as delivered in the phase (own topology only): every event
    /// published, or the phase is not ok (a dead-lettered or stale event also leaves the streams).
    pub delivered: Option<u64>,
    /// From the first publish until the priority streams were empty.
    pub secs: f64,
    pub events_per_sec: f64,
    pub cpu_us_per_event: CpuPerEvent,
    /// The pull service's CPU per pull, in the phase with pulls.
    pub pull_service_us_per_pull: Option<f64>,
    pub pulls: Option<PullLoad>,
    /// /proc/loadavg at the end of the phase.
    pub loadavg: String,
}

/// CPU microseconds per event of a phase, by process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuPerEvent {
    pub workers: f64,
    pub hub: f64,
    pub pull_service: f64,
    pub load_generator: f64,
}

/// The pulls running beside a phase.
#[derive(Debug, Clone, Serialize)]
pub struct PullLoad {
    pub sent: u64,
    pub per_sec: f64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub latency: Latency,
}

impl PullSummary {
    /// The human table.
    pub fn table(&self) -> String {
        let fill = &self.fill;
        let mut text = format!(
            "pull | {} members × {} entries = {} entries in history, payload {} B, document {} B\n",
            self.members, self.entries, self.history_entries, self.payload_bytes, fill.document_bytes
        );
        text.push_str(&format!(
            "filled {} documents in {:.1} s ({:.0}/s), failed {}; history {} messages, {:.1} MiB; hub RSS {:?} MiB\n",
            fill.documents,
            fill.secs,
            fill.documents_per_sec,
            fill.failed,
            fill.history_messages,
            fill.history_bytes as f64 / 1048576.0,
            fill.hub_rss_mib
        ));
        if let Some(warm) = &self.warm {
            text.push_str(&format!(
                "warmed the hub's cache with {} direct gets in {:.1} s, failed {}{}\n",
                warm.reads,
                warm.secs,
                warm.failed,
                warm.first_error.as_ref().map(|error| format!(" ({error})")).unwrap_or_default()
            ));
        }
        let pulls = &self.pulls;
        text.push_str(&format!(
            "after {} s idle: first pull {:?} ms; failed {}, wrong pages {}{}\n",
            self.idle_secs,
            pulls.first_pull_ms,
            pulls.failed,
            pulls.wrong,
            pulls.first_error.as_ref().map(|error| format!(" ({error})")).unwrap_or_default()
        ));
        text.push_str(&pulls.latency.row("one pull, cursor 0"));
        text.push('\n');
        text.push_str(
            &pulls.server_gets.row(&format!("hub's direct get ({} failed)", pulls.server_gets_failed)),
        );
        text.push('\n');
        if let Some(flood) = &self.flood {
            for phase in &flood.phases {
                let cpu = &phase.cpu_us_per_event;
                text.push_str(&format!(
                    "flood {:<22} {} events in {:.2} s: {:.0} events/s; CPU µs/event workers {} hub {} pull service {} load generator {}; loadavg {}\n",
                    phase.label,
                    phase.events,
                    phase.secs,
                    phase.events_per_sec,
                    cpu.workers,
                    cpu.hub,
                    cpu.pull_service,
                    cpu.load_generator,
                    phase.loadavg
                ));
                if let Some(load) = &phase.pulls {
                    let via = match flood.via {
                        FloodVia::PullService => "the pull service",
                        FloodVia::Hub => "the hub alone",
                    };
                    text.push_str(
                        &load
                            .latency
                            .row(&format!("  {:.0} pulls/s by {via}, {} failed", load.per_sec, load.failed)),
                    );
                    if flood.via == FloodVia::PullService {
                        text.push_str(&format!(
                            "  pull service {} µs/pull\n",
                            phase.pull_service_us_per_pull.unwrap_or(0.0)
                        ));
                    } else {
                        text.push('\n');
                    }
                }
            }
            if let Some(load) = &flood.kept_warm {
                text.push_str(&load.latency.row(&format!(
                    "  {:.0} direct gets/s through every phase keeping the history warm, {} failed",
                    load.per_sec, load.failed
                )));
                text.push('\n');
            }
            text.push_str(&format!(
                "workers' throughput with pulls ÷ without: {:.0} ÷ {:.0} = {:.3}\n",
                flood.events_per_sec_with_pulls, flood.events_per_sec_without_pulls, flood.ratio
            ));
        }
        text.push_str(&format!("loadavg {:?}\nok: {}", self.loadavg, self.ok));
        text
    }
}
