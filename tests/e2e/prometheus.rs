//! The checked-in dashboard (`deploy/grafana/reno.json`) and alert rules
//! (`deploy/prometheus/alerts.yml`) against a real Prometheus scraping a real reno stack: promtool
//! accepts the rules and the example `deploy/prometheus/prometheus.yml`, Prometheus loads and
//! evaluates the rules, and once a little of everything has happened every dashboard query, every
//! dashboard variable and every alert's watched series returns data.
//!
//! The rules of the check:
//! - a dashboard query is evaluated with its variables set to "All" (`$priority`, `$type` → `.*`)
//!   and `$__rate_interval` → `1m`; it must return at least one series;
//! - a query of a metric that is not reno's own (`gnatsd_*`, from prometheus-nats-exporter, which
//!   this test does not run) must be accepted by Prometheus but may be empty;
//! - a dashboard variable `label_values(SELECTOR, LABEL)` must find at least one value;
//! - an alert is `QUERY OP NUMBER` (or a query alone). `QUERY OP NUMBER` is a condition, rightly
//!   empty while nothing is wrong, so its comparison is stripped and `QUERY`, the series the alert
//!   watches, must return data; the whole expression must still be accepted.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use reno_model::subject;
use reno_testkit::{Process, repo_root};
use serde_json::Value as Json;

use crate::support::*;

const REGISTRY: &str = r#"
device_types = ["mobile", "tv", "browser"]

[types.plan_changed]
priority = "high"
stale_after_secs = 3600
collapse = true

[types.my_list_updated]
priority = "normal"
stale_after_secs = 600

[types.fleeting]
priority = "normal"
stale_after_secs = 1

[types.recommendations_refreshed]
priority = "low"
stale_after_secs = 900
collapse = true
"#;

#[tokio::test]
async fn every_dashboard_query_and_alert_has_data_in_a_real_prometheus() {
    let alerts = repo_root().join("deploy/prometheus/alerts.yml");
    promtool_check("rules", &alerts);
    // The example scrape configuration, and the rules it loads.
    promtool_check("config", &repo_root().join("deploy/prometheus/prometheus.yml"));

    let mut stack = Stack::start_with(Some(REGISTRY), &[]).await;
    // Stale: staleness is judged by the server's receive time, so the event must wait out its
    // threshold (1 s) before a worker sees it.
    stack.publisher().publish(&event("fleeting", "olga", text("too late"))).await.unwrap();
    let stale_since = Instant::now();
    let pull = stack.start_pull_service().await;
    let (_gateway_process, gateway, gateway_admin) = start_gateway_with_admin(&stack).await;
    // Retried: a history the worker cannot read is never overwritten; with two deliveries allowed,
    // the event is retried once, then dead-lettered.
    let unreadable = b"\xa1\x63new\x01".to_vec();
    let oscar = subject::history_subject(&member_id("oscar"));
    stack.jetstream.publish(oscar, unreadable.into()).await.unwrap().await.unwrap();
    let mut unreadable_event = event("recommendations_refreshed", "oscar", text("for you"));
    unreadable_event.targets = Some(vec![device("tv")]);
    stack.publisher().publish(&unreadable_event).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(stale_since.elapsed())).await;

    let worker = stack.start_worker(&["--max-deliveries", "2"]);
    let mut tv = stack.device("olga", "tv", 0).await;
    let expired = stack.token("olga", "tv", "intruder", -120);
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        stack.device_client(stack.cluster.edge_url(0), ("olga", "tv", "intruder"), Some(expired)),
    )
    .await;
    assert!(!matches!(refused, Ok(Ok(_))), "a device with an expired token is refused");

    // Delivered, per priority: the high one to every device type (pushed to the tv, skipped for
    // the others, which are offline).
    stack.publisher().publish(&event("plan_changed", "olga", text("premium"))).await.unwrap();
    stack.publisher().publish(&event("my_list_updated", "olga", text("t1"))).await.unwrap();
    next_notification(&mut tv).await;
    next_notification(&mut tv).await;
    // Dead-lettered: not an envelope.
    let junk = stack.jetstream.publish("reno.evt.my_list_updated.olga", b"\xff not cbor".to_vec().into());
    junk.await.unwrap().await.unwrap();
    // Through the gateway: one event, one request without a token.
    let body = serde_json::json!({
        "id": "via-http", "type": "my_list_updated", "member": "olga", "occurred_at_ms": 1, "payload": {}
    });
    let bearer = format!("Bearer {}", stack.service_token());
    let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let posted = http(gateway, "POST", "/v1/events", &headers, body.to_string().as_bytes()).unwrap();
    assert_eq!(posted.0, 202, "{}", String::from_utf8_lossy(&posted.1));
    assert_eq!(http(gateway, "POST", "/v1/events", &[], b"{}").unwrap().0, 401);
    stack.pull_page("olga", "tv", 0, 10).await;

    for (outcome, count) in [("delivered", 3), ("stale", 1), ("retried", 1), ("dead_lettered", 2)] {
        stack.wait_for_counter(worker, "reno_worker_events_total", &[("outcome", outcome)], count).await;
    }

    // The authorization service is the stack's first process.
    let auth = 0;
    let targets = [
        ("reno-worker", stack.admin_port(worker)),
        ("reno-pull", stack.admin_port(pull)),
        ("reno-auth", stack.admin_port(auth)),
        ("reno-gateway", gateway_admin),
    ];
    let prometheus = Prometheus::start(&targets, &alerts);
    prometheus.wait_for_scrapes(targets.len()).await;
    let started = Instant::now();

    let dashboard: Json =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("deploy/grafana/reno.json")).unwrap())
            .unwrap();
    let (mut with_data, mut external) = (0, 0);
    for expr in dashboard_queries(&dashboard) {
        let query = expand(&expr);
        if query.contains("gnatsd_") {
            prometheus.query(&query);
            external += 1;
        } else {
            assert!(!prometheus.query(&query).is_empty(), "dashboard query has no data: {query}");
            with_data += 1;
        }
    }
    let variables = dashboard_variables(&dashboard);
    for (selector, label) in &variables {
        let query = format!("count by ({label}) ({})", expand(selector));
        assert!(!prometheus.query(&query).is_empty(), "dashboard variable has no values: {query}");
    }
    let rules = prometheus.evaluated_rules().await;
    for (name, expr) in &rules {
        prometheus.query(expr);
        let watched = watched_series(expr);
        assert!(!prometheus.query(watched).is_empty(), "alert {name} watches no series: {watched}");
    }
    println!(
        "checked {with_data} dashboard queries with data, {external} of the nats exporter for syntax, {} \
         dashboard variables and {} alert expressions in {:?}",
        variables.len(),
        rules.len(),
        started.elapsed()
    );
    assert!(with_data >= 20 && rules.len() >= 15, "the dashboard and the rules were read");
}

