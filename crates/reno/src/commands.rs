//! Each subcommand: turn its flags into the library's config and call the library's `run`.

use std::{
    io::Write,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use reno_device::{Device, DeviceConfig, DeviceError, DeviceEvent};
use reno_model::{Envelope, EventId, Registry, Value};
use reno_nats::Publisher;
use reno_worker::WorkerConfig;
use tokio::sync::watch;
use tracing::info;

use crate::{
    admin,
    cli::{
        Command, ConfigCommand, DeviceArgs, PresenceArgs, PublishArgs, RegistryCommand, SetTypeArgs,
        TokenArgs, TraceArgs, UpArgs,
    },
    config::{AdminAddr, Config, read_secret},
};

/// Runs one subcommand with the configuration it resolved to.
pub async fn run(command: Command, config: Config) -> Result<()> {
    match command {
        Command::Up(args) => up(args, &config).await,
        Command::Provision(_) => provision(&config).await,
        Command::Worker(_) => worker(&config).await,
        Command::PullService(_) => {
            let stop = Shutdown::on_signal();
            let needs = device_services_needs();
            start_admin(config.pull.admin_addr, &config, "reno-pull", needs, &stop).await?;
            let client = reno_nats::connect_patiently(&config.endpoint()?, "reno-pull").await;
            device_services(client, &config, &stop).await
        }
        Command::Presence(args) => presence(args, &config).await,
        Command::Trace(args) => trace(args, &config).await,
        Command::AuthService => {
            let stop = Shutdown::on_signal();
            start_admin(config.auth.admin_addr, &config, "reno-auth", vec![], &stop).await?;
            auth_service(&config, &stop).await
        }
        Command::Gateway => {
            let stop = Shutdown::on_signal();
            let needs =
                vec![reno_nats::readiness::Needed::Bucket(reno_model::subject::REGISTRY_BUCKET.to_owned())];
            start_admin(config.gateway.admin_addr, &config, "reno-gateway", needs, &stop).await?;
            gateway(&config, &stop).await
        }
        Command::Token(args) => token(args, &config),
        Command::DevSecrets(args) => {
            let secrets = reno_auth::dev_secrets::generate(&args.dir)
                .with_context(|| format!("cannot write development secrets into {}", args.dir.display()))?;
            std::fs::write(secrets.path("reno.toml"), secrets.reno_config())?;
            eprintln!(
                "development secrets in {}: nats.env for the nats-server configs, reno.toml for reno",
                args.dir.display()
            );
            Ok(())
        }
        Command::Publish(args) => publish(args, &config).await,
        Command::Device(args) => device(args, &config).await,
        Command::Registry(command) => registry(command, &config).await,
        Command::Config(ConfigCommand::Check) => {
            print!("{}", config.to_toml());
            eprintln!("config ok");
            Ok(())
        }
    }
}

fn load_registry(path: &std::path::Path) -> Result<Arc<Registry>> {
    Ok(Arc::new(Registry::load(path)?))
}

async fn provision(config: &Config) -> Result<()> {
    let registry = load_registry(&config.registry.path)?;
    let client = connect(&config.endpoint()?, "reno-provision").await?;
    let jetstream = async_nats::jetstream::new(client);
    let report = reno_nats::provision(&jetstream, &registry, &config.topology()).await?;
    let partitions = config.streams.partitions;
    for (stream, subjects) in report.streams {
        info!(stream, partitions, subjects = subjects.join(" "), "stream provisioned");
    }
    if report.rehomed > 0 {
        info!(rehomed = report.rehomed, "events of dropped partitions rehomed into the new ones");
    }
    Ok(())
}

/// Shows or changes the registry every process follows, while everything runs.
async fn registry(command: RegistryCommand, config: &Config) -> Result<()> {
    let client = connect(&config.endpoint()?, "reno-registry").await?;
    let jetstream = async_nats::jetstream::new(client);
    let current = reno_nats::registry_store::load(&jetstream).await;
    let changed = match command {
        RegistryCommand::Show => {
            print!("{}", current?.to_toml());
            return Ok(());
        }
        RegistryCommand::Apply { file } => Registry::load(&file)?,
        RegistryCommand::Set(args) => set_type(&current?, args)?,
        RegistryCommand::Remove { event_type } => current?.without_type(&event_type)?,
    };
    let report = reno_nats::apply_registry(&jetstream, &changed).await?;
    for (stream, subjects) in report.streams {
        info!(stream, subjects = subjects.join(" "), "stream follows the registry");
    }
    eprintln!("registry applied: {}", changed.type_names());
    Ok(())
}

/// The registry with one type added or changed by the flags given.
fn set_type(registry: &Registry, args: SetTypeArgs) -> Result<Registry> {
    let spec = match registry.get(&args.event_type) {
        Some(spec) => reno_model::TypeSpec {
            priority: args.priority.unwrap_or(spec.priority),
            stale_after: args.stale_after_secs.map_or(spec.stale_after, Duration::from_secs),
            targets: if args.targets.is_empty() { spec.targets.clone() } else { args.targets },
            collapse: args.collapse.unwrap_or(spec.collapse),
        },
        None => {
            let (Some(priority), Some(stale_after_secs)) = (args.priority, args.stale_after_secs) else {
                bail!(
                    "{} is a new event type: give at least --priority and --stale-after-secs",
                    args.event_type
                );
            };
            reno_model::TypeSpec {
                priority,
                stale_after: Duration::from_secs(stale_after_secs),
                targets: if args.targets.is_empty() {
                    registry.device_types().to_vec()
                } else {
                    args.targets
                },
                collapse: args.collapse.unwrap_or(false),
            }
        }
    };
    if spec.stale_after.is_zero() {
        bail!("--stale-after-secs must be above 0");
    }
    Ok(registry.with_type(args.event_type, spec)?)
}

async fn up(args: UpArgs, config: &Config) -> Result<()> {
    provision(config).await?;
    let nats_url = config.nats.url.clone();
    let stop = Shutdown::on_signal();
    let mut needs = reno_worker::needs(&config.worker.priorities);
    needs.extend(device_services_needs());
    let admin = start_admin(config.worker.admin_addr, config, "reno-up", needs, &stop).await?;
    let pull_client = reno_nats::connect_patiently(&config.endpoint()?, "reno-pull").await;
    let pull = tokio::spawn({
        let (config, stop) = (config.clone(), stop.clone());
        async move { device_services(pull_client, &config, &stop).await }
    });
    // With device token keys configured, the edges' authorization service and the gateway run
    // here too.
    let auth = config.auth.token_keys_file.is_some().then(|| {
        let (config, stop) = (config.clone(), stop.clone());
        tokio::spawn(async move { auth_service(&config, &stop).await })
    });
    let gateway_listen = config.gateway.listen_addr.0.filter(|_| config.auth.token_keys_file.is_some());
    let gateway_task = gateway_listen.map(|_| {
        let (config, stop) = (config.clone(), stop.clone());
        tokio::spawn(async move { gateway(&config, &stop).await })
    });
    let program = std::env::args().next().unwrap_or_else(|| "reno".into());
    println!("reno is running (Ctrl-C stops it)");
    println!("  services publish to  {nats_url}  subject reno.evt.<type>.<member>");
    // What a second terminal needs to reach this run: its config (credentials, development key)
    // and the edge's CA.
    let mut env = String::new();
    for name in ["RENO_CONFIG", "RENO_DEVICE_CA", "RENO_WEBSOCKET_URL", "RENO_NATS_URL"] {
        if let Ok(value) = std::env::var(name) {
            env.push_str(&format!("{name}={value} "));
        }
    }
    println!(
        "      try: {env}{program} publish --type plan_changed --member m1 --payload '{{\"plan\":\"premium\"}}'"
    );
    println!("  devices connect to   {}", args.websocket_url);
    println!("      try: {env}{program} device --member m1 --device-type tv");
    if let Some(address) = gateway_listen {
        println!(
            "  HTTP gateway         http://{address}  (POST /v1/events, GET /v1/pull, GET /v1/presence/<member>)"
        );
        if let Some(url) = browser_device_url(config, address, &args.websocket_url) {
            println!("  browser device       {url}");
        }
    }
    if let Some(address) = admin {
        println!("  metrics and health   http://{address}/metrics  /livez  /readyz");
    }
    run_worker(config, &stop).await?;
    pull.await??;
    if let Some(auth) = auth {
        auth.await??;
    }
    if let Some(gateway) = gateway_task {
        gateway.await??;
    }
    Ok(())
}

/// With a development key configured, the page's address with a development token for member m1's
/// browser in it, ready to open.
fn browser_device_url(config: &Config, gateway: std::net::SocketAddr, websocket_url: &str) -> Option<String> {
    let key = std::fs::read_to_string(config.auth.dev_token_key_file.as_ref()?).ok()?;
    let key = reno_auth::DevSigningKey::from_jwk(&key).ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
    let identity = reno_auth::DeviceIdentity {
        member: reno_model::MemberId::new("m1").ok()?,
        device_type: reno_model::DeviceType::new("browser").ok()?,
        device_id: reno_model::DeviceId::new("browser-1").ok()?,
        expires_at: now + 24 * 3600,
    };
    let token = key.mint(&identity, &config.auth.audience, now);
    Some(format!(
        "http://{gateway}/?server={websocket_url}&member=m1&device_type=browser&device_id=browser-1&token={token}"
    ))
}

/// What the services devices talk to need: the history, and the presence bucket.
fn device_services_needs() -> Vec<reno_nats::readiness::Needed> {
    let mut needs = reno_pull::needs();
    needs.push(reno_nats::readiness::Needed::Bucket(reno_model::subject::PRESENCE_BUCKET.to_owned()));
    needs
}

/// Runs the services devices talk to until the shutdown: the pull service and the presence
/// tracker, on one connection, and the pull service's reads of documents on `pull.read_connections`
/// more.
async fn device_services(client: async_nats::Client, config: &Config, stop: &Shutdown) -> Result<()> {
    let tracker_config =
        reno_presence::TrackerConfig { ttl: Duration::from_secs(config.streams.presence_ttl_secs) };
    let tracker = tokio::spawn(reno_presence::run(client.clone(), tracker_config, stop.wait()));
    let endpoint = config.endpoint()?;
    let connecting = futures::future::join_all((0..config.pull.read_connections).map(|lane| {
        let endpoint = &endpoint;
        async move { reno_nats::connect_patiently(endpoint, &format!("reno-pull-read-{lane}")).await }
    }));
    tokio::select! {
        readers = connecting => reno_pull::run(client, readers, stop.wait()).await?,
        // Told to stop before the hub took the read connections: no pull was ever taken.
        () = stop.wait() => {}
    }
    tracker.await??;
    Ok(())
}

/// Runs the authorization service until the shutdown, on its own connection to the hub's auth
/// account.
async fn auth_service(config: &Config, stop: &Shutdown) -> Result<()> {
    let auth = &config.auth;
    let required = |key: &'static str, path: &Option<std::path::PathBuf>| {
        read_secret(key, path.as_deref())?
            .with_context(|| format!("{key} is not set; the authorization service needs it"))
    };
    let token_keys = reno_auth::TokenKeys::from_jwks(
        &required("auth.token_keys_file", &auth.token_keys_file)?,
        &auth.audience,
    )
    .context("auth.token_keys_file")?;
    let issuer = nkeys::KeyPair::from_seed(&required("auth.issuer_seed_file", &auth.issuer_seed_file)?)
        .map_err(|error| anyhow::anyhow!("auth.issuer_seed_file: {error}"))?;
    let xkey = match read_secret("auth.xkey_seed_file", auth.xkey_seed_file.as_deref())? {
        Some(seed) => Some(
            nkeys::XKey::from_seed(&seed).map_err(|error| anyhow::anyhow!("auth.xkey_seed_file: {error}"))?,
        ),
        None => None,
    };
    let callout = reno_auth::callout::CalloutConfig {
        token_keys,
        issuer,
        xkey,
        account: auth.account.clone(),
        max_connection: Duration::from_secs(auth.max_connection_secs),
    };
    let endpoint = reno_nats::Endpoint {
        nkey_seed: read_secret("auth.nkey_seed_file", auth.nkey_seed_file.as_deref())?,
        inbox_prefix: None,
        ..config.endpoint()?
    };
    let client = reno_nats::connect_patiently(&endpoint, "reno-auth").await;
    reno_auth::callout::run(client, callout, stop.wait()).await?;
    Ok(())
}

