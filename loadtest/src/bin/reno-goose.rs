//! `reno-goose`: goose scenarios for reno's HTTP gateway. Services post events (`POST /v1/events`,
//! JSON, with the service token) and legacy devices pull their history (`GET /v1/pull`, each user
//! with its own device token, following its cursor). Goose's own options (users, run time,
//! reports) come after `--`.
//!
//! A binary of its own so that goose's HTTP client never shares a process with the device
//! connections of `reno-load`.

use std::{path::PathBuf, sync::OnceLock};

use anyhow::{Context, Result};
use clap::Parser;
use goose::{config::GooseConfiguration, prelude::*};
use gumdrop::Options;
use reno_loadtest::{fleet::TokenMint, stats::now_us};
use reno_model::{DeviceId, DeviceType, MemberId};

#[derive(Parser)]
#[command(
    name = "reno-goose",
    about = "goose load for reno's HTTP gateway",
    after_help = "Goose's options follow `--`, e.g. -- --users 16 --run-time 10s --report-file goose.json"
)]
struct Cli {
    /// The gateway's base URL (goose's host)
    #[arg(long)]
    gateway: String,
    /// The topology's secrets folder: service-token and device-token-key.jwk
    #[arg(long)]
    secrets: PathBuf,
    /// Members the events and the pulling devices are spread over
    #[arg(long, default_value_t = 1000)]
    members: u32,
    /// Scenarios to run: events, pull, or both
    #[arg(long, value_delimiter = ',', default_value = "events,pull")]
    scenarios: Vec<String>,
    /// Options for goose
    #[arg(last = true)]
    goose: Vec<String>,
}

/// What the transactions share: tokens minted once, before the load starts.
struct Shared {
    service_token: String,
    /// One device token per member (device type `tv`).
    device_tokens: Vec<String>,
    run: String,
}

static CONTEXT: OnceLock<Shared> = OnceLock::new();

fn context() -> &'static Shared {
    CONTEXT.get().expect("the context is set before the load starts")
}

/// Where one pulling device stands.
struct PullState {
    member: usize,
    cursor: u64,
    epoch: Option<String>,
    cursor_time_ms: Option<u64>,
}

fn member_of(user: &GooseUser, sequence: u64) -> usize {
    let members = context().device_tokens.len().max(1);
    ((user.weighted_users_index as u64).wrapping_mul(7919).wrapping_add(sequence) % members as u64) as usize
}

async fn post_event(user: &mut GooseUser) -> TransactionResult {
    let context = context();
    let sequence = now_us();
    let member = member_of(user, sequence);
    let body = serde_json::json!({
        "id": format!("{}-{}-{sequence}", context.run, user.weighted_users_index),
        "type": "my_list_updated",
        "member": format!("m{member}"),
        "occurred_at_ms": sequence / 1000,
        "payload": {"list": "watch-later", "title": sequence % 100_000},
        "targets": ["tv"],
    });
    let builder = user
        .get_request_builder(&GooseMethod::Post, "/v1/events")?
        .bearer_auth(&context.service_token)
        .json(&body);
    let request = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path("/v1/events")
        .name("/v1/events")
        .expect_status_code(202)
        .set_request_builder(builder)
        .build();
    user.request(request).await?;
    Ok(())
}

async fn pull(user: &mut GooseUser) -> TransactionResult {
    let context = context();
    if user.get_session_data::<PullState>().is_none() {
        let member = member_of(user, 0);
        user.set_session_data(PullState { member, cursor: 0, epoch: None, cursor_time_ms: None });
    }
    let state = user.get_session_data_unchecked::<PullState>();
    let mut path = format!("/v1/pull?cursor={}&limit=100", state.cursor);
    if let Some(epoch) = &state.epoch {
        path.push_str(&format!("&epoch={epoch}"));
    }
    if let Some(time) = state.cursor_time_ms {
        path.push_str(&format!("&cursor_time_ms={time}"));
    }
    let token = &context.device_tokens[state.member];
    let builder = user.get_request_builder(&GooseMethod::Get, &path)?.bearer_auth(token);
    let request = GooseRequest::builder()
        .method(GooseMethod::Get)
        .path(path.as_str())
        .name("/v1/pull")
        .expect_status_code(200)
        .set_request_builder(builder)
        .build();
    let goose = user.request(request).await?;
    if let Ok(response) = goose.response
        && let Ok(page) = response.json::<serde_json::Value>().await
    {
        let state = user.get_session_data_unchecked_mut::<PullState>();
        state.cursor = page["next_cursor"].as_u64().unwrap_or(state.cursor);
        state.epoch = page["epoch"].as_str().map(str::to_owned);
        state.cursor_time_ms = page["next_cursor_time_ms"].as_u64();
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let secrets = &cli.secrets;
    let service_token = std::fs::read_to_string(secrets.join("service-token"))
        .context("reading the service token")?
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mint = TokenMint::from_secrets(secrets)?;
    let tv = DeviceType::new("tv").expect("a device type");
    let device_tokens = (0..cli.members.max(1))
        .map(|index| {
            let member = MemberId::new(format!("m{index}")).expect("a member token");
            mint.mint(&member, &tv, &DeviceId::new(format!("goose{index}")).expect("a device id"))
        })
        .collect();
    let _ = CONTEXT.set(Shared { service_token, device_tokens, run: nuid::next().to_string() });

    let configuration = GooseConfiguration::parse_args_default(&cli.goose)
        .map_err(|error| anyhow::anyhow!("goose options: {error}"))?;
    let mut attack = *GooseAttack::initialize_with_config(configuration)?
        .set_default(GooseDefault::Host, cli.gateway.as_str())?
        .set_default(GooseDefault::NoTelnet, true)?
        .set_default(GooseDefault::NoWebSocket, true)?;
    if cli.scenarios.iter().any(|name| name == "events") {
        attack = attack.register_scenario(
            scenario!("services post events")
                .register_transaction(transaction!(post_event).set_name("post event")),
        );
    }
    if cli.scenarios.iter().any(|name| name == "pull") {
        attack = attack.register_scenario(
            scenario!("legacy devices pull").register_transaction(transaction!(pull).set_name("pull")),
        );
    }
    attack.execute().await?;
    Ok(())
}