/// `promtool check WHAT FILE` must pass.
fn promtool_check(what: &str, file: &Path) {
    let output = Command::new("promtool").args(["check", what]).arg(file).output();
    let output = output.expect("promtool runs (scripts/install installs Debian's prometheus package)");
    let printed =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool check {what} {}: {printed}", file.display());
}

/// `reno gateway` with its admin listener on: (process, HTTP port, admin port).
async fn start_gateway_with_admin(stack: &Stack) -> (Process, u16, u16) {
    let (port, admin) = (free_port(), free_port());
    let mut command = stack.reno(&["gateway"]);
    command
        .env("RENO_GATEWAY_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("RENO_GATEWAY_ADMIN_ADDR", format!("127.0.0.1:{admin}"))
        .env("RENO_GATEWAY_WEB_DIR", repo_root().join("web/device/dist"));
    let process = Process::spawn(command).expect("start reno gateway");
    eventually("the gateway answers", || {
        std::future::ready(http_get(port, "/livez").is_some_and(|(status, _)| status == 200))
    })
    .await;
    (process, port, admin)
}

/// Every `expr` of every panel's targets, rows' nested panels included.
fn dashboard_queries(dashboard: &Json) -> Vec<String> {
    fn walk(panels: &Json, queries: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                queries.push(target["expr"].as_str().expect("every target has an expr").to_owned());
            }
            walk(&panel["panels"], queries);
        }
    }
    let mut queries = Vec::new();
    walk(&dashboard["panels"], &mut queries);
    queries
}

/// The `label_values(SELECTOR, LABEL)` of every query variable, as (selector, label).
fn dashboard_variables(dashboard: &Json) -> Vec<(String, String)> {
    let variables = dashboard["templating"]["list"].as_array().expect("templating variables");
    variables
        .iter()
        .filter(|variable| variable["type"] == "query")
        .map(|variable| {
            let query = variable["query"]["query"].as_str().or(variable["query"].as_str()).unwrap();
            let inner = query.strip_prefix("label_values(").and_then(|rest| rest.strip_suffix(')'));
            let (selector, label) = inner.and_then(|inner| inner.rsplit_once(',')).expect(query);
            (selector.trim().to_owned(), label.trim().to_owned())
        })
        .collect()
}

/// A dashboard query with its variables set to "All" and Grafana's rate interval to a minute.
fn expand(query: &str) -> String {
    let expanded = query.replace("$priority", ".*").replace("$type", ".*").replace("$__rate_interval", "1m");
    assert!(!expanded.contains('$'), "a variable the test does not know: {expanded}");
    expanded
}

