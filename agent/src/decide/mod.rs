//! What the agent does about what it saw: a finding (and the facts the
//! shell gathered about it) in, the effects to carry out and the alert to
//! raise out. No I/O, no clock, no kernel: every path is a plain sequence
//! in a test.
//!
//! The shell (`agent`) gathers the facts (custody's holds, systemd's
//! restart policy, what the supervisors said last), carries out the
//! effects in order, and builds the planned alert with what they did ("frozen
//! in …; thaw with …", "kill failed: …").
//!
//! - `policy`: a finding and the service's configuration → a `Decision`.
//! - `requests`: what a control request decides (windows, thaw, stop).

pub mod policy;
pub mod requests;
#[cfg(test)]
mod tests;

use crate::{
    alert::{self, Alert, ProcessInfo},
    config::Service,
    detect::{AtRisk, Finding, OperatorStop, Started, Window},
    sys::clock::Clock,
};

pub use self::policy::{Decision, guards_in_window};

/// What the shell knows, beside the finding, that the response depends on.
#[derive(Clone, Debug, Default)]
pub struct Facts<'a> {
    /// The configuration of the service the finding is about, when watched.
    pub service: Option<&'a Service>,
    /// A maintenance window is open on that service now.
    pub window_open: bool,
    /// Custody holds frozen the process an exit is about.
    pub held: bool,
    /// The pid custody holds frozen for an earlier respawn of the service,
    /// still alive: a respawn now is its supervisor trying again.
    pub train: Option<u32>,
    /// systemd's `Restart=` for the unit the respawn runs in.
    pub restart: Option<String>,
    /// Until when (boot ns) the records read are from while no agent ran.
    pub down_until_ns: Option<u64>,
    /// The respawn's supervisor was switched off when last looked at: its
    /// name and state ("paused (maintenance mode)").
    pub paused: Option<(String, String)>,
}

/// What the shell knows about one service at risk at a loss.
#[derive(Clone, Debug, Default)]
pub struct LostFacts<'a> {
    pub service: Option<&'a Service>,
    /// The kernel guard is armed for it.
    pub guarded: bool,
    /// The process started unseen, as the table has it.
    pub unseen: Option<ProcessInfo>,
    /// The respawns custody holds frozen for the service.
    pub held: Vec<u32>,
}

/// One thing the shell does, in the order given.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Ask systemd what it does should this unit's service stop.
    AskRestartPolicy { unit: String },
    /// A process held frozen has ended by other hands: custody lets go of
    /// it, and its alert is resolved.
    ForgetEnded { pid: u32 },
    /// Arm (or disarm) the kernel guard for a service.
    Guard { service: String, on: bool },
    /// Hold a process frozen: in `unit`'s cgroup, else in one of its own.
    Freeze {
        service: String,
        pid: u32,
        unit: Option<String>,
    },
    /// End a respawn.
    Kill { pid: u32 },
    /// End a supervisor's retry while the first respawn stays frozen, and
    /// count it.
    EndRetry {
        service: String,
        pid: u32,
        supervisor: String,
    },
    /// Let a process the guard stopped at exec run on.
    Resume { pid: u32 },
    /// Resolve the alerts about a service (its window closed).
    ResolveService { service: String },
    /// Thaw (or kill) what custody holds for `target` (a service, each of
    /// a per-instance service's instances, or a pid) and resolve the
    /// alerts about each.
    LetGo { target: String, kill: bool },
    /// Write the state to disk now: a freeze is on disk before anyone
    /// hears of it, so that an agent killed right after still knows it.
    Save,
}

/// The response to one finding.
#[derive(Debug, Default, PartialEq)]
pub struct Response<'a> {
    pub effects: Vec<Effect>,
    /// The alert, once the effects are done.
    pub alert: Option<AlertPlan<'a>>,
}

/// An alert decided on, to build once the effects say what was done.
#[derive(Debug, PartialEq)]
pub enum AlertPlan<'a> {
    Respawn {
        started: &'a Started,
        stopped_by: &'a OperatorStop,
        window: Option<&'a Window>,
        /// What was done, when no effect says it ("alerted").
        action: Option<&'static str>,
        restart: Option<String>,
        while_agent_down: bool,
        paused: Option<(String, String)>,
    },
    EventsLost {
        count: u64,
        risk: &'a AtRisk,
        process: Option<ProcessInfo>,
        held: Vec<u32>,
    },
}

impl AlertPlan<'_> {
    /// The alert record; `done` is what the effects did, in words.
    pub fn build(self, host: &str, clock: &Clock, now_ns: u64, done: Option<&str>) -> Alert {
        match self {
            AlertPlan::Respawn {
                started,
                stopped_by,
                window,
                action,
                restart,
                while_agent_down,
                paused,
            } => {
                let action = action.or(done).unwrap_or("none");
                let mut record = alert::respawn(
                    host,
                    started,
                    stopped_by,
                    window,
                    action,
                    restart.as_deref(),
                    clock,
                    now_ns,
                );
                if while_agent_down {
                    alert::while_agent_down(&mut record);
                }
                if let Some((supervisor, state)) = paused {
                    alert::while_paused(&mut record, &supervisor, &state);
                }
                record
            }
            AlertPlan::EventsLost {
                count,
                risk,
                process,
                held,
            } => alert::events_lost(host, count, risk, process, &held, done, clock, now_ns),
        }
    }
}

