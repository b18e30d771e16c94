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

fn main() -> std::process::ExitCode {
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
    // A separate pull service answers each request with a read and a reply, a few tens of
    // microseconds of work between waits: on one thread it spends no CPU handing requests between
    // threads, and it scales by running more of them (decision 28); the presence tracker beside it
    // shares that thread. The worker builds a runtime per priority itself; everything else is light.
    let runtime = match cli.command {
        cli::Command::PullService(_) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("reno: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli.command, config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reno: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
