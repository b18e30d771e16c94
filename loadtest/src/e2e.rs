//! The end-to-end run: raw JetStream publish on the hub first (the ceiling), then N devices held on
//! the edge, events published at a target rate, and every notification checked and timed as it
//! arrives; optionally a subscriber on the hub beside the devices (`latency-compare`) and a worker
//! SIGKILLed mid-flood.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use reno_model::{DeviceType, Envelope, EventId, EventType, MemberId};
use tokio::sync::{mpsc, watch};

pub use crate::e2e_summary::{CpuPerEvent, E2eSummary, KillReport};
use crate::{
    fleet::{self, DeviceSpec, Fleet, Probe, member_name},
    probe,
    publish::{self, Limit, Outgoing, Rate},
    stats::{Latency, now_us, round},
    tally::Tally,
    topology::{Needs, Topology, TopologyArgs},
};

#[derive(Debug, Clone, clap::Args)]
pub struct E2eArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Device connections held on the edge
    #[arg(long, default_value_t = 1000)]
    pub devices: u32,
    /// Members the events go to [default: devices ÷ device types: one device of each type per
    /// member]; device d belongs to member d mod members, with type (d ÷ members) mod types
    #[arg(long)]
    pub members: Option<u32>,
    /// Device types the devices have and the events target, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "tv")]
    pub device_types: Vec<String>,
    /// The event type published (non-collapsing, so that every event is a notification)
    #[arg(long, default_value = "my_list_updated")]
    pub event_type: String,
    /// Events per second, or `max`
    #[arg(long, default_value = "1000")]
    pub rate: Rate,
    /// Seconds to publish for
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Stop publishing after this many events
    #[arg(long)]
    pub events: Option<u64>,
    /// Consecutive events per member (1: round robin over the members)
    #[arg(long, default_value_t = 1)]
    pub burst: u32,
    /// Bytes of padding in each payload
    #[arg(long, default_value_t = 100)]
    pub padding: usize,
    /// Publishes awaiting their acks at most
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
    /// Seconds of raw JetStream publish measured first (0: none)
    #[arg(long, default_value_t = 5.0)]
    pub raw_secs: f64,
    /// Seconds to wait after publishing for every notification
    #[arg(long, default_value_t = 120.0)]
    pub drain_secs: f64,
    /// SIGKILL the first worker this many seconds into publishing
    #[arg(long)]
    pub kill_worker_after_secs: Option<f64>,
    /// Also subscribe to every push on the hub itself, and compare
    #[arg(long)]
    pub hub_subscriber: bool,
    /// Devices connecting at once while the fleet is set up
    #[arg(long, default_value_t = 64)]
    pub connect_parallel: usize,
    /// Entries a member's history holds (`streams.history_max_entries`, set at provision; own
    /// topology only); reno's default without it
    #[arg(long)]
    pub history_max_entries: Option<usize>,
}

/// What the processes of the topology have used so far, in CPU seconds.
fn cpu_now(topology: &Topology) -> [f64; 4] {
    let of = |pid: Option<u32>| pid.and_then(probe::process_cpu_secs).unwrap_or(0.0);
    [
        topology.worker_pids().into_iter().map(|pid| of(Some(pid))).sum(),
        of(topology.hub_pid()),
        of(topology.edge_pid()),
        of(Some(std::process::id())),
    ]
}

