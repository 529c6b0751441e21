//! Detection: which watched service was stopped by whom, and whether what
//! starts it again is the operator or a supervisor behind their back.
//!
//! A pure state machine: lifecycle events (with the process table as it
//! stood right after each) in, findings out. No I/O, no clock of its own.
//!
//! - here: the [`Detector`] itself: services, their main processes, stops
//!   and starts.
//! - `commands`: the control commands (`systemctl stop`, `monit start`)
//!   a stop or a start follows, and the person behind them.
//! - `intent`: what a command line asks for (a control command's stop or
//!   start, a daemon binary's `-V`).
//! - `instances`: services by systemd unit, one per instance.
//! - `findings`: the records it emits.
//! - `windows`: maintenance windows, and the state saved across restarts.

mod commands;
mod findings;
mod instances;
mod intent;
mod notable;
mod windows;

use std::collections::{HashSet, VecDeque};

use self::instances::Slot;
pub use self::{
    findings::{Actor, AtRisk, ControlCommand, Finding, OperatorStop, Started, UnitRequest},
    instances::ServiceView,
    intent::Intent,
    notable::{arg_units, notable_names},
    windows::{Saved, SwitchedOff, Window},
};
use crate::{
    config,
    events::{Event, ProcessKey, Signal},
    process::{IdMap, Link, Process, ProcessTable},
    supervisors,
};

/// Signals that stop a service. SIGHUP is left out: databases take it as
/// "reload your configuration".
const STOP_SIGNALS: [u32; 4] = [
    libc::SIGINT as u32,
    libc::SIGQUIT as u32,
    libc::SIGKILL as u32,
    libc::SIGTERM as u32,
];

/// How long a control command is taken to explain what follows it.
pub(super) const CONTROL_WINDOW_NS: u64 = 30_000_000_000;

struct Watched {
    name: String,
    /// The configured service it is, or is an instance of (index in
    /// `Detector::specs`).
    spec: usize,
    /// The unit it is, for an instance of a per-instance service.
    unit: Option<String>,
    main: Option<ProcessKey>,
    /// Its latest main process's name: what the kernel guard matches.
    comm: Option<String>,
    /// The unit its latest main process ran in.
    main_unit: Option<String>,
    stop: Option<OperatorStop>,
    crashed: bool,
    /// A main process reported as started unseen after lost records: its
    /// exec record, if it was still in the ring, may come after.
    unseen: Option<ProcessKey>,
    /// When its latest main process was seen to start (exec record time);
    /// None for one found running. A request to systemd made before it is
    /// not about it: it was served by that start or asked of its predecessor.
    started_ns: Option<u64>,
    /// How its latest main process was seen to start.
    start: Option<Box<Started>>,
}

pub struct Detector {
    /// The services as configured. Each has an entry of its own in
    /// `services` at its index; a per-instance one's units get entries
    /// after those, as they are met.
    specs: Vec<config::Service>,
    /// The file names the specs' exe globs can match, when none is itself
    /// a glob: a path with another file name runs none of them.
    exe_files: Option<HashSet<String>>,
    services: Vec<Watched>,
    /// Main process → index in `services`.
    mains: IdMap<ProcessKey, usize>,
    control: VecDeque<ControlCommand>,
    /// Recent requests to systemd, by anyone.
    requests: VecDeque<UnitRequest>,
    windows: Vec<Window>,
    next_window: u64,
    /// The agent's own pid: its signals are sent for the person behind the
    /// control command that asked for them.
    agent_pid: Option<u32>,
    /// Processes whose exit is in the records written while no agent ran
    /// (see `adopt_after_gap`).
    gap_ended: HashSet<ProcessKey>,
}

impl Detector {
    pub fn new(services: &[config::Service]) -> Detector {
        let watched = services
            .iter()
            .enumerate()
            .map(|(spec, s)| Watched::new(s.name.clone(), spec, None))
            .collect();
        Detector {
            specs: services.to_vec(),
            exe_files: instances::exe_files(services),
            services: watched,
            mains: IdMap::default(),
            control: VecDeque::new(),
            requests: VecDeque::new(),
            windows: Vec::new(),
            next_window: 1,
            agent_pid: None,
            gap_ended: HashSet::new(),
        }
    }

