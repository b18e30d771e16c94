//! The `reno` binary: parses the command line, starts tracing and metrics, waits for signals, and
//! hands over to the library `run` of each part (provisioning, worker, pull service, publisher,
//! device). Nothing here decides anything about events.
//!
//! May touch: whatever the subcommand run needs, through the crates it calls; itself only the
//! configuration (file, environment, flags), the admin listener (metrics, health) and signals.

#![forbid(unsafe_code)]

mod admin;
mod cli;
mod commands;
mod config;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let config = match cli.resolve(std::env::vars()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("reno: invalid configuration: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log.level))
        .with_writer(std::io::stderr);
    match config.log.format {
        config::LogFormat::Text => logs.init(),
        config::LogFormat::Json => logs.json().init(),
    }
    match commands::run(cli.command, config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reno: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