/// Runs the HTTP gateway until the shutdown.
async fn gateway(config: &Config, stop: &Shutdown) -> Result<()> {
    let Some(listen) = config.gateway.listen_addr.0 else {
        bail!("gateway.listen_addr is off: nowhere to listen")
    };
    let keys = read_secret("auth.token_keys_file", config.auth.token_keys_file.as_deref())?
        .context("auth.token_keys_file is not set; the gateway needs it to check device tokens")?;
    let token_keys =
        reno_auth::TokenKeys::from_jwks(&keys, &config.auth.audience).context("auth.token_keys_file")?;
    let service_tokens =
        read_secret("gateway.service_tokens_file", config.gateway.service_tokens_file.as_deref())?
            .map(|text| {
                text.lines().map(str::trim).filter(|line| !line.is_empty()).map(str::to_owned).collect()
            })
            .unwrap_or_default();
    let client = reno_nats::connect_patiently(&config.endpoint()?, "reno-gateway").await;
    let registry = reno_nats::registry_store::follow(async_nats::jetstream::new(client.clone())).await?;
    let gateway_config = reno_gateway::GatewayConfig {
        listen,
        token_keys,
        service_tokens,
        web_dir: config.gateway.web_dir.clone(),
    };
    reno_gateway::run(client, registry, gateway_config, stop.wait()).await?;
    Ok(())
}

