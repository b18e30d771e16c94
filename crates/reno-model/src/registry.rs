//! The event-type registry: which event types exist, their priority, how soon they go stale, which
//! device types they reach and whether they collapse. Read from a TOML file (see
//! `registry/events.toml`); provisioning turns it into stream subjects, the worker into gate settings.

use std::{collections::BTreeMap, fmt, path::Path, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::token::{DeviceType, EventType, TokenError};

/// A priority class; each has its own stream, consumer, connection and task pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        Priority::ALL
            .into_iter()
            .find(|priority| priority.as_str() == value)
            .ok_or_else(|| format!("unknown priority {value:?}; use high, normal or low"))
    }
}

/// What the registry says about one event type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSpec {
    /// The stream, consumer and worker pool that carry events of this type.
    pub priority: Priority,
    /// Events older than this (by the server's receive time) when a worker sees them are dropped.
    pub stale_after: Duration,
    /// The device types that get events of this type (an event may narrow this down, never widen it).
    pub targets: Vec<DeviceType>,
    /// Whether events with the same collapse key replace each other in history.
    pub collapse: bool,
}

/// Why a registry file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read registry {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("registry is not valid TOML of the expected shape: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("registry: {0}")]
    Token(#[from] TokenError),
    #[error("registry: {0}")]
    Invalid(String),
}

/// The parsed and validated registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// Every device type events can target, in file order.
    device_types: Vec<DeviceType>,
    /// Every event type, sorted by name.
    types: BTreeMap<EventType, TypeSpec>,
}

/// The file's shape, before validation.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    device_types: Vec<String>,
    types: BTreeMap<String, TypeFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TypeFile {
    priority: Priority,
    stale_after_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    targets: Option<Vec<String>>,
    #[serde(default)]
    collapse: bool,
}

impl Registry {
    /// Reads and validates a registry file.
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| RegistryError::Read { path: path.display().to_string(), source })?;
        Self::from_toml(&text)
    }

    /// Parses and validates a registry from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, RegistryError> {
        let file: RegistryFile = toml::from_str(text)?;
        let mut device_types = Vec::new();
        for name in file.device_types {
            let device_type = DeviceType::new(name)?;
            if device_types.contains(&device_type) {
                return Err(RegistryError::Invalid(format!("device type {device_type} is listed twice")));
            }
            device_types.push(device_type);
        }
        if device_types.is_empty() {
            return Err(RegistryError::Invalid("device_types is empty; list at least one".into()));
        }
        if file.types.is_empty() {
            return Err(RegistryError::Invalid("no event types; add at least one [types.<name>]".into()));
        }
        let mut types = BTreeMap::new();
        for (name, spec) in file.types {
            let event_type = EventType::new(name)?;
            if spec.stale_after_secs == 0 {
                return Err(RegistryError::Invalid(format!(
                    "{event_type}: stale_after_secs must be above 0"
                )));
            }
            let targets = match spec.targets {
                None => device_types.clone(),
                Some(names) => {
                    let mut targets = Vec::new();
                    for name in names {
                        let target = DeviceType::new(name)?;
                        if targets.contains(&target) {
                            return Err(RegistryError::Invalid(format!(
                                "{event_type}: target {target} is listed twice"
                            )));
                        }
                        if !device_types.contains(&target) {
                            return Err(RegistryError::Invalid(format!(
                                "{event_type}: target {target} is not in device_types ({})",
                                join(&device_types)
                            )));
                        }
                        targets.push(target);
                    }
                    if targets.is_empty() {
                        return Err(RegistryError::Invalid(format!("{event_type}: targets is empty")));
                    }
                    targets
                }
            };
            let type_spec = TypeSpec {
                priority: spec.priority,
                stale_after: Duration::from_secs(spec.stale_after_secs),
                targets,
                collapse: spec.collapse,
            };
            types.insert(event_type, type_spec);
        }
        Ok(Registry { device_types, types })
    }

    pub fn device_types(&self) -> &[DeviceType] {
        &self.device_types
    }

    /// The spec of one event type, or `None` if the registry does not know it.
    pub fn get(&self, event_type: &EventType) -> Option<&TypeSpec> {
        self.types.get(event_type)
    }

    /// Every event type with its spec, sorted by name.
    pub fn types(&self) -> impl Iterator<Item = (&EventType, &TypeSpec)> {
        self.types.iter()
    }

    /// The event types carried by one priority, sorted by name.
    pub fn types_of(&self, priority: Priority) -> impl Iterator<Item = &EventType> {
        self.types.iter().filter(move |(_, spec)| spec.priority == priority).map(|(name, _)| name)
    }

    /// The known event types as a comma-separated list, for error messages.
    pub fn type_names(&self) -> String {
        join(self.types.keys())
    }

    /// The registry as a registry file says it: reads back as the same registry.
    pub fn to_toml(&self) -> String {
        let names = |items: &[DeviceType]| items.iter().map(DeviceType::to_string).collect::<Vec<_>>();
        let file = RegistryFile {
            device_types: names(&self.device_types),
            types: self
                .types
                .iter()
                .map(|(name, spec)| {
                    let type_file = TypeFile {
                        priority: spec.priority,
                        stale_after_secs: spec.stale_after.as_secs(),
                        // Every device type is the default; say the targets only when they differ.
                        targets: (spec.targets != self.device_types).then(|| names(&spec.targets)),
                        collapse: spec.collapse,
                    };
                    (name.to_string(), type_file)
                })
                .collect(),
        };
        toml::to_string(&file).expect("a registry always serializes")
    }

    /// This registry with `event_type` added or replaced by `spec`, validated like a file.
    pub fn with_type(&self, event_type: EventType, spec: TypeSpec) -> Result<Registry, RegistryError> {
        let mut changed = self.clone();
        changed.types.insert(event_type, spec);
        Registry::from_toml(&changed.to_toml())
    }

    /// This registry without `event_type`; refused if it is the last type or unknown.
    pub fn without_type(&self, event_type: &EventType) -> Result<Registry, RegistryError> {
        let mut changed = self.clone();
        if changed.types.remove(event_type).is_none() {
            return Err(RegistryError::Invalid(format!(
                "unknown event type {event_type}; known types: {}",
                self.type_names()
            )));
        }
        Registry::from_toml(&changed.to_toml())
    }
}

