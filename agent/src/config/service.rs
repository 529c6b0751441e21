//! `[[service]]`: a watched service and what to do when it is respawned.

use anyhow::{Context, Result, bail};
use glob::Pattern;
use serde::Deserialize;

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub name: String,
    /// Globs on the executable's path, compiled; each keeps its text
    /// (`as_str`).
    pub exe: Vec<Pattern>,
    /// What to do when a supervisor respawns it inside a maintenance window.
    pub on_respawn: InWindow,
    /// What to do when a supervisor respawns it after an operator stopped
    /// it, with no window open.
    pub on_unexpected_respawn: UnexpectedRespawn,
    /// How `stopguard stop` stops it (argv, run by the agent with the
    /// operator's login identity); without it, SIGTERM to the main process.
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

/// A `[[service]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceToml {
    name: String,
    exe: Vec<String>,
    #[serde(default)]
    on_respawn: InWindow,
    #[serde(default)]
    on_unexpected_respawn: UnexpectedRespawn,
    #[serde(default)]
    stop_command: Option<Vec<String>>,
}

/// Compiles each service's exe globs; an error names the service and the glob.
pub(super) fn compile(services: Vec<ServiceToml>) -> Result<Vec<Service>> {
    services
        .into_iter()
        .map(|s| {
            let exe = s
                .exe
                .iter()
                .map(|glob| {
                    Pattern::new(glob)
                        .with_context(|| format!("service `{}`: bad exe glob `{glob}`", s.name))
                })
                .collect::<Result<_>>()?;
            Ok(Service {
                name: s.name,
                exe,
                on_respawn: s.on_respawn,
                on_unexpected_respawn: s.on_unexpected_respawn,
                stop_command: s.stop_command,
            })
        })
        .collect()
}

/// Checks what a glob cannot: names present and unique, a program to stop
/// with, at least one exe.
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
        if service.exe.is_empty() {
            bail!(
                "service `{}`: key `exe` needs at least one path glob",
                service.name
            );
        }
    }
    Ok(())
}