/// Prints a development device token.
fn token(args: TokenArgs, config: &Config) -> Result<()> {
    let path = args.key.or_else(|| config.auth.dev_token_key_file.clone()).context(
        "no development key: give --key FILE or set auth.dev_token_key_file (reno dev-secrets writes one)",
    )?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let key = reno_auth::DevSigningKey::from_jwk(&text)
        .with_context(|| format!("{} is not a private key", path.display()))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
    let identity = reno_auth::DeviceIdentity {
        member: args.member,
        device_type: args.device_type,
        device_id: args.device_id,
        expires_at: now + args.ttl_secs,
    };
    println!("{}", key.mint(&identity, &config.auth.audience, now));
    Ok(())
}

/// Prints the devices of a member that are online, one JSON line each.
async fn presence(args: PresenceArgs, config: &Config) -> Result<()> {
    let client = connect(&config.endpoint()?, "reno-presence").await?;
    let jetstream = async_nats::jetstream::new(client);
    let devices = reno_presence::online_devices(&jetstream, &args.member)
        .await
        .map_err(|error| anyhow::anyhow!("cannot read presence: {error}"))?;
    for device in devices {
        let line = serde_json::json!({
            "member": args.member.as_str(),
            "device_type": device.device_type.as_str(),
            "device_id": device.device_id.as_str(),
            "seen_ms": device.seen_ms,
        });
        println!("{line}");
    }
    Ok(())
}

