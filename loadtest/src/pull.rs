//! The pull run: a history filled directly with M members × E entries (one document per member,
//! written as a worker writes it), then one-at-a-time pulls of random members through the real pull
//! service, timed and checked; then the workers' throughput with and without a flood of pulls
//! (see [`crate::pull_flood`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;
use futures::StreamExt;
use reno_model::{
    DeviceType, EventId, EventType, MemberId, PullPage, PullRequest, codec,
    history::{DEFAULT_MAX_ENTRIES, Entry, MemberHistory},
    notification::DEFAULT_PAGE_LIMIT,
    subject,
};

pub use crate::pull_summary::{Fill, PullSummary, Pulls, Warm};
use crate::{
    fleet::{Probe, member_name},
    probe,
    publish::{self, Limit, Outgoing, Rate},
    pull_flood,
    stats::{self, Latency, now_us, round},
    topology::{Needs, Topology, TopologyArgs},
};

#[derive(Debug, Clone, clap::Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Members whose history is filled
    #[arg(long, default_value_t = 1000)]
    pub members: u32,
    /// Entries in each member's history (1 to 200, the default cap)
    #[arg(long, default_value_t = 10)]
    pub entries: u32,
    /// Bytes of each entry's payload, encoded
    #[arg(long, default_value_t = 300)]
    pub payload_bytes: usize,
    /// Bytes the history may hold (`streams.history_max_bytes` for provision); with the priority
    /// streams' limit below, it must fit the hub's store (8 GB, nats/hub.conf)
    #[arg(long, default_value_t = 6 << 30)]
    pub history_max_bytes: u64,
    /// Bytes each priority stream may hold (`streams.event_max_bytes`): smaller than the default,
    /// to leave the hub's store to the history
    #[arg(long, default_value_t = 256 << 20)]
    pub event_max_bytes: u64,
    /// Documents written awaiting their acks at most, while filling
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
    /// Seconds to wait after filling before the pulls are measured (the cold case: 130)
    #[arg(long, default_value_t = 0.0)]
    pub idle_secs: f64,
    /// Direct gets of random members after the fill (and the idle wait), before the pulls are
    /// measured, 64 at a time: they bring the history's message blocks into the hub's cache, as a
    /// server that keeps answering reads of a history it can hold has them (0: none)
    #[arg(long, default_value_t = 0)]
    pub warm_reads: u32,
    /// Pulls measured, one at a time, each of a random member with cursor 0
    #[arg(long, default_value_t = 1000)]
    pub pulls: u32,
    /// Device type of the entries and of the pulls
    #[arg(long, default_value = "tv")]
    pub device_type: String,
    /// Events published through the workers in each phase of the flood (0: no flood)
    #[arg(long, default_value_t = 100_000)]
    pub flood_events: u64,
    /// Pulls per second while the workers take the flood's second phase
    #[arg(long, default_value_t = 1000.0)]
    pub flood_pull_rate: f64,
    /// What answers the flood's pulls: the pull service, as a device's pull is answered, or the
    /// hub alone (this process reads each member's document with a direct get, the one server
    /// operation a pull makes, and checks it): the least a flood of pulls can take from the workers
    #[arg(long, value_enum, default_value_t = FloodVia::PullService)]
    pub flood_via: FloodVia,
    /// Direct gets of random members per second from this process through all three phases of the
    /// flood, so that the history's blocks stay in the hub's memory (it drops a block's cache 10 s
    /// after its last read); the same in every phase, so the ratio is what the flood's pulls add on
    /// a warm history (0: none)
    #[arg(long, default_value_t = 0.0)]
    pub keep_warm_rate: f64,
    /// Seconds to wait for the workers to drain each phase of the flood
    #[arg(long, default_value_t = 600.0)]
    pub drain_secs: f64,
}

/// What answers the flood's pulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FloodVia {
    /// The pull service: a request on `reno.pull.<member>.<device_type>`, its page checked.
    PullService,
    /// The hub alone: a direct get of the member's document from this process, its entries counted.
    Hub,
}

/// The event type of the entries and of the flood: normal priority, not collapsing.
pub const EVENT_TYPE: &str = "my_list_updated";

/// A pull that went wrong: no answer, an error answer, or a page other than expected.
#[derive(Debug)]
pub enum PullFailure {
    Failed(String),
    Wrong(String),
}

/// Connections the load generator reads documents on: as many as a pull service's
/// (`pull.read_connections`' default).
const HUB_READ_CONNECTIONS: usize = 16;

/// What is needed to ask for and check one member's page.
#[derive(Clone)]
pub struct Puller {
    pub client: async_nats::Client,
    /// The history stream on connections of their own, for reading a document straight from the
    /// hub, taken in turn: the hub answers one connection's reads one after another, as the pull
    /// service's read connections are.
    pub reads: Arc<[jetstream::stream::Stream<()>]>,
    pub next_read: Arc<AtomicUsize>,
    pub device_type: DeviceType,
    pub members: u32,
    pub entries: u32,
}

