//! Custody: the one place where a freeze is done. It arms the kernel guard
//! (a guarded name is stopped at exec, before its first instruction), holds
//! the respawns it keeps frozen, ends the retries of a supervisor that tries
//! again, lets go of what the guard stopped but detection did not keep, and
//! thaws or kills what it holds when told to.
//!
//! - `actions`: the mechanics: freeze, thaw, kill, the cgroups they use.

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
};

use agent_common::COMM_LEN;

pub mod actions;

pub use self::actions::Frozen;
use crate::{
    audit::{AgentEvent, AuditLog},
    config::Freezer,
    kernel::{Probes, comm_key},
};

/// A process held frozen, and the service it belongs to.
struct Held {
    service: String,
    frozen: Frozen,
}

/// Respawns of one service after the first was frozen.
struct Train {
    frozen_pid: u32,
    retries: u32,
}

pub struct Custody {
    freezer: Freezer,
    audit: AuditLog,
    /// Services whose name is in the kernel guard map.
    guarded: BTreeSet<String>,
    /// The name each guarded service is guarded under: instances of one
    /// service share one (`postgres`), which stays guarded while any of
    /// them is.
    guard_names: HashMap<String, String>,
    held: HashMap<u32, Held>,
    trains: HashMap<String, Train>,
}

/// What custody keeps across restarts.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    /// Frozen processes and the service each belongs to.
    pub held: Vec<(String, Frozen)>,
    /// Service names in the kernel guard map.
    pub guarded: Vec<String>,
}

impl Custody {
    pub fn new(freezer: Freezer, audit: AuditLog) -> Custody {
        Custody {
            freezer,
            audit,
            guarded: BTreeSet::new(),
            guard_names: HashMap::new(),
            held: HashMap::new(),
            trains: HashMap::new(),
        }
    }

    pub fn snapshot(&self) -> Saved {
        Saved {
            held: self
                .held
                .values()
                .map(|h| (h.service.clone(), h.frozen.clone()))
                .collect(),
            guarded: self.guarded.iter().cloned().collect(),
        }
    }

    /// Takes back what a previous run held: the frozen processes still
    /// alive, still the same process, and what `check` (the process is the
    /// service's, its cgroups are where a freeze puts it) accepts. What it
    /// refuses is left untouched, and said. Returns the services it
    /// guarded, for the caller to arm again.
    pub fn restore(
        &mut self,
        saved: Saved,
        mut check: impl FnMut(&str, &Frozen) -> Result<(), String>,
    ) -> Vec<String> {
        let (alive, gone): (Vec<_>, Vec<_>) = saved.held.into_iter().partition(|(_, frozen)| {
            frozen.start_ticks.is_some() && actions::start_ticks(frozen.pid) == frozen.start_ticks
        });
        // What ended while the agent was away may have left its unit
        // frozen, unless what is still held there keeps it so.
        for (service, frozen) in &gone {
            let shared = alive.iter().any(|(_, f)| f.cgroup == frozen.cgroup);
            if actions::is_unit_cgroup(frozen)
                && !shared
                && let Err(err) = actions::forget(frozen)
            {
                tracing::warn!("pid {} ({service}) ended frozen: {err:#}", frozen.pid);
            }
        }
        let (alive, refused): (Vec<_>, Vec<_>) = alive
            .into_iter()
            .map(|(service, frozen)| {
                let checked = check(&service, &frozen).and_then(|()| actions::check_saved(&frozen));
                (service, frozen, checked)
            })
            .partition(|(_, _, checked)| checked.is_ok());
        for (service, frozen, why) in refused {
            let why = why.err().unwrap_or_default();
            tracing::error!(
                "the saved state says pid {} is held for {service}, but {why}: not held, left as it is",
                frozen.pid
            );
            self.audit.write(AgentEvent::SavedHoldRefused {
                service,
                pid: frozen.pid,
                reason: why,
            });
        }
        for (service, frozen, _) in alive {
            // Its unit was thawed when the agent went (`leave_units`).
            if let Err(err) = actions::refreeze_unit(&frozen) {
                tracing::warn!(
                    "pid {} ({service}) stays stopped, its unit not frozen again: {err:#}",
                    frozen.pid
                );
            }
            self.trains.insert(
                service.clone(),
                Train {
                    frozen_pid: frozen.pid,
                    retries: 0,
                },
            );
            self.held.insert(frozen.pid, Held { service, frozen });
        }
        saved.guarded
    }

