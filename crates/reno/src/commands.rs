//! Each subcommand: turn its flags into the library's config and call the library's `run`.

use std::{
    io::Write,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use reno_device::{Device, DeviceConfig, DeviceError, DeviceEvent};
use reno_model::{Envelope, EventId, Priority, Registry, Value};
use reno_nats::{Publisher, Topology};
use reno_worker::{PoolConfig, WorkerConfig};
use tokio::sync::watch;
use tracing::info;

use crate::cli::{
    Cli, Command, DeviceArgs, MetricsAddr, ProvisionArgs, PublishArgs, RunArgs, UpArgs, WorkerArgs,
};

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Up(args) => up(args).await,
        Command::Provision(args) => provision(&args).await,
        Command::Worker(args) => worker(args).await,
        Command::PullService(args) => {
            start_metrics(args.metrics_addr)?;
            let client = reno_nats::connect_patiently(&args.connect.nats_url, "reno-pull").await;
            let stop = Shutdown::on_signal();
            reno_pull::run(client, stop.wait()).await?;
            Ok(())
        }
        Command::Publish(args) => publish(args).await,
        Command::Device(args) => device(args).await,
    }
}

fn load_registry(path: &std::path::Path) -> Result<Arc<Registry>> {
    Ok(Arc::new(Registry::load(path)?))
}

async fn provision(args: &ProvisionArgs) -> Result<()> {
    let registry = load_registry(&args.registry.registry)?;
    let client = connect(&args.connect.nats_url, "reno-provision").await?;
    let jetstream = async_nats::jetstream::new(client);
    let topology = Topology {
        replicas: args.replicas,
        history_retention: Duration::from_secs(args.history_retention_secs),
        event_retention: Duration::from_secs(args.event_retention_secs),
        ack_wait: Duration::from_secs(args.ack_wait_secs),
        event_max_bytes: args.event_max_bytes,
        history_max_bytes: args.history_max_bytes,
        dead_letter_max_bytes: args.dead_letter_max_bytes,
        ..Topology::default()
    };
    let report = reno_nats::provision(&jetstream, &registry, &topology).await?;
    for (stream, subjects) in report.streams {
        info!(stream, subjects = subjects.join(" "), "stream provisioned");
    }
    Ok(())
}

async fn up(args: UpArgs) -> Result<()> {
    provision(&args.provision).await?;
    let registry = load_registry(&args.provision.registry.registry)?;
    let nats_url = args.provision.connect.nats_url.clone();
    let metrics = start_metrics(args.run.metrics_addr)?;
    let stop = Shutdown::on_signal();
    let pull_client = reno_nats::connect_patiently(&nats_url, "reno-pull").await;
    let pull = tokio::spawn(reno_pull::run(pull_client, stop.wait()));
    let program = std::env::args().next().unwrap_or_else(|| "reno".into());
    println!("reno is running (Ctrl-C stops it)");
    println!("  services publish to  {nats_url}  subject reno.evt.<type>.<member>");
    println!(
        "      try: {program} publish --type plan_changed --member m1 --payload '{{\"plan\":\"premium\"}}'"
    );
    println!("  devices connect to   {}", args.websocket_url);
    println!("      try: {program} device --member m1 --device-type tv");
    if let Some(address) = metrics {
        println!("  metrics              http://{address}/metrics");
    }
    let config = WorkerConfig::new(nats_url, registry);
    run_worker(config, &args.run, &stop).await?;
    pull.await??;
    Ok(())
}

async fn worker(args: WorkerArgs) -> Result<()> {
    let registry = load_registry(&args.registry.registry)?;
    let mut config = WorkerConfig::new(args.connect.nats_url.clone(), registry);
    config.max_deliveries = args.max_deliveries.max(1);
    let priorities =
        if args.priorities.is_empty() { Priority::ALL.to_vec() } else { args.priorities.clone() };
    config.pools = priorities
        .into_iter()
        .map(|priority| {
            let mut pool = PoolConfig::default_for(priority);
            if let Some((_, concurrency)) = args.concurrency.iter().rev().find(|(p, _)| *p == priority) {
                pool.concurrency = *concurrency;
            }
            if let Some((_, threads)) = args.threads.iter().rev().find(|(p, _)| *p == priority) {
                pool.threads = *threads;
            }
            (priority, pool)
        })
        .collect();
    start_metrics(args.run.metrics_addr)?;
    let stop = Shutdown::on_signal();
    run_worker(config, &args.run, &stop).await
}

