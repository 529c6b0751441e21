//! Detection: which watched service was stopped by whom, and whether what
//! starts it again is the operator or a supervisor behind their back.
//!
//! A pure state machine: lifecycle events (with the process table as it
//! stood right after each) in, findings out. No I/O, no clock of its own.

use std::collections::{HashMap, VecDeque};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    config,
    events::{Event, ProcessKey, Signal},
    process::{Link, Process, ProcessTable},
};

/// Signals that stop a service. SIGHUP is left out: databases take it as
/// "reload your configuration".
const STOP_SIGNALS: [u32; 4] = [
    libc::SIGINT as u32,
    libc::SIGQUIT as u32,
    libc::SIGKILL as u32,
    libc::SIGTERM as u32,
];

/// Commands through which an operator stops or starts a service; what they
/// do is carried out by a process without a login identity (PID 1, the
/// supervisor), so the command itself names the person.
const CONTROL_COMMANDS: [&str; 8] = [
    "systemctl",
    "monit",
    "supervisorctl",
    "sv",
    "s6-svc",
    "pg_ctl",
    "pg_ctlcluster",
    "service",
];

/// What a control command asks for, from its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    Stop,
    Start,
    Restart,
    Other,
}

impl Intent {
    /// The intent of control command `comm` run with `args` (argv).
    pub fn of(comm: &str, args: &[String]) -> Intent {
        let args = args.iter().skip(1).map(String::as_str);
        if comm == "s6-svc" {
            // s6-svc takes flags: -d down, -u up, -o once, -r restart, -t/-k signals.
            for arg in args.filter(|a| a.starts_with('-')) {
                for flag in arg.chars().skip(1) {
                    match flag {
                        'd' | 't' | 'k' => return Intent::Stop,
                        'u' | 'o' => return Intent::Start,
                        'r' => return Intent::Restart,
                        _ => {}
                    }
                }
            }
            return Intent::Other;
        }
        // The others take a verb; options (pg_ctl's -o, -t...) are not verbs.
        for arg in args.filter(|a| !a.starts_with('-')) {
            match arg {
                "stop" | "down" | "kill" | "term" | "d" | "k" | "t" => return Intent::Stop,
                "start" | "up" | "once" | "u" | "o" => return Intent::Start,
                "restart" | "force-restart" | "try-restart" | "reload-or-restart" => {
                    return Intent::Restart;
                }
                _ => {}
            }
        }
        Intent::Other
    }

    fn stops(self) -> bool {
        matches!(self, Intent::Stop | Intent::Restart)
    }

    fn starts(self) -> bool {
        matches!(self, Intent::Start | Intent::Restart)
    }
}

/// Arguments with which a daemon binary answers a question and exits
/// (`postgres -V`, `-C data_directory`, `mysqld --version`) instead of
/// running the service.
const QUERY_FLAGS: [&str; 5] = ["-V", "--version", "--help", "--describe-config", "-C"];

/// How long a control command is taken to explain what follows it.
const CONTROL_WINDOW_NS: u64 = 30_000_000_000;

/// A person behind an action: the process that did it and its login.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    pub loginuid: Option<u32>,
}

/// A control command run by someone with a login identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlCommand {
    pub pid: u32,
    pub comm: String,
    pub args: Vec<String>,
    pub intent: Intent,
    pub loginuid: u32,
    #[serde(skip)]
    pub time_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorStop {
    pub service: String,
    pub pid: u32,
    pub signal: u32,
    pub signal_name: String,
    /// The sender of the signal.
    pub sender: Actor,
    /// The login uid held responsible: the sender's, or its control command's.
    pub loginuid: Option<u32>,
    /// The control command behind the signal, when the sender had no login.
    pub via: Option<ControlCommand>,
    pub time_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Started {
    pub service: String,
    pub pid: u32,
    pub exe: String,
    pub args: Vec<String>,
    /// The starting chain at the exec, parent first.
    pub chain: Vec<Link>,
    /// The nearest supervisor in that chain.
    pub supervisor: Option<Link>,
    pub time_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "finding", rename_all = "snake_case")]
