//! `[[sink]]`: where alerts go.

use std::{collections::HashSet, path::PathBuf, time::Duration};

use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    Webhook,
    Slack,
    Teams,
    Alertmanager,
    Pagerduty,
}

impl SinkKind {
    /// As written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Webhook => "webhook",
            SinkKind::Slack => "slack",
            SinkKind::Teams => "teams",
            SinkKind::Alertmanager => "alertmanager",
            SinkKind::Pagerduty => "pagerduty",
        }
    }

    /// What a sink of this kind cannot work without, when it is a secret:
    /// PagerDuty routes events by the routing key.
    pub fn required_secret(self) -> Option<&'static str> {
        match self {
            SinkKind::Pagerduty => Some("routing key"),
            SinkKind::Webhook | SinkKind::Slack | SinkKind::Teams | SinkKind::Alertmanager => None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    #[default]
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Where a sink's secret (webhook signing key, PagerDuty routing key) is
/// read from when the agent starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// A `[[sink]]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct SinkConfig {
    /// Its `name`, else its kind (numbered when there are several of a kind).
    pub name: String,
    pub kind: SinkKind,
    pub url: String,
    pub secret: Option<SecretSource>,
    pub min_severity: Severity,
    /// How long to keep trying.
    pub max_age: Duration,
}

/// A `[[sink]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SinkToml {
    kind: SinkKind,
    name: Option<String>,
    url: String,
    /// A file holding the secret.
    secret_file: Option<PathBuf>,
    /// Or an environment variable holding it.
    secret_env: Option<String>,
    #[serde(default)]
    min_severity: Severity,
    /// Default 24h.
    max_age: Option<String>,
}

/// Types and checks `[[sink]]` tables; errors name the sink and the key.
pub(super) fn check(sinks: Vec<SinkToml>) -> Result<Vec<SinkConfig>> {
    let mut seen = HashSet::new();
    resolve_names(&sinks)
        .into_iter()
        .zip(sinks)
        .map(|(name, sink)| {
            let at = format!("[[sink]] `{name}`");
            if !seen.insert(name.clone()) {
                bail!("{at} is defined twice (give one a `name`)");
            }
            if !sink.url.starts_with("http://") && !sink.url.starts_with("https://") {
                bail!(
                    "{at}: key `url`: expected an http:// or https:// URL, got `{}`",
                    sink.url
                );
            }
            let secret = match (sink.secret_file, sink.secret_env) {
                (Some(_), Some(_)) => bail!("{at}: give `secret_file` or `secret_env`, not both"),
                (Some(path), None) => Some(SecretSource::File(path)),
                (None, Some(var)) => Some(SecretSource::Env(var)),
                (None, None) => None,
            };
            if let (Some(what), None) = (sink.kind.required_secret(), &secret) {
                bail!(
                    "{at}: a {} sink needs its {what} in `secret_file` or `secret_env`",
                    sink.kind.as_str()
                );
            }
            let max_age = match &sink.max_age {
                None => Duration::from_secs(24 * 3600),
                Some(age) => humantime::parse_duration(age).map_err(|e| {
                    anyhow!(
                        "{at}: key `max_age`: expected a duration such as \"24h\", got `{age}` ({e})"
                    )
                })?,
            };
            Ok(SinkConfig {
                name,
                kind: sink.kind,
                url: sink.url,
                secret,
                min_severity: sink.min_severity,
                max_age,
            })
        })
        .collect()
}

/// Each sink's name: its `name`, else its kind (numbered when several).
fn resolve_names(sinks: &[SinkToml]) -> Vec<String> {
    sinks
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.name.clone().unwrap_or_else(|| {
                let kind = s.kind.as_str();
                let same = sinks
                    .iter()
                    .filter(|o| o.kind == s.kind && o.name.is_none())
                    .count();
                if same > 1 {
                    format!("{kind}-{}", i + 1)
                } else {
                    kind.to_string()
                }
            })
        })
        .collect()
}
