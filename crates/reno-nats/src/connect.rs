//! Connecting to NATS with the options every reno process wants.

use std::time::Duration;

/// Connects to `url` (comma-separated for several servers) under a connection name that shows up in
/// the server's monitoring, retrying the first connection so that start order does not matter.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
}
