//! The load generators with tiny numbers, in the suite: they run, and what they count is right
//! (every notification exactly once, in order, every device connected, every pulled page whole,
//! goose's requests all answered). Counts, not speed: speed is measured by
//! `loadtest/run-benchmarks`, never asserted.
//!
//! The `reno` binary belongs to another package, so cargo gives no path to it here: it is taken
//! from beside `reno-load` in the same target folder (`cargo nextest run --workspace` builds both),
//! built with `cargo build --bin reno` if it is not there, or named by `RENO_BIN`.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// How long one load run may take before the test calls it hung.
const PATIENCE: Duration = Duration::from_secs(180);

fn reno_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RENO_BIN") {
        return PathBuf::from(path);
    }
    let load = PathBuf::from(env!("CARGO_BIN_EXE_reno-load"));
    let reno = load.with_file_name("reno");
    if !reno.exists() {
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--bin", "reno", "--manifest-path"])
            .arg(reno_testkit::repo_root().join("Cargo.toml"));
        if load.parent().is_some_and(|folder| folder.ends_with("release")) {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build --bin reno");
        assert!(status.success(), "cargo build --bin reno failed");
    }
    reno
}

/// Runs a load binary to its end and returns its JSON summary (the last line of its stdout).
fn run_to_end(binary: &str, args: &[&str]) -> Value {
    let mut child = Command::new(binary)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the load generator");
    let started = Instant::now();
    while child.try_wait().expect("poll the load generator").is_none() {
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            panic!("{binary} {args:?} still running after {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("the load generator's output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{binary} {args:?} failed: {stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|error| panic!("no JSON summary ({error}): {stdout}\n{stderr}"))
}

#[test]
fn e2e_delivers_every_notification_once_in_order() {
    let reno = reno_binary();
    let summary = run_to_end(
        env!("CARGO_BIN_EXE_reno-load"),
        &[
            "e2e",
            "--reno",
            reno.to_str().unwrap(),
            "--devices",
            "20",
            "--device-types",
            "tv,mobile",
            "--rate",
            "100",
            "--events",
            "200",
            "--duration-secs",
            "30",
            "--raw-secs",
            "0.5",
            "--drain-secs",
            "60",
        ],
    );
    let delivery = &summary["delivery"];
    assert_eq!(summary["published"], 200, "{summary}");
    assert_eq!(summary["devices_connected"], 20, "{summary}");
    // 10 members with a tv and a mobile each: every event reaches two devices.
    assert_eq!(delivery["expected"], 400, "{summary}");
    assert_eq!(delivery["delivered"], 400, "{summary}");
    assert_eq!(delivery["missing"], 0, "{summary}");
    assert_eq!(delivery["duplicates"], 0, "{summary}");
    assert_eq!(delivery["unexpected"], 0, "{summary}");
    assert_eq!(delivery["misrouted"], 0, "{summary}");
    assert_eq!(delivery["inversions"], 0, "{summary}");
    assert_eq!(summary["latency"]["count"], 400, "{summary}");
    assert!(summary["raw_msgs_per_sec"].as_f64().unwrap() > 0.0, "{summary}");
    assert_eq!(summary["ok"], true, "{summary}");
}

/// A short floor run (300 events over 40 members) with `extra` flags: every step it ran took each
/// event once, failed none and left one document per member where it writes them. Returns the
/// steps' names.
fn floor(extra: &[&str]) -> Vec<String> {
    let mut args = vec!["floor", "--events", "300", "--members", "40", "--raw-secs", "0.3"];
    args.extend_from_slice(extra);
    let summary = run_to_end(env!("CARGO_BIN_EXE_reno-load"), &args);
    assert_eq!(summary["ok"], true, "{summary}");
    assert!(summary["raw_msgs_per_sec"].as_f64().unwrap() > 0.0, "{summary}");
    let steps = summary["steps"].as_array().expect("steps");
    for step in steps {
        let writes = step["step"] != "queue";
        assert_eq!(step["events"], 300, "{summary}");
        assert_eq!(step["failures"], 0, "{summary}");
        assert_eq!(step["documents"], if writes { 40 } else { 0 }, "{summary}");
        assert_eq!(step["complete"], true, "{summary}");
    }
    steps.iter().map(|step| step["step"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn floor_takes_every_event_and_writes_every_document() {
    assert_eq!(floor(&["--partitions", "4"]), ["queue", "write", "read_write"]);
    // With no order: many handed out ahead and handled at once; the queue and write steps only.
    assert_eq!(floor(&["--partitions", "2", "--max-ack-pending", "50", "--concurrent"]), ["queue", "write"]);
    // The write conditional on the revision kept from the member's last write, without a read:
    // a kept revision that was not the document's would fail the write.
    assert_eq!(floor(&["--partitions", "2", "--steps", "kept_write"]), ["kept_write"]);
}

#[test]
fn storm_connects_every_device() {
    let reno = reno_binary();
    let summary = run_to_end(
        env!("CARGO_BIN_EXE_reno-load"),
        &["storm", "--reno", reno.to_str().unwrap(), "--devices", "50", "--settle-secs", "0.5"],
    );
    assert_eq!(summary["connected"], 50, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["connect"]["count"], 50, "{summary}");
    assert!(summary["edge_connections"].as_u64().unwrap() >= 50, "{summary}");
    assert_eq!(summary["ok"], true, "{summary}");
}

#[test]
fn pull_reads_every_members_whole_history() {
    pull_smoke("pull-service");
}

/// The flood answered by the hub alone: this process reads each pulled member's document itself.
#[test]
fn pull_flood_by_the_hub_alone_reads_every_members_whole_document() {
    pull_smoke("hub");
}

/// A small pull run, warmed by direct gets first and kept warm by more through the flood, whose
/// flood is answered by `via`: every page or document checked, every phase drained.
fn pull_smoke(via: &str) {
    let reno = reno_binary();
    let summary = run_to_end(
        env!("CARGO_BIN_EXE_reno-load"),
        &[
            "pull",
            "--reno",
            reno.to_str().unwrap(),
            "--members",
            "50",
            "--entries",
            "3",
            "--warm-reads",
            "30",
            "--pulls",
            "20",
            "--flood-events",
            "200",
            "--flood-pull-rate",
            "50",
            "--flood-via",
            via,
            "--keep-warm-rate",
            "20",
            "--drain-secs",
            "60",
        ],
    );
    assert_eq!(summary["history_entries"], 150, "{summary}");
    assert_eq!(summary["fill"]["documents"], 50, "{summary}");
    assert_eq!(summary["fill"]["failed"], 0, "{summary}");
    assert!(summary["fill"]["history_messages"].as_u64().unwrap() >= 50, "{summary}");
    // The warm-up's direct gets each found their member's whole document.
    assert_eq!(summary["warm"]["failed"], 0, "{summary}");
    // Every pull answered with its member's three entries, in order.
    assert_eq!(summary["pulls"]["latency"]["count"], 20, "{summary}");
    assert_eq!(summary["pulls"]["failed"], 0, "{summary}");
    assert_eq!(summary["pulls"]["wrong"], 0, "{summary}");
    assert_eq!(summary["pulls"]["server_gets"]["count"], 20, "{summary}");
    assert_eq!(summary["pulls"]["server_gets_failed"], 0, "{summary}");
    assert_eq!(summary["flood"]["via"], via.replace('-', "_"), "{summary}");
    let phases = summary["flood"]["phases"].as_array().expect("the flood's phases");
    assert_eq!(phases.len(), 3, "{summary}");
    for phase in phases {
        assert_eq!(phase["events"], 200, "{summary}");
        assert_eq!(phase["drained"], true, "{summary}");
        assert_eq!(phase["delivered"], 200, "{summary}");
    }
    // The direct gets that ran through every phase each found their member's whole document.
    let kept_warm = &summary["flood"]["kept_warm"];
    assert!(kept_warm["sent"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(kept_warm["failed"], 0, "{summary}");
    assert_eq!(kept_warm["latency"]["count"], kept_warm["sent"], "{summary}");
    let pulls = &phases[1]["pulls"];
    assert!(pulls["sent"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(pulls["failed"], 0, "{summary}");
    assert_eq!(pulls["latency"]["count"], pulls["sent"], "{summary}");
    assert_eq!(summary["ok"], true, "{summary}");
}

/// `reno-load up` holding a topology with a gateway; closing its stdin stops it and everything
/// it started.
struct Up {
    child: Child,
    addresses: Value,
}

impl Up {
    fn start(reno: &str) -> Up {
        let mut child = Command::new(env!("CARGO_BIN_EXE_reno-load"))
            .args(["up", "--reno", reno])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start reno-load up");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("read the addresses");
        let addresses =
            serde_json::from_str(&line).unwrap_or_else(|error| panic!("addresses ({error}): {line:?}"));
        Up { child, addresses }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let started = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if started.elapsed() > Duration::from_secs(15) {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.wait();
    }
}

#[test]
fn goose_posts_events_and_pulls_without_failures() {
    let reno = reno_binary();
    let up = Up::start(reno.to_str().unwrap());
    let report = tempfile::tempdir().unwrap();
    let report_file = report.path().join("goose.json");
    let output = Command::new(env!("CARGO_BIN_EXE_reno-goose"))
        .args(["--gateway", up.addresses["gateway"].as_str().unwrap()])
        .args(["--secrets", up.addresses["secrets"].as_str().unwrap()])
        .args(["--members", "20", "--", "--users", "2", "--hatch-rate", "2", "--run-time", "3s", "--quiet"])
        .arg("--report-file")
        .arg(&report_file)
        .output()
        .expect("run reno-goose");
    assert!(output.status.success(), "reno-goose failed: {}", String::from_utf8_lossy(&output.stderr));
    let text = std::fs::read_to_string(&report_file).expect("goose's report");
    let report: Value = serde_json::from_str(&text).expect("goose's JSON report");
    let requests = report["raw_request_metrics"].as_array().expect("request metrics");
    let named = |name: &str| requests.iter().find(|row| row["name"] == name).cloned().unwrap_or_default();
    for name in ["/v1/events", "/v1/pull", "Aggregated"] {
        let row = named(name);
        assert!(row["number_of_requests"].as_u64().unwrap_or(0) > 0, "no {name} requests: {text}");
        assert_eq!(row["number_of_failures"], 0, "{name} failures: {text}");
    }
}
