//! Reading the Nomad jobs: each task with its command, arguments, environment, templates, artifacts,
//! ports and health checks, resolved from HCL (`local.x`, `var.x` defaults, `file("...")`) with
//! Nomad's runtime interpolations kept raw.

use std::{collections::BTreeMap, path::PathBuf};

use hcl::{Block, Body, Expression, TemplateExpr};

use super::render::{interpolate, render};

/// The repository root, where the jobs' `file()` paths start.
pub(super) fn repo() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// One job file.
pub(super) struct JobFile {
    pub(super) name: String,
    pub(super) body: Body,
}

/// A task with everything about it the checks look at, its interpolations kept raw.
#[derive(Default)]
pub(super) struct Task {
    /// `file: job/group/task`, for messages.
    pub(super) place: String,
    pub(super) job: String,
    pub(super) job_type: String,
    pub(super) group: String,
    pub(super) task: String,
    pub(super) command: String,
    pub(super) args: Vec<String>,
    pub(super) env: BTreeMap<String, String>,
    pub(super) templates: Vec<Template>,
    pub(super) artifacts: Vec<(String, String)>,
    pub(super) image: String,
    /// Port labels the docker driver maps (`config.ports`).
    pub(super) docker_ports: Vec<String>,
    pub(super) kill_signal: Option<String>,
    pub(super) kill_timeout: Option<String>,
    /// The group's port labels, with the port inside the container (`to`) or the static one.
    pub(super) ports: BTreeMap<String, Option<i64>>,
    pub(super) services: Vec<Service>,
    pub(super) group_has_scaling: bool,
}

/// A `template` block.
pub(super) struct Template {
    /// The template text (a `file()` is read from the repository), before rendering.
    pub(super) data: String,
    /// The repository file it comes from, for `data = file("...")`.
    pub(super) file: Option<String>,
    pub(super) destination: String,
    pub(super) env: bool,
}

/// A `service` block, of the task or of its group.
pub(super) struct Service {
    pub(super) name: String,
    pub(super) port: Option<String>,
    /// (type, path, port label) of each check.
    pub(super) checks: Vec<(String, String, Option<String>)>,
}

impl Task {
    pub(super) fn runs_reno(&self) -> bool {
        self.command == "reno"
    }

    pub(super) fn runs_nats_server(&self) -> bool {
        self.command.ends_with("/nats-server") || self.command == "nats-server"
    }

    /// The subcommand path: the arguments before the first flag.
    pub(super) fn subcommand(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).take_while(|arg| !arg.starts_with('-')).collect()
    }

    pub(super) fn flag(&self, name: &str) -> Option<&str> {
        let at = self.args.iter().position(|arg| arg == name)?;
        self.args.get(at + 1).map(String::as_str)
    }

    /// Environment from the `env` block and from templates with `env = true`, rendered.
    pub(super) fn environment(&self) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> =
            self.env.iter().map(|(name, value)| (name.clone(), interpolate(value))).collect();
        for template in self.templates.iter().filter(|template| template.env) {
            for line in render(&template.data).rendered.lines() {
                let Some((name, value)) = line.trim().split_once('=') else { continue };
                env.insert(name.trim().to_owned(), value.trim().trim_matches('\'').to_owned());
            }
        }
        env
    }

    /// The template rendered to `path` (as the task sees it: `/local/x` is `local/x`).
    pub(super) fn template_at(&self, path: &str) -> Option<&Template> {
        let wanted = path.trim_start_matches('/');
        self.templates.iter().find(|template| template.destination.trim_start_matches('/') == wanted)
    }
}

pub(super) fn load_jobs() -> Vec<JobFile> {
    let dir = repo().join("deploy/nomad");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".nomad.hcl"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no jobs in {}", dir.display());
    names
        .into_iter()
        .map(|name| parse_job(&name, &std::fs::read_to_string(dir.join(&name)).unwrap()))
        .collect()
}

pub(super) fn parse_job(name: &str, text: &str) -> JobFile {
    assert!(text.starts_with('#'), "{name}: starts without a header comment saying what it is for");
    let body = hcl::parse(text).unwrap_or_else(|error| panic!("{name} is not valid HCL: {error}"));
    JobFile { name: name.to_owned(), body }
}

fn blocks<'a>(body: &'a Body, kind: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    body.blocks().filter(move |block| block.identifier() == kind)
}

fn label(block: &Block) -> String {
    block.labels().first().map(|label| label.as_str().to_owned()).unwrap_or_default()
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|attribute| attribute.key() == key).map(|attribute| attribute.expr())
}

/// Resolves the parts of HCL the jobs use to text: strings and templates (interpolations kept
/// raw, for the runtime), `local.x`, `var.x` with a default, `file("...")`, numbers and booleans.
struct Scope<'a> {
    file: &'a JobFile,
}

