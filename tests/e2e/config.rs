//! One configuration for every process: a file, overridden by the environment, overridden by flags,
//! checked by `reno config check` with errors that name the key and what it accepts.

use std::process::Command;

fn reno(args: &[&str], env: &[(&str, &str)]) -> (bool, i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_reno"));
    command.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn flags_override_the_environment_which_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reno.toml");
    std::fs::write(
        &file,
        "[nats]\nurl = \"nats://file:4222\"\n[worker]\nmax_deliveries = 3\ngrace_secs = 7\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();

    let (ok, _, effective, stderr) = reno(&["config", "check", "--config", path], &[]);
    assert!(ok, "{stderr}");
    assert!(effective.contains("url = \"nats://file:4222\""), "{effective}");
    assert!(effective.contains("max_deliveries = 3"), "{effective}");
    assert!(effective.contains("grace_secs = 7"), "{effective}");

    let env =
        [("RENO_CONFIG", path), ("RENO_NATS_URL", "nats://env:4222"), ("RENO_WORKER_MAX_DELIVERIES", "4")];
    let (ok, _, effective, stderr) = reno(&["config", "check"], &env);
    assert!(ok, "{stderr}");
    assert!(effective.contains("url = \"nats://env:4222\""), "{effective}");
    assert!(effective.contains("max_deliveries = 4"), "{effective}");
    assert!(effective.contains("grace_secs = 7"), "the file still counts where nothing overrides it");

    // A flag beats both: `reno worker --max-deliveries 5` runs with 5. A worker needs a server to
    // start, so the flag's effect is read from the refusal of an invalid value instead.
    let (ok, code, _, stderr) = reno(&["worker", "--max-deliveries", "0"], &env);
    assert!(!ok && code == 2);
    assert!(stderr.contains("worker.max_deliveries: must be at least 1"), "{stderr}");
    let bad_env = [("RENO_WORKER_MAX_DELIVERIES", "many")];
    let (ok, _, _, stderr) = reno(&["config", "check"], &bad_env);
    assert!(!ok);
    assert!(stderr.contains("RENO_WORKER_MAX_DELIVERIES"), "{stderr}");
}

#[test]
fn a_bad_setting_is_refused_with_its_key_and_what_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[worker]\nmax_delivries = 3\n", "unknown field `max_delivries`"),
        ("[worker]\nmax_deliveries = 0\n", "worker.max_deliveries: must be at least 1"),
        ("[streams]\nreplicas = 9\n", "streams.replicas: use 1 to 5"),
        ("[log]\nformat = \"xml\"\n", "unknown variant `xml`, expected `text` or `json`"),
    ];
    for (index, (text, expected)) in cases.into_iter().enumerate() {
        let file = dir.path().join(format!("bad-{index}.toml"));
        std::fs::write(&file, text).unwrap();
        let (ok, code, _, stderr) = reno(&["config", "check", "--config", file.to_str().unwrap()], &[]);
        assert!(!ok && code == 2, "{text:?} was accepted");
        assert!(stderr.contains(expected), "{stderr:?} should contain {expected:?}");
    }
    let (ok, _, _, stderr) = reno(&["config", "check", "--config", "/no/such/reno.toml"], &[]);
    assert!(!ok);
    assert!(stderr.contains("cannot read config file /no/such/reno.toml"), "{stderr}");
}
