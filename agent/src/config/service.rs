//! `[[service]]`: a watched service and what to do when it is respawned.

use anyhow::{Context, Result, bail};
use glob::Pattern;
use serde::Deserialize;

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub name: String,
    /// Globs on the executable's path, compiled; each keeps its text
    /// (`as_str`). Empty: any program in a matching unit.
    pub exe: Vec<Pattern>,
    /// Globs on the systemd unit a process runs in (`postgresql@*.service`).
    /// A process in a unit they match is tracked as that unit's own service,
    /// named after it (`postgresql@15-main`); with `exe` set, one outside
    /// such a unit is tracked under `name`.
    pub unit: Vec<Pattern>,
    /// What to do when a supervisor respawns it inside a maintenance window.
    pub on_respawn: InWindow,
    /// What to do when a supervisor respawns it after an operator stopped
    /// it, with no window open.
    pub on_unexpected_respawn: UnexpectedRespawn,
    /// How `stopguard stop` stops it (argv, run by the agent with the
    /// operator's login identity); without it, SIGTERM to the main process.
    pub stop_command: Option<Vec<String>>,
}

impl Service {
    /// Whether its unit globs can match many units, each then tracked as a
    /// service of its own (`postgresql@15-main`, `postgresql@16-main`).
    pub fn per_instance(&self) -> bool {
        self.unit
            .iter()
            .any(|p| p.as_str().contains(['*', '?', '[']))
    }

    /// Whether a process running `exe` (or a script at that path) belongs
    /// to it; with no exe globs, any program does.
    pub fn runs(&self, paths: &[&str]) -> bool {
        self.exe.is_empty()
            || paths
                .iter()
                .any(|path| self.exe.iter().any(|p| p.matches(path)))
    }

    /// Whether `unit` is one of its units.
    pub fn in_unit(&self, unit: &str) -> bool {
        self.unit.iter().any(|p| p.matches(unit))
    }
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

/// A `[[service]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceToml {
    name: String,
    #[serde(default)]
    exe: OneOrMany,
    #[serde(default)]
    unit: OneOrMany,
    #[serde(default)]
    on_respawn: InWindow,
    #[serde(default)]
    on_unexpected_respawn: UnexpectedRespawn,
    #[serde(default)]
    stop_command: Option<Vec<String>>,
}

/// A glob or a list of them: `unit = "postgresql@*.service"` reads as well
/// as a list.
#[derive(Default, Deserialize)]
#[serde(untagged, expecting = "a glob or a list of globs")]
pub(super) enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// A unit glob names a service unit unless it says otherwise, as
/// `systemctl` reads a bare name: `redis-server` is `redis-server.service`.
fn unit_glob(glob: String) -> String {
    let typed = glob.ends_with('*')
        || [
            ".service", ".scope", ".socket", ".timer", ".target", ".mount",
        ]
        .iter()
        .any(|t| glob.ends_with(t));
    if typed {
        glob
    } else {
        format!("{glob}.service")
    }
}

fn exe_patterns(service: &str, globs: Vec<String>) -> Result<Vec<Pattern>> {
    globs
        .iter()
        .map(|glob| {
            Pattern::new(glob)
                .with_context(|| format!("service `{service}`: bad exe glob `{glob}`"))
        })
        .collect()
}

/// Compiles each service's globs; an error names the service and the glob.
pub(super) fn compile(services: Vec<ServiceToml>) -> Result<Vec<Service>> {
    services
        .into_iter()
        .map(|s| {
            let exe = exe_patterns(&s.name, s.exe.into_vec())?;
            let unit = s
                .unit
                .into_vec()
                .into_iter()
                .map(|glob| {
                    Pattern::new(&unit_glob(glob.clone()))
                        .with_context(|| format!("service `{}`: bad unit glob `{glob}`", s.name))
                })
                .collect::<Result<_>>()?;
            Ok(Service {
                name: s.name,
                exe,
                unit,
                on_respawn: s.on_respawn,
                on_unexpected_respawn: s.on_unexpected_respawn,
                stop_command: s.stop_command,
            })
        })
        .collect()
}

/// Checks what a glob cannot: names present and unique, a program to stop
/// with, at least one exe or unit.
pub(super) fn check(services: &[Service]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for service in services {
        if service.name.is_empty() {
            bail!("a [[service]] has an empty name");
        }
        if !seen.insert(service.name.as_str()) {
            bail!("service `{}` is defined twice", service.name);
        }
        if service.stop_command.as_ref().is_some_and(|c| c.is_empty()) {
            bail!(
                "service `{}`: key `stop_command` needs a program (an argv list such as [\"pg_ctlcluster\", \"15\", \"main\", \"stop\"])",
                service.name
            );
        }
        if service.exe.is_empty() && service.unit.is_empty() {
            bail!(
                "service `{}`: needs key `exe` (executable path globs) or `unit` (systemd unit globs such as \"postgresql@*.service\")",
                service.name
            );
        }
    }
    Ok(())
}
