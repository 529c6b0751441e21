//! The detector driven by scripted hosts: processes forked, exec'd,
//! signalled and exited, the findings checked after each step.

use std::collections::HashMap;

use super::*;
use crate::events::{Exec, Exit, Fork, PerKind, RecordKind, SignalResult, Target, Who};

/// Drives a table and a detector with the events of a scripted host.
pub(super) struct Host {
    table: ProcessTable,
    pub(super) detector: Detector,
    pub(super) time_ns: u64,
    loginuids: HashMap<ProcessKey, Option<u32>>,
    /// While set, events reach the table only, and are kept here: what
    /// pinned probes record while no agent runs.
    pub(super) recording: Option<Vec<Event>>,
}

/// A watched service running `exe` (a glob).
pub(super) fn service(name: &str, exe: &str) -> config::Service {
    config::Service {
        name: name.into(),
        exe: vec![glob::Pattern::new(exe).unwrap()],
        unit: Vec::new(),
        on_respawn: Default::default(),
        on_unexpected_respawn: Default::default(),
        stop_command: None,
    }
}

impl Host {
    fn new() -> Host {
        Host::with(
            "init",
            &[service("postgres", "/usr/lib/postgresql/*/bin/postgres")],
        )
    }

    /// A host whose PID 1 is `init_comm`, watching `services`.
    pub(super) fn with(init_comm: &str, services: &[config::Service]) -> Host {
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
            comm: init_comm.into(),
            exe: Some("/sbin/init".into()),
            cmdline: Vec::new().into(),
            unit: None,
            exited: None,
        }]);
        Host {
            table,
            detector: Detector::new(services),
            time_ns: 1_000_000_000,
            loginuids: HashMap::from([(init, None)]),
            recording: None,
        }
    }

    fn feed(&mut self, event: Event) -> Vec<Finding> {
        self.time_ns += 100_000_000;
        self.table.apply(&event);
        if let Some(recording) = &mut self.recording {
            recording.push(event);
            return Vec::new();
        }
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

    pub(super) fn fork(&mut self, parent: ProcessKey, pid: u32) -> ProcessKey {
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
    pub(super) fn spawn(
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

    /// Execs `exe` in `key`, in the unit it inherited.
    pub(super) fn exec(&mut self, key: ProcessKey, exe: &str, args: &[&str]) -> Vec<Finding> {
        let unit = self.table.get(&key).unwrap().unit.clone();
        self.exec_in(key, unit.as_deref(), exe, args)
    }

    /// Execs `exe` in `key` in systemd unit `unit` (a child of PID 1 moves
    /// itself into its unit's cgroup before the exec).
    pub(super) fn exec_in(
        &mut self,
        key: ProcessKey,
        unit: Option<&str>,
        exe: &str,
        args: &[&str],
    ) -> Vec<Finding> {
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
            args: args
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .into(),
            args_truncated: false,
            args_unread: false,
            guard_stopped: false,
            cgroup: 0,
            unit: unit.map(str::to_string),
        }))
    }

    pub(super) fn signal(
        &mut self,
        sender: ProcessKey,
        target: ProcessKey,
        signal: u32,
    ) -> Vec<Finding> {
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

    pub(super) fn exit(
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

    pub(super) fn login(&mut self, key: ProcessKey, loginuid: u32) {
        self.loginuids.insert(key, Some(loginuid));
        // As PAM does: the table learns it from the next exec.
    }

    /// monit (pid 100) starting postgres the way pg_ctl does: monit ->
    /// sh -> pg_ctl -> sh -> postgres, the launchers exiting at once.
    pub(super) fn monit_starts_postgres(
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

pub(super) const INIT: ProcessKey = ProcessKey {
    pid: 1,
    start_ticks: 0,
};

pub(super) fn setup() -> (Host, ProcessKey, ProcessKey) {
    let mut host = Host::new();
    let (monit, _) = host.spawn(INIT, 100, "/usr/bin/monit", &["monit", "-I"]);
    let (postgres, findings) = host.monit_starts_postgres(monit, 200);
    assert!(
        matches!(&findings[..], [Finding::Start { .. }]),
        "{findings:#?}"
    );
    (host, monit, postgres)
}

pub(super) fn alice_shell(host: &mut Host) -> ProcessKey {
    let (sshd, _) = host.spawn(INIT, 300, "/usr/sbin/sshd", &["sshd"]);
    let shell = host.fork(sshd, 301);
    host.login(shell, 1000);
    host.exec(shell, "/bin/bash", &["-bash"]);
    shell
}

mod gap;
mod instances;
mod loss;
mod supervisors;
mod systemd;