pub async fn run(args: &E2eArgs, scenario: &'static str) -> Result<E2eSummary> {
    let load_before = probe::loadavg();
    let device_types: Vec<DeviceType> = args
        .device_types
        .iter()
        .map(|name| DeviceType::new(name.as_str()).with_context(|| format!("device type {name:?}")))
        .collect::<Result<_>>()?;
    if device_types.is_empty() {
        bail!("at least one device type");
    }
    let event_type = EventType::new(args.event_type.as_str()).context("event type")?;
    let members = args.members.unwrap_or((args.devices / device_types.len() as u32).max(1)).max(1);
    let specs: Vec<DeviceSpec> = (0..args.devices)
        .map(|device| DeviceSpec {
            member: device % members,
            device_type: ((device / members) as usize) % device_types.len(),
        })
        .collect();
    let mut topology_args = args.topology.clone();
    if let Some(entries) = args.history_max_entries {
        topology_args.env.push(("RENO_STREAMS_HISTORY_MAX_ENTRIES".to_owned(), entries.to_string()));
    }
    let topology = Topology::start(&topology_args, Needs::Pipeline).await?;
    let run = nuid::next().to_string();
    let padding = "x".repeat(args.padding);
    let envelope = |index: u64, probe: Probe| Envelope {
        id: EventId::new(format!("{run}-{index}")).expect("an event id token"),
        event_type: event_type.clone(),
        member: MemberId::new(member_name(probe.member)).expect("a member token"),
        occurred_at_ms: probe.sent_us / 1000,
        payload: probe.payload(&padding),
        targets: Some(device_types.clone()),
        collapse_key: None,
    };
    let sample = envelope(0, Probe { member: members - 1, index: 0, sent_us: now_us() }).encode();

    let raw = if args.raw_secs > 0.0 {
        let duration = Duration::from_secs_f64(args.raw_secs);
        let baseline = publish::raw_baseline(
            &topology.jetstream,
            sample.clone().into(),
            members.into(),
            duration,
            args.window,
        )
        .await
        .context("raw JetStream baseline")?;
        baseline.acked_per_sec()
    } else {
        0.0
    };

    let (arrivals_in, arrivals_out) = mpsc::unbounded_channel();
    let progress = Arc::new(AtomicU64::new(0));
    let collector =
        Tally::spawn(&specs, args.kill_worker_after_secs.is_some(), arrivals_out, progress.clone());
    let (ask_catch_up, catch_up) = watch::channel(0u64);
    let fleet = Fleet::connect(
        &topology.edge_url,
        &topology.secrets,
        &specs,
        &device_types,
        args.connect_parallel,
        arrivals_in.clone(),
        catch_up,
    )
    .await?;
    let hub = if args.hub_subscriber {
        Some(fleet::hub_subscriber(&topology.client, arrivals_in.clone()).await?)
    } else {
        None
    };
    drop(arrivals_in);
    topology.wait_for_presence(fleet.connected() as u64, Duration::from_secs(120)).await?;

    let killed_at = Arc::new(AtomicU64::new(0));
    if let (Some(after), Some(pid)) = (args.kill_worker_after_secs, topology.worker_pids().first().copied()) {
        let killed_at = killed_at.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(after)).await;
            let _ = tokio::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status().await;
            killed_at.store(now_us(), Ordering::SeqCst);
        });
    }

    let cpu_before = cpu_now(&topology);
    let mut events_per_member = vec![0u32; members as usize];
    let burst = u64::from(args.burst.max(1));
    let limit = Limit {
        count: args.events.unwrap_or(u64::MAX),
        duration: Duration::from_secs_f64(args.duration_secs),
    };
    let published = publish::publish(&topology.jetstream, args.rate, limit, args.window, |index| {
        let member = ((index / burst) % u64::from(members)) as u32;
        let slot = &mut events_per_member[member as usize];
        let probe = Probe { member, index: *slot, sent_us: now_us() };
        *slot += 1;
        let envelope = envelope(index, probe);
        Outgoing::event(&envelope)
    })
    .await;
    let expected: u64 =
        specs.iter().map(|spec| u64::from(events_per_member[spec.member as usize])).sum::<u64>();

    // Wait until every notification arrived and the workers have nothing left.
    let deadline = Instant::now() + Duration::from_secs_f64(args.drain_secs);
    let mut finished = None;
    let mut last_idle_check = Instant::now() - Duration::from_secs(1);
    while Instant::now() < deadline {
        if progress.load(Ordering::Relaxed) >= expected
            && last_idle_check.elapsed() >= Duration::from_millis(50)
        {
            last_idle_check = Instant::now();
            if topology.pipeline_idle().await.unwrap_or(false) {
                finished = Some(Instant::now());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu_after = cpu_now(&topology);
    let missing_before_final_pull = expected.saturating_sub(progress.load(Ordering::Relaxed));
    if missing_before_final_pull > 0 && fleet.connected() > 0 {
        // Pushes are best effort: ask every device to pull, as it would at its next catch-up.
        let _ = ask_catch_up.send(1);
        let patience = Instant::now() + Duration::from_secs(15);
        while progress.load(Ordering::Relaxed) < expected && Instant::now() < patience {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (devices_connected, device_connect_failures) = (fleet.connected(), fleet.failed);
    fleet.stop();
    if let Some(hub) = hub {
        hub.abort();
    }
    let tally = collector.await.context("the collector")?;
    let delivery = tally.delivery(&events_per_member);

    let pipeline_secs = finished.unwrap_or(deadline).duration_since(published.started).as_secs_f64();
    let events_per_sec = published.acked as f64 / pipeline_secs.max(1e-9);
    let per_event = |index: usize| {
        round((cpu_after[index] - cpu_before[index]) * 1e6 / (published.acked.max(1) as f64), 1)
    };
    let kill = args.kill_worker_after_secs.map(|after| {
        let killed = killed_at.load(Ordering::SeqCst);
        let before_kill = tally.timeline.iter().filter(|(sent, _)| *sent < killed);
        let last = before_kill.clone().map(|(_, received)| *received).max().unwrap_or(killed);
        let near = tally
            .timeline
            .iter()
            .filter(|(sent, _)| *sent + 1_000_000 >= killed && *sent <= killed + 5_000_000)
            .map(|(sent, received)| received.saturating_sub(*sent));
        KillReport {
            killed_after_secs: after,
            recovery_secs: round(last.saturating_sub(killed) as f64 / 1e6, 3),
            later_than_5s: before_kill.filter(|(sent, received)| received - sent > 5_000_000).count() as u64,
            worst_latency_near_kill_ms: round(near.clone().max().unwrap_or(0) as f64 / 1000.0, 1),
            slower_than_1s_near_kill: near.filter(|latency| *latency > 1_000_000).count() as u64,
        }
    });
    let complete = finished.is_some()
        && delivery.missing == 0
        && delivery.duplicates == 0
        && delivery.unexpected == 0
        && delivery.misrouted == 0
        && published.failed == 0
        && device_connect_failures == 0;
    Ok(E2eSummary {
        scenario,
        ok: complete && delivery.inversions == 0,
        devices: args.devices,
        devices_connected,
        device_connect_failures,
        members,
        device_types: args.device_types.clone(),
        event_type: args.event_type.clone(),
        workers: topology.worker_pids().len(),
        burst: args.burst,
        envelope_bytes: sample.len(),
        rate: match args.rate {
            Rate::Max => "max".into(),
            Rate::PerSec(rate) => rate.to_string(),
        },
        published: published.acked,
        publish_failed: published.failed,
        publish_duplicates: published.duplicates,
        publish_per_sec: round(published.sent_per_sec(), 1),
        first_publish_error: published.first_error.clone(),
        missing_before_final_pull,
        pipeline_secs: round(pipeline_secs, 3),
        events_per_sec: round(events_per_sec, 1),
        notifications_per_sec: round(delivery.delivered as f64 / pipeline_secs.max(1e-9), 1),
        raw_msgs_per_sec: round(raw, 1),
        ratio: if raw > 0.0 { round(events_per_sec / raw, 3) } else { 0.0 },
        latency: Latency::of(&tally.edge),
        hub_latency: args.hub_subscriber.then(|| Latency::of(&tally.hub)),
        kill,
        cpu_us_per_event: CpuPerEvent {
            workers: per_event(0),
            hub: per_event(1),
            edge: per_event(2),
            load_generator: per_event(3),
        },
        worker_peak_rss_mib: topology
            .worker_pids()
            .into_iter()
            .filter_map(probe::process_memory_kib)
            .map(|(_, peak)| round(peak as f64 / 1024.0, 1))
            .collect(),
        loadavg: [load_before, probe::loadavg()],
        delivery,
    })
}