/// Joins tokens with ", " for error messages.
pub(crate) fn join<T: fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|item| item.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
        device_types = ["mobile", "tv"]
        [types.plan_changed]
        priority = "high"
        stale_after_secs = 60
        collapse = true
        [types.diagnostics]
        priority = "low"
        stale_after_secs = 5
        targets = ["tv"]
    "#;

    #[test]
    fn reads_types_with_defaults() {
        let registry = Registry::from_toml(SAMPLE).unwrap();
        let plan = registry.get(&EventType::new("plan_changed").unwrap()).unwrap();
        assert_eq!(plan.priority, Priority::High);
        assert_eq!(plan.stale_after, Duration::from_secs(60));
        assert_eq!(plan.targets, registry.device_types());
        assert!(plan.collapse);
        let low: Vec<_> = registry.types_of(Priority::Low).map(EventType::as_str).collect();
        assert_eq!(low, ["diagnostics"]);
        assert_eq!(registry.types_of(Priority::Normal).count(), 0);
    }

    #[test]
    fn a_registry_reads_back_from_its_own_file() {
        let registry = Registry::from_toml(SAMPLE).unwrap();
        assert_eq!(Registry::from_toml(&registry.to_toml()).unwrap(), registry);
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../registry/events.toml");
        let shipped = Registry::load(&shipped).unwrap();
        assert_eq!(Registry::from_toml(&shipped.to_toml()).unwrap(), shipped);
    }

    #[test]
    fn types_change_with_the_same_validation_as_a_file() {
        let registry = Registry::from_toml(SAMPLE).unwrap();
        let plan = EventType::new("plan_changed").unwrap();
        let mut spec = registry.get(&plan).unwrap().clone();
        spec.priority = Priority::Low;
        spec.stale_after = Duration::from_secs(5);
        let changed = registry.with_type(plan.clone(), spec.clone()).unwrap();
        assert_eq!(changed.get(&plan), Some(&spec));
        spec.targets = vec![DeviceType::new("watch").unwrap()];
        let error = registry.with_type(plan.clone(), spec).unwrap_err().to_string();
        assert!(error.contains("target watch is not in device_types"), "{error}");
        let without = changed.without_type(&plan).unwrap();
        assert!(without.get(&plan).is_none());
        let last = without.without_type(&EventType::new("diagnostics").unwrap()).unwrap_err();
        assert!(last.to_string().contains("no event types"), "{last}");
    }

    #[test]
    fn the_shipped_registry_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../registry/events.toml");
        let registry = Registry::load(&path).unwrap();
        for priority in Priority::ALL {
            assert!(registry.types_of(priority).count() >= 2, "{priority} has fewer than two types");
        }
    }

    #[test]
    fn refuses_bad_registries_with_a_reason() {
        let cases = [
            (
                SAMPLE.replace("targets = [\"tv\"]", "targets = [\"watch\"]"),
                "target watch is not in device_types (mobile, tv)",
            ),
            (
                SAMPLE.replace("[types.plan_changed]", "[types.\"plan.changed\"]"),
                "event type \"plan.changed\" is not accepted",
            ),
            (SAMPLE.replace("\"high\"", "\"urgent\""), "unknown variant `urgent`"),
            (SAMPLE.replace("stale_after_secs = 60", "stale_after_secs = 0"), "must be above 0"),
            (SAMPLE.replace("collapse = true", "colapse = true"), "unknown field `colapse`"),
            (SAMPLE.replace("[\"mobile\", \"tv\"]", "[\"tv\", \"tv\"]"), "device type tv is listed twice"),
            (SAMPLE.replace("targets = [\"tv\"]", "targets = [\"tv\", \"tv\"]"), "target tv is listed twice"),
        ];
        for (text, expected) in cases {
            let message = Registry::from_toml(&text).unwrap_err().to_string();
            assert!(message.contains(expected), "{message:?} should contain {expected:?}");
        }
    }
}