    /// Signals from `pid` (the agent itself) are attributed to the control
    /// command that asked for them (see `control_command`).
    pub fn set_agent_pid(&mut self, pid: u32) {
        self.agent_pid = Some(pid);
    }

    /// Records a control command a person ran through the agent (such as
    /// `stopguard stop`): the stop that follows is theirs.
    pub fn control_command(&mut self, command: ControlCommand) {
        self.forget_old_control(command.time_ns);
        self.control.push_back(command);
    }

    fn index_of(&self, service: &str) -> Option<usize> {
        self.services.iter().position(|s| s.name == service)
    }

    /// The operator stop a service is under, if any.
    pub fn stop_of(&self, service: &str) -> Option<&OperatorStop> {
        self.index_of(service)
            .and_then(|i| self.services[i].stop.as_ref())
    }

    /// A process is a service's main process when it runs the service, is
    /// not a query of it (`postgres -V`, which pg_ctl runs before each
    /// start), and its parent does not run it (a postmaster, not one of its
    /// backends).
    ///
    /// A service with no exe globs runs whatever its unit runs: its main
    /// process is the one systemd started (whose parent is not in the
    /// unit), and while that lives what else systemd runs there (ExecStop=,
    /// ExecReload=) is not a new one.
    fn main_service(&self, process: &Process, table: &ProcessTable) -> Option<Slot> {
        let slot = self.slot_of(process)?;
        if intent::is_query(&process.cmdline) {
            return None;
        }
        let parent_same = process
            .parent
            .and_then(|k| table.get(&k))
            .filter(|p| p.exited.is_none() || !self.unit_only(&slot))
            .and_then(|p| self.slot_of(p))
            .is_some_and(|parent| parent == slot);
        if parent_same {
            return None;
        }
        if let Slot::Known(index) = slot {
            let other_main = self.services[index].main.is_some_and(|m| m != process.key);
            if self.unit_only(&slot) && other_main {
                return None;
            }
        }
        Some(slot)
    }

    /// Makes `process` the main process of entry `index`.
    fn set_main(&mut self, index: usize, process: &Process) {
        let service = &mut self.services[index];
        if let Some(old) = service.main.replace(process.key) {
            self.mains.remove(&old);
        }
        service.comm = Some(process.comm.clone());
        service.main_unit = process.unit.clone();
        self.mains.insert(process.key, index);
    }

    /// Finds the main processes already running (call after seeding).
    pub fn adopt(&mut self, table: &ProcessTable) {
        self.adopt_after_gap(table, &HashSet::new(), &HashSet::new(), None);
    }

    /// Like `adopt`, when records written while no agent ran are still to
    /// be read: what `started` meanwhile is left to its records (a respawn
    /// is a respawn, not a main process found running), and a saved main
    /// process that `ended` meanwhile is taken back by `restore`, so that
    /// its stop and exit are seen. A process that started after `since_ns`
    /// (the earliest record's time) is left too: its records may have been
    /// lost, and the loss then reports it as started unseen.
    pub fn adopt_after_gap(
        &mut self,
        table: &ProcessTable,
        started: &HashSet<ProcessKey>,
        ended: &HashSet<ProcessKey>,
        since_ns: Option<u64>,
    ) {
        self.gap_ended = ended.clone();
        let tick_ns = 1_000_000_000 / crate::events::USER_HZ;
        for process in table.live_processes() {
            let after_gap_began =
                since_ns.is_some_and(|since| process.key.start_ticks * tick_ns >= since);
            if started.contains(&process.key) || after_gap_began {
                continue;
            }
            if let Some(slot) = self.main_service(process, table) {
                let index = self.resolve(slot);
                self.set_main(index, process);
            }
        }
    }

    /// Services with a running main process, by name.
    pub fn running(&self) -> Vec<(&str, u32)> {
        self.services
            .iter()
            .filter_map(|s| s.main.map(|k| (s.name.as_str(), k.pid)))
            .collect()
    }

