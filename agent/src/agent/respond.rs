//! A batch of kernel records acted on: windows expired, units systemd
//! acts on thawed, and each finding responded to as `decide` says, with
//! the facts it needs gathered here and its effects carried out here.

use std::collections::BTreeSet;

use super::{Agent, Batch};
use crate::{
    alert::ProcessInfo,
    audit::AgentEvent,
    custody::actions,
    decide::{self, Effect, Facts, LostFacts, Response, requests},
    detect::Finding,
    events::ProcessKey,
    monitor::Monitor,
    process::{ProcessTable, procfs},
    sys::clock::boot_ns,
};

use super::{explain, report::log_finding};

impl Agent {
    pub(super) fn act(&mut self, monitor: &mut Monitor, work: Batch) {
        if let Some(count) = work.lost {
            self.lost += count;
            tracing::warn!(
                "{count} kernel records lost (ring buffer full): state unknown, process table resynchronised from /proc"
            );
            self.audit.write(AgentEvent::EventsLost { count });
        }
        self.record_switches();
        for expired in requests::expire_windows(&mut self.detector, boot_ns()) {
            let window = expired.window;
            tracing::info!("window {} on {} expired", window.id, window.service);
            if expired.resume {
                tokio::spawn(self.resume_switches(&window));
            }
            self.audit.write(AgentEvent::WindowExpired { window });
            self.perform(monitor, expired.effects);
        }
        self.thaw_for_systemd(monitor.table(), &work.by_systemd);
        if work.findings.iter().any(explain::changes_watchers) {
            self.refresh_watchers(monitor);
        }
        for finding in work.findings {
            self.audit.write(finding.clone());
            self.respond(monitor, &finding);
        }
        // Whatever the guard stopped that custody did not keep: let it go.
        self.custody.resume_unheld(&work.guard_stopped);
    }

    /// Thaws a unit custody froze that systemd now acts on (see
    /// `Custody::systemd_acts_on`): `processes`, which PID 1 signalled or
    /// forked, are its jobs' doing.
    fn thaw_for_systemd(&mut self, table: &ProcessTable, processes: &[ProcessKey]) {
        if !self.custody.holds_in_units() {
            return;
        }
        // A child of PID 1 is in its unit before its exec tells the table.
        let units: BTreeSet<String> = processes
            .iter()
            .filter_map(|key| {
                table
                    .get(key)
                    .and_then(|p| p.unit.clone())
                    .or_else(|| procfs::unit_of(*key))
            })
            .collect();
        let mut thawed = false;
        for unit in units {
            thawed |= self.custody.systemd_acts_on(&unit);
        }
        // A restart must not freeze again what systemd is ending.
        if thawed {
            self.save();
        }
    }

    /// Responds to one finding: the facts gathered, the response decided
    /// (`decide`), its effects carried out, its alert raised.
    fn respond(&mut self, monitor: &mut Monitor, finding: &Finding) {
        log_finding(finding);
        if let Finding::EventsLost { count, at_risk } = finding {
            for risk in at_risk {
                let facts = LostFacts {
                    service: self.detector.config_of(&risk.service),
                    guarded: self.custody.guarded().contains(&risk.service),
                    unseen: risk.started_unseen.and_then(|pid| {
                        let p = monitor.table().live(pid)?;
                        Some(ProcessInfo {
                            pid,
                            exe: p.exe.clone().unwrap_or_default(),
                            cmdline: p.cmdline.to_vec(),
                        })
                    }),
                    held: self.custody.held_of(&risk.service),
                };
                let response = decide::respond_lost(*count, risk, facts);
                self.carry_out(monitor, response);
            }
            return;
        }
        let service = decide::service_of(finding);
        let config = service.and_then(|name| self.detector.config_of(name));
        let facts = Facts {
            service: config,
            window_open: service.is_some_and(|name| self.window_open(name)),
            held: matches!(finding, Finding::Exited { pid, .. } if self.custody.is_held(*pid)),
            // Only a respawn can be a retry: no /proc look for other findings.
            train: match finding {
                Finding::Respawn { started, .. } => self.custody.train_of(&started.service),
                _ => None,
            },
            restart: match finding {
                Finding::Respawn { started, .. } => started
                    .unit
                    .as_deref()
                    .and_then(|unit| self.restart_policies.of(unit)),
                _ => None,
            },
            down_until_ns: self.down_until_ns,
            paused: match finding {
                Finding::Respawn { started, .. } => started
                    .supervisor
                    .as_ref()
                    .and_then(|s| self.watchers.paused(&started.service, s.pid))
                    .map(|w| (w.supervisor, w.state)),
                _ => None,
            },
        };
        let response = decide::respond(finding, &facts);
        self.carry_out(monitor, response);
    }

    /// Carries out a response's effects in order, then raises its alert
    /// with what they did.
    fn carry_out(&mut self, monitor: &mut Monitor, response: Response) {
        let done = self.perform(monitor, response.effects);
        if let Some(plan) = response.alert {
            let record = plan.build(&self.host, &self.clock, boot_ns(), done.action.as_deref());
            self.alerting.raise(record);
        }
    }

    /// Carries out `effects` in order; says what they did.
    pub(super) fn perform(&mut self, monitor: &mut Monitor, effects: Vec<Effect>) -> Done {
        let mut done = Done::default();
        for effect in effects {
            match effect {
                Effect::AskRestartPolicy { unit } => self.restart_policies.refresh(&unit),
                Effect::ForgetEnded { pid } => {
                    if self.custody.ended(pid) {
                        self.alerting.resolve_process(pid);
                    }
                }
                Effect::Guard { service, on } => self.guard(monitor, &service, on),
                Effect::Freeze { service, pid, unit } => {
                    done.action = Some(self.custody.freeze(&service, pid, unit.as_deref()));
                }
                Effect::Kill { pid } => {
                    done.action = Some(match actions::kill(pid) {
                        Ok(()) => "killed".to_string(),
                        Err(err) => format!("kill failed: {err:#}"),
                    });
                }
                Effect::EndRetry {
                    service,
                    pid,
                    supervisor,
                } => self.custody.end_retry(&service, pid, &supervisor),
                Effect::Resume { pid } => self.custody.resume_unheld(&[pid]),
                Effect::ResolveService { service } => self.alerting.resolve_service(&service),
                Effect::LetGo { target, kill } => {
                    for service in requests::covering(&self.detector, &target) {
                        for pid in self.custody.let_go(&service, kill) {
                            self.alerting.resolve_process(pid);
                            done.released.push(pid);
                        }
                    }
                }
                Effect::Save => self.save(),
            }
        }
        done
    }
}

/// What carried-out effects did.
#[derive(Default)]
pub(super) struct Done {
    /// What a freeze or a kill did, in words.
    pub action: Option<String>,
    /// The pids let go (thawed or killed).
    pub released: Vec<u32>,
}
