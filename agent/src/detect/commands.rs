//! The control commands a stop or a start follows (`systemctl stop`,
//! `monit start`, `pg_ctl stop`): which ones name a service, and which
//! one, with the person behind it, explains an exit.

use super::{
    Actor, CONTROL_WINDOW_NS, ControlCommand, Detector, Intent, OperatorStop, UnitRequest,
};
use crate::{events::Exit, process::ProcessTable, supervisors};

impl Detector {
    pub(super) fn forget_old_control(&mut self, now_ns: u64) {
        while self
            .control
            .front()
            .is_some_and(|c| now_ns.saturating_sub(c.time_ns) > CONTROL_WINDOW_NS)
        {
            self.control.pop_front();
        }
        while self
            .requests
            .front()
            .is_some_and(|r| now_ns.saturating_sub(r.time_ns) > CONTROL_WINDOW_NS)
        {
            self.requests.pop_front();
        }
    }

    /// Whether a command's arguments name entry `index`: by its own name
    /// or by the configured service it is an instance of.
    pub(super) fn names(&self, index: usize, args: &[String]) -> bool {
        let service = &self.services[index];
        let config = &self.specs[service.spec].name;
        args.iter()
            .any(|a| a.contains(&service.name) || a.contains(config.as_str()))
    }

    /// The latest recent control command with a fitting intent, preferring
    /// one that names entry `index`.
    pub(super) fn control_for(
        &self,
        index: usize,
        fits: fn(Intent) -> bool,
    ) -> Option<&ControlCommand> {
        let mut fitting = self.control.iter().rev().filter(|c| fits(c.intent));
        let latest = fitting.clone().next();
        fitting.find(|c| self.names(index, &c.args)).or(latest)
    }

    /// The latest recent request to systemd about `unit` with a fitting
    /// intent, made at or after `since_ns`.
    pub(super) fn request_for(
        &self,
        unit: &str,
        fits: fn(Intent) -> bool,
        since_ns: Option<u64>,
    ) -> Option<&UnitRequest> {
        self.requests
            .iter()
            .rev()
            .take_while(|r| r.time_ns >= since_ns.unwrap_or(0))
            .find(|r| fits(r.intent) && r.names(unit))
    }

    /// A person's recent control command of another supervisor naming
    /// `service` (`monit stop postgres`, whose stop program is a
    /// systemctl): requests to systemd are matched by unit instead, and no
    /// command naming something else is taken for it.
    pub(super) fn named_control(
        &self,
        index: usize,
        fits: fn(Intent) -> bool,
    ) -> Option<&ControlCommand> {
        self.control.iter().rev().find(|c| {
            fits(c.intent) && !supervisors::asks_systemd(&c.comm) && self.names(index, &c.args)
        })
    }

    /// The person's command behind a stop of a process in systemd unit
    /// `unit` by a sender without a login (PID 1, the unit's ExecStop=):
    /// a person's request about that unit, else a person's command naming
    /// the service.
    pub(super) fn unit_stop_command(&self, unit: &str, index: usize) -> Option<ControlCommand> {
        let service = &self.services[index];
        self.request_for(unit, Intent::stops, service.started_ns)
            .and_then(UnitRequest::by_person)
            .or_else(|| self.named_control(index, Intent::stops).cloned())
    }

    /// The operator's stop behind a main process's exit that no stop signal
    /// explained: a person's command that asks the server itself to shut
    /// down (`mysqladmin shutdown`, which sends no signal), or any exit
    /// inside a window.
    pub(super) fn asked_to_exit(
        &self,
        index: usize,
        exit: &Exit,
        table: &ProcessTable,
    ) -> Option<OperatorStop> {
        let command = self
            .named_control(index, Intent::stops)
            .filter(|c| supervisors::shuts_down_itself(&c.comm))
            .or_else(|| {
                self.control
                    .iter()
                    .rev()
                    .find(|c| c.intent.stops() && supervisors::shuts_down_itself(&c.comm))
            })
            .filter(|c| exit.time_ns.saturating_sub(c.time_ns) <= CONTROL_WINDOW_NS);
        let window = self.window_on(index);
        if command.is_none() && window.is_none() {
            return None;
        }
        let sender = match command {
            Some(c) => Actor {
                pid: c.pid,
                comm: c.comm.clone(),
                uid: table.live(c.pid).map_or(c.loginuid, |p| p.uid),
                loginuid: Some(c.loginuid),
            },
            None => Actor {
                pid: exit.pid,
                comm: exit.comm.clone(),
                uid: table.get(&exit.key).map_or(0, |p| p.uid),
                loginuid: None,
            },
        };
        Some(OperatorStop {
            service: self.services[index].name.clone(),
            pid: exit.pid,
            signal: 0,
            signal_name: "exit".into(),
            loginuid: command
                .map(|c| c.loginuid)
                .or(window.and_then(|w| w.opened_by_loginuid)),
            sender,
            via: command.cloned(),
            time_ns: exit.time_ns,
        })
    }
}
