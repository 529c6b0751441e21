//! The records the detector emits: findings, and the operator stops,
//! starts and control commands they are made of.

use serde::{Deserialize, Serialize};

use super::{Intent, Window};
use crate::{process::Link, supervisors};

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

/// A request to systemd (PID 1) about named units: `systemctl stop
/// postgresql@15-main`, or `service`/`pg_ctlcluster` that redirect there,
/// by anyone. PID 1 carries it out (sends the signals, starts the
/// processes), so the request is what names who asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRequest {
    pub pid: u32,
    pub comm: String,
    pub args: Vec<String>,
    pub intent: Intent,
    /// The units it names (a bare name being `NAME.service`).
    pub units: Vec<String>,
    /// Set when a person ran it; unset for monit, cron, a script.
    pub loginuid: Option<u32>,
    /// What ran it: its chain at the exec, parent first.
    pub chain: Vec<Link>,
    /// The supervisor behind it (monit), else what ran it: never systemd,
    /// which only carries it out.
    pub supervisor: Option<Link>,
    #[serde(skip)]
    pub time_ns: u64,
}

impl UnitRequest {
    /// Whether it is about `unit`: by name or glob (`systemctl stop
    /// 'postgresql@*'`), or through a unit that stops and starts its
    /// template's instances (Debian's `postgresql.service` reaches
    /// `postgresql@15-main.service` through PartOf=).
    pub fn names(&self, unit: &str) -> bool {
        let template = unit
            .split_once('@')
            .map(|(base, _)| format!("{base}.service"));
        self.units.iter().any(|u| {
            u == unit
                || Some(u) == template.as_ref()
                || glob::Pattern::new(u).is_ok_and(|p| p.matches(unit))
        })
    }

    /// The control command it is, when a person ran it.
    pub fn by_person(&self) -> Option<ControlCommand> {
        Some(ControlCommand {
            pid: self.pid,
            comm: self.comm.clone(),
            args: self.args.clone(),
            intent: self.intent,
            loginuid: self.loginuid?,
            time_ns: self.time_ns,
        })
    }
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub service: String,
    pub pid: u32,
    pub exe: String,
    pub args: Vec<String>,
    /// The starting chain at the exec, parent first.
    pub chain: Vec<Link>,
    /// The nearest supervisor in that chain; for a start PID 1 made on
    /// request, the supervisor behind the request.
    pub supervisor: Option<Link>,
    /// Its systemd unit, when it runs in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The request to systemd that had PID 1 start it (monit running
    /// `systemctl start`), when one without a person behind it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<Box<UnitRequest>>,
    pub time_ns: u64,
}

impl Started {
    /// The unit whose service systemd (PID 1) started this process as: it
    /// runs in a unit and PID 1 started it there, on a request (monit's
    /// `systemctl start`) or by itself (`Restart=`). None for what a
    /// supervisor of another kind started, even inside some unit's cgroup
    /// (runsv or monit run by a unit): that unit is the supervisor's.
    pub fn systemd_unit(&self) -> Option<&str> {
        let by_systemd = self.requested.is_some()
            || self
                .supervisor
                .as_ref()
                .is_some_and(|s| supervisors::is_systemd(&s.comm));
        self.unit.as_deref().filter(|_| by_systemd)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtRisk {
    pub service: String,
    pub window: Option<Window>,
    pub stopped_by: Option<OperatorStop>,
    /// Its main process as /proc shows it after the loss, when that is not
    /// the one known before: a start nobody saw.
    pub started_unseen: Option<u32>,
    /// That process's login uid, when it has one: a person started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_unseen_loginuid: Option<u32>,
}

#[cfg(test)]
impl OperatorStop {
    /// A person (login uid 1000) stopping `service` (pid 41) with `kill`.
    pub fn example(service: &str) -> OperatorStop {
        OperatorStop {
            service: service.into(),
            pid: 41,
            signal: 15,
            signal_name: "SIGTERM".into(),
            sender: Actor {
                pid: 7,
                comm: "kill".into(),
                uid: 0,
                loginuid: Some(1000),
            },
            loginuid: Some(1000),
            via: None,
            time_ns: 1,
        }
    }
}
