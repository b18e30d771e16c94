//! A whole reno topology on one machine: hub nodes (`nats/hub.conf`, or three of
//! `nats/hub-cluster.conf`) and edges (`nats/edge.conf`, leaf nodes of the hub with TLS websockets
//! and the auth callout), with a fresh set of development secrets, on free ports.

use anyhow::{Context, Result, bail};
use reno_auth::dev_secrets::{self, DevSecrets};

use crate::server::{NatsServer, ServerSpec, free_port};

/// A running topology; every server is killed on drop.
pub struct Cluster {
    /// Keys, certificates and the development token key of this topology.
    pub secrets: DevSecrets,
    /// Holds the secrets folder; removed on drop.
    _secrets_dir: tempfile::TempDir,
    hubs: Vec<NatsServer>,
    edges: Vec<NatsServer>,
}

/// Starts of a topology whose port was taken before its server bound it, before giving up.
const PORT_RACE_ATTEMPTS: u32 = 3;
/// What nats-server logs when a port it was given is taken.
const PORT_TAKEN: &str = "address already in use";

impl Cluster {
    /// Starts `hubs` hub nodes (1, or 3 for a cluster) and `edges` edges, and waits until JetStream
    /// answers and every edge is linked to the hub.
    pub fn start(hubs: usize, edges: usize) -> Result<Self> {
        // A port picked as free can be taken by another process (tests run in parallel) before the
        // server binds it: then everything starts again on other ports, a few times.
        let mut attempt = 1;
        loop {
            match Self::start_once(hubs, edges) {
                Err(error) if attempt < PORT_RACE_ATTEMPTS && format!("{error:#}").contains(PORT_TAKEN) => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once(hubs: usize, edges: usize) -> Result<Self> {
        if hubs != 1 && hubs != 3 {
            bail!("a hub is 1 node or a cluster of 3, not {hubs}");
        }
        let secrets_dir = tempfile::Builder::new().prefix("reno-secrets-").tempdir()?;
        let secrets = dev_secrets::generate(secrets_dir.path()).context("development secrets")?;
        let base_env = secrets.nats_env().context("secrets environment")?;
        let with = |extra: Vec<(&str, String)>| {
            let mut env = base_env.clone();
            env.push(("RENO_LISTEN_HOST".into(), "127.0.0.1".into()));
            env.extend(extra.into_iter().map(|(name, value)| (name.to_owned(), value)));
            env
        };

        let leaf_ports: Vec<u16> = (0..hubs).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..hubs).map(|_| free_port()).collect();
        let routes = format!(
            "[{}]",
            cluster_ports
                .iter()
                .map(|port| format!("\"nats-route://127.0.0.1:{port}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut hub_servers = Vec::new();
        for index in 0..hubs {
            let mut env = vec![
                ("RENO_HUB_NAME", format!("hub{index}")),
                ("RENO_HUB_LEAF_PORT", leaf_ports[index].to_string()),
            ];
            let config = if hubs == 1 {
                "hub.conf"
            } else {
                env.push(("RENO_HUB_CLUSTER_PORT", cluster_ports[index].to_string()));
                env.push(("RENO_HUB_ROUTES", routes.clone()));
                "hub-cluster.conf"
            };
            hub_servers.push(NatsServer::start(ServerSpec {
                config: config.into(),
                env: with(env),
                client_port: -1,
            })?);
        }
        for hub in &hub_servers {
            hub.wait_until("the hub's JetStream is ready", |server| {
                matches!(server.monitor("/healthz"), Some((200, _)))
            })?;
        }

        let leaf_urls = format!(
            "[{}]",
            leaf_ports
                .iter()
                .map(|port| format!("\"nats-leaf://127.0.0.1:{port}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut edge_servers = Vec::new();
        for index in 0..edges {
            let env = with(vec![
                ("RENO_EDGE_NAME", format!("edge{index}")),
                ("RENO_EDGE_WS_PORT", free_port().to_string()),
                ("RENO_HUB_LEAF_URLS", leaf_urls.clone()),
            ]);
            let edge = NatsServer::start(ServerSpec { config: "edge.conf".into(), env, client_port: -1 })?;
            wait_until_linked(&edge)?;
            edge_servers.push(edge);
        }
        Ok(Cluster { secrets, _secrets_dir: secrets_dir, hubs: hub_servers, edges: edge_servers })
    }

    /// The hub's client URLs, comma-separated: where reno's processes and services connect.
    pub fn hub_url(&self) -> String {
        self.hubs.iter().map(NatsServer::client_url).collect::<Vec<_>>().join(",")
    }

    /// Where devices connect to edge `index`: `wss://127.0.0.1:<port>`.
    pub fn edge_url(&self, index: usize) -> &str {
        self.edges[index].websocket_url()
    }

    pub fn hub(&self, index: usize) -> &NatsServer {
        &self.hubs[index]
    }

    pub fn hub_mut(&mut self, index: usize) -> &mut NatsServer {
        &mut self.hubs[index]
    }

    /// The hub node a server name (`hub0`, ...) names, as JetStream reports a stream's leader.
    pub fn hub_index(&self, name: &str) -> Option<usize> {
        name.strip_prefix("hub")?.parse().ok().filter(|index| *index < self.hubs.len())
    }

    pub fn edge(&self, index: usize) -> &NatsServer {
        &self.edges[index]
    }

    /// Kills edge `index` (SIGKILL): its devices lose their connections.
    pub fn kill_edge(&mut self, index: usize) {
        self.edges[index].kill();
    }

    /// Starts a killed edge again on the same ports and waits until it is linked to the hub.
    pub fn restart_edge(&mut self, index: usize) -> Result<()> {
        self.edges[index].restart()?;
        wait_until_linked(&self.edges[index])
    }

    /// Every server's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for (kind, servers) in [("hub", &self.hubs), ("edge", &self.edges)] {
            for (index, server) in servers.iter().enumerate() {
                text.push_str(&format!("--- {kind} {index}\n{}\n", server.log()));
            }
        }
        text
    }
}

/// Waits until an edge's two leaf connections (devices, auth) are up.
fn wait_until_linked(edge: &NatsServer) -> Result<()> {
    edge.wait_until("the edge is linked to the hub", |server| {
        server
            .monitor("/leafz")
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|leafz| leafz["leafnodes"].as_u64())
            .is_some_and(|links| links >= 2)
    })
}
