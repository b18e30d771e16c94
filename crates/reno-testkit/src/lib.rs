//! Test kit: starts real nats-servers from the repository's `nats/` configs on free ports, each with
//! its own store directory, and stops them on drop. Also keeps child processes (a `reno` worker, a
//! device) tied to a test so that nothing outlives it, and relays TCP so that a test can cut a
//! client off the network and let it back.

use std::{
    collections::HashMap,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// How long a nats-server may take to report its ports before the test gives up.
const STARTUP_LIMIT: Duration = Duration::from_secs(20);

/// The repository root, where `nats/`, `registry/` and `.tools/` live.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// The pinned nats-server that `scripts/install` put into `.tools/`, or `RENO_NATS_SERVER` if set.
pub fn nats_server_binary() -> PathBuf {
    std::env::var_os("RENO_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools/nats-server"))
}

/// A running nats-server started from a config in `nats/`; killed, and its store removed, on drop.
pub struct NatsServer {
    /// The server process; killed on drop.
    child: Child,
    /// Holds the store directory and the ports file; removed on drop.
    dir: tempfile::TempDir,
    /// `nats://127.0.0.1:<port>` for services and workers.
    client_url: String,
    /// `ws://127.0.0.1:<port>` for devices.
    websocket_url: String,
}

impl NatsServer {
    /// Starts `nats/dev.conf` on free ports and waits, by polling, until it accepts connections.
    pub fn start() -> Result<Self> {
        Self::start_config("dev.conf")
    }

    /// Starts the named config from `nats/` on free ports.
    pub fn start_config(config: &str) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("reno-nats-").tempdir()?;
        let binary = nats_server_binary();
        if !binary.exists() {
            bail!("no nats-server at {}: run scripts/install first", binary.display());
        }
        let log = std::fs::File::create(dir.path().join("nats-server.log"))?;
        let child = Command::new(&binary)
            .arg("-c")
            .arg(repo_root().join("nats").join(config))
            .args(["-p", "-1", "-sd"])
            .arg(dir.path().join("store"))
            .arg("--ports_file_dir")
            .arg(dir.path())
            .env("RENO_WS_PORT", "-1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server = NatsServer { child, dir, client_url: String::new(), websocket_url: String::new() };
        server.wait_for_ports()?;
        Ok(server)
    }

    fn wait_for_ports(&mut self) -> Result<()> {
        let started = Instant::now();
        let ports_file = self.dir.path().join(format!("nats-server_{}.ports", self.child.id()));
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("nats-server exited with {status} during start-up; log:\n{}", self.log());
            }
            // The file may be half written when first seen: read it again until it parses.
            let text = std::fs::read_to_string(&ports_file).unwrap_or_default();
            if let Some(client_url) = first_loopback(&text, "nats") {
                let address = client_url.trim_start_matches("nats://").to_owned();
                if std::net::TcpStream::connect(&address).is_ok() {
                    self.client_url = client_url;
                    self.websocket_url = first_loopback(&text, "websocket").unwrap_or_default();
                    return Ok(());
                }
            }
            if started.elapsed() > STARTUP_LIMIT {
                bail!("nats-server did not come up within {STARTUP_LIMIT:?}; log:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    pub fn websocket_url(&self) -> &str {
        &self.websocket_url
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats-server.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Picks the `127.0.0.1` address of one listener kind out of nats-server's ports file (JSON).
fn first_loopback(ports_file: &str, kind: &str) -> Option<String> {
    let listeners: HashMap<String, Vec<String>> = serde_json::from_str(ports_file).ok()?;
    listeners.get(kind)?.iter().find(|address| address.contains("://127.0.0.1:")).cloned()
}

/// A child process tied to a test: killed on drop, its output kept in a log file for failures.
pub struct Process {
    /// The process; killed on drop unless it has exited.
    child: Child,
    /// Where its stdout and stderr go.
    log_path: PathBuf,
    /// Keeps the log's directory alive as long as the process.
    _dir: tempfile::TempDir,
}

impl Process {
    /// Spawns `command` with its output captured to a log file.
    pub fn spawn(mut command: Command) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("reno-proc-").tempdir()?;
        let log_path = dir.path().join("output.log");
        let log = std::fs::File::create(&log_path)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        Ok(Process { child, log_path, _dir: dir })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`KILL`, `TERM`, `STOP`, `CONT`) with the system's `kill`.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.id().to_string()).status()?;
        if !status.success() {
            bail!("kill -{signal} {} failed", self.id());
        }
        Ok(())
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay between clients and a server that a test can cut and restore: a real network
/// outage for the clients behind it (their connections drop, new ones are refused), while the
/// server and everyone else stay up.
pub struct Relay {
    /// Where clients connect instead of the server.
    address: SocketAddr,
    /// Shared with the accept thread.
    state: Arc<RelayState>,
}

struct RelayState {
    /// While set, open connections are closed and new ones are dropped at once.
    cut: AtomicBool,
    /// Both ends of every open connection, to close them on a cut.
    open: Mutex<Vec<TcpStream>>,
}

impl Relay {
    /// Relays `127.0.0.1:<free port>` to `target` (`host:port`, or a URL such as `ws://host:port`).
    pub fn start(target: &str) -> Result<Self> {
        let target = target.rsplit("://").next().unwrap_or(target).to_owned();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let state = Arc::new(RelayState { cut: AtomicBool::new(false), open: Mutex::new(Vec::new()) });
        let accepting = state.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if accepting.cut.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else { continue };
                let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                accepting
                    .open
                    .lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                thread::spawn(move || pipe(client, server_copy));
                thread::spawn(move || pipe(server, client_copy));
            }
        });
        Ok(Relay { address, state })
    }

    /// The relay's address as a URL with the given scheme (`ws`, `nats`).
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.address)
    }

    /// Drops every open connection and refuses new ones until [`Relay::restore`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for stream in self.state.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies one direction of a relayed connection until either side closes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_loopback_address_of_each_listener() {
        let text =
            r#"{"nats":["nats://[::1]:1","nats://127.0.0.1:4222"],"websocket":["ws://127.0.0.1:9222"]}"#;
        assert_eq!(first_loopback(text, "nats").as_deref(), Some("nats://127.0.0.1:4222"));
        assert_eq!(first_loopback(text, "websocket").as_deref(), Some("ws://127.0.0.1:9222"));
        assert_eq!(first_loopback(text, "leafnodes"), None);
    }
}
