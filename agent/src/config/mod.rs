//! The agent's configuration: a TOML file, or the embedded default.
//!
//! The file is read once into typed values (durations, compiled globs, a
//! checked ring size, resolved sink names); the rest of the agent never
//! checks them again. Configuration depends on nothing at runtime: the
//! runtime depends on it.
//!
//! - `service`: the `[[service]]` tables.
//! - `sink`: the `[[sink]]` tables.
//! - `fleet`: the `[fleet]` table.

pub mod fleet;
mod service;
mod sink;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use serde::Deserialize;

pub use self::{
    fleet::Fleet,
    service::{InWindow, Service, UnexpectedRespawn},
    sink::{SecretSource, Severity, SinkConfig, SinkKind},
};

pub const DEFAULT_PATH: &str = "/etc/stopguard/stopguard.toml";
pub const EMBEDDED: &str = include_str!("../default-config.toml");
const EMBEDDED_SOURCE: &str = "the embedded default config";

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The `[agent]` table.
    pub agent: Settings,
    pub services: Vec<Service>,
    pub sinks: Vec<SinkConfig>,
    /// The `[fleet]` table: cluster windows and presence through etcd.
    pub fleet: Option<Fleet>,
    /// Where it came from, for messages: a path or "embedded default".
    pub source: String,
}

/// The `[agent]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Default: the machine's hostname.
    pub host: String,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub audit_log: PathBuf,
    pub control_group: Option<String>,
    pub ring_bytes: RingBytes,
    /// The cgroup freezer that holds frozen respawns.
    pub freezer: Freezer,
    /// Respawn alerts of one service within this long of the first become
    /// one follow-up to the sinks ("respawned 3 more times").
    pub group_interval: Duration,
    /// Where to serve Prometheus metrics (e.g. "127.0.0.1:9464"); off when unset.
    pub metrics_listen: Option<SocketAddr>,
}

/// The kernel ring buffer's size in bytes: a power of two, at least one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingBytes(u32);

impl RingBytes {
    /// A few seconds of a busy machine's top exec rate.
    pub const DEFAULT: RingBytes = RingBytes(1 << 22);

    /// The largest ring: 256 MiB is minutes of the busiest host's records,
    /// and every byte of it is locked kernel memory.
    pub const MAX: u32 = 1 << 28;

    pub fn new(bytes: u32) -> Option<RingBytes> {
        ((4096..=Self::MAX).contains(&bytes) && bytes.is_power_of_two()).then_some(RingBytes(bytes))
    }

    pub const fn get(self) -> u32 {
        self.0
    }
}

/// Which cgroup freezer holds frozen processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Freezer {
    /// cgroup v2 where it is mounted, else the v1 freezer.
    #[default]
    Auto,
    Cgroup2,
    Cgroup1,
}

/// The file as written, before its values are checked and typed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigToml {
    #[serde(default)]
    agent: SettingsToml,
    #[serde(default, rename = "service")]
    services: Vec<service::ServiceToml>,
    #[serde(default, rename = "sink")]
    sinks: Vec<sink::SinkToml>,
    fleet: Option<fleet::FleetToml>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsToml {
    host: Option<String>,
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    audit_log: Option<PathBuf>,
    control_group: Option<String>,
    ring_bytes: Option<u32>,
    #[serde(default)]
    freezer: Freezer,
    group_interval: Option<String>,
    metrics_listen: Option<SocketAddr>,
}