impl Puller {
    /// Pulls member `index` from cursor 0 and returns how long the answer took, in microseconds.
    /// The page must hold exactly the member's `entries` notifications in the order they were
    /// written, with settled, non-decreasing `seq`s.
    pub async fn pull(&self, index: u32) -> Result<u64, PullFailure> {
        let member = MemberId::new(member_name(index)).expect("a member token");
        let limit = (self.entries > DEFAULT_PAGE_LIMIT).then_some(self.entries);
        let request = PullRequest { cursor: 0, limit, epoch: None, cursor_time_ms: None };
        let subject = subject::pull_subject(&member, &self.device_type);
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            self.client.request(subject, Bytes::from(request.encode())),
        )
        .await;
        let latency_us = started.elapsed().as_micros() as u64;
        let message = match answer {
            Ok(Ok(message)) => message,
            Ok(Err(error)) => return Err(PullFailure::Failed(error.to_string())),
            Err(_) => return Err(PullFailure::Failed("no answer within 10 s".into())),
        };
        if let Some(error) = message.headers.as_ref().and_then(|headers| headers.get("Nats-Service-Error")) {
            return Err(PullFailure::Failed(format!("service error: {error}")));
        }
        let page = PullPage::decode(&message.payload)
            .map_err(|error| PullFailure::Failed(format!("undecodable page: {error}")))?;
        if page.resync {
            return Err(PullFailure::Wrong(format!("{member}: resync for a bare cursor 0")));
        }
        check_page(&page, index, self.entries).map_err(PullFailure::Wrong)?;
        Ok(latency_us)
    }

    /// Reads member `index`'s document straight from the hub (the direct get a pull makes, with
    /// no pull service) and returns how long the answer took, in microseconds. The document must
    /// hold the member's `entries` entries.
    pub async fn get(&self, index: u32) -> Result<u64, PullFailure> {
        let member = MemberId::new(member_name(index)).expect("a member token");
        let started = Instant::now();
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            self.reads[self.next_read.fetch_add(1, Ordering::Relaxed) % self.reads.len()]
                .direct_get_last_for_subject(subject::history_subject(&member)),
        )
        .await;
        let latency_us = started.elapsed().as_micros() as u64;
        let message = match got {
            Ok(Ok(message)) => message,
            Ok(Err(error)) => return Err(PullFailure::Failed(format!("hub's direct get: {error}"))),
            Err(_) => return Err(PullFailure::Failed("hub's direct get: no answer within 10 s".into())),
        };
        let document = MemberHistory::decode(&message.payload)
            .map_err(|error| PullFailure::Failed(format!("hub's direct get: {error}")))?;
        if document.entries.len() != self.entries as usize {
            return Err(PullFailure::Wrong(format!(
                "hub's direct get: {member}: {} entries in the document",
                document.entries.len()
            )));
        }
        Ok(latency_us)
    }

    /// One pull of member `index` by `via`.
    pub async fn pull_via(&self, via: FloodVia, index: u32) -> Result<u64, PullFailure> {
        match via {
            FloodVia::PullService => self.pull(index).await,
            FloodVia::Hub => self.get(index).await,
        }
    }
}

/// Whether `page` is member `index`'s whole history as filled.
fn check_page(page: &PullPage, index: u32, entries: u32) -> Result<(), String> {
    let member = member_name(index);
    if page.notifications.len() != entries as usize || page.more {
        return Err(format!(
            "{member}: {} notifications (more: {}), expected {entries}",
            page.notifications.len(),
            page.more
        ));
    }
    let mut previous = 0;
    for (position, notification) in page.notifications.iter().enumerate() {
        let probe = Probe::read(&notification.payload);
        let in_order = probe.is_some_and(|probe| probe.member == index && probe.index as usize == position);
        if notification.member.as_str() != member || !in_order {
            return Err(format!(
                "{member}: notification {position} is {:?} of {}",
                probe, notification.member
            ));
        }
        if notification.seq == 0 || notification.seq < previous {
            return Err(format!("{member}: seq {} after {previous}", notification.seq));
        }
        previous = notification.seq;
    }
    Ok(())
}

/// A small deterministic generator of member indexes (splitmix64): no dependency for a few
/// thousand random picks.
pub struct Picker(u64);

impl Picker {
    pub fn new(seed: u64) -> Self {
        Picker(seed)
    }

    /// A member index below `members`.
    pub fn next(&mut self, members: u32) -> u32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^= mixed >> 31;
        (mixed % u64::from(members.max(1))) as u32
    }
}

