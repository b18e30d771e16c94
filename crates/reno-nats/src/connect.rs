//! Connecting to NATS with the options every reno process wants: a connection name that shows up in
//! the server's monitoring, fail-fast for one-shot commands, patience for long-running services.

use std::time::Duration;

use tracing::warn;

fn options(name: &str) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new().name(name).connection_timeout(Duration::from_secs(5))
}

/// Connects to `url` (comma-separated for several servers) once, for commands that should fail
/// at once with a clear error when no server is there. Once connected, the client reconnects by
/// itself after any outage.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    options(name).connect(url).await
}

/// Connects to `url`, trying again until a server answers: for services, whose start order
/// relative to nats-server should not matter.
pub async fn connect_patiently(url: &str, name: &str) -> async_nats::Client {
    let mut delay = Duration::from_millis(250);
    loop {
        match options(name).connect(url).await {
            Ok(client) => return client,
            Err(error) => {
                warn!(url, %error, retry_in = ?delay, "cannot connect to NATS yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