    /// What `event` means, given the table as it stands right after it.
    pub fn observe(&mut self, event: &Event, table: &ProcessTable) -> Vec<Finding> {
        match event {
            Event::Exec(exec) => {
                let Some(process) = table.get(&exec.process.key) else {
                    return Vec::new();
                };
                if let Some(command) = intent::control_command(exec) {
                    self.control.push_back(command);
                }
                if let Some(request) = intent::unit_request(exec, table) {
                    self.requests.push_back(request);
                }
                self.forget_old_control(exec.time_ns);
                let Some(slot) = self.main_service(process, table) else {
                    return Vec::new();
                };
                let index = self.resolve(slot);
                let index = self.stand_in(index);
                // Already reported, by the resync after the loss.
                if self.services[index].unseen == Some(process.key) {
                    self.services[index].unseen = None;
                    return Vec::new();
                }
                vec![self.started(index, process, exec.time_ns, table)]
            }
            Event::Signal(signal) => self.signalled(signal, table).into_iter().collect(),
            Event::Exit(exit) => {
                let Some(index) = self.mains.remove(&exit.key) else {
                    return Vec::new();
                };
                self.services[index].main = None;
                if let Some(heir) = self.heir(index, exit.key, table) {
                    let heir = heir.clone();
                    self.set_main(index, &heir);
                    return Vec::new();
                }
                let mut findings = Vec::new();
                if self.services[index].stop.is_none()
                    && let Some(stop) = self.asked_to_exit(index, exit, table)
                {
                    self.services[index].stop = Some(stop.clone());
                    findings.push(Finding::OperatorStop(stop));
                }
                let service = &mut self.services[index];
                service.main = None;
                service.crashed = service.stop.is_none();
                findings.push(Finding::Exited {
                    service: service.name.clone(),
                    pid: exit.pid,
                    exit_code: exit.exit_code,
                    signal: exit.signal,
                    operator_stop: service.stop.is_some(),
                });
                findings
            }
            Event::Lost(lost) => self.resync(lost.count, table).into_iter().collect(),
            Event::Fork(_) => Vec::new(),
        }
    }

    /// After lost records: takes the main processes from the table (just
    /// reseeded from /proc) and names the services whose state mattered.
    fn resync(&mut self, count: u64, table: &ProcessTable) -> Option<Finding> {
        let candidates: Vec<(Slot, &Process)> = table
            .live_processes()
            .filter_map(|p| Some((self.main_service(p, table)?, p)))
            .collect();
        let candidates: Vec<(usize, &Process)> = candidates
            .into_iter()
            .map(|(slot, p)| (self.resolve(slot), p))
            .collect();
        let mut now: Vec<Option<&Process>> = vec![None; self.services.len()];
        for (index, process) in candidates {
            // The main process known before stays while it lives; else the
            // latest to start takes its place.
            let known = self.services[index].main;
            let rank = |p: &Process| (Some(p.key) == known, p.key.start_ticks, p.pid);
            if now[index].is_none_or(|chosen| rank(process) > rank(chosen)) {
                now[index] = Some(process);
            }
        }
        let mut at_risk = Vec::new();
        for (index, process) in now.into_iter().enumerate() {
            let before = self.services[index].main;
            let main = process.map(|p| p.key);
            let unseen = process.filter(|p| Some(p.key) != before);
            if main != before {
                if let Some(old) = before {
                    self.mains.remove(&old);
                }
                self.services[index].main = None;
                if let Some(process) = process {
                    self.set_main(index, process);
                }
            }
            let service = &self.services[index];
            let window = self.window_on(index).cloned();
            if window.is_some() || service.stop.is_some() {
                at_risk.push(AtRisk {
                    service: service.name.clone(),
                    window,
                    stopped_by: service.stop.clone(),
                    started_unseen: unseen.map(|p| p.pid),
                    started_unseen_loginuid: unseen.and_then(|p| p.loginuid),
                });
                if let Some(process) = unseen {
                    self.services[index].unseen = Some(process.key);
                }
            }
        }
        (!at_risk.is_empty()).then_some(Finding::EventsLost { count, at_risk })
    }