/// The padding that makes a probe payload of member `member` `bytes` long, encoded (or as close
/// as the probe's own size allows).
pub fn padding_for(member: u32, bytes: usize) -> String {
    let probe = Probe { member, index: 0, sent_us: now_us() };
    let bare = codec::encoded_len(&probe.payload(""));
    let mut length = bytes.saturating_sub(bare);
    while length > 0 && codec::encoded_len(&probe.payload(&"x".repeat(length))) > bytes {
        length -= 1;
    }
    "x".repeat(length)
}

/// Member `index`'s document as a worker leaves it: `entries` notifications for `device_type`, in
/// order, each of one event; the whole document is one write, so every entry carries seq 0 and
/// takes the document's revision when read.
fn document(
    index: u32,
    entries: u32,
    device_type: &DeviceType,
    event_type: &EventType,
    padding: &str,
) -> MemberHistory {
    let now_ms = now_us() / 1000;
    let entries = (0..entries)
        .map(|position| Entry {
            seq: 0,
            written_ms: 0,
            targets: vec![device_type.clone()],
            source: format!(
                "RENO_NORMAL:{}",
                u64::from(index) * u64::from(entries) + u64::from(position) + 1
            ),
            id: EventId::new(format!("fill-{index}-{position}")).expect("an event id token"),
            event_type: event_type.clone(),
            occurred_at_ms: now_ms,
            published_at_ms: now_ms,
            payload: Probe { member: index, index: position, sent_us: now_ms * 1000 }.payload(padding),
            collapse_key: None,
        })
        .collect();
    MemberHistory { entries, ..MemberHistory::default() }
}

/// Writes every member's document once, as a worker's first write of it (expecting no document),
/// with async publishes and a window.
async fn fill(topology: &Topology, args: &PullArgs, device_type: &DeviceType) -> Result<Fill> {
    let event_type = EventType::new(EVENT_TYPE).expect("an event type");
    let padding = padding_for(args.members - 1, args.payload_bytes);
    let sample = document(args.members - 1, args.entries, device_type, &event_type, &padding).encode();
    let needed = (sample.len() as u64 + 128) * u64::from(args.members);
    if needed > args.history_max_bytes {
        bail!(
            "{} documents of about {} bytes need about {needed} bytes: raise --history-max-bytes \
             (and lower --event-max-bytes to keep within the hub's 8 GB store)",
            args.members,
            sample.len()
        );
    }
    let limit = Limit { count: u64::from(args.members), duration: Duration::from_secs(24 * 3600) };
    let written = publish::publish(&topology.jetstream, Rate::Max, limit, args.window, |index| {
        let index = index as u32;
        let member = MemberId::new(member_name(index)).expect("a member token");
        let history = document(index, args.entries, device_type, &event_type, &padding);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
        Outgoing { subject: subject::history_subject(&member), headers, payload: history.encode().into() }
    })
    .await;
    let mut stream = topology.jetstream.get_stream(subject::history_stream()).await?;
    let state = stream.info().await?.state.clone();
    let secs = written.last_ack.duration_since(written.started).as_secs_f64();
    Ok(Fill {
        documents: written.acked,
        failed: written.failed,
        first_error: written.first_error.clone(),
        document_bytes: sample.len(),
        secs: round(secs, 2),
        documents_per_sec: round(written.acked_per_sec(), 1),
        history_messages: state.messages,
        history_bytes: state.bytes,
        hub_rss_mib: topology
            .hub_pid()
            .and_then(probe::process_memory_kib)
            .map(|(now, _)| round(now as f64 / 1024.0, 1)),
    })
}

/// Direct gets of the warm-up in flight at once.
const WARM_CONCURRENCY: usize = 64;

/// `count` direct gets of random members, [`WARM_CONCURRENCY`] at a time, each checked.
async fn warm(puller: &Puller, count: u32, seed: u64) -> Warm {
    let started = Instant::now();
    let mut picker = Picker::new(seed);
    let members: Vec<u32> = (0..count).map(|_| picker.next(puller.members)).collect();
    let results: Vec<Result<u64, PullFailure>> = futures::stream::iter(members)
        .map(|member| puller.get(member))
        .buffer_unordered(WARM_CONCURRENCY)
        .collect()
        .await;
    let first_error = results.iter().find_map(|result| match result {
        Err(PullFailure::Failed(error) | PullFailure::Wrong(error)) => Some(error.clone()),
        Ok(_) => None,
    });
    Warm {
        reads: count,
        failed: results.iter().filter(|result| result.is_err()).count() as u64,
        first_error,
        secs: round(started.elapsed().as_secs_f64(), 2),
    }
}

