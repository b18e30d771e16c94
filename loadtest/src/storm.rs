//! A reconnect storm: N devices connecting at once to one edge, each over wss with its own token
//! through the authorization path (TLS, websocket, auth callout to reno's authorization service),
//! then subscribing to its pushes. Reports connects per second, connect times, failures, and the
//! edge's memory per connected device.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use reno_model::{DeviceId, DeviceType, MemberId, subject};
use serde::Serialize;
use tokio::sync::Barrier;

use crate::{
    fleet::{TokenMint, member_name},
    probe,
    stats::{self, Latency, round},
    topology::{Needs, Topology, TopologyArgs},
};

const DEVICE_TYPES: [&str; 4] = ["mobile", "tv", "browser", "console"];

#[derive(Debug, Clone, clap::Args)]
pub struct StormArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Devices connecting at once
    #[arg(long, default_value_t = 5000)]
    pub devices: u32,
    /// Members the devices belong to [default: devices ÷ 4, one of each device type]
    #[arg(long)]
    pub members: Option<u32>,
    /// How long one device may take to connect before it counts as failed
    #[arg(long, default_value_t = 30.0)]
    pub connect_timeout_secs: f64,
    /// Seconds to wait after the last connect before reading the edge's memory
    #[arg(long, default_value_t = 3.0)]
    pub settle_secs: f64,
    /// Attempts per device: a refused or timed-out device tries again after a backoff (250 ms
    /// doubling, with jitter), as a real device would
    #[arg(long, default_value_t = 1)]
    pub attempts: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct StormSummary {
    pub scenario: &'static str,
    /// Every device connected.
    pub ok: bool,
    pub devices: u32,
    pub connected: u64,
    /// Devices still not connected after their last attempt.
    pub failed: u64,
    /// Devices whose first attempt failed.
    pub failed_first_attempt: u64,
    pub attempts: u32,
    /// Failed attempts by error text.
    pub failures: BTreeMap<String, u64>,
    /// Connected devices ÷ seconds from the start to the last connect.
    pub connects_per_sec: f64,
    pub storm_secs: f64,
    /// One successful attempt: TLS, websocket, authorization, subscribe, flush.
    pub connect: Latency,
    /// From the start of the storm until the device was connected, retries included.
    pub time_to_connected: Latency,
    pub edge_mem_before_mib: f64,
    pub edge_mem_after_mib: f64,
    pub edge_kib_per_device: f64,
    pub edge_connections: u64,
    /// CPU seconds the storm cost, by process (own topology).
    pub cpu_secs: StormCpu,
    pub loadavg: [String; 2],
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StormCpu {
    pub edge: f64,
    pub authorization_service: f64,
    pub load_generator: f64,
}

fn storm_cpu(topology: &Topology) -> [f64; 3] {
    let of = |pid: Option<u32>| pid.and_then(probe::process_cpu_secs).unwrap_or(0.0);
    [of(topology.edge_pid()), of(topology.authorization_pid()), of(Some(std::process::id()))]
}

pub async fn run(args: &StormArgs) -> Result<StormSummary> {
    let load_before = probe::loadavg();
    let topology = Topology::start(&args.topology, Needs::Authorization).await?;
    let mint = TokenMint::from_secrets(&topology.secrets)?;
    let ca = topology.secrets.join("ca.pem");
    let members = args.members.unwrap_or((args.devices / 4).max(1)).max(1);
    let timeout = Duration::from_secs_f64(args.connect_timeout_secs);
    let devices: Vec<(async_nats::ConnectOptions, String)> = (0..args.devices)
        .map(|index| {
            let member = MemberId::new(member_name(index % members)).expect("a member token");
            let device_type =
                DeviceType::new(DEVICE_TYPES[((index / members) % 4) as usize]).expect("a type");
            let device_id = DeviceId::new(format!("d{index}")).expect("a device id token");
            let options = async_nats::ConnectOptions::new()
                .token(mint.mint(&member, &device_type, &device_id))
                .custom_inbox_prefix(subject::device_inbox_prefix(&member, &device_type, &device_id))
                .add_root_certificates(ca.clone())
                .connection_timeout(timeout);
            (options, subject::push_subject(&member, &device_type))
        })
        .collect();

    let cpu_before = storm_cpu(&topology);
    let mem_before = edge_mem(&topology).context("the edge's /varz (pass --edge-monitor)")?;
    let start = Arc::new(Barrier::new(devices.len() + 1));
    let url = topology.edge_url.clone();
    let mut tasks = Vec::with_capacity(devices.len());
    for (options, push) in devices {
        let (start, url) = (start.clone(), url.clone());
        let attempts = args.attempts.max(1);
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let storm_began = Instant::now();
            let mut errors = Vec::new();
            for attempt in 0..attempts {
                if attempt > 0 {
                    // Backoff with jitter, so that the retries do not come back as one wave.
                    let jitter = u64::from(nuid::next().as_bytes()[21] % 100) * 5;
                    let backoff = 250u64 << (attempt - 1).min(5);
                    tokio::time::sleep(Duration::from_millis(backoff + jitter)).await;
                }
                let began = Instant::now();
                let connected = tokio::time::timeout(timeout, async {
                    let client =
                        options.clone().connect(url.as_str()).await.map_err(|error| error.to_string())?;
                    let subscription =
                        client.subscribe(push.clone()).await.map_err(|error| error.to_string())?;
                    client.flush().await.map_err(|error| error.to_string())?;
                    Ok::<_, String>((client, subscription))
                })
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
                match connected {
                    Ok(connection) => {
                        let outcome = Attempted { took: began.elapsed(), since_storm: storm_began.elapsed() };
                        return (Instant::now(), errors, Some((outcome, connection)));
                    }
                    Err(error) => errors.push(error),
                }
            }
            (Instant::now(), errors, None)
        }));
    }
    let started = Instant::now();
    start.wait().await;

    let mut histogram = stats::histogram();
    let mut since_storm = stats::histogram();
    let mut failures = BTreeMap::new();
    let mut failed_first_attempt = 0;
    let mut held = Vec::new();
    let mut last = started;
    for task in tasks {
        let (at, errors, connected) = task.await.context("a device task")?;
        failed_first_attempt += u64::from(!errors.is_empty());
        for error in errors {
            *failures.entry(error).or_insert(0) += 1;
        }
        if let Some((attempted, connection)) = connected {
            histogram.saturating_record(attempted.took.as_micros() as u64);
            since_storm.saturating_record(attempted.since_storm.as_micros() as u64);
            last = last.max(at);
            held.push(connection);
        }
    }
    let cpu_after = storm_cpu(&topology);
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    let varz = topology.edge_varz().unwrap_or_default();
    let mem_after = varz["mem"].as_f64().unwrap_or(0.0);
    if !failures.is_empty() {
        // What the servers said about the refusals, for the reader of the table.
        let logs = topology.logs();
        let mut said: BTreeMap<String, u64> = BTreeMap::new();
        for line in logs.lines().filter(|line| line.contains("[ERR]") || line.contains("[WRN]")) {
            // The message without the time stamp and the client's address and id.
            let text = line.split_once("] ").map(|(_, text)| text).unwrap_or(line);
            let key: String = text
                .split(" - ")
                .filter(|part| {
                    !part.contains("127.0.0.1") && !part.starts_with("wid:") && !part.starts_with("cid:")
                })
                .collect::<Vec<_>>()
                .join(" - ")
                .chars()
                .take(140)
                .collect();
            *said.entry(key).or_insert(0) += 1;
        }
        for (text, count) in said.iter().filter(|(_, count)| **count > 10).take(5) {
            eprintln!("servers said {count}×: {text}");
        }
    }
    let connected = held.len() as u64;
    let storm_secs = last.duration_since(started).as_secs_f64();
    drop(held);
    Ok(StormSummary {
        scenario: "storm",
        ok: connected == u64::from(args.devices),
        devices: args.devices,
        connected,
        failed: u64::from(args.devices) - connected,
        failed_first_attempt,
        attempts: args.attempts.max(1),
        failures,
        connects_per_sec: round(connected as f64 / storm_secs.max(1e-9), 1),
        storm_secs: round(storm_secs, 3),
        connect: Latency::of(&histogram),
        time_to_connected: Latency::of(&since_storm),
        edge_mem_before_mib: round(mem_before / 1048576.0, 1),
        edge_mem_after_mib: round(mem_after / 1048576.0, 1),
        edge_kib_per_device: round((mem_after - mem_before) / 1024.0 / (connected.max(1) as f64), 1),
        edge_connections: varz["connections"].as_u64().unwrap_or(0),
        cpu_secs: StormCpu {
            edge: round(cpu_after[0] - cpu_before[0], 2),
            authorization_service: round(cpu_after[1] - cpu_before[1], 2),
            load_generator: round(cpu_after[2] - cpu_before[2], 2),
        },
        loadavg: [load_before, probe::loadavg()],
    })
}

