//! Reads one key at a time out of the merged figment layers and records every
//! problem under the key's dotted name, so that `check-config` can list them
//! all instead of stopping at the first serde error.

use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::value::{Dict, Value};
use serde::de::DeserializeOwned;

use super::{ENV_PREFIX, Problem};

/// Keys (dotted) known to the sidecar, read from the embedded defaults.
/// `headers.claims` is a table whose keys are header names chosen by the user.
const FREE_TABLES: &[&str] = &["headers.claims"];

pub(super) struct Loader<'a> {
    figment: &'a Figment,
    pub(super) problems: Vec<Problem>,
}

impl<'a> Loader<'a> {
    pub(super) fn new(figment: &'a Figment) -> Self {
        Self {
            figment,
            problems: Vec::new(),
        }
    }

    pub(super) fn problem(&mut self, key: &str, message: impl Into<String>) {
        let source = self.source_of(key);
        self.problems.push(Problem {
            key: key.to_string(),
            message: message.into(),
            source,
        });
    }

    /// Where the value of `key` came from, for messages ("config.toml", an env var).
    fn source_of(&self, key: &str) -> Option<String> {
        let md = self.figment.find_metadata(key)?;
        if from_env(&md.name) {
            return Some(env_var_name(key));
        }
        match &md.source {
            Some(figment::Source::File(path)) => Some(path.display().to_string()),
            _ => None,
        }
    }

    /// A typed value; a type error is recorded and `None` returned.
    pub(super) fn get<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        match self.figment.extract_inner::<T>(key) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(key, e.kind.to_string());
                None
            }
        }
    }

    /// A string value. Environment variables are read verbatim: figment parses
    /// them as TOML-ish values, which would turn a client id such as `0123`
    /// into the number 123.
    pub(super) fn string(&mut self, key: &str) -> String {
        match self.figment.find_value(key) {
            Ok(Value::String(_, s)) => s,
            Ok(value) => {
                let is_env = self
                    .figment
                    .get_metadata(value.tag())
                    .is_some_and(|md| from_env(&md.name));
                match std::env::var(env_var_name(key)) {
                    Ok(raw) if is_env => raw,
                    _ => {
                        self.problem(key, "expected a string");
                        String::new()
                    }
                }
            }
            Err(_) => String::new(),
        }
    }

    /// An optional path: empty means unset.
    pub(super) fn path(&mut self, key: &str) -> Option<PathBuf> {
        let s = self.string(key);
        (!s.is_empty()).then(|| PathBuf::from(s))
    }

    /// A duration given as a string such as `"90s"` or `"12h"`, or a whole
    /// number of seconds.
    pub(super) fn duration(&mut self, key: &str) -> Option<Duration> {
        match self.figment.find_value(key) {
            Ok(Value::Num(_, n)) => match n.to_u128() {
                Some(secs) => Some(Duration::from_secs(secs.min(u64::MAX as u128) as u64)),
                None => {
                    self.problem(key, "a duration must not be negative");
                    None
                }
            },
            Ok(Value::String(_, s)) => match humantime::parse_duration(s.trim()) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.problem(
                        key,
                        format!("invalid duration {s:?} ({e}); use e.g. \"90s\", \"5m\", \"12h\""),
                    );
                    None
                }
            },
            Ok(_) => {
                self.problem(key, "expected a duration such as \"90s\"");
                None
            }
            Err(_) => None,
        }
    }

    /// A secret given inline as `key` or as a file path in `key_file`
    /// (as mounted from a Kubernetes Secret). Setting both is a problem.
    pub(super) fn secret_source(&mut self, key: &str) -> SecretSource {
        let file_key = format!("{key}_file");
        let file = self.path(&file_key);
        let inline = self.figment.find_value(key).ok();
        let inline_set = match &inline {
            Some(Value::String(_, s)) => !s.is_empty(),
            Some(Value::Array(_, a)) => !a.is_empty(),
            Some(_) => true,
            None => false,
        };
        match (inline_set, file) {
            (true, Some(_)) => {
                self.problem(
                    &file_key,
                    format!("set either `{key}` or `{file_key}`, not both"),
                );
                SecretSource::Unset
            }
            (false, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(text) => SecretSource::File(text),
                Err(e) => {
                    self.problem(&file_key, format!("cannot read {}: {e}", path.display()));
                    SecretSource::Unset
                }
            },
            (true, None) => SecretSource::Inline(inline.unwrap_or_else(|| Value::from(""))),
            (false, None) => SecretSource::Unset,
        }
    }

    /// Reports every key present in the layers that the sidecar does not know.
    pub(super) fn check_unknown_keys(&mut self, known: &Dict) {
        let Ok(merged) = self.figment.find_value("") else {
            return;
        };
        let mut unknown = Vec::new();
        if let Value::Dict(_, dict) = merged {
            walk_unknown("", &dict, known, &mut unknown);
        }
        for key in unknown {
            self.problem(&key, "unknown key");
        }
    }
}

/// Where a secret came from; a file may hold several lines (rotation lists).
pub(super) enum SecretSource {
    Unset,
    Inline(Value),
    File(String),
}

fn walk_unknown(prefix: &str, dict: &Dict, known: &Dict, out: &mut Vec<String>) {
    for (k, v) in dict {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if FREE_TABLES.contains(&key.as_str()) {
            continue;
        }
        match (known.get(k), v) {
            (None, _) => out.push(key),
            (Some(Value::Dict(_, known_sub)), Value::Dict(_, sub)) => {
                walk_unknown(&key, sub, known_sub, out)
            }
            _ => {}
        }
    }
}

fn from_env(metadata_name: &str) -> bool {
    metadata_name.contains("environment")
}

/// `provider.client_id` → `EMP_SIDECAR_PROVIDER__CLIENT_ID`.
pub(super) fn env_var_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.to_ascii_uppercase().replace('.', "__")
    )
}
