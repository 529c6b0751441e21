//! The agent's configuration: a TOML file, or the embedded default.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/stopguard/stopguard.toml";
pub const EMBEDDED: &str = include_str!("default-config.toml");

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: Agent,
    #[serde(default, rename = "service")]
    pub services: Vec<Service>,
    #[serde(default, rename = "sink")]
    pub sinks: Vec<crate::sinks::SinkConfig>,
    /// Where it came from, for messages: a path or "embedded default".
    #[serde(skip)]
    pub source: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Agent {
    /// Default: the machine's hostname.
    pub host: String,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub audit_log: PathBuf,
    pub control_group: Option<String>,
    /// Kernel ring buffer size in bytes: a power of two, at least 4096.
    pub ring_bytes: u32,
    /// The cgroup freezer that holds frozen respawns.
    pub freezer: crate::actions::Freezer,
    /// Respawn alerts of one service within this long of the first become
    /// one follow-up to the sinks ("respawned 3 more times").
    pub group_interval: String,
    /// Where to serve Prometheus metrics (e.g. "127.0.0.1:9464"); off when unset.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Default for Agent {
    fn default() -> Self {
        Agent {
            host: hostname(),
            state_dir: "/var/lib/stopguard".into(),
            socket: "/run/stopguard/stopguard.sock".into(),
            audit_log: "/var/log/stopguard/audit.jsonl".into(),
            control_group: None,
            ring_bytes: crate::kernel::DEFAULT_RING_BYTES,
            freezer: Default::default(),
            group_interval: "5m".into(),
            metrics_listen: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    /// Globs on the executable's path.
    pub exe: Vec<String>,
    /// What to do when a supervisor respawns it inside a maintenance window.
    #[serde(default)]
    pub on_respawn: InWindow,
    /// What to do when a supervisor respawns it after an operator stopped
    /// it, with no window open.
    #[serde(default)]
    pub on_unexpected_respawn: UnexpectedRespawn,
    /// How `stopguard stop` stops it (argv, run by the agent with the
    /// operator's login identity); without it, SIGTERM to the main process.
    #[serde(default)]
    pub stop_command: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InWindow {
    #[default]
    Freeze,
    Alert,
    Kill,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnexpectedRespawn {
    #[default]
    Alert,
    Freeze,
    Ignore,
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

impl Config {
    /// Parses `text`; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Config> {
        let mut config: Config =
            toml::from_str(text).with_context(|| format!("reading {source}"))?;
        for service in &config.services {
            for glob in &service.exe {
                glob::Pattern::new(glob).with_context(|| {
                    format!(
                        "reading {source}: service `{}`: bad exe glob `{glob}`",
                        service.name
                    )
                })?;
            }
        }
        config.source = source.to_string();
        crate::sinks::check(&config.sinks).with_context(|| format!("reading {source}"))?;
        humantime::parse_duration(&config.agent.group_interval).map_err(|e| {
            anyhow::anyhow!(
                "reading {source}: [agent] key `group_interval`: expected a duration such as \"5m\", got `{}` ({e})",
                config.agent.group_interval
            )
        })?;
        let ring = config.agent.ring_bytes;
        if ring < 4096 || !ring.is_power_of_two() {
            bail!(
                "reading {source}: [agent] key `ring_bytes`: expected a power of two of at least 4096, got {ring}"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for service in &config.services {
            if service.name.is_empty() {
                bail!("reading {source}: a [[service]] has an empty name");
            }
            if !seen.insert(service.name.as_str()) {
                bail!(
                    "reading {source}: service `{}` is defined twice",
                    service.name
                );
            }
            if service.stop_command.as_ref().is_some_and(|c| c.is_empty()) {
                bail!(
                    "reading {source}: service `{}`: key `stop_command` needs a program (an argv list such as [\"pg_ctlcluster\", \"15\", \"main\", \"stop\"])",
                    service.name
                );
            }
            if service.exe.is_empty() {
                bail!(
                    "reading {source}: service `{}`: key `exe` needs at least one path glob",
                    service.name
                );
            }
        }
        Ok(config)
    }

    pub fn embedded() -> Config {
        Config::parse(EMBEDDED, "the embedded default config").expect("the embedded config parses")
    }

    /// `path` when given (it must exist), else /etc/stopguard/stopguard.toml
    /// when it exists, else the embedded default.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let path = match path {
            Some(p) => p,
            None if Path::new(DEFAULT_PATH).exists() => Path::new(DEFAULT_PATH),
            None => return Ok(Config::embedded()),
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Config::parse(&text, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_watches_the_common_databases() {
        let config = Config::embedded();
        let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "postgres",
                "mysql",
                "mongodb",
                "redis",
                "etcd",
                "clickhouse"
            ]
        );
        assert!(!config.agent.host.is_empty());
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = "[agent]\nhost = \"db-3\"\n\n[[service]]\nname = \"pg\"\nexe = [\"/x\"]\non_respwan = \"freeze\"\n";
        let err = format!("{:#}", Config::parse(text, "/etc/x.toml").unwrap_err());
        assert!(err.starts_with("reading /etc/x.toml: "), "{err}");
        assert!(err.contains("line 7"), "{err}");
        assert!(err.contains("on_respwan"), "{err}");
    }

    #[test]
    fn ring_size_and_stop_command_are_checked() {
        let text = "[agent]\nfreezer = \"cgroup3\"\n";
        let err = format!("{:#}", Config::parse(text, "f.toml").unwrap_err());
        assert!(err.contains("line 2") && err.contains("cgroup2"), "{err}");
        let text = "[agent]\nring_bytes = 5000\n";
        let err = format!("{:#}", Config::parse(text, "f.toml").unwrap_err());
        assert_eq!(
            err,
            "reading f.toml: [agent] key `ring_bytes`: expected a power of two of at least 4096, got 5000"
        );
        let text = "[[service]]\nname = \"pg\"\nexe = [\"/a\"]\nstop_command = []\n";
        let err = format!("{:#}", Config::parse(text, "f.toml").unwrap_err());
        assert!(
            err.contains("service `pg`: key `stop_command` needs a program"),
            "{err}"
        );
        let text = "[[service]]\nname = \"pg\"\nexe = [\"/a\"]\nstop_command = [\"pg_ctlcluster\", \"15\", \"main\", \"stop\"]\n";
        let config = Config::parse(text, "f.toml").unwrap();
        assert_eq!(config.services[0].stop_command.as_ref().unwrap().len(), 4);
    }

    #[test]
    fn sinks_are_checked() {
        let err = |text: &str| format!("{:#}", Config::parse(text, "f.toml").unwrap_err());
        assert_eq!(
            err("[[sink]]\nkind = \"webhook\"\nurl = \"hooks.example.com\"\n"),
            "reading f.toml: [[sink]] `webhook`: key `url`: expected an http:// or https:// URL, got `hooks.example.com`"
        );
        assert_eq!(
            err(
                "[[sink]]\nkind = \"pagerduty\"\nurl = \"https://events.pagerduty.com/v2/enqueue\"\n"
            ),
            "reading f.toml: [[sink]] `pagerduty`: a pagerduty sink needs its routing key in `secret_file` or `secret_env`"
        );
        assert!(err("[[sink]]\nkind = \"email\"\nurl = \"https://x\"\n").contains("line 2"));
        let text = "[[sink]]\nkind = \"slack\"\nurl = \"https://a\"\n[[sink]]\nkind = \"slack\"\nurl = \"https://b\"\n";
        let config = Config::parse(text, "f.toml").unwrap();
        assert_eq!(
            crate::sinks::resolve_names(&config.sinks),
            ["slack-1", "slack-2"]
        );
    }

    #[test]
    fn duplicate_service_is_refused() {
        let text = "[[service]]\nname = \"pg\"\nexe = [\"/a\"]\n[[service]]\nname = \"pg\"\nexe = [\"/b\"]\n";
        let err = format!("{:#}", Config::parse(text, "f.toml").unwrap_err());
        assert_eq!(err, "reading f.toml: service `pg` is defined twice");
    }
}