/// How one device's successful attempt went.
struct Attempted {
    took: Duration,
    since_storm: Duration,
}

fn edge_mem(topology: &Topology) -> Option<f64> {
    topology.edge_varz()?["mem"].as_f64()
}

impl StormSummary {
    pub fn table(&self) -> String {
        format!(
            "storm | {} devices, {} attempt(s) each: {} connected, {} failed ({} at the first attempt) {:?}\n\
             {:.0} connects/s over {:.2} s\n{}\n{}\n\
             edge memory {:.1} → {:.1} MiB: {:.1} KiB per device ({} connections)\n\
             CPU s: edge {} authorization service {} load generator {}\nloadavg {:?}\nok: {}",
            self.devices,
            self.attempts,
            self.connected,
            self.failed,
            self.failed_first_attempt,
            self.failures,
            self.connects_per_sec,
            self.storm_secs,
            self.connect.row("connect (one attempt)"),
            self.time_to_connected.row("storm start → connected"),
            self.edge_mem_before_mib,
            self.edge_mem_after_mib,
            self.edge_kib_per_device,
            self.edge_connections,
            self.cpu_secs.edge,
            self.cpu_secs.authorization_service,
            self.cpu_secs.load_generator,
            self.loadavg,
            self.ok
        )
    }
}