pub enum Finding {
    /// A person stopped a watched service.
    OperatorStop(OperatorStop),
    /// A supervisor started a service a person had stopped.
    Respawn {
        started: Box<Started>,
        stopped_by: Box<OperatorStop>,
        /// The maintenance window it broke, if one was open.
        window: Option<Window>,
    },
    /// A person started the service (again): normal work.
    OperatorStart { started: Started, loginuid: u32 },
    /// A supervisor restarted a service that died without an operator stop.
    CrashRestart { started: Started },
    /// A start with no stop before it (boot, first start).
    Start { started: Started },
    /// Kernel records were lost while a service was under maintenance or
    /// an operator stop: what happened in the gap is unknown.
    EventsLost { count: u64, at_risk: Vec<AtRisk> },
    /// The service's main process exited.
    Exited {
        service: String,
        pid: u32,
        exit_code: Option<u8>,
        signal: Option<u8>,
        /// The operator stop that explains it, if any.
        operator_stop: bool,
    },
}

/// A service whose state matters and may have changed unseen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AtRisk {
    pub service: String,
    pub window: Option<Window>,
    pub stopped_by: Option<OperatorStop>,
    /// Its main process as /proc shows it after the loss, when that is not
    /// the one known before: a start nobody saw.
    pub started_unseen: Option<u32>,
}

struct Watched {
    name: String,
    exe: Vec<glob::Pattern>,
    main: Option<ProcessKey>,
    stop: Option<OperatorStop>,
    crashed: bool,
}

pub struct Detector {
    services: Vec<Watched>,
    /// Main process → index in `services`.
    mains: HashMap<ProcessKey, usize>,
    control: VecDeque<ControlCommand>,
    windows: Vec<Window>,
    next_window: u64,
    /// The agent's own pid: its signals are sent for the person behind the
    /// control command that asked for them.
    agent_pid: Option<u32>,
}

/// The detector's state kept across agent restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub windows: Vec<Window>,
    pub stops: Vec<OperatorStop>,
    pub next_window: u64,
}

/// A declared maintenance window: the service is meant to stay down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub id: String,
    pub service: String,
    pub reason: String,
    /// Who opened it: uid and login uid of the control client.
    pub opened_by_uid: u32,
    pub opened_by_loginuid: Option<u32>,
    pub opened_at_ns: u64,
    pub expires_at_ns: Option<u64>,
}

