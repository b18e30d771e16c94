//! `reno-load`: end-to-end load against a reno topology of its own (or a running one). Prints a human
//! table to stderr and one JSON summary line to stdout.

use anyhow::Result;
use clap::{Parser, Subcommand};
use reno_loadtest::{
    e2e, floor, hostile, pull, storm,
    topology::{Needs, Topology, TopologyArgs},
};

#[derive(Parser)]
#[command(name = "reno-load", about = "End-to-end load for reno: devices on an edge, events on the hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Devices on the edge, events at a target rate: latency, exactly-once, per-member order, and
    /// throughput against raw JetStream publish measured in the same run
    E2e(e2e::E2eArgs),
    /// The e2e run with a subscriber on the hub beside the devices: the edge's hop compared
    LatencyCompare(e2e::E2eArgs),
    /// Devices connecting at once to one edge through the authorization path
    Storm(storm::StormArgs),
    /// 64 KiB envelopes of costly CBOR shapes as fast as the workers take them; worker memory
    Hostile(hostile::HostileArgs),
    /// A history filled with members × entries, then pulls of random members through the pull
    /// service timed and checked, and the workers' throughput with and without a flood of pulls
    Pull(pull::PullArgs),
    /// The JetStream work an event cannot do without (queue, document write, read, push) on the
    /// hub with plain clients and none of reno's code: the highest ratio to raw publish reachable
    Floor(floor::FloorArgs),
    /// Starts a topology of its own with reno's processes and the HTTP gateway, prints one JSON
    /// line with its addresses (for reno-goose), and holds it until stdin closes or Ctrl-C
    Up(UpArgs),
}

#[derive(clap::Args)]
struct UpArgs {
    #[command(flatten)]
    topology: TopologyArgs,
}

/// Runs `reno-load up`: prints where everything is, then holds it.
async fn up(args: &UpArgs) -> Result<()> {
    let mut topology = Topology::start(&args.topology, Needs::Pipeline).await?;
    let gateway = topology.start_gateway().await?;
    let addresses = serde_json::json!({
        "hub": topology.hub_url,
        "edge": topology.edge_url,
        "secrets": topology.secrets,
        "gateway": gateway,
        "worker_pids": topology.worker_pids(),
    });
    println!("{addresses}");
    let stdin_closed = tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    });
    tokio::select! {
        _ = stdin_closed => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RENO_LOAD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let (table, json, ok) = match Cli::parse().command {
            Command::E2e(args) => {
                let summary = e2e::run(&args, "e2e").await?;
                (summary.table(), serde_json::to_string(&summary)?, summary.ok)
            }
            Command::LatencyCompare(mut args) => {
                args.hub_subscriber = true;
                let summary = e2e::run(&args, "latency-compare").await?;
                (summary.table(), serde_json::to_string(&summary)?, summary.ok)
            }
            Command::Storm(args) => {
                let summary = storm::run(&args).await?;
                (summary.table(), serde_json::to_string(&summary)?, summary.ok)
            }
            Command::Hostile(args) => {
                let summary = hostile::run(&args).await?;
                (summary.table(), serde_json::to_string(&summary)?, summary.ok)
            }
            Command::Pull(args) => {
                let summary = pull::run(&args).await?;
                (summary.table(), serde_json::to_string(&summary)?, summary.ok)
            }
            Command::Floor(args) => {
                let summary = floor::run(&args).await?;
                (summary.table(), serde_json::to_string(&summary)?, summary.ok)
            }
            Command::Up(args) => return up(&args).await,
        };
        eprintln!("{table}");
        println!("{json}");
        if !ok {
            eprintln!("reno-load: the run did not meet its checks (see ok in the summary)");
        }
        Ok(())
    })
}