    /// Holds again a process found in a frozen cgroup of ours that custody
    /// does not know (the saved state lost, or behind): frozen processes
    /// are never forgotten. False when it was known already.
    pub fn adopt(&mut self, service: &str, frozen: Frozen) -> bool {
        if self.held.contains_key(&frozen.pid) {
            return false;
        }
        let cgroup = frozen
            .cgroup
            .as_ref()
            .map(|c| c.display().to_string())
            .unwrap_or_default();
        tracing::warn!(
            "pid {} ({service}) found frozen in {cgroup}, unknown to the saved state: held again; thaw with: stopguard thaw {}",
            frozen.pid,
            frozen.pid
        );
        self.audit.write(AgentEvent::FrozenAdopted {
            service: service.to_string(),
            pid: frozen.pid,
            cgroup,
        });
        self.trains.insert(
            service.to_string(),
            Train {
                frozen_pid: frozen.pid,
                retries: 0,
            },
        );
        self.held.insert(
            frozen.pid,
            Held {
                service: service.to_string(),
                frozen,
            },
        );
        true
    }

    pub fn guarded(&self) -> &BTreeSet<String> {
        &self.guarded
    }

    /// Arms (`on`) or disarms the kernel guard of `service` under `name`,
    /// the comm its exec will have.
    pub fn guard(&mut self, probes: &mut Probes, service: &str, name: &str, on: bool) {
        if on {
            self.guarded.insert(service.to_string());
            self.guard_names
                .insert(service.to_string(), name.to_string());
        } else {
            self.guarded.remove(service);
            self.guard_names.remove(service);
            if self.guard_names.values().any(|n| n == name) {
                return;
            }
        }
        let names = probes.names();
        if on {
            if let Err(err) = names.guard(comm_key(name), 1) {
                tracing::error!("guard map ({name}): {err:#}");
            }
        } else {
            let _ = names.unguard(&comm_key(name));
        }
    }

