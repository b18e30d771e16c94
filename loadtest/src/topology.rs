//! Where a run happens: a topology of its own (the test kit's `Cluster`: a hub and an edge with
//! fresh development secrets, and reno's processes started from the `reno` binary), or a running one
//! reached by URLs and its secrets folder (for example the one `scripts/dev` starts).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use reno_testkit::{Cluster, Process, free_port, repo_root};

use crate::probe;

/// How a run finds or starts its topology.
#[derive(Debug, Clone, clap::Args)]
pub struct TopologyArgs {
    /// The hub's client URL of a running topology (with --edge and --secrets); without it, the run
    /// starts a hub and an edge of its own
    #[arg(long, requires_all = ["edge", "secrets"])]
    pub hub: Option<String>,
    /// Where devices connect on the running topology: wss://host:port
    #[arg(long)]
    pub edge: Option<String>,
    /// The running topology's secrets folder (reno.nk, ca.pem, device-token-key.jwk, ...)
    #[arg(long)]
    pub secrets: Option<PathBuf>,
    /// The running edge's monitoring address (http://host:port), for its memory
    #[arg(long)]
    pub edge_monitor: Option<String>,
    /// The reno binary that runs provision, workers, pull service and authorization service
    #[arg(long, default_value = "target/release/reno")]
    pub reno: PathBuf,
    /// `reno worker` processes to start (own topology only)
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Extra flags for every `reno worker`, space-separated (e.g. "--threads normal=2")
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub worker_flags: String,
    /// Extra environment for every reno process this run starts (own topology only): a
    /// subcommand's own settings, such as the pull run's stream limits.
    #[arg(skip)]
    pub env: Vec<(String, String)>,
}

/// Which of reno's processes a run needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Provision, authorization service, pull service (with the presence tracker) and workers.
    Pipeline,
    /// Only the authorization service: devices connect, nothing is published.
    Authorization,
    /// None of reno's processes: the run brings its own streams and clients.
    Hub,
}

/// A running topology and the reno processes this run started in it.
pub struct Topology {
    /// The hub and edge when this run started them; `None` for a running topology.
    cluster: Option<Cluster>,
    pub hub_url: String,
    pub edge_url: String,
    /// The secrets folder: the reno user's seed, the CA, the device-token key, the service token.
    pub secrets: PathBuf,
    edge_monitor: Option<String>,
    reno: PathBuf,
    /// Extra environment for reno's processes (see [`TopologyArgs::env`]).
    env: Vec<(String, String)>,
    /// reno's processes started by this run, killed on drop.
    processes: Vec<Process>,
    /// Of those, the workers: index into `processes` and admin port.
    workers: Vec<(usize, u16)>,
    /// Of those, the pull service: index into `processes`.
    pull_service: Option<usize>,
    /// reno's own account on the hub.
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
}

impl Topology {
    pub async fn start(args: &TopologyArgs, needs: Needs) -> Result<Topology> {
        let (cluster, hub_url, edge_url, secrets, edge_monitor) = match &args.hub {
            Some(hub) => (
                None,
                hub.clone(),
                args.edge.clone().context("--edge is needed with --hub")?,
                args.secrets.clone().context("--secrets is needed with --hub")?,
                args.edge_monitor.clone(),
            ),
            None => {
                let cluster = Cluster::start(1, 1).context("starting a hub and an edge")?;
                std::fs::write(cluster.secrets.path("reno.toml"), cluster.secrets.reno_config())?;
                let (hub, edge) = (cluster.hub_url(), cluster.edge_url(0).to_owned());
                let secrets = cluster.secrets.dir.clone();
                (Some(cluster), hub, edge, secrets, None)
            }
        };
        let client = reno_nats::connect(&reno_endpoint(&hub_url, &secrets)?, "reno-load")
            .await
            .context("connecting to the hub")?;
        let mut topology = Topology {
            jetstream: jetstream::new(client.clone()),
            client,
            cluster,
            hub_url,
            edge_url,
            secrets,
            edge_monitor,
            reno: args.reno.clone(),
            env: args.env.clone(),
            processes: Vec::new(),
            workers: Vec::new(),
            pull_service: None,
        };
        if topology.cluster.is_some() {
            topology.start_reno(args, needs).await?;
        }
        Ok(topology)
    }