async fn trace(args: TraceArgs, config: &Config) -> Result<()> {
    let client = connect(&config.endpoint()?, "reno-trace").await?;
    let stop = Shutdown::on_signal();
    eprintln!("tracing {} (Ctrl-C to stop)", args.member);
    let print = |record: serde_json::Value| {
        if args.json {
            println!("{record}");
        } else {
            println!("{}", trace_line(&record));
        }
    };
    reno_nats::trace::session(client, &args.member, print, stop.wait()).await?;
    Ok(())
}

/// A trace record as one line of text: the time, the process and the stage, then its other fields.
fn trace_line(record: &serde_json::Value) -> String {
    let at = record["at_ms"]
        .as_u64()
        .and_then(|ms| time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
        .map(|time| {
            format!("{:02}:{:02}:{:02}.{:03}", time.hour(), time.minute(), time.second(), time.millisecond())
        })
        .unwrap_or_default();
    let mut line = format!(
        "{at} {} {}",
        record["process"].as_str().unwrap_or("?"),
        record["stage"].as_str().unwrap_or("?")
    );
    if let Some(fields) = record.as_object() {
        for (key, value) in fields {
            if !matches!(key.as_str(), "at_ms" | "process" | "stage" | "member") && !value.is_null() {
                line.push_str(&format!(" {key}={value}"));
            }
        }
    }
    line
}

async fn worker(config: &Config) -> Result<()> {
    let stop = Shutdown::on_signal();
    let needs = reno_worker::needs(&config.worker.priorities);
    start_admin(config.worker.admin_addr, config, "reno-worker", needs, &stop).await?;
    run_worker(config, &stop).await
}

/// Runs the workers of the configured priorities until a signal, then gives in-flight events the
/// grace period to finish.
async fn run_worker(config: &Config, stop: &Shutdown) -> Result<()> {
    let mut worker_config = WorkerConfig::new(config.endpoint()?);
    worker_config.max_deliveries = config.worker.max_deliveries;
    worker_config.pools =
        config.worker.priorities.iter().map(|priority| (*priority, config.pool(*priority))).collect();
    let grace = Duration::from_secs(config.worker.grace_secs);
    let mut worker = std::pin::pin!(reno_worker::run(worker_config, stop.wait()));
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

/// Starts counting metrics and, unless `address` is `off`, serves them with the health endpoints
/// until the shutdown; returns where.
async fn start_admin(
    address: AdminAddr,
    config: &Config,
    name: &str,
    needs: Vec<reno_nats::readiness::Needed>,
    stop: &Shutdown,
) -> Result<Option<std::net::SocketAddr>> {
    let metrics = admin::install_metrics()?;
    let Some(address) = address.0 else { return Ok(None) };
    let server = admin::serve(address, metrics, &config.endpoint()?, name, needs, stop.wait()).await?;
    tokio::spawn(server);
    Ok(Some(address))
}

async fn publish(args: PublishArgs, config: &Config) -> Result<()> {
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
    let client = connect(&config.endpoint()?, "reno-publish").await?;
    let mut publisher = Publisher::new(client.clone());
    if args.registry.is_some() {
        publisher = publisher.with_registry(load_registry(&config.registry.path)?);
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

async fn device(args: DeviceArgs, settings: &Config) -> Result<()> {
    let device_id = match args.device_id {
        Some(device_id) => device_id,
        None => reno_model::DeviceId::new(format!("cli-{}", &nuid::next().to_string()[..10]))?,
    };
    // With a development key configured (reno dev-secrets), a token is minted for the watcher.
    let token = match (args.token, &settings.auth.dev_token_key_file) {
        (Some(token), _) => Some(token),
        (None, Some(key)) => {
            let text =
                std::fs::read_to_string(key).with_context(|| format!("cannot read {}", key.display()))?;
            let key = reno_auth::DevSigningKey::from_jwk(&text)?;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
            let identity = reno_auth::DeviceIdentity {
                member: args.member.clone(),
                device_type: args.device_type.clone(),
                device_id: device_id.clone(),
                expires_at: now + 24 * 3600,
            };
            Some(key.mint(&identity, &settings.auth.audience, now))
        }
        (None, None) => None,
    };
    let mut config = DeviceConfig::new(args.url, args.member, args.device_type);
    config.position = args.from;
    config.device_id = Some(device_id);
    config.token = token;
    config.root_certificates = args.ca;
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
    device.close().await;
    Ok(())
}

/// Connects once for a one-shot command, saying what to check when no server answers.
async fn connect(endpoint: &reno_nats::Endpoint, name: &str) -> Result<async_nats::Client> {
    reno_nats::connect(endpoint, name).await.with_context(|| {
        format!(
            "cannot connect to NATS at {}; is nats-server running (scripts/dev starts one)?",
            endpoint.url
        )
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