/// Runs the worker until a signal, then gives in-flight events the grace period to finish.
async fn run_worker(config: WorkerConfig, run: &RunArgs, stop: &Shutdown) -> Result<()> {
    let grace = Duration::from_secs(run.grace_secs);
    let mut worker = std::pin::pin!(reno_worker::run(config, stop.wait()));
    tokio::select! {
        result = &mut worker => return Ok(result?),
        () = stop.wait() => {}
    }
    match tokio::time::timeout(grace, worker).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            bail!("in-flight events did not finish within {grace:?}; they will be redelivered")
        }
    }
}

fn start_metrics(metrics_addr: MetricsAddr) -> Result<Option<std::net::SocketAddr>> {
    let Some(address) = metrics_addr.0 else { return Ok(None) };
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(address)
        .install()
        .with_context(|| format!("cannot serve metrics on {address}"))?;
    Ok(Some(address))
}

async fn publish(args: PublishArgs) -> Result<()> {
    let json: serde_json::Value =
        serde_json::from_str(&args.payload).context("--payload is not valid JSON")?;
    let envelope = Envelope {
        id: args
            .id
            .unwrap_or_else(|| EventId::new(nuid::next().to_string()).expect("a nuid is a safe token")),
        event_type: args.event_type,
        member: args.member,
        occurred_at_ms: args.occurred_at_ms.unwrap_or_else(now_ms),
        payload: Value::serialized(&json).context("payload cannot be encoded as CBOR")?,
        targets: (!args.targets.is_empty()).then_some(args.targets),
        collapse_key: args.collapse_key,
    };
    let client = connect(&args.connect.nats_url, "reno-publish").await?;
    let mut publisher = Publisher::new(client.clone());
    if let Some(path) = &args.registry {
        publisher = publisher.with_registry(load_registry(path)?);
    }
    let published = publisher.publish(&envelope).await?;
    let line = serde_json::json!({
        "id": envelope.id.as_str(),
        "stream": published.stream,
        "sequence": published.sequence,
        "duplicate": published.duplicate,
    });
    println!("{line}");
    client.flush().await?;
    Ok(())
}

async fn device(args: DeviceArgs) -> Result<()> {
    let mut config = DeviceConfig::new(args.url, args.member, args.device_type);
    config.position = args.from;
    let mut device = Device::connect(config).await?;
    let stop = Shutdown::on_signal();
    let mut printed = 0;
    let mut stdout = std::io::stdout();
    while args.count.is_none_or(|count| printed < count) {
        let event = tokio::select! {
            event = device.next() => event,
            () = stop.wait() => break,
        };
        let event = match event {
            Ok(event) => event,
            // The device keeps its state: a pull that failed is tried again on the next call.
            Err(error @ (DeviceError::Pull(_) | DeviceError::Refused { .. })) => {
                tracing::warn!(%error, "retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let line = match event {
            DeviceEvent::Notification(notification) => serde_json::to_value(&notification)?,
            DeviceEvent::Resync => serde_json::json!({ "resync": true }),
        };
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
        printed += 1;
    }
    // Where to start next time (--from), for a watcher that is stopped and started again.
    eprintln!("position {}", device.position());
    Ok(())
}

/// Connects once for a one-shot command, saying what to check when no server answers.
async fn connect(url: &str, name: &str) -> Result<async_nats::Client> {
    reno_nats::connect(url, name).await.with_context(|| {
        format!("cannot connect to NATS at {url}; is nats-server running (scripts/dev starts one)?")
    })
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Completes once SIGINT or SIGTERM arrives; any number of tasks can wait on it.
#[derive(Clone)]
struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    fn on_signal() -> Self {
        let (sender, receiver) = watch::channel(false);
        tokio::spawn(async move {
            let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            info!("shutting down");
            let _ = sender.send(true);
        });
        Shutdown(receiver)
    }

    fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut receiver = self.0.clone();
        async move {
            let _ = receiver.wait_for(|stopped| *stopped).await;
        }
    }
}
