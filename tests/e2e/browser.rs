//! The browser device in a real headless Chromium (Debian's, driven by `web/device/test/drive.mjs`):
//! the page served by the gateway connects to the edge over `wss://` with a device token, shows
//! events as they are published, shows when it is offline, and after its network comes back shows
//! what it missed, nothing twice and nothing missing.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use reno_model::{CollapseKey, Value};
use serde_json::Value as Json;

use crate::support::*;

/// The Chromium driver, one JSON answer per command line.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    answers: BufReader<ChildStdout>,
}

impl Browser {
    fn start(trust: &std::path::Path) -> Browser {
        let driver = reno_testkit::repo_root().join("web/device/test/drive.mjs");
        let mut child = Command::new("node")
            .arg(driver)
            .arg("--trust-cert")
            .arg(trust)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs the browser driver (scripts/install sets up web/device)");
        let stdin = child.stdin.take().unwrap();
        let answers = BufReader::new(child.stdout.take().unwrap());
        Browser { child, stdin, answers }
    }

    /// Sends one command and reads its answer (blocking: called from a blocking task).
    fn command(&mut self, line: &str) -> Json {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut answer = String::new();
        self.answers.read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap_or_else(|_| panic!("the driver answered {answer:?} to {line:?}"))
    }

    fn expect(&mut self, line: &str) -> Json {
        let answer = self.command(line);
        assert_eq!(answer["ok"], true, "{line}: {answer}");
        answer["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a driver command off the async runtime.
async fn drive(browser: &mut Option<Browser>, line: String) -> Json {
    let mut taken = browser.take().unwrap();
    let (taken, value) = tokio::task::spawn_blocking(move || {
        let value = taken.expect(&line);
        (taken, value)
    })
    .await
    .unwrap();
    *browser = Some(taken);
    value
}

#[tokio::test]
async fn the_browser_device_shows_events_live_and_recovers_what_it_missed_offline() {
    let mut stack = Stack::start().await;
    stack.start_all().await;
    let gateway = stack.start_gateway().await;
    let token = stack.token("kai", "browser", "chromium-1", 3600);
    let url = format!(
        "http://127.0.0.1:{gateway}/?server={}&member=kai&device_type=browser&device_id=chromium-1&token={token}",
        stack.cluster.edge_url(0)
    );
    let mut browser = Some(Browser::start(&stack.cluster.secrets.path("server-chain.pem")));
    drive(&mut browser, format!("open {url}")).await;
    drive(&mut browser, "wait-status online 30000".into()).await;
    stack.known_online("kai").await;

    // Live: each event appears as it is published.
    let mut published = Vec::new();
    for index in 0..3u32 {
        let update = event("my_list_updated", "kai", Value::Integer(index.into()));
        stack.publisher().publish(&update).await.unwrap();
        published.push(update.id.to_string());
        let shown = drive(&mut browser, format!("wait-seqs {} 20000", index + 1)).await;
        assert_eq!(shown.as_array().unwrap().last().unwrap()["id"], update.id.as_str(), "shown live");
    }

    // Offline: the page says so, and what is published meanwhile does not arrive.
    drive(&mut browser, "offline".into()).await;
    drive(&mut browser, "wait-status offline 30000".into()).await;
    for index in 3..6u32 {
        let update = event("my_list_updated", "kai", Value::Integer(index.into()));
        stack.publisher().publish(&update).await.unwrap();
        published.push(update.id.to_string());
    }
    let mut plans = Vec::new();
    for plan in ["basic", "premium"] {
        let mut update = event("plan_changed", "kai", text(plan));
        update.collapse_key = Some(CollapseKey::new("plan").unwrap());
        stack.publisher().publish(&update).await.unwrap();
        plans.push(update.id.to_string());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let while_offline = drive(&mut browser, "state".into()).await;
    assert_eq!(while_offline["notifications"].as_array().unwrap().len(), 3, "nothing arrives while offline");

    // Back online: everything missed, once; of the collapsed plan only the latest state.
    drive(&mut browser, "online".into()).await;
    let shown = drive(&mut browser, "wait-seqs 7 30000".into()).await;
    let ids: Vec<String> =
        shown.as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_owned()).collect();
    let seqs: BTreeSet<u64> = shown.as_array().unwrap().iter().map(|n| n["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs.len(), ids.len(), "nothing shown twice: {ids:?}");
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "nothing shown twice: {ids:?}");
    for id in &published {
        assert!(ids.contains(id), "{id} is missing from {ids:?}");
    }
    assert!(ids.contains(&plans[1]), "the latest plan is shown");
    assert!(!ids.contains(&plans[0]), "the replaced plan is not pulled: {ids:?}");
    let state = drive(&mut browser, "state".into()).await;
    assert_eq!(state["resyncs"], 0);
    assert!(state["statusLog"].as_array().unwrap().iter().any(|status| status == "offline"));
}
