//! One real nats-server started from a config in `nats/`, on free ports, with its own store
//! directory; killed (and its store removed) on drop. Readiness is found by polling its ports file
//! and its monitoring endpoints, never by sleeping.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// How long a nats-server may take to come up before the test gives up.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

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

/// A free TCP port on loopback (for listeners nats-server does not report in its ports file).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("an address").port()
}

/// How to start one server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The config file in `nats/`.
    pub config: String,
    /// The environment the config reads.
    pub env: Vec<(String, String)>,
    /// The client port (`-1`: a free one).
    pub client_port: i32,
}

/// A running nats-server; killed on drop.
pub struct NatsServer {
    /// How it was started, to start it again.
    spec: ServerSpec,
    /// The server process; `None` while stopped.
    child: Option<Child>,
    /// Holds the store directory, the ports file and the log; removed on drop.
    dir: tempfile::TempDir,
    /// `nats://127.0.0.1:<port>`.
    client_url: String,
    /// `ws://` or `wss://127.0.0.1:<port>` where the config has a websocket listener.
    websocket_url: String,
    /// `http://127.0.0.1:<port>` of its monitoring endpoints.
    monitor_url: String,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start(spec: ServerSpec) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("reno-nats-").tempdir()?;
        let mut server = NatsServer {
            spec,
            child: None,
            dir,
            client_url: String::new(),
            websocket_url: String::new(),
            monitor_url: String::new(),
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<()> {
        let binary = nats_server_binary();
        if !binary.exists() {
            bail!("no nats-server at {}: run scripts/install first", binary.display());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats-server.log"))?;
        let child = Command::new(&binary)
            .arg("-c")
            .arg(repo_root().join("nats").join(&self.spec.config))
            .args(["-p", &self.spec.client_port.to_string(), "-m", "-1", "-sd"])
            .arg(self.dir.path().join("store"))
            .arg("--ports_file_dir")
            .arg(self.dir.path())
            .envs(self.spec.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.child = Some(child);
        self.wait_for_ports()
    }

    fn wait_for_ports(&mut self) -> Result<()> {
        let started = Instant::now();
        let pid = self.child.as_ref().expect("started").id();
        let ports_file = self.dir.path().join(format!("nats-server_{pid}.ports"));
        loop {
            if let Some(status) = self.child.as_mut().expect("started").try_wait()? {
                bail!(
                    "nats-server ({}) exited with {status} during start-up; log:\n{}",
                    self.spec.config,
                    self.log()
                );
            }
            // The file may be half written when first seen: read it again until it parses.
            let text = std::fs::read_to_string(&ports_file).unwrap_or_default();
            if let (Some(client_url), Some(monitor_url)) =
                (first_loopback(&text, "nats"), first_loopback(&text, "monitoring"))
            {
                let address = client_url.trim_start_matches("nats://").to_owned();
                if std::net::TcpStream::connect(&address).is_ok() {
                    self.client_url = client_url;
                    self.monitor_url = monitor_url;
                    self.websocket_url = first_loopback(&text, "websocket").unwrap_or_default();
                    // Started again after a stop: keep the client port it had, so clients find it.
                    self.spec.client_port =
                        address.rsplit(':').next().and_then(|port| port.parse().ok()).unwrap_or(-1);
                    return Ok(());
                }
            }
            if started.elapsed() > STARTUP_LIMIT {
                bail!(
                    "nats-server ({}) did not come up within {STARTUP_LIMIT:?}; log:\n{}",
                    self.spec.config,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL), keeping its store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): to everyone else it is cut off the network, its connections
    /// still open; [`NatsServer::resume`] lets it go on (SIGCONT), as after a healed partition.
    pub fn pause(&self) -> Result<()> {
        self.signal("STOP")
    }

    /// Lets a paused server go on.
    pub fn resume(&self) -> Result<()> {
        self.signal("CONT")
    }

    /// Kills the server where it stands (SIGKILL), without waiting for it; [`NatsServer::restart`]
    /// starts it again.
    pub fn crash(&self) -> Result<()> {
        self.signal("KILL")
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let Some(pid) = self.pid() else { bail!("the server is not running") };
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed");
        }
        Ok(())
    }

    /// Starts a killed server again on the same ports with the same store.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.launch()
    }

    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    pub fn websocket_url(&self) -> &str {
        &self.websocket_url
    }

    /// GET on one of the server's monitoring endpoints (`/healthz`, `/leafz`, ...): the status and
    /// the body, or `None` while it does not answer.
    pub fn monitor(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.monitor_url.trim_start_matches("http://"), path)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats-server.log")).unwrap_or_default()
    }

    /// Waits, by polling, until `ready` holds for this server.
    pub fn wait_until(&self, what: &str, ready: impl Fn(&NatsServer) -> bool) -> Result<()> {
        let started = Instant::now();
        while !ready(self) {
            if started.elapsed() > STARTUP_LIMIT {
                bail!("{what}: not true within {STARTUP_LIMIT:?}; log:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(25));
        }
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Picks the `127.0.0.1` address of one listener kind out of nats-server's ports file (JSON).
pub(crate) fn first_loopback(ports_file: &str, kind: &str) -> Option<String> {
    let listeners: HashMap<String, Vec<String>> = serde_json::from_str(ports_file).ok()?;
    listeners.get(kind)?.iter().find(|address| address.contains("://127.0.0.1:")).cloned()
}

/// A plain HTTP GET: the status and the body.
fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_loopback_address_of_each_listener() {
        let text =
            r#"{"nats":["nats://[::1]:1","nats://127.0.0.1:4222"],"websocket":["wss://127.0.0.1:9222"]}"#;
        assert_eq!(first_loopback(text, "nats").as_deref(), Some("nats://127.0.0.1:4222"));
        assert_eq!(first_loopback(text, "websocket").as_deref(), Some("wss://127.0.0.1:9222"));
        assert_eq!(first_loopback(text, "leafnodes"), None);
    }
}