impl SettingsToml {
    fn check(self) -> Result<Settings> {
        let group_interval = match &self.group_interval {
            None => Duration::from_secs(5 * 60),
            Some(text) => humantime::parse_duration(text).map_err(|e| {
                anyhow!(
                    "[agent] key `group_interval`: expected a duration such as \"5m\", got `{text}` ({e})"
                )
            })?,
        };
        let ring_bytes = match self.ring_bytes {
            None => RingBytes::DEFAULT,
            Some(bytes) => RingBytes::new(bytes).ok_or_else(|| {
                anyhow!(
                    "[agent] key `ring_bytes`: expected a power of two from 4096 to 268435456 (256 MiB), got {bytes}"
                )
            })?,
        };
        Ok(Settings {
            host: self.host.unwrap_or_else(hostname),
            state_dir: self.state_dir.unwrap_or("/var/lib/stopguard".into()),
            socket: self
                .socket
                .unwrap_or("/run/stopguard/stopguard.sock".into()),
            audit_log: self
                .audit_log
                .unwrap_or("/var/log/stopguard/audit.jsonl".into()),
            control_group: self.control_group,
            ring_bytes,
            freezer: self.freezer,
            group_interval,
            metrics_listen: self.metrics_listen,
        })
    }
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
        let file: ConfigToml = toml::from_str(text).with_context(|| format!("reading {source}"))?;
        Config::check(file, source.to_string()).with_context(|| format!("reading {source}"))
    }

    /// Types and checks what the file says; errors name the table and key.
    fn check(file: ConfigToml, source: String) -> Result<Config> {
        let services = service::compile(file.services)?;
        let sinks = sink::check(file.sinks)?;
        let agent = file.agent.check()?;
        service::check(&services)?;
        let fleet = file.fleet.map(fleet::FleetToml::check).transpose()?;
        if fleet.is_some() {
            fleet::check_name("[agent] key `host`:", &agent.host).map_err(|e| anyhow!(e))?;
        }
        Ok(Config {
            agent,
            services,
            sinks,
            fleet,
            source,
        })
    }

    /// What it watches and where alerts go, a line each: `check-config`.
    pub fn describe(&self) -> Vec<String> {
        let globs = |globs: &[glob::Pattern]| {
            globs
                .iter()
                .map(|g| g.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut lines = Vec::new();
        for s in &self.services {
            let mut matches = Vec::new();
            if !s.exe.is_empty() {
                matches.push(format!("exe {}", globs(&s.exe)));
            }
            if !s.unit.is_empty() {
                let each = if s.per_instance() {
                    " (each its own service)"
                } else {
                    ""
                };
                matches.push(format!("unit {}{each}", globs(&s.unit)));
            }
            lines.push(format!(
                "{:<12} {}  in a window: {:?}, otherwise: {:?}",
                s.name,
                matches.join("; "),
                s.on_respawn,
                s.on_unexpected_respawn
            ));
        }
        for sink in &self.sinks {
            lines.push(format!(
                "sink {:<12} {:?}, min_severity {:?}",
                sink.name, sink.kind, sink.min_severity
            ));
        }
        if let Some(fleet) = &self.fleet {
            let urls: Vec<&str> = fleet.endpoints.iter().map(|e| e.url.as_str()).collect();
            lines.push(format!(
                "fleet        cluster {} under {} on etcd {}{}",
                fleet.cluster,
                fleet.prefix,
                urls.join(", "),
                fleet
                    .auth
                    .as_ref()
                    .map_or(String::new(), |a| format!(" as user {}", a.user))
            ));
        }
        lines
    }

    pub fn embedded() -> Config {
        Config::parse(EMBEDDED, EMBEDDED_SOURCE).expect("the embedded config parses")
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
pub(crate) mod reference;

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

    /// The Debian package's /etc/stopguard/stopguard.toml.
    const PACKAGED: &str = include_str!("../../../packaging/stopguard.toml");

    #[test]
    fn the_packaged_config_is_the_embedded_one() {
        let packaged = Config::parse(PACKAGED, "packaging/stopguard.toml").unwrap();
        assert_eq!(
            Config {
                source: EMBEDDED_SOURCE.into(),
                ..packaged
            },
            Config::embedded()
        );
    }

    /// Every key it shows commented out is spelled right and takes the
    /// value shown; a new `[agent]` key fails to compile here until the
    /// packaged file shows it.
    #[test]
    fn the_packaged_config_shows_every_optional_key() {
        // `#key = value` is a key commented out; `# words` explain.
        let uncommented: String = PACKAGED
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(key) if !key.starts_with([' ', '#']) && !key.is_empty() => key,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let config = Config::parse(&uncommented, "uncommented").unwrap();
        let Settings {
            host,
            state_dir: _,
            socket: _,
            audit_log: _,
            control_group,
            ring_bytes,
            freezer,
            group_interval,
            metrics_listen,
        } = config.agent;
        assert_eq!(host, "db-3");
        assert_eq!(control_group.as_deref(), Some("dba"));
        assert_eq!(ring_bytes, RingBytes::DEFAULT);
        assert_eq!(freezer, Freezer::Auto);
        assert_eq!(group_interval, Duration::from_secs(300));
        assert_eq!(metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        let postgres = &config.services[0];
        assert_eq!(postgres.on_respawn, InWindow::default());
        assert_eq!(postgres.on_unexpected_respawn, UnexpectedRespawn::default());
        assert!(postgres.stop_command.is_some());
        let kinds: Vec<SinkKind> = config.sinks.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                SinkKind::Webhook,
                SinkKind::Slack,
                SinkKind::Teams,
                SinkKind::Alertmanager,
                SinkKind::Pagerduty
            ]
        );
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
            "reading f.toml: [agent] key `ring_bytes`: expected a power of two from 4096 to 268435456 (256 MiB), got 5000"
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
        let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["slack-1", "slack-2"]);
    }

    #[test]
    fn sink_values_are_typed_once() {
        let text = "[[sink]]\nkind = \"pagerduty\"\nurl = \"https://x\"\nsecret_env = \"PD\"\nmax_age = \"90m\"\n[[sink]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"http://y\"\n";
        let config = Config::parse(text, "f.toml").unwrap();
        let (pd, ops) = (&config.sinks[0], &config.sinks[1]);
        assert_eq!(pd.name, "pagerduty");
        assert_eq!(pd.secret, Some(SecretSource::Env("PD".into())));
        assert_eq!(pd.max_age, Duration::from_secs(90 * 60));
        assert_eq!(ops.name, "ops");
        assert_eq!(ops.secret, None);
        assert_eq!(ops.max_age, Duration::from_secs(24 * 3600), "the default");
        let err = |text: &str| format!("{:#}", Config::parse(text, "f.toml").unwrap_err());
        assert!(
            err("[[sink]]\nkind = \"webhook\"\nurl = \"http://y\"\nmax_age = \"soon\"\n")
                .starts_with("reading f.toml: [[sink]] `webhook`: key `max_age`: expected a duration such as \"24h\", got `soon`"),
        );
        assert_eq!(
            err(
                "[[sink]]\nkind = \"webhook\"\nurl = \"http://y\"\nsecret_env = \"A\"\nsecret_file = \"/b\"\n"
            ),
            "reading f.toml: [[sink]] `webhook`: give `secret_file` or `secret_env`, not both"
        );
    }

    #[test]
    fn agent_values_are_typed_once() {
        let config = Config::parse(
            "[agent]\ngroup_interval = \"90s\"\nring_bytes = 8192\n",
            "f.toml",
        )
        .unwrap();
        assert_eq!(config.agent.group_interval, Duration::from_secs(90));
        assert_eq!(config.agent.ring_bytes.get(), 8192);
        let defaults = Config::parse("", "f.toml").unwrap().agent;
        assert_eq!(defaults.group_interval, Duration::from_secs(300));
        assert_eq!(defaults.ring_bytes, RingBytes::DEFAULT);
        assert_eq!(defaults.freezer, Freezer::Auto);
        let err = format!(
            "{:#}",
            Config::parse("[agent]\ngroup_interval = \"5 parsecs\"\n", "f.toml").unwrap_err()
        );
        assert!(
            err.starts_with("reading f.toml: [agent] key `group_interval`: expected a duration such as \"5m\", got `5 parsecs` ("),
            "{err}"
        );
    }

    #[test]
    fn a_bad_glob_names_the_service() {
        let text = "[[service]]\nname = \"pg\"\nexe = [\"/usr/[bin\"]\n";
        let err = format!("{:#}", Config::parse(text, "f.toml").unwrap_err());
        assert!(
            err.starts_with("reading f.toml: service `pg`: bad exe glob `/usr/[bin`"),
            "{err}"
        );
        let text = "[[service]]\nname = \"pg\"\nexe = [\"/usr/lib/postgresql/*/bin/postgres\"]\n";
        let exe = &Config::parse(text, "f.toml").unwrap().services[0].exe;
        assert!(exe[0].matches("/usr/lib/postgresql/15/bin/postgres"));
        assert_eq!(exe[0].as_str(), "/usr/lib/postgresql/*/bin/postgres");
    }

    #[test]
    fn duplicate_service_is_refused() {
        let text = "[[service]]\nname = \"pg\"\nexe = [\"/a\"]\n[[service]]\nname = \"pg\"\nexe = [\"/b\"]\n";
        let err = format!("{:#}", Config::parse(text, "f.toml").unwrap_err());
        assert_eq!(err, "reading f.toml: service `pg` is defined twice");
    }

    #[test]
    fn unit_globs_read_as_one_or_a_list_and_a_bare_name_is_a_service() {
        let text = "[[service]]\nname = \"pg\"\nunit = \"postgresql@*\"\n[[service]]\nname = \"redis\"\nunit = [\"redis-server\", \"valkey-server.service\"]\n";
        let services = Config::parse(text, "f.toml").unwrap().services;
        assert!(services[0].exe.is_empty());
        assert!(services[0].per_instance());
        assert!(services[0].in_unit("postgresql@15-main.service"));
        assert!(
            services[0].runs(&["/usr/bin/anything"]),
            "no exe: any program"
        );
        let units: Vec<&str> = services[1].unit.iter().map(|p| p.as_str()).collect();
        assert_eq!(units, ["redis-server.service", "valkey-server.service"]);
        assert!(!services[1].per_instance());
    }

    #[test]
    fn a_service_needs_an_exe_or_a_unit_and_bad_ones_are_named() {
        let err = format!(
            "{:#}",
            Config::parse("[[service]]\nname = \"pg\"\n", "f.toml").unwrap_err()
        );
        assert!(err.contains("service `pg`: needs key `exe`"), "{err}");
        let err = format!(
            "{:#}",
            Config::parse("[[service]]\nname = \"pg\"\nunit = 5\n", "f.toml").unwrap_err()
        );
        assert!(err.contains("a glob or a list of globs"), "{err}");
        let err = format!(
            "{:#}",
            Config::parse("[[service]]\nname = \"pg\"\nunit = \"pg@[\"\n", "f.toml").unwrap_err()
        );
        assert!(err.contains("service `pg`: bad unit glob `pg@[`"), "{err}");
    }
}
