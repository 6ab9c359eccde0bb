//! Typed reads from the merged table, each value carrying its dotted key and origin so that a
//! check made later can still say where the value came from.

use std::borrow::Borrow;

use serde::Deserialize;
use toml::{Table, Value};

use super::layers::Layer;
use super::{ConfigError, Origin};

/// A value read from the configuration, or its default.
#[derive(Debug)]
pub(super) struct Field<T> {
    pub(super) value: T,
    pub(super) key: String,
    pub(super) origin: Origin,
}

impl<T> Field<T> {
    /// An error about this value.
    pub(super) fn invalid(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.clone(),
            key: self.key.clone(),
            reason: reason.into(),
        }
    }

    /// The value, if `check` finds nothing wrong with it.
    pub(super) fn check<U: ?Sized>(
        self,
        check: impl FnOnce(&U) -> Result<(), String>,
    ) -> Result<T, ConfigError>
    where
        T: Borrow<U>,
    {
        match check(self.value.borrow()) {
            Ok(()) => Ok(self.value),
            Err(reason) => Err(self.invalid(reason)),
        }
    }
}

impl Field<i64> {
    /// The value as `U`, which must be at least `min`.
    pub(super) fn at_least<U: TryFrom<i64>>(self, min: i64) -> Result<U, ConfigError> {
        let v = self.value;
        if v < min {
            return Err(self.invalid(format!("{v} must be at least {min}")));
        }
        U::try_from(v).map_err(|_| self.invalid(format!("{v} is too large")))
    }

    /// A port; 0 only where `allow_zero` (0 asks the OS for a free port when listening).
    pub(super) fn port(self, allow_zero: bool) -> Result<u16, ConfigError> {
        let min = if allow_zero { 0 } else { 1 };
        match u16::try_from(self.value) {
            Ok(port) if i64::from(port) >= min => Ok(port),
            _ => Err(self.invalid(format!("{} is out of range (1–65535)", self.value))),
        }
    }
}

/// A Rust type that a TOML value can be read as.
pub(super) trait FromValue: Sized {
    /// How the type is named in "expected …" messages.
    const EXPECTED: &'static str;

    fn from_value(value: Value) -> Result<Self, Value>;

    /// Environment values arrive as strings: read them as TOML (`11113`, `true`, `["cpu"]`).
    fn from_env(raw: &str) -> Option<Value> {
        Value::deserialize(toml::de::ValueDeserializer::new(raw)).ok()
    }
}

impl FromValue for String {
    const EXPECTED: &'static str = "a string";
    fn from_value(value: Value) -> Result<Self, Value> {
        match value {
            Value::String(s) => Ok(s),
            other => Err(other),
        }
    }
    fn from_env(raw: &str) -> Option<Value> {
        // Taken literally unless quoted, so that `KNEENODE__NODE__AE_TITLE=1234` is a string.
        if raw.starts_with(['"', '\'']) {
            Value::deserialize(toml::de::ValueDeserializer::new(raw)).ok()
        } else {
            Some(Value::String(raw.to_owned()))
        }
    }
}

impl FromValue for i64 {
    const EXPECTED: &'static str = "an integer";
    fn from_value(value: Value) -> Result<Self, Value> {
        value.as_integer().ok_or(value)
    }
}

impl FromValue for f64 {
    const EXPECTED: &'static str = "a number";
    fn from_value(value: Value) -> Result<Self, Value> {
        match value {
            Value::Float(f) => Ok(f),
            Value::Integer(i) => Ok(i as f64),
            other => Err(other),
        }
    }
}

impl FromValue for bool {
    const EXPECTED: &'static str = "a boolean (true or false)";
    fn from_value(value: Value) -> Result<Self, Value> {
        value.as_bool().ok_or(value)
    }
}

impl FromValue for Vec<String> {
    const EXPECTED: &'static str = "an array of strings";
    fn from_value(value: Value) -> Result<Self, Value> {
        match value {
            Value::Array(items) if items.iter().all(Value::is_str) => Ok(items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()),
            other => Err(other),
        }
    }
    fn from_env(raw: &str) -> Option<Value> {
        // `cpu,cuda:0` is what people type in a shell; `["cpu", "cuda:0"]` works as well.
        if raw.trim_start().starts_with('[') {
            Value::deserialize(toml::de::ValueDeserializer::new(raw)).ok()
        } else {
            let items = raw.split(',').map(str::trim).filter(|s| !s.is_empty());
            Some(Value::Array(
                items.map(|s| Value::String(s.to_owned())).collect(),
            ))
        }
    }
}

