//! The configuration layers as plain TOML tables that remember where each value came from.
//!
//! Tables merge key by key, but any other value, arrays included, replaces the lower layer's
//! value whole: merging `[[destinations]]` element-wise would build peers that no layer spelled
//! out. Environment values stay strings here; only the reader knows which type a key wants.

use std::collections::BTreeMap;
use std::path::Path;

use toml::{Table, Value};

use super::{ConfigError, Origin, Overrides, CONFIG_FILE_ENV};

/// Prefix of the environment variables that set keys: `KNEENODE__NODE__PORT` sets `node.port`.
const ENV_PREFIX: &str = "KNEENODE__";

/// One layer, or several merged.
#[derive(Debug, Default)]
pub(super) struct Layer {
    pub(super) table: Table,
    /// Origin of every value by dotted path, e.g. `node.port` or `destinations`. A table's own
    /// entry is the last layer that mentioned it, which is what an unknown section is blamed on.
    origins: BTreeMap<String, Origin>,
}

impl Layer {
    /// Reads a TOML file.
    pub(super) fn from_file(path: &Path) -> Result<Layer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let table: Table = toml::from_str(&text).map_err(|error| {
            let (line, column) = error
                .span()
                .map_or((1, 1), |span| line_column(&text, span.start));
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                column,
                message: one_line(error.message()),
            }
        })?;
        let mut layer = Layer::default();
        record(
            &table,
            "",
            &Origin::File(path.to_owned()),
            &mut layer.origins,
        );
        layer.table = table;
        Ok(layer)
    }

    /// Collects the `KNEENODE__…` variables; names are case-insensitive, `__` separates keys.
    pub(super) fn from_env(env: &[(String, String)]) -> Result<Layer, ConfigError> {
        // Sorted so that a conflict (`KNEENODE__NODE` and `KNEENODE__NODE__PORT`) is reported the
        // same way whatever order the environment lists them in.
        let mut vars: Vec<_> = env
            .iter()
            .filter_map(|(name, value)| Some((name, env_key(name)?, value)))
            .collect();
        vars.sort();
        let mut layer = Layer::default();
        for (name, key, value) in vars {
            let segments: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
            let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
            let origin = Origin::Env(name.clone());
            if segments.iter().any(|s| s.is_empty()) {
                return Err(ConfigError::Invalid {
                    origin,
                    key: segments.join("."),
                    reason: "malformed variable name (expected KNEENODE__SECTION__KEY)".to_owned(),
                });
            }
            layer.set(&segments, Value::String(value.clone()), origin)?;
        }
        Ok(layer)
    }

    /// The command-line flags that were given.
    pub(super) fn from_overrides(overrides: &Overrides) -> Result<Layer, ConfigError> {
        let mut layer = Layer::default();
        let mut set = |key: &[&str], value: Value| layer.set(key, value, Origin::CommandLine);
        if let Some(ae_title) = &overrides.ae_title {
            set(&["node", "ae_title"], Value::String(ae_title.clone()))?;
        }
        if let Some(port) = overrides.port {
            set(&["node", "port"], Value::Integer(i64::from(port)))?;
        }
        if let Some(dir) = &overrides.storage_dir {
            // Lossy conversion would silently pick another folder.
            let Some(dir) = dir.to_str() else {
                return Err(ConfigError::Invalid {
                    origin: Origin::CommandLine,
                    key: "storage.dir".to_owned(),
                    reason: format!("{} is not valid UTF-8", dir.display()),
                });
            };
            set(&["storage", "dir"], Value::String(dir.to_owned()))?;
        }
        if let Some(url) = &overrides.database_url {
            set(&["database", "url"], Value::String(url.clone()))?;
        }
        if let Some(port) = overrides.portal_port {
            set(&["portal", "port"], Value::Integer(i64::from(port)))?;
        }
        if let Some(devices) = &overrides.devices {
            let devices = devices.iter().cloned().map(Value::String).collect();
            set(&["worker", "devices"], Value::Array(devices))?;
        }
        Ok(layer)
    }

    /// Puts `upper` on top of this layer.
    pub(super) fn merge(&mut self, upper: Layer) {
        merge_tables(&mut self.table, upper.table, "", &mut self.origins);
        self.origins.extend(upper.origins);
    }

    /// Where the value at `path` came from: its own origin, or that of the array or inline table
    /// that holds it.
    pub(super) fn origin_of(&self, path: &str) -> Origin {
        let mut candidate = path;
        loop {
            if let Some(origin) = self.origins.get(candidate) {
                return origin.clone();
            }
            match candidate.rfind(['.', '[']) {
                Some(end) => candidate = &candidate[..end],
                None => return Origin::Default,
            }
        }
    }

    /// An error about the value at `key`, blamed on wherever that value came from.
    pub(super) fn invalid(&self, key: String, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin_of(&key),
            key,
            reason: reason.into(),
        }
    }

    /// Sets one leaf within this layer; a second value for the same key, or for a table that
    /// holds it, is a conflict.
    fn set(&mut self, key: &[&str], value: Value, origin: Origin) -> Result<(), ConfigError> {
        if let Err(depth) = insert(&mut self.table, key, value) {
            let other = key[..=depth].join(".");
            return Err(ConfigError::Invalid {
                reason: format!(
                    "conflicts with {}, which sets {other}",
                    self.origin_of(&other)
                ),
                origin,
                key: key.join("."),
            });
        }
        for depth in 1..key.len() {
            let table = key[..depth].join(".");
            self.origins.entry(table).or_insert_with(|| origin.clone());
        }
        self.origins.insert(key.join("."), origin);
        Ok(())
    }
}