    /// Another connection to the hub, as reno's own account.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client> {
        reno_nats::connect(&reno_endpoint(&self.hub_url, &self.secrets)?, name)
            .await
            .context("connecting to the hub")
    }

    /// Whether this run started the topology (and so its reno processes).
    pub fn is_own(&self) -> bool {
        self.cluster.is_some()
    }

    async fn start_reno(&mut self, args: &TopologyArgs, needs: Needs) -> Result<()> {
        if needs == Needs::Hub {
            return Ok(());
        }
        if !self.reno.exists() {
            bail!(
                "no reno binary at {} (build it: cargo build --release --bin reno, or pass --reno)",
                self.reno.display()
            );
        }
        let mut auth = self.reno_command(&["auth-service"]);
        auth.env("RENO_AUTH_ADMIN_ADDR", "off");
        self.processes.push(Process::spawn(auth)?);
        self.wait_for_authorization().await?;
        if needs == Needs::Authorization {
            return Ok(());
        }
        let output = self.reno_command(&["provision"]).output().context("running reno provision")?;
        if !output.status.success() {
            bail!("reno provision failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        self.processes.push(Process::spawn(self.reno_command(&["pull-service", "--admin-addr", "off"]))?);
        self.pull_service = Some(self.processes.len() - 1);
        for _ in 0..args.workers {
            self.start_worker(&args.worker_flags)?;
        }
        self.wait_for_pull_service().await?;
        for index in 0..self.workers.len() {
            let port = self.workers[index].1;
            self.wait_until("a worker is ready", || {
                matches!(probe::http_get(&format!("127.0.0.1:{port}"), "/readyz"), Some((200, _)))
            })
            .await?;
        }
        Ok(())
    }

    /// A `reno` command aimed at this topology.
    pub fn reno_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.reno);
        command
            .args(args)
            .env("RENO_CONFIG", self.secrets.join("reno.toml"))
            .env("RENO_NATS_URL", &self.hub_url)
            .env("RENO_DEVICE_CA", self.secrets.join("ca.pem"))
            .env("RENO_REGISTRY_PATH", repo_root().join("registry/events.toml"))
            .env("RENO_LOG_LEVEL", "warn")
            .envs(self.env.iter().map(|(key, value)| (key, value)));
        command
    }

    fn start_worker(&mut self, flags: &str) -> Result<()> {
        let port = free_port();
        let admin = format!("127.0.0.1:{port}");
        let mut args = vec!["worker", "--admin-addr", &admin];
        args.extend(flags.split_whitespace());
        self.processes.push(Process::spawn(self.reno_command(&args))?);
        self.workers.push((self.processes.len() - 1, port));
        Ok(())
    }

    /// Waits until a device with a valid token can connect to the edge: the authorization
    /// service answers the edge's callout.
    async fn wait_for_authorization(&self) -> Result<()> {
        let mint = crate::fleet::TokenMint::from_secrets(&self.secrets)?;
        let member = reno_model::MemberId::new("probe").expect("a member token");
        let device_type = reno_model::DeviceType::new("tv").expect("a device type");
        let device_id = reno_model::DeviceId::new("probe").expect("a device id");
        let started = Instant::now();
        loop {
            let connected = async_nats::ConnectOptions::new()
                .token(mint.mint(&member, &device_type, &device_id))
                .custom_inbox_prefix(reno_model::subject::device_inbox_prefix(
                    &member,
                    &device_type,
                    &device_id,
                ))
                .add_root_certificates(self.secrets.join("ca.pem"))
                .connection_timeout(Duration::from_secs(2))
                .connect(self.edge_url.as_str())
                .await;
            match connected {
                Ok(client) => {
                    drop(client);
                    return Ok(());
                }
                Err(error) if started.elapsed() > Duration::from_secs(30) => {
                    bail!("no device can connect to the edge: {error}; output:\n{}", self.logs())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Starts `reno gateway` on a free port, as the tests start it, and waits until it answers;
    /// returns its base URL.
    pub async fn start_gateway(&mut self) -> Result<String> {
        let port = free_port();
        let mut command = self.reno_command(&["gateway"]);
        command
            .env("RENO_GATEWAY_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("RENO_GATEWAY_ADMIN_ADDR", "off");
        self.processes.push(Process::spawn(command)?);
        let address = format!("127.0.0.1:{port}");
        self.wait_until("the gateway answers", || {
            matches!(probe::http_get(&address, "/livez"), Some((200, _)))
        })
        .await?;
        Ok(format!("http://{address}"))
    }

    async fn wait_for_pull_service(&self) -> Result<()> {
        let ping = format!("$SRV.PING.{}", reno_model::subject::PULL_SERVICE);
        let started = Instant::now();
        while self.client.request(ping.clone(), "".into()).await.is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the pull service does not answer; output:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    }

    async fn wait_until(&self, what: &str, mut condition: impl FnMut() -> bool) -> Result<()> {
        let started = Instant::now();
        while !condition() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("{what}: not within 30 s; output:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    }

    /// Waits until reno knows `devices` devices are online: every worker's presence view (own
    /// topology) or the presence bucket (a running one, then a second for the workers' views).
    pub async fn wait_for_presence(&self, devices: u64, patience: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let known = if self.workers.is_empty() {
                self.presence_entries().await.unwrap_or(0)
            } else {
                self.workers
                    .iter()
                    .map(|(_, port)| {
                        probe::http_get(&format!("127.0.0.1:{port}"), "/metrics")
                            .map(|(_, text)| probe::metric_sum(&text, "reno_presence_devices_online") as u64)
                            .unwrap_or(0)
                    })
                    .min()
                    .unwrap_or(0)
            };
            if known >= devices {
                if self.workers.is_empty() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                return Ok(());
            }
            if started.elapsed() > patience {
                bail!("reno knows {known} of {devices} devices online after {patience:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn presence_entries(&self) -> Result<u64> {
        use futures::StreamExt;
        let bucket = self.jetstream.get_key_value(reno_model::subject::PRESENCE_BUCKET).await?;
        Ok(bucket.keys().await?.count().await as u64)
    }

    /// Whether the priority streams are empty: they are work queues, so an event leaves its stream
    /// when a worker acks it, whatever consumers the workers share.
    pub async fn pipeline_idle(&self) -> Result<bool> {
        for name in ["RENO_HIGH", "RENO_NORMAL", "RENO_LOW"] {
            let mut stream = self.jetstream.get_stream(name).await?;
            if stream.info().await?.state.messages > 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Events the workers this run started have delivered so far (`reno_worker_events_total` with
    /// `outcome="delivered"`, summed); none for a running topology or when a worker cannot be read.
    pub fn workers_delivered(&self) -> Option<u64> {
        if self.workers.is_empty() {
            return None;
        }
        self.workers
            .iter()
            .map(|(_, port)| {
                probe::http_get(&format!("127.0.0.1:{port}"), "/metrics").map(|(_, text)| {
                    probe::metric_sum_with(&text, "reno_worker_events_total", "outcome=\"delivered\"") as u64
                })
            })
            .sum()
    }

    /// Waits until the priority streams are empty, at most `patience`; the moment they were, or
    /// none if they never were.
    pub async fn wait_until_idle(&self, patience: Duration) -> Option<Instant> {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if self.pipeline_idle().await.unwrap_or(false) {
                return Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The process ids of the workers this run started.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(|(index, _)| self.processes[*index].id()).collect()
    }

    /// The pull service's process id, when this run started it.
    pub fn pull_service_pid(&self) -> Option<u32> {
        self.pull_service.map(|index| self.processes[index].id())
    }

    /// The edge's monitoring `/varz` (memory, connections), if the edge's monitor is known.
    pub fn edge_varz(&self) -> Option<serde_json::Value> {
        let (status, body) = match (&self.cluster, &self.edge_monitor) {
            (Some(cluster), _) => cluster.edge(0).monitor("/varz")?,
            (None, Some(address)) => probe::http_get(address, "/varz")?,
            (None, None) => return None,
        };
        // The test kit's monitor GET hands a chunked body on as it came.
        let body = if body.trim_start().starts_with('{') {
            body
        } else {
            String::from_utf8_lossy(&probe::dechunk(body.as_bytes())).into_owned()
        };
        (status == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    /// The authorization service's process id, when this run started it (the first of reno's
    /// processes it starts).
    pub fn authorization_pid(&self) -> Option<u32> {
        self.processes.first().map(Process::id)
    }

    /// The edge's process id, when this run started it.
    pub fn edge_pid(&self) -> Option<u32> {
        self.cluster.as_ref().and_then(|cluster| cluster.edge(0).pid())
    }

    /// The hub's process id, when this run started it.
    pub fn hub_pid(&self) -> Option<u32> {
        self.cluster.as_ref().and_then(|cluster| cluster.hub(0).pid())
    }

    /// What reno's processes and the servers said, for failures.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for process in &self.processes {
            text.push_str(&process.output());
        }
        if let Some(cluster) = &self.cluster {
            text.push_str(&cluster.logs());
        }
        text
    }
}

/// The hub at `hub_url` as reno's own account, whose seed is in `secrets`.
fn reno_endpoint(hub_url: &str, secrets: &Path) -> Result<reno_nats::Endpoint> {
    Ok(reno_nats::Endpoint {
        url: hub_url.to_owned(),
        nkey_seed: Some(read_trimmed(&secrets.join("reno.nk"))?),
        ..reno_nats::Endpoint::default()
    })
}

fn read_trimmed(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_owned())
}