    fn signalled(&mut self, signal: &Signal, table: &ProcessTable) -> Option<Finding> {
        if !STOP_SIGNALS.contains(&signal.signal) {
            return None;
        }
        let index = *self.mains.get(&signal.target.key)?;
        let name = self.services[index].name.clone();
        let from_agent = Some(signal.sender.pid) == self.agent_pid;
        let sender_login = signal.sender.loginuid.filter(|_| !from_agent);
        let unit = table
            .get(&signal.target.key)
            .and_then(|p| p.unit.as_deref());
        let via = match (sender_login, unit) {
            (Some(_), _) => None,
            (None, Some(unit)) => self.unit_stop_command(unit, index),
            (None, None) => self.control_for(index, Intent::stops).cloned(),
        };
        let window = self.window_on(index);
        let loginuid = sender_login
            .or(via.as_ref().map(|c| c.loginuid))
            .or(window.and_then(|w| w.opened_by_loginuid));
        // Inside a window any stop is the operator's.
        if loginuid.is_none() && window.is_none() {
            return None;
        }
        let stop = OperatorStop {
            service: name,
            pid: signal.target.pid,
            signal: signal.signal,
            signal_name: signal.signal_name.clone(),
            sender: Actor {
                pid: signal.sender.pid,
                comm: signal.sender.comm.clone(),
                uid: signal.sender.uid,
                loginuid: signal.sender.loginuid,
            },
            loginuid,
            via,
            time_ns: signal.time_ns,
        };
        self.services[index].stop = Some(stop.clone());
        Some(Finding::OperatorStop(stop))
    }

    fn started(
        &mut self,
        index: usize,
        process: &Process,
        time_ns: u64,
        table: &ProcessTable,
    ) -> Finding {
        let mut chain = table.chain(&process.key);
        if !chain.is_empty() {
            chain.remove(0);
        }
        let name = self.services[index].name.clone();
        let (operator, requested) = match &process.unit {
            None => (
                process.loginuid.or_else(|| {
                    // `monit start X` and friends: the supervisor does the start.
                    self.control_for(index, Intent::starts).map(|c| c.loginuid)
                }),
                None,
            ),
            // PID 1 starts what is in a unit: the request naming it says
            // who asked, a person or what ran systemctl; with none,
            // systemd started it by itself (Restart=, a dependency).
            Some(unit) => {
                // One made before the previous start was served by it.
                let since = self.services[index].started_ns;
                let request = self.request_for(unit, Intent::starts, since);
                let operator = process
                    .loginuid
                    .or(request.and_then(|r| r.loginuid))
                    .or_else(|| {
                        self.named_control(index, Intent::starts)
                            .map(|c| c.loginuid)
                    });
                (operator, request.filter(|_| operator.is_none()).cloned())
            }
        };
        let supervisor = match &requested {
            Some(request) => request.supervisor.clone(),
            None => table.nearest_supervisor(&process.key).map(|p| Link {
                pid: p.pid,
                comm: supervisors::name_of(&p.comm, &p.cmdline).to_string(),
            }),
        };
        let started = Started {
            service: name.clone(),
            pid: process.pid,
            exe: process.exe.clone().unwrap_or_default(),
            args: process.cmdline.to_vec(),
            chain,
            supervisor,
            unit: process.unit.clone(),
            requested: requested.map(Box::new),
            time_ns,
        };
        self.set_main(index, process);
        let service = &mut self.services[index];
        service.start = Some(Box::new(started.clone()));
        let crashed = std::mem::take(&mut service.crashed);
        service.started_ns = Some(time_ns);
        match (operator, service.stop.take()) {
            (Some(loginuid), _) => Finding::OperatorStart { started, loginuid },
            (None, Some(stopped_by)) => {
                // Still stopped as far as the operator is concerned.
                service.stop = Some(stopped_by.clone());
                let window = self.window_on(index).cloned();
                Finding::Respawn {
                    started: Box::new(started),
                    stopped_by: Box::new(stopped_by),
                    window,
                }
            }
            (None, None) if crashed => Finding::CrashRestart { started },
            (None, None) => Finding::Start { started },
        }
    }
}

impl Watched {
    fn new(name: String, spec: usize, unit: Option<String>) -> Watched {
        Watched {
            name,
            spec,
            unit,
            main: None,
            comm: None,
            main_unit: None,
            stop: None,
            crashed: false,
            unseen: None,
            started_ns: None,
            start: None,
        }
    }
}

#[cfg(test)]
mod tests;
