//! The `reno` binary: parses the command line, starts tracing and metrics, waits for signals, and
//! hands over to the library `run` of each part (provisioning, worker, pull service, publisher,
//! device). Nothing here decides anything about events.

#![forbid(unsafe_code)]

mod cli;
mod commands;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RENO_LOG")
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match commands::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reno: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