/// `count` pulls of random members, one at a time, each checked; after each, a direct get of
/// another random member's document from the hub itself, so that both meet the same caches.
async fn measure(puller: &Puller, count: u32, seed: u64) -> Pulls {
    let mut histogram = stats::histogram();
    let mut gets = stats::histogram();
    let mut picker = Picker::new(seed);
    let (mut failed, mut wrong, mut first_error, mut first_pull_ms) = (0u64, 0u64, None, None);
    let mut gets_failed = 0u64;
    for attempt in 0..count {
        match puller.pull(picker.next(puller.members)).await {
            Ok(latency_us) => {
                // The first pull's time (after the fill or the idle wait); none if that pull failed.
                if attempt == 0 {
                    first_pull_ms = Some(round(latency_us as f64 / 1000.0, 2));
                }
                histogram.saturating_record(latency_us.max(1));
            }
            Err(PullFailure::Failed(error)) => {
                failed += 1;
                first_error.get_or_insert(error);
            }
            Err(PullFailure::Wrong(error)) => {
                wrong += 1;
                first_error.get_or_insert(error);
            }
        }
        match puller.get(picker.next(puller.members)).await {
            Ok(latency_us) => gets.saturating_record(latency_us.max(1)),
            Err(PullFailure::Failed(error) | PullFailure::Wrong(error)) => {
                gets_failed += 1;
                first_error.get_or_insert(error);
            }
        }
    }
    Pulls {
        latency: Latency::of(&histogram),
        first_pull_ms,
        failed,
        wrong,
        first_error,
        server_gets: Latency::of(&gets),
        server_gets_failed: gets_failed,
    }
}

pub async fn run(args: &PullArgs) -> Result<PullSummary> {
    let load_before = probe::loadavg();
    if args.members == 0 || !(1..=DEFAULT_MAX_ENTRIES as u32).contains(&args.entries) {
        bail!("--members must be at least 1 and --entries 1 to {DEFAULT_MAX_ENTRIES}");
    }
    if args.topology.hub.is_some() {
        bail!("the pull run provisions its own history limits and fills it: start it without --hub");
    }
    for (flag, rate) in
        [("--flood-pull-rate", args.flood_pull_rate), ("--keep-warm-rate", args.keep_warm_rate)]
    {
        if !(rate.is_finite() && rate >= 0.0) {
            bail!("{flag} must be a number of reads per second, 0 or more; got {rate}");
        }
    }
    let device_type = DeviceType::new(args.device_type.as_str()).context("device type")?;
    let mut topology_args = args.topology.clone();
    topology_args.env.extend([
        ("RENO_STREAMS_HISTORY_MAX_BYTES".to_owned(), args.history_max_bytes.to_string()),
        ("RENO_STREAMS_EVENT_MAX_BYTES".to_owned(), args.event_max_bytes.to_string()),
    ]);
    let topology = Topology::start(&topology_args, Needs::Pipeline).await?;

    let fill = fill(&topology, args, &device_type).await?;
    if args.idle_secs > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.idle_secs)).await;
    }
    let load_at_pulls = probe::loadavg();
    let mut reads = Vec::with_capacity(HUB_READ_CONNECTIONS);
    for lane in 0..HUB_READ_CONNECTIONS {
        let client = topology.connect(&format!("reno-load-read-{lane}")).await?;
        reads.push(jetstream::new(client).get_stream_no_info(subject::history_stream()).await?);
    }
    let puller = Puller {
        client: topology.client.clone(),
        reads: reads.into(),
        next_read: Arc::default(),
        device_type,
        members: args.members,
        entries: args.entries,
    };
    let warmed = match args.warm_reads {
        0 => None,
        reads => Some(warm(&puller, reads, now_us()).await),
    };
    let pulls = measure(&puller, args.pulls, now_us()).await;
    let flood = if args.flood_events > 0 {
        let plan = pull_flood::Plan {
            events: args.flood_events,
            pull_rate: args.flood_pull_rate,
            via: args.flood_via,
            keep_warm_rate: args.keep_warm_rate,
            payload_bytes: args.payload_bytes,
            window: args.window,
            drain: Duration::from_secs_f64(args.drain_secs),
        };
        Some(pull_flood::run(&topology, &puller, &plan).await?)
    } else {
        None
    };

    let filled = fill.failed == 0 && fill.documents == u64::from(args.members);
    let pulled = pulls.failed == 0
        && pulls.wrong == 0
        && pulls.latency.count == u64::from(args.pulls)
        && pulls.server_gets_failed == 0;
    let flooded = flood.as_ref().is_none_or(|flood| flood.ok);
    let warm_ok = warmed.as_ref().is_none_or(|warmed| warmed.failed == 0);
    Ok(PullSummary {
        scenario: "pull",
        ok: filled && warm_ok && pulled && flooded,
        members: args.members,
        entries: args.entries,
        history_entries: u64::from(args.members) * u64::from(args.entries),
        payload_bytes: args.payload_bytes,
        idle_secs: args.idle_secs,
        fill,
        warm: warmed,
        pulls,
        flood,
        loadavg: [load_before, load_at_pulls, probe::loadavg()],
    })
}