    /// Makes the kernel guard map say what custody guards: pinned probes
    /// keep the map of an earlier agent, which may guard names this one
    /// does not (its state lost, a service no longer watched). Returns the
    /// names taken out.
    pub fn reconcile_guard(&self, probes: &mut Probes) -> Vec<String> {
        let wanted: BTreeSet<[u8; COMM_LEN]> =
            self.guard_names.values().map(|n| comm_key(n)).collect();
        let names = probes.names();
        let stale: Vec<[u8; COMM_LEN]> = names
            .guarded()
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| !wanted.contains(key))
            .collect();
        let mut removed = Vec::new();
        for key in stale {
            if names.unguard(&key).is_ok() {
                let end = key.iter().position(|&b| b == 0).unwrap_or(key.len());
                removed.push(String::from_utf8_lossy(&key[..end]).into_owned());
            }
        }
        removed
    }

    pub fn is_held(&self, pid: u32) -> bool {
        self.held.contains_key(&pid)
    }

    /// Every pid held frozen.
    /// Every service something is held for, with the pids held.
    pub fn held_by_service(&self) -> std::collections::BTreeMap<String, Vec<u32>> {
        let mut by = std::collections::BTreeMap::<String, Vec<u32>>::new();
        for (pid, held) in &self.held {
            by.entry(held.service.clone()).or_default().push(*pid);
        }
        for pids in by.values_mut() {
            pids.sort_unstable();
        }
        by
    }

    pub fn held_pids(&self) -> Vec<u32> {
        self.held.keys().copied().collect()
    }

    /// The pids held frozen for `service`.
    pub fn held_of(&self, service: &str) -> Vec<u32> {
        self.held
            .iter()
            .filter(|(_, h)| h.service == service)
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// The services whose held processes `target` (a service, or one pid)
    /// names.
    pub fn services_held_for(&self, target: &str) -> Vec<String> {
        let mut services: Vec<String> = self
            .held
            .iter()
            .filter(|(pid, h)| h.service == target || pid.to_string() == target)
            .map(|(_, h)| h.service.clone())
            .collect();
        services.dedup();
        services
    }

    /// The pid held frozen for the first respawn of `service`, while it
    /// lives: a supervisor that sees no pidfile tries again each cycle, and
    /// its retries are ended (`end_retry`) while this one stays frozen.
    pub fn train_of(&self, service: &str) -> Option<u32> {
        let train = self.trains.get(service)?;
        (self.held.contains_key(&train.frozen_pid)
            && Path::new(&format!("/proc/{}", train.frozen_pid)).exists())
        .then_some(train.frozen_pid)
    }

    /// Ends `pid`, `supervisor`'s retry of `service` while its first
    /// respawn stays frozen, and counts it.
    pub fn end_retry(&mut self, service: &str, pid: u32, supervisor: &str) {
        let Some(train) = self.trains.get_mut(service) else {
            return;
        };
        train.retries += 1;
        let killed = actions::kill(pid);
        tracing::warn!(
            "{service} respawned again by {supervisor} (tried {} more times); pid {pid} killed, pid {} stays frozen",
            train.retries,
            train.frozen_pid
        );
        self.audit.write(AgentEvent::RespawnRetryKilled {
            service: service.to_string(),
            pid,
            retries: train.retries,
            frozen_pid: train.frozen_pid,
            error: killed.err().map(|e| format!("{e:#}")),
        });
    }

    /// Holds `pid`, a respawn of `service` the guard stopped at exec, kept
    /// until thawed or killed: frozen in its own cgroup, or in `unit`'s when
    /// systemd started it as that unit's service. Returns the action, in
    /// words.
    pub fn freeze(&mut self, service: &str, pid: u32, unit: Option<&str>) -> String {
        match actions::freeze(pid, self.freezer, unit) {
            Ok(frozen) => {
                let how = match (&frozen.unit, &frozen.cgroup) {
                    (Some(unit), _) => {
                        format!("frozen in {unit} (SIGSTOP at exec, the unit's cgroup frozen)")
                    }
                    (None, Some(_)) => "frozen (SIGSTOP at exec, cgroup frozen)".to_string(),
                    (None, None) => "frozen (SIGSTOP at exec)".to_string(),
                };
                self.trains.insert(
                    service.to_string(),
                    Train {
                        frozen_pid: pid,
                        retries: 0,
                    },
                );
                self.held.insert(
                    pid,
                    Held {
                        service: service.to_string(),
                        frozen,
                    },
                );
                format!("{how}; thaw with: stopguard thaw {pid}")
            }
            Err(err) => format!("freeze failed: {err:#}"),
        }
    }

    /// Lets go of `pid`, held frozen, which has ended by other hands (the
    /// operator's `systemctl stop` of its unit thaws the unit and ends it):
    /// its freeze undone around it, so nothing else in a unit stays frozen.
    /// True when custody held it.
    pub fn ended(&mut self, pid: u32) -> bool {
        let Some(held) = self.held.remove(&pid) else {
            return false;
        };
        self.trains.remove(&held.service);
        if let Err(err) = actions::forget(&held.frozen) {
            tracing::warn!("pid {pid} ({}) ended frozen: {err:#}", held.service);
        }
        tracing::info!("pid {pid} ({}), held frozen, has ended", held.service);
        self.audit.write(AgentEvent::FrozenEnded {
            service: held.service,
            pid,
        });
        true
    }

    /// Whether custody holds a process frozen in its unit's cgroup.
    pub fn holds_in_units(&self) -> bool {
        self.held
            .values()
            .any(|h| h.frozen.unit.is_some() && h.frozen.cgroup.is_some())
    }

    /// systemd (PID 1) acts on `unit`: signals a process of it (a stop's
    /// SIGTERM and SIGCONT, a start that timed out) or starts one in it
    /// (ExecStop=, ExecReload=). A unit custody froze is thawed for the job
    /// to go through: systemd thaws before a job only what it froze itself
    /// (systemd 252 goes by the kernel's state and thaws it too; 257 does
    /// not, and would wait TimeoutStopSec= on the frozen unit). The held
    /// process stays stopped (SIGSTOP) until systemd's SIGCONT. True when
    /// one was thawed.
    pub fn systemd_acts_on(&mut self, unit: &str) -> bool {
        let mut thawed_any = false;
        let in_unit = self
            .held
            .values_mut()
            .filter(|h| h.frozen.unit.as_deref() == Some(unit) && h.frozen.cgroup.is_some());
        for held in in_unit {
            thawed_any = true;
            let pid = held.frozen.pid;
            let thawed = actions::thaw_unit(&held.frozen);
            held.frozen.cgroup = None;
            tracing::info!(
                "systemd acts on {unit}: its cgroup thawed for the job; pid {pid} ({}) stays stopped",
                held.service
            );
            self.audit.write(AgentEvent::UnitThawedForSystemd {
                service: held.service.clone(),
                pid,
                unit: unit.to_string(),
                error: thawed.err().map(|e| format!("{e:#}")),
            });
        }
        thawed_any
    }

    /// The agent is going: the units it froze are thawed, their held
    /// processes left stopped (SIGSTOP), since nothing would thaw them for
    /// systemd's jobs (a shutdown's stop would wait). `restore` freezes
    /// them again.
    pub fn leave_units(&self) {
        for held in self.held.values() {
            if let Err(err) = actions::thaw_unit(&held.frozen) {
                tracing::warn!("pid {} ({}): {err:#}", held.frozen.pid, held.service);
            }
        }
    }

    /// The host is shutting down: every cgroup custody froze is thawed, its
    /// held process left stopped, so that systemd's last kill ends it at
    /// once (a frozen one would hold the shutdown until systemd's timeout).
    pub fn leave_for_shutdown(&self) {
        for held in self.held.values() {
            if let Err(err) = actions::thaw_in_place(&held.frozen) {
                tracing::warn!("pid {} ({}): {err:#}", held.frozen.pid, held.service);
            }
        }
    }

    /// Lets go of what the kernel guard stopped at exec and custody does
    /// not hold: not every exec of a guarded name is a respawn.
    pub fn resume_unheld(&self, guard_stopped: &[u32]) {
        for &pid in guard_stopped {
            if self.held.contains_key(&pid) {
                continue;
            }
            match actions::resume(pid) {
                Ok(()) => self.audit.write(AgentEvent::GuardReleased { pid }),
                Err(err) => tracing::warn!("releasing pid {pid}: {err:#}"),
            }
        }
    }

    /// Ends custody of what is held for `target` (a service, or one pid):
    /// thawed, or killed with `kill`. Returns the pids.
    pub fn let_go(&mut self, target: &str, kill: bool) -> Vec<u32> {
        let pids: Vec<u32> = self
            .held
            .iter()
            .filter(|(pid, h)| h.service == target || pid.to_string() == target)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in &pids {
            let held = self.held.remove(pid).expect("listed above");
            self.trains.remove(&held.service);
            let result = if kill {
                actions::kill_frozen(&held.frozen)
            } else {
                actions::thaw(&held.frozen)
            };
            if let Err(err) = result {
                tracing::warn!("releasing pid {pid}: {err:#}");
            }
            let (service, pid) = (held.service, *pid);
            self.audit.write(if kill {
                AgentEvent::Killed { service, pid }
            } else {
                AgentEvent::Thawed { service, pid }
            });
        }
        pids
    }
}
