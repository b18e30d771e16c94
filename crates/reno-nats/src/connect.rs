//! Connecting to NATS with the options every reno process wants: where and as whom ([`Endpoint`]: the
//! servers, an nkey seed, an inbox prefix for narrow permissions, a CA for TLS), a connection name
//! that shows up in the server's monitoring, fail-fast for one-shot commands, patience for
//! long-running services.

use std::{path::PathBuf, time::Duration};

use tracing::warn;

/// Where a process connects and as whom.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Server URLs, comma-separated.
    pub url: String,
    /// The nkey seed the process signs in with (the hub's users are nkey users).
    pub nkey_seed: Option<String>,
    /// Replies come under this prefix instead of `_INBOX` (a publisher allowed only its own).
    pub inbox_prefix: Option<String>,
    /// A CA certificate (PEM) to verify the servers' TLS certificates by.
    pub root_certificates: Option<PathBuf>,
}

impl Endpoint {
    /// An endpoint with no credentials (a server that asks for none).
    pub fn new(url: impl Into<String>) -> Self {
        Endpoint { url: url.into(), ..Endpoint::default() }
    }

    /// Connect options with this endpoint's credentials, for a connection named `name`.
    pub fn options(&self, name: &str) -> async_nats::ConnectOptions {
        let mut options =
            async_nats::ConnectOptions::new().name(name).connection_timeout(Duration::from_secs(5));
        if let Some(seed) = &self.nkey_seed {
            options = options.nkey(seed.clone());
        }
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        if let Some(certificates) = &self.root_certificates {
            options = options.add_root_certificates(certificates.clone());
        }
        options
    }
}

/// The servers of a comma-separated list of URLs.
pub fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, async_nats::ConnectError> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            url.parse::<async_nats::ServerAddr>().map_err(|error| {
                async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::ServerParse, error)
            })
        })
        .collect()
}

/// Connects once, for commands that should fail at once with a clear error when no server is
/// there. Once connected, the client reconnects by itself after any outage.
pub async fn connect(
    endpoint: &Endpoint,
    name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    endpoint.options(name).connect(server_addrs(&endpoint.url)?).await
}

/// Connects, trying again until a server answers: for services, whose start order relative to
/// nats-server should not matter.
pub async fn connect_patiently(endpoint: &Endpoint, name: &str) -> async_nats::Client {
    let mut delay = Duration::from_millis(250);
    loop {
        let connected = match server_addrs(&endpoint.url) {
            Ok(servers) => endpoint.options(name).connect(servers).await,
            Err(error) => Err(error),
        };
        match connected {
            Ok(client) => return client,
            Err(error) => {
                warn!(url = endpoint.url, %error, retry_in = ?delay, "cannot connect to NATS yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