impl FromValue for Table {
    const EXPECTED: &'static str = "a table";
    fn from_value(value: Value) -> Result<Self, Value> {
        match value {
            Value::Table(t) => Ok(t),
            other => Err(other),
        }
    }
}

impl FromValue for Vec<Table> {
    const EXPECTED: &'static str = "an array of tables";
    fn from_value(value: Value) -> Result<Self, Value> {
        match value {
            Value::Array(items) if items.iter().all(Value::is_table) => Ok(items
                .into_iter()
                .filter_map(|v| Table::from_value(v).ok())
                .collect()),
            other => Err(other),
        }
    }
}

/// The keys of one table, read one by one; [`Section::finish`] rejects those nobody read.
pub(super) struct Section<'a> {
    layer: &'a Layer,
    path: String,
    entries: Table,
    known: Vec<&'static str>,
}

impl<'a> Section<'a> {
    /// The whole merged configuration.
    pub(super) fn root(layer: &'a Layer) -> Self {
        Section {
            layer,
            path: String::new(),
            entries: layer.table.clone(),
            known: Vec::new(),
        }
    }

    /// The value at `key`, or `default` when no layer sets it.
    pub(super) fn get<T: FromValue>(
        &mut self,
        key: &'static str,
        default: T,
    ) -> Result<Field<T>, ConfigError> {
        match self.optional(key)? {
            Some(field) => Ok(field),
            None => Ok(Field {
                value: default,
                key: self.key(key),
                origin: Origin::Default,
            }),
        }
    }

    /// The value at `key`, which must be set.
    pub(super) fn required<T: FromValue>(
        &mut self,
        key: &'static str,
    ) -> Result<Field<T>, ConfigError> {
        match self.optional(key)? {
            Some(field) => Ok(field),
            None => Err(self.layer.invalid(self.key(key), "is required but missing")),
        }
    }

    /// The value at `key`, if some layer sets it.
    pub(super) fn optional<T: FromValue>(
        &mut self,
        key: &'static str,
    ) -> Result<Option<Field<T>>, ConfigError> {
        self.known.push(key);
        let Some(value) = self.entries.remove(key) else {
            return Ok(None);
        };
        let key = self.key(key);
        let origin = self.layer.origin_of(&key);
        let value = match (&origin, &value) {
            (Origin::Env(_), Value::String(raw)) => T::from_env(raw).unwrap_or(value),
            _ => value,
        };
        match T::from_value(value) {
            Ok(value) => Ok(Some(Field { value, key, origin })),
            Err(value) => Err(ConfigError::Invalid {
                reason: format!("expected {}, found {}", T::EXPECTED, describe(&value)),
                origin,
                key,
            }),
        }
    }

    /// The table at `key`; empty when no layer sets it.
    pub(super) fn section(&mut self, key: &'static str) -> Result<Section<'a>, ConfigError> {
        let field = self.get(key, Table::new())?;
        Ok(Section {
            layer: self.layer,
            path: field.key,
            entries: field.value,
            known: Vec::new(),
        })
    }

    /// The table at `key`, or `None` when no layer sets it (a feature that is off unless present).
    pub(super) fn optional_section(
        &mut self,
        key: &'static str,
    ) -> Result<Option<Section<'a>>, ConfigError> {
        Ok(self.optional::<Table>(key)?.map(|field| Section {
            layer: self.layer,
            path: field.key,
            entries: field.value,
            known: Vec::new(),
        }))
    }

    /// The array of tables at `key` (`[[key]]`); empty when no layer sets it.
    pub(super) fn sections(&mut self, key: &'static str) -> Result<Vec<Section<'a>>, ConfigError> {
        let field = self.get(key, Vec::<Table>::new())?;
        let sections = field
            .value
            .into_iter()
            .enumerate()
            .map(|(i, entries)| Section {
                layer: self.layer,
                path: format!("{}[{i}]", field.key),
                entries,
                known: Vec::new(),
            });
        Ok(sections.collect())
    }

    /// The dotted key of `key` within this table.
    pub(super) fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Fails on the first key that was never read.
    pub(super) fn finish(self) -> Result<(), ConfigError> {
        let Some(unknown) = self.entries.keys().next() else {
            return Ok(());
        };
        let key = self.key(unknown);
        let mut known = self.known;
        known.sort_unstable();
        let reason = format!("unknown key (expected one of: {})", known.join(", "));
        Err(self.layer.invalid(key, reason))
    }
}

/// A value as it appears in "found …" messages.
fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("string {s:?}"),
        Value::Integer(i) => format!("integer {i}"),
        Value::Float(f) => format!("number {f}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("date-time {d}"),
        Value::Array(a) => format!("an array of {} item(s)", a.len()),
        Value::Table(_) => "a table".to_owned(),
    }
}