impl Detector {
    pub fn new(services: &[config::Service]) -> Result<Detector> {
        let services = services
            .iter()
            .map(|s| {
                let exe = s
                    .exe
                    .iter()
                    .map(|g| {
                        glob::Pattern::new(g)
                            .with_context(|| format!("service `{}`: bad exe glob `{g}`", s.name))
                    })
                    .collect::<Result<_>>()?;
                Ok(Watched {
                    name: s.name.clone(),
                    exe,
                    main: None,
                    stop: None,
                    crashed: false,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Detector {
            services,
            mains: HashMap::new(),
            control: VecDeque::new(),
            windows: Vec::new(),
            next_window: 1,
            agent_pid: None,
        })
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

    /// Opens a window on `service`; errors name what is wrong.
    pub fn open_window(
        &mut self,
        service: &str,
        reason: &str,
        by: (u32, Option<u32>),
        now_ns: u64,
        duration_ns: Option<u64>,
    ) -> std::result::Result<Window, String> {
        if self.index_of(service).is_none() {
            let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
            return Err(format!(
                "no service `{service}` is watched (watched: {})",
                names.join(", ")
            ));
        }
        self.expire_windows(now_ns);
        if let Some(open) = self.windows.iter().find(|w| w.service == service) {
            return Err(format!("{service} already has window {} open", open.id));
        }
        let window = Window {
            id: format!("w{}", self.next_window),
            service: service.to_string(),
            reason: reason.to_string(),
            opened_by_uid: by.0,
            opened_by_loginuid: by.1,
            opened_at_ns: now_ns,
            expires_at_ns: duration_ns.map(|d| now_ns + d),
        };
        self.next_window += 1;
        self.windows.push(window.clone());
        Ok(window)
    }

    /// Closes the window with this id, or the one open on this service. The
    /// service's operator stop ends with it: the operator is done.
    pub fn close_window(&mut self, service_or_id: &str) -> Option<Window> {
        let at = self
            .windows
            .iter()
            .position(|w| w.id == service_or_id || w.service == service_or_id)?;
        let window = self.windows.remove(at);
        if let Some(index) = self.index_of(&window.service) {
            self.services[index].stop = None;
        }
        Some(window)
    }

    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// Drops windows whose time is up.
    pub fn expire_windows(&mut self, now_ns: u64) -> Vec<Window> {
        let (expired, open) = std::mem::take(&mut self.windows)
            .into_iter()
            .partition(|w| w.expires_at_ns.is_some_and(|e| e <= now_ns));
        self.windows = open;
        expired
    }

    fn window_on(&self, service: &str) -> Option<&Window> {
        self.windows.iter().find(|w| w.service == service)
    }

    /// What must survive a restart of the agent: windows and stops.
    pub fn snapshot(&self) -> Saved {
        Saved {
            windows: self.windows.clone(),
            stops: self
                .services
                .iter()
                .filter_map(|s| s.stop.clone())
                .collect(),
            next_window: self.next_window,
        }
    }

    /// Takes back what `snapshot` saved, for the services still watched.
    pub fn restore(&mut self, saved: Saved) {
        self.windows = saved
            .windows
            .into_iter()
            .filter(|w| self.index_of(&w.service).is_some())
            .collect();
        for stop in saved.stops {
            if let Some(index) = self.index_of(&stop.service) {
                self.services[index].stop = Some(stop);
            }
        }
        self.next_window = self.next_window.max(saved.next_window);
    }

    /// The operator stop a service is under, if any.
    pub fn stop_of(&self, service: &str) -> Option<&OperatorStop> {
        self.index_of(service)
            .and_then(|i| self.services[i].stop.as_ref())
    }

    fn service_of(&self, exe: &str) -> Option<usize> {
        self.services
            .iter()
            .position(|s| s.exe.iter().any(|p| p.matches(exe)))
    }

    /// The service a process runs: its executable matches, or for an
    /// interpreted daemon (`/bin/sh /path/daemon`, where /proc's exe is the
    /// interpreter) its first arguments do.
    fn service_of_process(&self, process: &Process) -> Option<usize> {
        process
            .exe
            .iter()
            .chain(process.cmdline.iter().take(2))
            .find_map(|path| self.service_of(path))
    }

    /// A process is a service's main process when it runs the service, is
    /// not a query of it (`postgres -V`, which pg_ctl runs before each
    /// start), and its parent does not run it (a postmaster, not one of its
    /// backends).
    fn main_service(&self, process: &Process, table: &ProcessTable) -> Option<usize> {
        let index = self.service_of_process(process)?;
        if process
            .cmdline
            .iter()
            .skip(1)
            .any(|a| QUERY_FLAGS.contains(&a.as_str()))
        {
            return None;
        }
        let parent_same = process
            .parent
            .and_then(|k| table.get(&k))
            .and_then(|p| self.service_of_process(p))
            == Some(index);
        (!parent_same).then_some(index)
    }

    /// Finds the main processes already running (call after seeding).
    pub fn adopt(&mut self, table: &ProcessTable) {
        for process in table.live_processes() {
            if let Some(index) = self.main_service(process, table) {
                self.services[index].main = Some(process.key);
                self.mains.insert(process.key, index);
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
                if let (Some(loginuid), true) = (
                    exec.process.loginuid,
                    CONTROL_COMMANDS.contains(&exec.process.comm.as_str()),
                ) {
                    self.control.push_back(ControlCommand {
                        pid: exec.process.pid,
                        comm: exec.process.comm.clone(),
                        args: exec.args.clone(),
                        intent: Intent::of(&exec.process.comm, &exec.args),
                        loginuid,
                        time_ns: exec.time_ns,
                    });
                }
                self.forget_old_control(exec.time_ns);
                match self.main_service(process, table) {
                    Some(index) => vec![self.started(index, process, exec.time_ns, table)],
                    None => Vec::new(),
                }
            }
            Event::Signal(signal) => self.signalled(signal).into_iter().collect(),
            Event::Exit(exit) => {
                let Some(index) = self.mains.remove(&exit.key) else {
                    return Vec::new();
                };
                let service = &mut self.services[index];
                service.main = None;
                service.crashed = service.stop.is_none();
                vec![Finding::Exited {
                    service: service.name.clone(),
                    pid: exit.pid,
                    exit_code: exit.exit_code,
                    signal: exit.signal,
                    operator_stop: service.stop.is_some(),
                }]
            }
            Event::Lost(lost) => self.resync(lost.count, table).into_iter().collect(),
            Event::Fork(_) => Vec::new(),
        }
    }

    /// After lost records: takes the main processes from the table (just
    /// reseeded from /proc) and names the services whose state mattered.
    fn resync(&mut self, count: u64, table: &ProcessTable) -> Option<Finding> {
        let mut now: Vec<Option<ProcessKey>> = vec![None; self.services.len()];
        for process in table.live_processes() {
            if let Some(index) = self.main_service(process, table)
                && now[index] != self.services[index].main
            {
                now[index] = Some(process.key);
            }
        }
        let mut at_risk = Vec::new();
        for (index, main) in now.into_iter().enumerate() {
            let before = self.services[index].main;
            if main != before {
                if let Some(old) = before {
                    self.mains.remove(&old);
                }
                if let Some(new) = main {
                    self.mains.insert(new, index);
                }
                self.services[index].main = main;
            }
            let service = &self.services[index];
            let window = self.window_on(&service.name).cloned();
            if window.is_some() || service.stop.is_some() {
                at_risk.push(AtRisk {
                    service: service.name.clone(),
                    window,
                    stopped_by: service.stop.clone(),
                    started_unseen: main.filter(|_| main != before).map(|k| k.pid),
                });
            }
        }
        (!at_risk.is_empty()).then_some(Finding::EventsLost { count, at_risk })
    }

    fn forget_old_control(&mut self, now_ns: u64) {
        while self
            .control
            .front()
            .is_some_and(|c| now_ns.saturating_sub(c.time_ns) > CONTROL_WINDOW_NS)
        {
            self.control.pop_front();
        }
    }

    /// The latest recent control command with a fitting intent, preferring
    /// one that names `service`.
    fn control_for(&self, service: &str, fits: fn(Intent) -> bool) -> Option<&ControlCommand> {
        let mut fitting = self.control.iter().rev().filter(|c| fits(c.intent));
        let latest = fitting.clone().next();
        fitting
            .find(|c| c.args.iter().any(|a| a.contains(service)))
            .or(latest)
    }

    fn signalled(&mut self, signal: &Signal) -> Option<Finding> {
        if !STOP_SIGNALS.contains(&signal.signal) {
            return None;
        }
        let index = *self.mains.get(&signal.target.key)?;
        let name = self.services[index].name.clone();
        let from_agent = Some(signal.sender.pid) == self.agent_pid;
        let sender_login = signal.sender.loginuid.filter(|_| !from_agent);
        let via = match sender_login {
            Some(_) => None,
            None => self.control_for(&name, Intent::stops).cloned(),
        };
        let window = self.window_on(&name);
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
        let service = &mut self.services[index];
        let started = Started {
            service: service.name.clone(),
            pid: process.pid,
            exe: process.exe.clone().unwrap_or_default(),
            args: process.cmdline.clone(),
            chain,
            supervisor: table.nearest_supervisor(&process.key).map(|p| Link {
                pid: p.pid,
                comm: p.comm.clone(),
            }),
            time_ns,
        };
        if let Some(old) = service.main.replace(process.key) {
            self.mains.remove(&old);
        }
        self.mains.insert(process.key, index);
        let crashed = std::mem::take(&mut service.crashed);
        let name = service.name.clone();
        let operator = process.loginuid.or_else(|| {
            // `monit start X` and friends: the supervisor does the start.
            self.control_for(&name, Intent::starts).map(|c| c.loginuid)
        });
        let service = &mut self.services[index];
        match (operator, service.stop.take()) {
            (Some(loginuid), _) => Finding::OperatorStart { started, loginuid },
            (None, Some(stopped_by)) => {
                // Still stopped as far as the operator is concerned.
                service.stop = Some(stopped_by.clone());
                let window = self.window_on(&name).cloned();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Exec, Exit, Fork, PerKind, RecordKind, SignalResult, Target, Who};

    /// Drives a table and a detector with the events of a scripted host.
    struct Host {
        table: ProcessTable,
        detector: Detector,
        time_ns: u64,
        loginuids: HashMap<ProcessKey, Option<u32>>,
    }

    impl Host {
        fn new() -> Host {
            let services = [config::Service {
                name: "postgres".into(),
                exe: vec!["/usr/lib/postgresql/*/bin/postgres".into()],
                on_respawn: Default::default(),
                on_unexpected_respawn: Default::default(),
                stop_command: None,
            }];
            let mut table = ProcessTable::default();
            let init = ProcessKey {
                pid: 1,
                start_ticks: 0,
            };
            table.seed([Process {
                key: init,
                pid: 1,
                parent: None,
                uid: 0,
                loginuid: None,
                comm: "init".into(),
                exe: Some("/sbin/init".into()),
                cmdline: vec![],
                exited: None,
            }]);
            Host {
                table,
                detector: Detector::new(&services).unwrap(),
                time_ns: 1_000_000_000,
                loginuids: HashMap::from([(init, None)]),
            }
        }

        fn feed(&mut self, event: Event) -> Vec<Finding> {
            self.time_ns += 100_000_000;
            self.table.apply(&event);
            self.detector.observe(&event, &self.table)
        }

        fn who(&self, key: ProcessKey) -> Who {
            let p = self.table.get(&key).unwrap();
            Who {
                pid: key.pid,
                tid: key.pid,
                key,
                comm: p.comm.clone(),
                uid: 0,
                loginuid: self.loginuids[&key],
                sessionid: None,
            }
        }

        fn fork(&mut self, parent: ProcessKey, pid: u32) -> ProcessKey {
            let child = ProcessKey {
                pid,
                start_ticks: self.time_ns / 10_000_000,
            };
            self.loginuids.insert(child, self.loginuids[&parent]);
            let event = Event::Fork(Fork {
                time_ns: self.time_ns,
                parent: self.who(parent),
                child_pid: pid,
                child,
            });
            assert!(self.feed(event).is_empty());
            child
        }

        /// Forks `parent` and execs `exe` in the child.
        fn spawn(
            &mut self,
            parent: ProcessKey,
            pid: u32,
            exe: &str,
            args: &[&str],
        ) -> (ProcessKey, Vec<Finding>) {
            let key = self.fork(parent, pid);
            let findings = self.exec(key, exe, args);
            (key, findings)
        }

        fn exec(&mut self, key: ProcessKey, exe: &str, args: &[&str]) -> Vec<Finding> {
            let comm = exe.rsplit('/').next().unwrap().to_string();
            let mut process = self.who(key);
            process.comm = comm;
            let ppid = self.table.get(&key).unwrap().parent.unwrap().pid;
            self.feed(Event::Exec(Exec {
                time_ns: self.time_ns,
                process,
                ppid,
                filename: exe.into(),
                filename_truncated: false,
                args: args.iter().map(|a| a.to_string()).collect(),
                args_truncated: false,
                guard_stopped: false,
            }))
        }

        fn signal(&mut self, sender: ProcessKey, target: ProcessKey, signal: u32) -> Vec<Finding> {
            let target_comm = self.table.get(&target).unwrap().comm.clone();
            self.feed(Event::Signal(Signal {
                time_ns: self.time_ns,
                signal,
                signal_name: crate::events::signal_name(signal),
                sender: self.who(sender),
                target: Target {
                    pid: target.pid,
                    tid: target.pid,
                    key: target,
                    comm: target_comm,
                },
                result: SignalResult::Delivered,
            }))
        }

        fn exit(
            &mut self,
            key: ProcessKey,
            exit_code: Option<u8>,
            signal: Option<u8>,
        ) -> Vec<Finding> {
            let comm = self.table.get(&key).unwrap().comm.clone();
            self.feed(Event::Exit(Exit {
                time_ns: self.time_ns,
                pid: key.pid,
                key,
                ppid: 1,
                comm,
                exit_code,
                signal,
                core_dumped: false,
            }))
        }

        fn login(&mut self, key: ProcessKey, loginuid: u32) {
            self.loginuids.insert(key, Some(loginuid));
            // As PAM does: the table learns it from the next exec.
        }

        /// monit (pid 100) starting postgres the way pg_ctl does: monit ->
        /// sh -> pg_ctl -> sh -> postgres, the launchers exiting at once.
        fn monit_starts_postgres(
            &mut self,
            monit: ProcessKey,
            base: u32,
        ) -> (ProcessKey, Vec<Finding>) {
            let (sh, _) = self.spawn(monit, base, "/bin/sh", &["sh", "-c", "pg_ctl start"]);
            let (pg_ctl, _) = self.spawn(
                sh,
                base + 1,
                "/usr/lib/postgresql/15/bin/pg_ctl",
                &["pg_ctl", "start"],
            );
            // pg_ctl asks the binary its version first: not a start.
            let (query, findings) = self.spawn(
                pg_ctl,
                base + 3,
                "/usr/lib/postgresql/15/bin/postgres",
                &["postgres", "-V"],
            );
            assert!(findings.is_empty(), "{findings:#?}");
            assert!(self.exit(query, Some(0), None).is_empty());
            let (postgres, findings) = self.spawn(
                pg_ctl,
                base + 2,
                "/usr/lib/postgresql/15/bin/postgres",
                &["postgres", "-D", "/srv/pg"],
            );
            self.exit(pg_ctl, Some(0), None);
            self.exit(sh, Some(0), None);
            (postgres, findings)
        }
    }

    const INIT: ProcessKey = ProcessKey {
        pid: 1,
        start_ticks: 0,
    };

    fn setup() -> (Host, ProcessKey, ProcessKey) {
        let mut host = Host::new();
        let (monit, _) = host.spawn(INIT, 100, "/usr/bin/monit", &["monit", "-I"]);
        let (postgres, findings) = host.monit_starts_postgres(monit, 200);
        assert!(
            matches!(&findings[..], [Finding::Start { .. }]),
            "{findings:#?}"
        );
        (host, monit, postgres)
    }

    fn alice_shell(host: &mut Host) -> ProcessKey {
        let (sshd, _) = host.spawn(INIT, 300, "/usr/sbin/sshd", &["sshd"]);
        let shell = host.fork(sshd, 301);
        host.login(shell, 1000);
        host.exec(shell, "/bin/bash", &["-bash"]);
        shell
    }

    #[test]
    fn the_incident_pg_ctl_stop_then_monit_respawn() {
        let (mut host, _monit, postgres) = setup();
        let shell = alice_shell(&mut host);
        let (pg_ctl, _) = host.spawn(
            shell,
            400,
            "/usr/lib/postgresql/15/bin/pg_ctl",
            &["pg_ctl", "stop", "-D", "/srv/pg"],
        );
        let findings = host.signal(pg_ctl, postgres, 2);
        let [Finding::OperatorStop(stop)] = &findings[..] else {
            panic!("{findings:#?}");
        };
        assert_eq!(stop.loginuid, Some(1000));
        assert_eq!(stop.sender.comm, "pg_ctl");
        assert_eq!(stop.signal_name, "SIGINT");
        assert_eq!(stop.via, None, "the sender itself has the login");
        let findings = host.exit(postgres, Some(0), None);
        assert!(
            matches!(
                &findings[..],
                [Finding::Exited {
                    operator_stop: true,
                    ..
                }]
            ),
            "{findings:#?}"
        );
        host.exit(pg_ctl, Some(0), None);

        let monit = ProcessKey {
            pid: 100,
            ..host.table.live(100).unwrap().key
        };
        let (_, findings) = host.monit_starts_postgres(monit, 500);
        let [
            Finding::Respawn {
                started,
                stopped_by,
                window: None,
            },
        ] = &findings[..]
        else {
            panic!("{findings:#?}");
        };
        assert_eq!(started.supervisor.as_ref().unwrap().comm, "monit");
        let chain: Vec<&str> = started.chain.iter().map(|l| l.comm.as_str()).collect();
        assert_eq!(chain, ["pg_ctl", "sh", "monit", "init"]);
        assert_eq!(stopped_by.sender.comm, "pg_ctl");
        assert_eq!(stopped_by.loginuid, Some(1000));

        // The train: monit tries again after killing nothing; still a respawn.
        let (_, findings) = host.monit_starts_postgres(monit, 600);
        assert!(
            matches!(&findings[..], [Finding::Respawn { .. }]),
            "{findings:#?}"
        );
    }

    #[test]
    fn the_operator_starting_it_again_is_not_a_respawn() {
        let (mut host, _monit, postgres) = setup();
        let shell = alice_shell(&mut host);
        host.signal(shell, postgres, 15);
        host.exit(postgres, None, Some(15));
        let (_, findings) = host.spawn(
            shell,
            450,
            "/usr/lib/postgresql/15/bin/postgres",
            &["postgres"],
        );
        let [Finding::OperatorStart { loginuid, started }] = &findings[..] else {
            panic!("{findings:#?}");
        };
        assert_eq!(*loginuid, 1000);
        assert_eq!(started.supervisor, None);
    }

    #[test]
    fn a_stop_the_agent_sends_for_an_operator_is_theirs() {
        let (mut host, monit, postgres) = setup();
        // The agent was started from root's login; the request came from alice.
        let (agent, _) = host.spawn(INIT, 50, "/usr/bin/stopguard", &["stopguard", "run"]);
        host.loginuids.insert(agent, Some(0));
        host.detector.set_agent_pid(agent.pid);
        host.detector.control_command(ControlCommand {
            pid: 450,
            comm: "stopguard".into(),
            args: vec!["stopguard".into(), "stop".into(), "postgres".into()],
            intent: Intent::Stop,
            loginuid: 1000,
            time_ns: host.time_ns,
        });
        let findings = host.signal(agent, postgres, 15);
        let [Finding::OperatorStop(stop)] = &findings[..] else {
            panic!("{findings:#?}");
        };
        assert_eq!(stop.loginuid, Some(1000));
        assert_eq!(stop.sender.comm, "stopguard");
        assert_eq!(
            stop.via.as_ref().map(|c| c.args.join(" ")),
            Some("stopguard stop postgres".into())
        );
        host.exit(postgres, Some(0), None);
        let (_, findings) = host.monit_starts_postgres(monit, 500);
        assert!(
            matches!(&findings[..], [Finding::Respawn { .. }]),
            "{findings:#?}"
        );
    }

    #[test]
    fn lost_records_during_a_window_name_the_service_and_an_unseen_start() {
        let (mut host, monit, postgres) = setup();
        let lost = |count| {
            Event::Lost(crate::events::Lost {
                count,
                total: count,
                by_kind: PerKind::from_fn(|k| if k == RecordKind::Exec { count } else { 0 }),
            })
        };
        // No window, no stop: a loss is logged, nothing is at risk.
        assert!(host.feed(lost(5)).is_empty());

        host.detector
            .open_window("postgres", "upgrade", (0, Some(1000)), host.time_ns, None)
            .unwrap();
        let findings = host.feed(lost(7));
        let [Finding::EventsLost { count: 7, at_risk }] = &findings[..] else {
            panic!("{findings:#?}");
        };
        assert_eq!(at_risk.len(), 1);
        assert_eq!(at_risk[0].service, "postgres");
        assert_eq!(at_risk[0].started_unseen, None, "the same postmaster runs");

        // The postmaster dies and monit starts another, all in the gap: the
        // table (reseeded from /proc) shows the new one; the detector, blind
        // meanwhile, never saw it start.
        let detector = std::mem::replace(&mut host.detector, Detector::new(&[]).unwrap());
        host.exit(postgres, Some(0), None);
        let (new, _) = host.monit_starts_postgres(monit, 500);
        host.detector = detector;
        let findings = host.feed(lost(3));
        let [Finding::EventsLost { at_risk, .. }] = &findings[..] else {
            panic!("{findings:#?}");
        };
        assert_eq!(at_risk[0].started_unseen, Some(new.pid));
        assert_eq!(host.detector.running(), [("postgres", new.pid)]);
    }

    #[test]
    fn a_crash_restart_raises_no_alarm() {
        let (mut host, monit, postgres) = setup();
        // The OOM killer, or any process without a login: not an operator.
        let (killer, _) = host.spawn(INIT, 700, "/usr/bin/kill", &["kill", "-9", "201"]);
        assert!(host.signal(killer, postgres, 9).is_empty());
        let findings = host.exit(postgres, None, Some(9));
        assert!(
            matches!(
                &findings[..],
                [Finding::Exited {
                    operator_stop: false,
                    signal: Some(9),
                    ..
                }]
            ),
            "{findings:#?}"
        );
        let (_, findings) = host.monit_starts_postgres(monit, 800);
        assert!(
            matches!(&findings[..], [Finding::CrashRestart { .. }]),
            "{findings:#?}"
        );
    }

    #[test]
    fn monit_stop_by_an_operator_names_the_command_and_a_monit_start_is_theirs() {
        let (mut host, monit, postgres) = setup();
        let shell = alice_shell(&mut host);
        let (cmd, _) = host.spawn(shell, 410, "/usr/bin/monit", &["monit", "stop", "postgres"]);
        host.exit(cmd, Some(0), None);
        // monit itself (no login) delivers the signal.
        let findings = host.signal(monit, postgres, 15);
        let [Finding::OperatorStop(stop)] = &findings[..] else {
            panic!("{findings:#?}");
        };
        assert_eq!(stop.sender.comm, "monit");
        assert_eq!(stop.loginuid, Some(1000));
        let via = stop.via.as_ref().unwrap();
        assert_eq!(
            (via.intent, via.args.join(" ")),
            (Intent::Stop, "monit stop postgres".into())
        );
        host.exit(postgres, Some(0), None);

        let (cmd, _) = host.spawn(
            shell,
            420,
            "/usr/bin/monit",
            &["monit", "start", "postgres"],
        );
        host.exit(cmd, Some(0), None);
        let (_, findings) = host.monit_starts_postgres(monit, 900);
        assert!(
            matches!(
                &findings[..],
                [Finding::OperatorStart { loginuid: 1000, .. }]
            ),
            "{findings:#?}"
        );
    }

    #[test]
    fn backends_reload_signals_and_other_processes_are_not_the_service() {
        let (mut host, _monit, postgres) = setup();
        let shell = alice_shell(&mut host);
        // A backend: a fork of the postmaster; its exit is not the service's.
        let backend = host.fork(postgres, 210);
        assert!(host.exit(backend, Some(0), None).is_empty());
        // A child that execs the same binary under the postmaster: not main.
        let (child, findings) = host.spawn(
            postgres,
            211,
            "/usr/lib/postgresql/15/bin/postgres",
            &["postgres", "--single"],
        );
        assert!(findings.is_empty(), "{findings:#?}");
        assert!(
            host.signal(shell, child, 15).is_empty(),
            "not the main process"
        );
        // SIGHUP is a reload.
        assert!(host.signal(shell, postgres, 1).is_empty());
        let (other, _) = host.spawn(shell, 460, "/usr/bin/sleep", &["sleep", "9"]);
        assert!(host.signal(shell, other, 15).is_empty());
        assert_eq!(host.detector.running(), [("postgres", 202)]);
    }

    #[test]
    fn running_services_are_adopted_from_the_table() {
        let (host, _, _) = setup();
        let services = [config::Service {
            name: "postgres".into(),
            exe: vec!["/usr/lib/postgresql/*/bin/postgres".into()],
            on_respawn: Default::default(),
            on_unexpected_respawn: Default::default(),
            stop_command: None,
        }];
        let mut fresh = Detector::new(&services).unwrap();
        fresh.adopt(&host.table);
        assert_eq!(fresh.running(), [("postgres", 202)]);
    }

    #[test]
    fn inside_a_window_any_stop_is_the_operators_and_the_respawn_names_it() {
        let (mut host, monit, postgres) = setup();
        let window = host
            .detector
            .open_window(
                "postgres",
                "schema change",
                (0, Some(1000)),
                host.time_ns,
                None,
            )
            .unwrap();
        assert_eq!(window.id, "w1");
        assert!(
            host.detector
                .open_window("postgres", "again", (0, None), host.time_ns, None)
                .is_err()
        );
        assert!(
            host.detector
                .open_window("nosuch", "x", (0, None), host.time_ns, None)
                .is_err()
        );
        // A stop from a process with no login: inside the window, it counts.
        let findings = host.signal(monit, postgres, 15);
        let [Finding::OperatorStop(stop)] = &findings[..] else {
            panic!("{findings:#?}");
        };
        assert_eq!(stop.loginuid, Some(1000), "the window's opener");
        host.exit(postgres, Some(0), None);
        let (_, findings) = host.monit_starts_postgres(monit, 500);
        let [Finding::Respawn { window, .. }] = &findings[..] else {
            panic!("{findings:#?}");
        };
        assert_eq!(window.as_ref().unwrap().reason, "schema change");
        // Closing ends the operator's stop: the next start is ordinary.
        assert_eq!(
            host.detector.close_window("w1").unwrap().service,
            "postgres"
        );
        assert!(host.detector.stop_of("postgres").is_none());
        assert!(host.detector.windows().is_empty());
    }

    #[test]
    fn windows_expire() {
        let (mut host, _, _) = setup();
        let now = host.time_ns;
        host.detector
            .open_window("postgres", "short", (0, None), now, Some(1_000))
            .unwrap();
        assert!(host.detector.expire_windows(now + 999).is_empty());
        assert_eq!(host.detector.expire_windows(now + 1_000).len(), 1);
        assert!(host.detector.windows().is_empty());
    }

    #[test]
    fn intents_from_arguments() {
        let of = |args: &[&str]| {
            Intent::of(
                args[0],
                &args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(of(&["systemctl", "stop", "postgresql"]), Intent::Stop);
        assert_eq!(of(&["sv", "down", "pg"]), Intent::Stop);
        assert_eq!(of(&["sv", "u", "pg"]), Intent::Start);
        assert_eq!(of(&["s6-svc", "-u", "/run/s6/pg"]), Intent::Start);
        assert_eq!(of(&["s6-svc", "-wd", "/run/s6/pg"]), Intent::Stop);
        assert_eq!(of(&["supervisorctl", "restart", "pg"]), Intent::Restart);
        assert_eq!(of(&["monit", "status"]), Intent::Other);
        // pg_ctl's options are not verbs: -o passes options, -t is a timeout.
        assert_eq!(
            of(&[
                "pg_ctl", "-D", "/srv/pg", "-o", "-p 5433", "-t", "60", "stop", "-m", "fast"
            ]),
            Intent::Stop
        );
    }

    #[test]
    fn a_bad_glob_names_the_service() {
        let services = [config::Service {
            name: "pg".into(),
            exe: vec!["/usr/[bin".into()],
            on_respawn: Default::default(),
            on_unexpected_respawn: Default::default(),
            stop_command: None,
        }];
        let err = Detector::new(&services).err().unwrap();
        assert!(format!("{err:#}").starts_with("service `pg`: bad exe glob `/usr/[bin`"));
    }
}