/// The service a finding is about, for the ones the policy decides.
pub fn service_of(finding: &Finding) -> Option<&str> {
    match finding {
        Finding::OperatorStop(stop) => Some(&stop.service),
        Finding::Respawn { started, .. } => Some(&started.service),
        Finding::OperatorStart { started, .. } => Some(&started.service),
        Finding::CrashRestart { .. }
        | Finding::Start { .. }
        | Finding::EventsLost { .. }
        | Finding::Exited { .. } => None,
    }
}

/// The response to `finding` (any but `EventsLost`: see `respond_lost`).
pub fn respond<'a>(finding: &'a Finding, facts: &Facts) -> Response<'a> {
    let mut response = Response::default();
    let effects = &mut response.effects;
    // A start in a unit: what systemd would do should it stop.
    if let Finding::Start { started }
    | Finding::OperatorStart { started, .. }
    | Finding::CrashRestart { started } = finding
        && let Some(unit) = &started.unit
    {
        effects.push(Effect::AskRestartPolicy { unit: unit.clone() });
    }
    if let Finding::Exited { pid, .. } = finding
        && facts.held
    {
        effects.push(Effect::ForgetEnded { pid: *pid });
    }
    let (Some(name), Some(service)) = (service_of(finding), facts.service) else {
        return response;
    };
    let decision = policy::decide(finding, service, facts.window_open);
    let guard = |on| Effect::Guard {
        service: name.to_string(),
        on,
    };
    let action = match decision {
        Decision::Guard => {
            effects.push(guard(true));
            return response;
        }
        Decision::Unguard => {
            effects.push(guard(false));
            return response;
        }
        Decision::Nothing => return response,
        Decision::Alert => Some("alerted"),
        Decision::Freeze | Decision::Kill => {
            let Finding::Respawn { started, .. } = finding else {
                return response;
            };
            if decision == Decision::Kill {
                effects.push(Effect::Kill { pid: started.pid });
            } else if facts.train.is_some() {
                effects.push(Effect::EndRetry {
                    service: started.service.clone(),
                    pid: started.pid,
                    supervisor: started
                        .supervisor
                        .as_ref()
                        .map_or("?", |s| s.comm.as_str())
                        .to_string(),
                });
                return response;
            } else {
                effects.push(Effect::Freeze {
                    service: started.service.clone(),
                    pid: started.pid,
                    unit: unit_to_freeze(started, service).map(str::to_string),
                });
                effects.push(Effect::Save);
            }
            None
        }
    };
    if let Finding::Respawn {
        started,
        stopped_by,
        window,
    } = finding
    {
        response.alert = Some(AlertPlan::Respawn {
            started,
            stopped_by,
            window: window.as_ref(),
            action,
            restart: facts.restart.clone(),
            while_agent_down: facts
                .down_until_ns
                .is_some_and(|until| started.time_ns < until),
            paused: facts.paused.clone(),
        });
    }
    response
}

/// The response to a loss of `count` records that put `risk.service` at
/// risk: always an alert. A start nobody saw is held where the policy
/// freezes a respawn; otherwise what the guard stopped at exec is let go,
/// as its lost exec record would have had it.
pub fn respond_lost<'a>(count: u64, risk: &'a AtRisk, facts: LostFacts) -> Response<'a> {
    let decision = facts
        .service
        .map_or(Decision::Alert, |s| policy::decide_unseen_start(risk, s));
    let effects = match (risk.started_unseen, decision) {
        (Some(pid), Decision::Freeze) => vec![
            Effect::Freeze {
                service: risk.service.clone(),
                pid,
                unit: None,
            },
            Effect::Save,
        ],
        (Some(pid), _) if facts.guarded => vec![Effect::Resume { pid }],
        _ => Vec::new(),
    };
    Response {
        effects,
        alert: Some(AlertPlan::EventsLost {
            count,
            risk,
            process: facts.unseen,
            held: facts.held,
        }),
    }
}

/// The unit whose cgroup holds `started` frozen: the one systemd started
/// it as (see `Started::systemd_unit`) when that unit is the service's
/// own, named in its config or run by PID 1 as this very process. Not the
/// unit of a long-running job that a script started it from (cron's, a
/// deployment tool's): freezing that would freeze the job too.
pub fn unit_to_freeze<'a>(started: &'a Started, service: &Service) -> Option<&'a str> {
    let unit = started.systemd_unit()?;
    let own = service.in_unit(unit);
    let by_pid_1 = started.chain.first().is_some_and(|parent| parent.pid == 1);
    (own || by_pid_1).then_some(unit)
}