impl Scope<'_> {
    fn text(&self, expr: &Expression) -> String {
        match expr {
            Expression::String(text) => text.clone(),
            Expression::Number(number) => number.to_string(),
            Expression::Bool(value) => value.to_string(),
            Expression::TemplateExpr(template) => match template.as_ref() {
                TemplateExpr::QuotedString(text) => text.clone(),
                TemplateExpr::Heredoc(heredoc) => dedent(&heredoc.template),
            },
            Expression::Traversal(traversal) => {
                let root = match &traversal.expr {
                    Expression::Variable(variable) => variable.as_str().to_owned(),
                    _ => String::new(),
                };
                let name = match traversal.operators.first() {
                    Some(hcl::expr::TraversalOperator::GetAttr(name)) => name.as_str().to_owned(),
                    _ => String::new(),
                };
                self.lookup(&root, &name).unwrap_or_else(|| format!("${{{root}.{name}}}"))
            }
            Expression::FuncCall(call) if call.name.name.as_str() == "file" => {
                let path = self.text(&call.args[0]);
                std::fs::read_to_string(repo().join(&path))
                    .unwrap_or_else(|_| panic!("{}: file({path:?}) does not exist", self.file.name))
            }
            other => format!("<{other:?}>"),
        }
    }

    fn lookup(&self, root: &str, name: &str) -> Option<String> {
        let found = match root {
            "local" => blocks(&self.file.body, "locals").find_map(|locals| attr(locals.body(), name)),
            "var" => blocks(&self.file.body, "variable")
                .find(|variable| label(variable) == name)
                .and_then(|variable| attr(variable.body(), "default")),
            _ => None,
        };
        found.map(|expr| self.text(expr))
    }

    fn strings(&self, expr: &Expression) -> Vec<String> {
        match expr {
            Expression::Array(items) => items.iter().map(|item| self.text(item)).collect(),
            other => vec![self.text(other)],
        }
    }
}

/// `<<-` heredocs: the common leading spaces removed.
fn dedent(text: &str) -> String {
    let indent = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.len() - line.trim_start().len())
        .min();
    let indent = indent.unwrap_or(0);
    text.lines().map(|line| line.get(indent..).unwrap_or("").trim_end()).collect::<Vec<_>>().join("\n") + "\n"
}

pub(super) fn tasks(files: &[JobFile]) -> Vec<Task> {
    let mut found = Vec::new();
    for file in files {
        let scope = Scope { file };
        for job in blocks(&file.body, "job") {
            let job_type = attr(job.body(), "type").map_or("service".into(), |expr| scope.text(expr));
            for group in blocks(job.body(), "group") {
                let mut ports = BTreeMap::new();
                for network in blocks(group.body(), "network") {
                    for port in blocks(network.body(), "port") {
                        let inside = attr(port.body(), "to").or_else(|| attr(port.body(), "static"));
                        ports.insert(label(port), inside.and_then(|expr| scope.text(expr).parse().ok()));
                    }
                }
                let group_services: Vec<Service> =
                    blocks(group.body(), "service").map(|service| read_service(&scope, service)).collect();
                for task in blocks(group.body(), "task") {
                    let mut spec = Task {
                        place: format!("{}: {}/{}/{}", file.name, label(job), label(group), label(task)),
                        job: label(job),
                        job_type: job_type.clone(),
                        group: label(group),
                        task: label(task),
                        ports: ports.clone(),
                        group_has_scaling: blocks(group.body(), "scaling").next().is_some(),
                        ..Task::default()
                    };
                    read_task(&scope, task.body(), &mut spec);
                    spec.services.extend(group_services.iter().map(|service| Service {
                        name: service.name.clone(),
                        port: service.port.clone(),
                        checks: service.checks.clone(),
                    }));
                    found.push(spec);
                }
            }
        }
    }
    found
}

fn read_task(scope: &Scope, body: &Body, spec: &mut Task) {
    let text = |key: &str| attr(body, key).map(|expr| scope.text(expr));
    spec.kill_signal = text("kill_signal");
    spec.kill_timeout = text("kill_timeout");
    if let Some(config) = blocks(body, "config").next() {
        let config = config.body();
        spec.command = attr(config, "command").map(|expr| scope.text(expr)).unwrap_or_default();
        spec.args = attr(config, "args").map(|expr| scope.strings(expr)).unwrap_or_default();
        spec.image = attr(config, "image").map(|expr| scope.text(expr)).unwrap_or_default();
        spec.docker_ports = attr(config, "ports").map(|expr| scope.strings(expr)).unwrap_or_default();
    }
    for env in blocks(body, "env") {
        for attribute in env.body().attributes() {
            spec.env.insert(attribute.key().to_owned(), scope.text(attribute.expr()));
        }
    }
    for template in blocks(body, "template") {
        let body = template.body();
        let data = attr(body, "data").expect("a template without data");
        let file = match data {
            Expression::FuncCall(call) if call.name.name.as_str() == "file" => {
                Some(scope.text(&call.args[0]))
            }
            _ => None,
        };
        spec.templates.push(Template {
            data: scope.text(data),
            file,
            destination: attr(body, "destination").map(|expr| scope.text(expr)).unwrap_or_default(),
            env: attr(body, "env").is_some_and(|expr| scope.text(expr) == "true"),
        });
    }
    for artifact in blocks(body, "artifact") {
        let source = attr(artifact.body(), "source").map(|expr| scope.text(expr)).unwrap_or_default();
        let checksum = blocks(artifact.body(), "options")
            .find_map(|options| attr(options.body(), "checksum"))
            .map(|expr| scope.text(expr))
            .unwrap_or_default();
        spec.artifacts.push((source, checksum));
    }
    spec.services.extend(blocks(body, "service").map(|service| read_service(scope, service)));
}

fn read_service(scope: &Scope, service: &Block) -> Service {
    let body = service.body();
    let text = |body: &Body, key: &str| attr(body, key).map(|expr| scope.text(expr));
    Service {
        name: text(body, "name").unwrap_or_default(),
        port: text(body, "port"),
        checks: blocks(body, "check")
            .map(|check| {
                let check = check.body();
                (
                    text(check, "type").unwrap_or_default(),
                    text(check, "path").unwrap_or_default(),
                    text(check, "port"),
                )
            })
            .collect(),
    }
}