/// The series an alert watches: `QUERY` of `QUERY OP NUMBER` (`OP` a comparison at the top level,
/// outside any brackets and strings), or the whole expression if it compares nothing.
fn watched_series(expr: &str) -> &str {
    let (mut depth, mut quote, mut last) = (0i32, None, None);
    let bytes = expr.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        match (quote, byte) {
            (Some(open), _) if byte == open => quote = None,
            (Some(_), b'\\') => index += 1,
            (Some(_), _) => {}
            (None, b'"' | b'\'' | b'`') => quote = Some(byte),
            (None, b'(' | b'[' | b'{') => depth += 1,
            (None, b')' | b']' | b'}') => depth -= 1,
            (None, b'>' | b'<' | b'=' | b'!') if depth == 0 => {
                let width = if bytes.get(index + 1) == Some(&b'=') { 2 } else { 1 };
                last = Some((index, index + width));
                index += width - 1;
            }
            _ => {}
        }
        index += 1;
    }
    let Some((start, end)) = last else { return expr.trim() };
    let threshold = expr[end..].trim().trim_start_matches("bool").trim();
    assert!(threshold.parse::<f64>().is_ok(), "an alert is QUERY OP NUMBER: {expr}");
    expr[..start].trim()
}

/// A Prometheus of the test's own, on a free port, scraping `targets` every second and evaluating
/// the alert rules every second.
struct Prometheus {
    port: u16,
    process: Process,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[(&str, u16)], rules: &Path) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
        config.push_str(&format!("rule_files:\n  - \"{}\"\nscrape_configs:\n", rules.display()));
        for (job, port) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let mut command = Command::new("prometheus");
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let process = Process::spawn(command).expect("start prometheus (scripts/install installs it)");
        Prometheus { port, process, _dir: dir }
    }

    /// `GET /api/v1/PATH`'s `data`, once Prometheus answers with success.
    fn api(&self, path: &str) -> Option<Json> {
        let (status, body) = http_get(self.port, &format!("/api/v1/{path}"))?;
        let answer: Json = serde_json::from_str(&body).ok()?;
        assert!(
            status == 200 && answer["status"] == "success",
            "prometheus answered {status} to {path}: {body}\n{}",
            self.process.output()
        );
        Some(answer["data"].clone())
    }

    /// An instant query's result (a vector's series, or a scalar), which Prometheus must accept.
    fn query(&self, query: &str) -> Vec<Json> {
        let data = self.api(&format!("query?query={}", encode(query))).expect("prometheus answers");
        match &data["result"] {
            Json::Array(series) => series.clone(),
            scalar => vec![scalar.clone()],
        }
    }

    fn query_number(&self, query: &str) -> f64 {
        let series = self.api(&format!("query?query={}", encode(query)));
        let value = series.as_ref().and_then(|data| data["result"][0]["value"][1].as_str());
        value.and_then(|value| value.parse().ok()).unwrap_or(0.0)
    }

    /// Waits until every one of `targets` jobs was scraped successfully three times, so that
    /// rates over a minute have points to work with.
    async fn wait_for_scrapes(&self, targets: usize) {
        eventually("prometheus has scraped every target three times", || {
            let up = self.query_number(r#"count(up{job=~"reno-.*"} == 1)"#);
            let scrapes = self.query_number(r#"min(count_over_time(up{job=~"reno-.*"}[1m]))"#);
            std::future::ready(up as usize == targets && scrapes >= 3.0)
        })
        .await;
    }

    /// (name, expression) of every alerting rule, once each has been evaluated without an error.
    async fn evaluated_rules(&self) -> Vec<(String, String)> {
        let mut rules = Vec::new();
        eventually("prometheus has evaluated every rule", || {
            let groups = self.api("rules").map(|data| data["groups"].clone()).unwrap_or_default();
            let all: Vec<&Json> = groups
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|group| group["rules"].as_array().into_iter().flatten())
                .collect();
            for rule in &all {
                assert_ne!(rule["health"], "err", "rule {} fails: {}", rule["name"], rule["lastError"]);
            }
            let evaluated = !all.is_empty() && all.iter().all(|rule| rule["health"] == "ok");
            rules = all
                .iter()
                .filter(|rule| rule["type"] == "alerting")
                .map(|rule| {
                    (rule["name"].as_str().unwrap().to_owned(), rule["query"].as_str().unwrap().to_owned())
                })
                .collect();
            std::future::ready(evaluated)
        })
        .await;
        rules
    }
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[test]
fn an_alerts_comparison_is_stripped_to_the_series_it_watches() {
    assert_eq!(watched_series(r#"up{job=~"reno-.*"} == 0"#), r#"up{job=~"reno-.*"}"#);
    assert_eq!(
        watched_series("sum by (le) (rate(x[5m])) / sum(y{a!=\"b\"}) > 0.05"),
        "sum by (le) (rate(x[5m])) / sum(y{a!=\"b\"})"
    );
    assert_eq!(watched_series("a >= bool 1"), "a");
    assert_eq!(watched_series("max(x)"), "max(x)");
}