/// The process environment's variables that kneenode reads.
pub(super) fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut env = Vec::new();
    for (name, value) in std::env::vars_os() {
        // A variable whose name is not UTF-8 cannot be one of ours.
        let Some(name) = name.to_str() else { continue };
        if !(name.eq_ignore_ascii_case(CONFIG_FILE_ENV) || env_key(name).is_some()) {
            continue;
        }
        match value.into_string() {
            Ok(value) => env.push((name.to_owned(), value)),
            Err(_) => {
                return Err(ConfigError::EnvNotUnicode {
                    name: name.to_owned(),
                })
            }
        }
    }
    Ok(env)
}

/// The part of an environment variable's name after `KNEENODE__`, if it has that prefix.
pub(super) fn env_key(name: &str) -> Option<&str> {
    let prefix = name.get(..ENV_PREFIX.len())?;
    prefix
        .eq_ignore_ascii_case(ENV_PREFIX)
        .then(|| &name[ENV_PREFIX.len()..])
}

/// Inserts `value` at `key`; on a conflict returns the index of the key segment where it is.
fn insert(table: &mut Table, key: &[&str], value: Value) -> Result<(), usize> {
    match key {
        [] => Ok(()),
        [last] if table.contains_key(*last) => Err(0),
        [last] => {
            table.insert((*last).to_owned(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            if !table.contains_key(*first) {
                table.insert((*first).to_owned(), Value::Table(Table::new()));
            }
            match table.get_mut(*first) {
                Some(Value::Table(inner)) => insert(inner, rest, value).map_err(|depth| depth + 1),
                _ => Err(0),
            }
        }
    }
}

fn merge_tables(
    lower: &mut Table,
    upper: Table,
    prefix: &str,
    origins: &mut BTreeMap<String, Origin>,
) {
    for (key, value) in upper {
        let path = join(prefix, &key);
        let value = match (lower.get_mut(&key), value) {
            (Some(Value::Table(lower)), Value::Table(upper)) => {
                merge_tables(lower, upper, &path, origins);
                continue;
            }
            (_, value) => value,
        };
        // The replaced value's leaves no longer exist; the caller adds the new ones.
        origins.retain(|leaf, _| !is_within(leaf, &path));
        lower.insert(key, value);
    }
}

fn record(table: &Table, prefix: &str, origin: &Origin, origins: &mut BTreeMap<String, Origin>) {
    for (key, value) in table {
        let path = join(prefix, key);
        if let Value::Table(inner) = value {
            record(inner, &path, origin, origins);
        }
        origins.insert(path, origin.clone());
    }
}

/// Whether `path` is `ancestor` or lies inside it.
fn is_within(path: &str, ancestor: &str) -> bool {
    path.strip_prefix(ancestor)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// Parser messages can span lines; errors are one line each.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn arrays_are_replaced_whole_and_leaves_keep_their_origin() {
        let table: Table =
            toml::from_str("[node]\nport = 1\nbind = 'x'\n[[destinations]]\nname = 'a'").unwrap();
        let mut origins = BTreeMap::new();
        record(&table, "", &Origin::File("f".into()), &mut origins);
        let mut lower = Layer { table, origins };
        let upper = Layer::from_env(&env(&[
            ("kneenode__Node__PORT", "2"),
            ("KNEENODE__DESTINATIONS", "[]"),
        ]))
        .unwrap();
        lower.merge(upper);
        assert_eq!(
            lower.origin_of("node.port"),
            Origin::Env("kneenode__Node__PORT".into())
        );
        assert_eq!(lower.origin_of("node.bind"), Origin::File("f".into()));
        assert_eq!(
            lower.origin_of("destinations[0].name"),
            Origin::Env("KNEENODE__DESTINATIONS".into())
        );
        assert_eq!(lower.origin_of("portal.port"), Origin::Default);
        assert!(!lower.origins.contains_key("destinations.name"));
    }

    #[test]
    fn env_conflicts_and_malformed_names_are_errors() {
        let err = Layer::from_env(&env(&[
            ("KNEENODE__NODE__PORT", "1"),
            ("KNEENODE__NODE", "{}"),
        ]))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable KNEENODE__NODE__PORT: node.port: conflicts with \
             environment variable KNEENODE__NODE, which sets node"
        );
        let err = Layer::from_env(&env(&[("KNEENODE__NODE____PORT", "1")])).unwrap_err();
        assert!(err.to_string().contains("malformed"), "{err}");
        assert!(Layer::from_env(&env(&[("KNEENODE_CONFIG", "x"), ("KNEENODEX", "y")])).is_ok());
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        assert_eq!(line_column("a = 1\nb = é?", 12), (2, 6));
        assert_eq!(line_column("", 0), (1, 1));
    }
}
