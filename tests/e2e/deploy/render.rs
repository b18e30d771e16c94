//! Rendering what Nomad renders at run time, with fake values: `${...}` interpolations, and the
//! Go templates (consul-template) of `template` blocks, recording what they look up.

/// A fake value for one of Nomad's runtime interpolations (`${NOMAD_PORT_admin}`,
/// `${node.unique.name}`) or a task environment variable read by a template (`env "..."`).
fn fake(name: &str) -> String {
    let dirs =
        [("NOMAD_TASK_DIR", "/local"), ("NOMAD_SECRETS_DIR", "/secrets"), ("NOMAD_ALLOC_DIR", "/alloc")];
    if let Some((_, dir)) = dirs.iter().find(|(variable, _)| *variable == name) {
        return (*dir).to_owned();
    }
    if name.starts_with("NOMAD_PORT_") {
        "20000".into()
    } else if name.starts_with("NOMAD_IP_") {
        "10.0.0.1".into()
    } else if name.starts_with("NOMAD_ADDR_") {
        "10.0.0.1:20000".into()
    } else {
        format!("fake-{}", name.replace('.', "-"))
    }
}

/// `${...}` interpolations replaced by fake values.
pub(super) fn interpolate(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let Some(end) = rest[start..].find('}') else { break };
        out.push_str(&rest[..start]);
        out.push_str(&fake(&rest[start + 2..start + end]));
        rest = &rest[start + end + 1..];
    }
    out + rest
}

/// The names `${...}` interpolations refer to.
pub(super) fn interpolations(text: &str) -> Vec<String> {
    text.split("${")
        .skip(1)
        .filter_map(|part| part.split_once('}'))
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// A rendered Go template (consul-template, as Nomad runs it), and what it looked up.
#[derive(Default)]
pub(super) struct Rendered {
    pub(super) rendered: String,
    pub(super) variables: Vec<String>,
    pub(super) services: Vec<String>,
    pub(super) env_reads: Vec<String>,
}

/// Renders the subset of Go templates the jobs use: `with`/`range` bodies once, `if` true unless
/// its condition is a bare `$variable` (a range index: false on the one fake iteration), fields
/// (`.Address`, `.Port`, a variable's items) and `env "NAME"` as fake values; `{{-`/`-}}` trims.
pub(super) fn render(template: &str) -> Rendered {
    let mut result = Rendered::default();
    let mut emitting: Vec<bool> = Vec::new();
    let mut rest = template;
    let mut trim_next = false;
    while !rest.is_empty() {
        let (text, action) = match rest.find("{{") {
            Some(start) => (&rest[..start], Some(&rest[start + 2..])),
            None => (rest, None),
        };
        let text = if trim_next { text.trim_start() } else { text };
        let Some(action) = action else {
            if emitting.iter().all(|on| *on) {
                result.rendered.push_str(text);
            }
            break;
        };
        let end = action.find("}}").expect("an unclosed {{");
        let inner = &action[..end];
        rest = &action[end + 2..];
        let text = if inner.starts_with('-') { text.trim_end() } else { text };
        if emitting.iter().all(|on| *on) {
            result.rendered.push_str(text);
        }
        trim_next = inner.ends_with('-');
        let inner = inner.trim_matches('-').trim();
        let quoted = |function: &str| {
            inner.split(function).nth(1).and_then(|after| after.split('"').nth(1)).map(str::to_owned)
        };
        result.variables.extend(quoted("nomadVar "));
        result.services.extend(quoted("nomadService "));
        let word = inner.split_whitespace().next().unwrap_or("");
        match word {
            "range" | "with" => emitting.push(true),
            "if" => emitting.push(!inner["if".len()..].trim().starts_with('$')),
            "else" => {
                let last = emitting.last_mut().expect("else outside a block");
                *last = !*last;
            }
            "end" => {
                emitting.pop().expect("end outside a block");
            }
            _ if !emitting.iter().all(|on| *on) => {}
            "env" => {
                let name = quoted("env ").expect("env without a name");
                result.rendered.push_str(&fake(&name));
                result.env_reads.push(name);
            }
            _ => {
                let field = word.trim_start_matches('.');
                result.rendered.push_str(&match field {
                    "Address" => "10.0.0.1".to_owned(),
                    "Port" => "4222".to_owned(),
                    _ => format!("fake-{field}"),
                });
            }
        }
    }
    assert!(emitting.is_empty(), "a {{{{ range }}}}, {{{{ with }}}} or {{{{ if }}}} without {{{{ end }}}}");
    result
}
