//! The stack a test runs against: a hub and an edge from `nats/` (the test kit's `Cluster`, with
//! fresh development secrets), the topology provisioned by `reno provision`, the authorization
//! service, `reno worker` and `reno pull-service` processes, and helpers to publish, watch as a
//! device (over the edge's TLS websocket, with a token) and read the processes' metrics.

use std::{
    future::Future,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream;
use futures::TryStreamExt;
use reno_device::{Device, DeviceConfig, DeviceEvent};
use reno_model::{
    DeviceId, DeviceType, Envelope, EventId, EventType, MemberId, Notification, Position, PullPage,
    PullRequest, Value,
};
use reno_nats::Publisher;
use reno_testkit::{Cluster, Process, repo_root};

/// How long a test waits for something that should happen before calling it hung. A guard against
/// hangs, not a speed assertion: speed is measured in loadtest/, not here.
pub const PATIENCE: Duration = Duration::from_secs(45);

pub struct Stack {
    /// The hub and the edges, with their secrets.
    pub cluster: Cluster,
    /// A client of reno's own account on the hub (the `reno` user).
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    /// The registry the reno processes of this test use.
    registry: PathBuf,
    /// Holds a test's own registry file, if it has one.
    _registry_dir: Option<tempfile::TempDir>,
    /// Running `reno` processes with the admin port of each (0 for none).
    processes: Vec<(Process, u16)>,
    /// Which of the processes are workers: their presence views must see a device before a test
    /// counts on pushes reaching it.
    workers: Vec<usize>,
    /// Whether a pull service (and with it the presence tracker) runs.
    tracking_presence: bool,
    /// Devices announced so far by this stack, in all and per member.
    announced: u64,
    announced_members: std::collections::HashMap<String, u64>,
}

impl Stack {
    /// A hub and an edge provisioned with the shipped registry.
    pub async fn start() -> Stack {
        Self::start_with(None, &[]).await
    }

    /// A hub and an edge provisioned with the given registry text (or the shipped one) and extra
    /// `reno provision` flags.
    pub async fn start_with(registry: Option<&str>, provision_flags: &[&str]) -> Stack {
        Self::start_on(Cluster::start(1, 1).expect("hub and edge start"), registry, provision_flags).await
    }

    /// The stack on a topology of the test's own (several edges, a hub cluster): provisioned, with
    /// the authorization service running.
    pub async fn start_on(cluster: Cluster, registry: Option<&str>, provision_flags: &[&str]) -> Stack {
        std::fs::write(cluster.secrets.path("reno.toml"), cluster.secrets.reno_config()).unwrap();
        let client = reno_nats::connect(&Self::reno_endpoint(&cluster), "reno-test")
            .await
            .expect("connect to the hub");
        let jetstream = jetstream::new(client.clone());
        let (registry_path, registry_dir) = match registry {
            None => (repo_root().join("registry/events.toml"), None),
            Some(text) => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("events.toml");
                std::fs::write(&path, text).unwrap();
                (path, Some(dir))
            }
        };
        let mut stack = Stack {
            cluster,
            client,
            jetstream,
            registry: registry_path,
            _registry_dir: registry_dir,
            processes: vec![],
            workers: vec![],
            tracking_presence: false,
            announced: 0,
            announced_members: Default::default(),
        };
        stack.provision(provision_flags);
        let admin = free_port();
        let mut auth = stack.reno(&["auth-service"]);
        auth.env("RENO_AUTH_ADMIN_ADDR", format!("127.0.0.1:{admin}"));
        stack.processes.push((Process::spawn(auth).expect("start the authorization service"), admin));
        // Devices are refused until the callout is answered: wait for its subscription.
        let auth = stack.processes.len() - 1;
        eventually("the authorization service answers callouts", || {
            std::future::ready(stack.process(auth).output().contains("authorization service started"))
        })
        .await;
        stack
    }

    /// The hub as reno's own processes reach it.
    fn reno_endpoint(cluster: &Cluster) -> reno_nats::Endpoint {
        reno_nats::Endpoint {
            url: cluster.hub_url(),
            nkey_seed: Some(cluster.secrets.seed("reno.nk").unwrap()),
            ..reno_nats::Endpoint::default()
        }
    }

    /// A `reno` command aimed at this stack's server and registry.
    pub fn reno(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_reno"));
        command
            .args(args)
            .env("RENO_CONFIG", self.cluster.secrets.path("reno.toml"))
            .env("RENO_NATS_URL", self.cluster.hub_url())
            .env("RENO_WEBSOCKET_URL", self.cluster.edge_url(0))
            .env("RENO_DEVICE_CA", self.cluster.secrets.path("ca.pem"))
            .env("RENO_REGISTRY_PATH", &self.registry)
            .env("RENO_LOG_LEVEL", "info,reno_worker=debug");
        command
    }

    /// Runs `reno provision` (again) with this stack's registry.
    pub fn provision(&self, flags: &[&str]) {
        let mut args = vec!["provision"];
        args.extend_from_slice(flags);
        let output = self.reno(&args).output().expect("run reno provision");
        assert!(
            output.status.success(),
            "reno provision failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Replaces the registry file the next reno processes and provisioning read.
    pub fn rewrite_registry(&self, text: &str) {
        assert!(self._registry_dir.is_some(), "only a test's own registry can be rewritten");
        std::fs::write(&self.registry, text).unwrap();
    }

    /// Starts `reno worker` with extra flags; returns its index for [`Stack::counter`] and signals.
    pub fn start_worker(&mut self, flags: &[&str]) -> usize {
        self.start_worker_with_env(flags, &[])
    }

    /// [`Stack::start_worker`] with extra environment variables for the process.
    pub fn start_worker_with_env(&mut self, flags: &[&str], env: &[(&str, &str)]) -> usize {
        let port = free_port();
        let metrics = format!("127.0.0.1:{port}");
        let mut args = vec!["worker", "--admin-addr", &metrics];
        args.extend_from_slice(flags);
        let mut command = self.reno(&args);
        command.envs(env.iter().copied());
        let process = Process::spawn(command).expect("start reno worker");
        self.processes.push((process, port));
        self.workers.push(self.processes.len() - 1);
        self.processes.len() - 1
    }

    /// Waits until `workers` pull requests wait on every partition consumer of a priority stream:
    /// the workers are up (and have read their registry).
    pub async fn wait_until_pulling(&self, priority_stream: &str, workers: usize) {
        let what = format!("{workers} workers pulling from every partition of {priority_stream}");
        eventually(&what, || async {
            let infos = self.partition_infos(priority_stream).await;
            !infos.is_empty() && infos.iter().all(|info| info.num_waiting >= workers)
        })
        .await;
    }

    /// The infos of a priority stream's partition consumers.
    pub async fn partition_infos(&self, priority_stream: &str) -> Vec<jetstream::consumer::Info> {
        let stream = self.jetstream.get_stream_no_info(priority_stream).await.unwrap();
        let infos: Vec<jetstream::consumer::Info> = stream.consumers().try_collect().await.unwrap();
        infos
            .into_iter()
            .filter(|info| info.name.starts_with(reno_model::subject::WORKER_CONSUMER_PREFIX))
            .collect()
    }

    /// Starts `reno pull-service` and waits until it answers the NATS service API's ping.
    pub async fn start_pull_service(&mut self) -> usize {
        let port = free_port();
        let metrics = format!("127.0.0.1:{port}");
        let process = Process::spawn(self.reno(&["pull-service", "--admin-addr", &metrics]))
            .expect("start reno pull-service");
        self.processes.push((process, port));
        self.wait_for_pull_service().await;
        self.tracking_presence = true;
        self.processes.len() - 1
    }

    /// Starts `reno gateway` on a free port and waits until it answers; returns its port.
    pub async fn start_gateway(&mut self) -> u16 {
        let port = free_port();
        let mut command = self.reno(&["gateway"]);
        command
            .env("RENO_GATEWAY_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("RENO_GATEWAY_ADMIN_ADDR", "off")
            .env("RENO_GATEWAY_WEB_DIR", repo_root().join("web/device/dist"));
        let process = Process::spawn(command).expect("start reno gateway");
        self.processes.push((process, 0));
        eventually("the gateway answers", || {
            std::future::ready(http_get(port, "/livez").is_some_and(|(status, _)| status == 200))
        })
        .await;
        port
    }

    /// The service token the gateway accepts.
    pub fn service_token(&self) -> String {
        std::fs::read_to_string(self.cluster.secrets.path("service-token")).unwrap().trim().to_owned()
    }

    /// Waits until a pull service answers the NATS service API's ping.
    pub async fn wait_for_pull_service(&self) {
        let ping = format!("$SRV.PING.{}", reno_model::subject::PULL_SERVICE);
        let started = Instant::now();
        while self.client.request(ping.clone(), "".into()).await.is_err() {
            assert!(
                started.elapsed() < PATIENCE,
                "the pull service does not answer; output:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// How many messages a stream has ever stored (its last sequence).
    pub async fn ever_stored(&self, stream: &str) -> u64 {
        let mut stream = self.jetstream.get_stream(stream).await.unwrap();
        stream.info().await.unwrap().state.last_sequence
    }

    /// Messages a stream holds.
    pub async fn stored(&self, stream: &str) -> u64 {
        let mut stream = self.jetstream.get_stream(stream).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// Starts the pull service and a worker for every priority.
    pub async fn start_all(&mut self) -> usize {
        self.start_pull_service().await;
        self.start_worker(&[])
    }

    pub fn process(&self, index: usize) -> &Process {
        &self.processes[index].0
    }

    pub fn process_mut(&mut self, index: usize) -> &mut Process {
        &mut self.processes[index].0
    }

    /// The admin port of a started process.
    pub fn admin_port(&self, index: usize) -> u16 {
        self.processes[index].1
    }

    /// One counter of a worker's metrics (0 while it has not been counted yet).
    pub async fn counter(&self, worker: usize, name: &str, labels: &[(&str, &str)]) -> u64 {
        let port = self.processes[worker].1;
        let text = tokio::task::spawn_blocking(move || scrape(port)).await.unwrap();
        sum_counter(&text, name, labels)
    }

    /// The first sample of a gauge of a process's metrics whose labels include all of `labels`.
    pub async fn gauge(&self, process: usize, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let port = self.processes[process].1;
        let text = tokio::task::spawn_blocking(move || scrape(port)).await.unwrap();
        let labels: Vec<String> = labels.iter().map(|(key, value)| format!("{key}=\"{value}\"")).collect();
        text.lines()
            .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
            .find(|line| labels.iter().all(|label| line.contains(label.as_str())))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }

    /// Waits until a worker's counter reaches `at_least`.
    pub async fn wait_for_counter(&self, worker: usize, name: &str, labels: &[(&str, &str)], at_least: u64) {
        let started = Instant::now();
        while self.counter(worker, name, labels).await < at_least {
            assert!(
                started.elapsed() < PATIENCE,
                "{name}{labels:?} did not reach {at_least} in {PATIENCE:?}; output:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.client.clone())
    }

    /// A device over the server's websocket listener, caught up from `cursor`.
    pub async fn device(&mut self, member: &str, device_type: &str, cursor: u64) -> Device {
        self.device_at(member, device_type, Position { cursor, ..Position::default() }).await
    }

    /// A device over the server's websocket listener, caught up from a saved position. It announces
    /// itself; with a pull service running, this waits until every running worker knows it is
    /// online, so that what is published next is pushed to it.
    pub async fn device_at(&mut self, member: &str, device_type: &str, position: Position) -> Device {
        let mut config = self.device_config(self.cluster.edge_url(0), member, device_type);
        config.position = position;
        let device = within("device connects", Device::connect(config)).await.expect("device connects");
        self.known_online(member).await;
        device
    }

    /// How a device of `member` connects to an edge at `url`: with a fresh device id, a token for
    /// it signed by the topology's development key, and the development CA.
    pub fn device_config(&self, url: &str, member: &str, device_type: &str) -> DeviceConfig {
        let device_id = DeviceId::new(nuid::next().to_string()).unwrap();
        let mut config = DeviceConfig::new(url, member_id(member), device(device_type));
        config.token = Some(self.token(member, device_type, device_id.as_str(), 3600));
        config.device_id = Some(device_id);
        config.root_certificates = Some(self.cluster.secrets.path("ca.pem"));
        config
    }

    /// A plain NATS client connected to an edge at `url` as a device would connect: with `token`,
    /// the device's own inbox prefix and the development CA.
    pub async fn device_client(
        &self,
        url: &str,
        (member, device_type, device_id): (&str, &str, &str),
        token: Option<String>,
    ) -> Result<async_nats::Client, async_nats::ConnectError> {
        let prefix = reno_model::subject::device_inbox_prefix(
            &member_id(member),
            &device(device_type),
            &DeviceId::new(device_id).unwrap(),
        );
        let mut options = async_nats::ConnectOptions::new()
            .custom_inbox_prefix(prefix)
            .add_root_certificates(self.cluster.secrets.path("ca.pem"))
            .connection_timeout(Duration::from_secs(5));
        if let Some(token) = token {
            options = options.token(token);
        }
        options.connect(url).await
    }

    /// A device token for the topology, signed by its development key, valid for `ttl_secs` (expired
    /// that long ago if negative).
    pub fn token(&self, member: &str, device_type: &str, device_id: &str, ttl_secs: i64) -> String {
        let text = std::fs::read_to_string(self.cluster.secrets.path("device-token-key.jwk")).unwrap();
        let key = reno_auth::DevSigningKey::from_jwk(&text).unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let identity = reno_auth::DeviceIdentity {
            member: member_id(member),
            device_type: device(device_type),
            device_id: DeviceId::new(device_id).unwrap(),
            expires_at: now.saturating_add_signed(ttl_secs),
        };
        key.mint(&identity, "reno", now)
    }

    /// Announces a device of `member` online as a device would (for a test's own subscriber on
    /// the push subject), and waits until every running worker knows it.
    pub async fn announce(&mut self, member: &str, device_type: &str) {
        assert!(self.tracking_presence, "presence needs a pull service (it runs the tracker)");
        let id = DeviceId::new(nuid::next().to_string()).unwrap();
        let subject = reno_model::subject::presence_subject(&member_id(member), &device(device_type), &id);
        let online = reno_model::presence::Announcement { status: reno_model::presence::Status::Online };
        self.client.publish(subject, online.encode().into()).await.unwrap();
        self.known_online(member).await;
    }

    /// Counts one more device of `member` that announced itself, waits until the tracker has it in
    /// the presence bucket, then until every running worker's presence view has seen as many
    /// devices.
    pub async fn known_online(&mut self, member: &str) {
        if !self.tracking_presence {
            return;
        }
        self.announced += 1;
        let member_devices = self.announced_to(member) + 1;
        *self.announced_members.entry(member.to_owned()).or_default() += 1;
        let jetstream = self.jetstream.clone();
        eventually("the tracker has the device", || async {
            let online =
                reno_presence::online_devices(&jetstream, &member_id(member)).await.unwrap_or_default();
            online.len() as u64 >= member_devices
        })
        .await;
        for worker in self.workers.clone() {
            let port = self.processes[worker].1;
            if http_get(port, "/livez").is_some() {
                self.wait_for_counter(worker, "reno_presence_devices_online", &[], self.announced).await;
            }
        }
    }

    fn announced_to(&self, member: &str) -> u64 {
        self.announced_members.get(member).copied().unwrap_or_default()
    }

    /// One page of history by a raw request on the pull subject, as any NATS client would send it.
    pub async fn pull_page(&self, member: &str, device_type: &str, cursor: u64, limit: u32) -> PullPage {
        self.pull_page_in(member, device_type, cursor, None, limit).await
    }

    /// [`Stack::pull_page`] with the history epoch the cursor came from.
    pub async fn pull_page_in(
        &self,
        member: &str,
        device_type: &str,
        cursor: u64,
        epoch: Option<u64>,
        limit: u32,
    ) -> PullPage {
        self.pull(
            member,
            device_type,
            PullRequest { cursor, limit: Some(limit), epoch, cursor_time_ms: None },
        )
        .await
    }

    /// Sends one pull request and reads the page.
    pub async fn pull(&self, member: &str, device_type: &str, request: PullRequest) -> PullPage {
        let subject = reno_model::subject::pull_subject(&member_id(member), &device(device_type));
        let response = within("pull answer", self.client.request(subject, request.encode().into()))
            .await
            .expect("pull service answers");
        PullPage::decode(&response.payload).expect("a pull page")
    }

    /// Everything a worker and the server said, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for (index, (process, _)) in self.processes.iter().enumerate() {
            text.push_str(&format!("--- process {index}\n"));
            text.push_str(&process.output());
        }
        text.push_str(&self.cluster.logs());
        text
    }
}

/// An event of `event_type` for `member` with a fresh id.
pub fn event(event_type: &str, member: &str, payload: Value) -> Envelope {
    Envelope {
        id: EventId::new(nuid::next().to_string()).unwrap(),
        event_type: EventType::new(event_type).unwrap(),
        member: member_id(member),
        occurred_at_ms: SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64,
        payload,
        targets: None,
        collapse_key: None,
    }
}

pub fn member_id(member: &str) -> MemberId {
    MemberId::new(member).unwrap()
}

pub fn device(device_type: &str) -> DeviceType {
    DeviceType::new(device_type).unwrap()
}

pub fn text(value: &str) -> Value {
    Value::Text(value.to_owned())
}

/// The next notification a device hands out (a resync signal fails the test).
pub async fn next_notification(device: &mut Device) -> Notification {
    match within("next notification", device.next()).await.expect("device stream") {
        DeviceEvent::Notification(notification) => notification,
        DeviceEvent::Resync => panic!("unexpected resync"),
    }
}

/// Runs `future` or fails the test if it hangs.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: nothing after {PATIENCE:?}"),
    }
}

/// Polls `condition` until it holds, or fails the test if it never does.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < PATIENCE, "{what}: still not true after {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub use reno_testkit::free_port;

/// GET /metrics over a plain TCP connection; empty while the admin listener is not up yet.
fn scrape(port: u16) -> String {
    http_get(port, "/metrics").map(|(_, body)| body).unwrap_or_default()
}

/// A plain HTTP GET on loopback: the status and the body, or `None` while nothing listens.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http(port, "GET", path, &[], b"")
        .map(|(status, body)| (status, String::from_utf8_lossy(&body).into_owned()))
}

/// A plain HTTP/1.1 request on loopback: the status and the body (de-chunked), or `None` while
/// nothing listens.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(request.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let mut content = response[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        content = dechunk(&content);
    }
    Some((status, content))
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut chunked: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(end) = chunked.windows(2).position(|window| window == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&chunked[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        body.extend_from_slice(&chunked[end + 2..end + 2 + size]);
        chunked = &chunked[end + 2 + size + 2..];
    }
    body
}

/// Sums the samples of a Prometheus counter whose labels include all of `labels`.
fn sum_counter(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| labels.iter().all(|(key, value)| line.contains(&format!("{key}=\"{value}\""))))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}
