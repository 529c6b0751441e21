//! The agent's state on disk (`state_dir/state.json`): windows, operator
//! stops, what custody holds and guards, unresolved alerts. Written after
//! every change, read back at start, so a `kill -9` loses none of it; and
//! what is held frozen is found again in its cgroup even when the state
//! could not be written.

use std::{fs, path::Path};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::Agent;
use crate::{
    alert::{self, Alert},
    audit::AgentEvent,
    custody::{self, actions},
    detect,
    monitor::Monitor,
    sys::clock::boot_ns,
    sys::files::{self, WriteFailure},
};

#[derive(Default, Serialize, Deserialize)]
pub struct State {
    pub detector: detect::Saved,
    #[serde(flatten)]
    pub custody: custody::Saved,
    /// Alerts not yet resolved (thaw, kill, window close).
    #[serde(default)]
    pub firing: Vec<Alert>,
}

impl State {
    /// Writes the state to a temporary file, synced, then renamed, so a
    /// crash leaves the old state or the new, never half of one.
    pub fn save(&self, path: &Path) -> Result<()> {
        files::replace(path, &serde_json::to_vec_pretty(self)?)
    }

    /// The state saved at `path`. An unreadable file is kept aside (renamed,
    /// never deleted) so that the agent starts all the same: a host left
    /// unguarded because of a torn file is worse than one that starts
    /// without its memory and says so.
    pub fn load(path: &Path) -> Result<Saved> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Saved::None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        match serde_json::from_str(&text) {
            Ok(state) => Ok(Saved::State(Box::new(state))),
            Err(err) => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let kept = path.with_extension(format!("json.corrupt-{stamp}"));
                fs::rename(path, &kept)
                    .with_context(|| format!("keeping the unreadable {} aside", path.display()))?;
                Ok(Saved::Corrupt {
                    kept: kept.display().to_string(),
                    error: err.to_string(),
                })
            }
        }
    }
}

/// What `State::load` found.
pub enum Saved {
    None,
    State(Box<State>),
    /// Unreadable; renamed to `kept`.
    Corrupt {
        kept: String,
        error: String,
    },
}

impl Agent {
    /// Saves the state; a failure (a full disk) is logged, audited and
    /// shown in status once, and the save retried every second until it
    /// works.
    pub(super) fn save(&mut self) {
        let state = State {
            detector: self.detector.snapshot(),
            custody: self.custody.snapshot(),
            firing: self.alerting.firing().to_vec(),
        };
        match state.save(&self.state_path) {
            Ok(()) => {
                if self.state_failure.take().is_some() {
                    tracing::info!("state saved again to {}", self.state_path.display());
                    self.audit.write(AgentEvent::StateSaved);
                }
            }
            Err(err) => {
                let err = err.context(format!("saving state to {}", self.state_path.display()));
                if self.state_failure.is_none() {
                    tracing::error!("{err:#}; retrying every second");
                    self.audit.write(AgentEvent::StateSaveFailed {
                        error: format!("{err:#}"),
                    });
                }
                self.metrics.state_save_errors.inc();
                self.state_failure = Some(WriteFailure::now(&err));
            }
        }
    }

    /// Takes back the state of a previous run: windows, operator stops,
    /// frozen processes (those still alive and still the same process), and
    /// the guard map. Returns what was restored, in words.
    pub(super) fn restore(&mut self, monitor: &mut Monitor) -> Result<Option<String>> {
        let state = match State::load(&self.state_path)? {
            Saved::None => return Ok(None),
            Saved::State(state) => *state,
            Saved::Corrupt { kept, error } => {
                tracing::error!(
                    "the saved state {} is unreadable ({error}): kept as {kept}; starting without it",
                    self.state_path.display()
                );
                let record = alert::state_lost(&self.host, &kept, &error, &self.clock, boot_ns());
                self.alerting.raise(record);
                return Ok(Some(format!("saved state lost (kept as {kept})")));
            }
        };
        self.detector.restore(state.detector);
        self.alerting.restore_firing(state.firing);
        // A held entry is taken back only for a process of its service.
        let (detector, table) = (&mut self.detector, monitor.table());
        let check = |service: &str, frozen: &actions::Frozen| {
            let process = table
                .live(frozen.pid)
                .ok_or_else(|| "the process table does not have it".to_string())?;
            match detector.service_name_of(process) {
                Some(name) if name == service => Ok(()),
                Some(name) => Err(format!("it runs {name}'s program")),
                None => Err(format!(
                    "it runs {}, no watched service's program",
                    process.exe.as_deref().unwrap_or(&process.comm)
                )),
            }
        };
        for service in self.custody.restore(state.custody, check) {
            self.guard(monitor, &service, true);
        }
        self.audit.write(AgentEvent::StateRestored {
            windows: self.detector.windows().to_vec(),
            frozen: self.custody.held_pids(),
        });
        Ok(Some(format!(
            "state restored from {}: {} windows, {} frozen, guarding {:?}",
            self.state_path.display(),
            self.detector.windows().len(),
            self.custody.held_pids().len(),
            self.custody.guarded()
        )))
    }

    /// Holds again what sits in our frozen cgroups but the saved state does
    /// not name (lost, corrupt, or not saved before a crash), and guards
    /// its service as a held respawn's is guarded.
    pub(super) fn adopt_frozen(&mut self, monitor: &mut Monitor) {
        for cgroup in actions::remove_empty_frozen() {
            tracing::info!(
                "{} removed: its process ended while no agent ran",
                cgroup.display()
            );
        }
        let mut adopted = false;
        for frozen in actions::frozen_in_cgroups() {
            let process = monitor.table().live(frozen.pid);
            let service = process.and_then(|p| self.detector.service_name_of(p));
            let known = service.is_some();
            let name = match (service, process) {
                (Some(service), _) => service,
                (None, Some(p)) => p.comm.clone(),
                (None, None) => format!("pid {}", frozen.pid),
            };
            if self.custody.adopt(&name, frozen) && known {
                adopted = true;
                if !self.custody.guarded().contains(&name) {
                    self.guard(monitor, &name, true);
                }
            }
        }
        if adopted {
            self.save();
        }
    }
}
