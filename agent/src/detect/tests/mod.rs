//! The detector driven by scripted hosts: processes forked, exec'd,
//! signalled and exited, the findings checked after each step.

use super::*;
use crate::events::{Exec, Exit, Fork, PerKind, RecordKind, SignalResult, Target, Who};

/// Drives a table and a detector with the events of a scripted host.
pub(super) struct Host {
    table: ProcessTable,
    pub(super) detector: Detector,
    pub(super) time_ns: u64,
    loginuids: HashMap<ProcessKey, Option<u32>>,
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
            cmdline: vec![],
            unit: None,
            exited: None,
        }]);
        Host {
            table,
            detector: Detector::new(services),
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
            args: args.iter().map(|a| a.to_string()).collect(),
            args_truncated: false,
            guard_stopped: false,
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
    let detector = std::mem::replace(&mut host.detector, Detector::new(&[]));
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

/// A loss of `count` exec records.
fn lost(count: u64) -> Event {
    Event::Lost(crate::events::Lost {
        count,
        total: count,
        by_kind: PerKind::from_fn(|k| if k == RecordKind::Exec { count } else { 0 }),
    })
}

/// Runs `gap` with the detector blind, as while the ring overflowed: the
/// table (reseeded from /proc after the loss) has what happened, the
/// detector saw none of it.
fn unseen<T>(host: &mut Host, gap: impl FnOnce(&mut Host) -> T) -> T {
    let detector = std::mem::replace(&mut host.detector, Detector::new(&[]));
    let result = gap(host);
    host.detector = detector;
    result
}

#[test]
fn lost_records_after_an_operator_stop_name_the_respawn_nobody_saw() {
    let (mut host, monit, postgres) = setup();
    let shell = alice_shell(&mut host);
    host.signal(shell, postgres, 15);
    host.exit(postgres, None, Some(15));
    assert!(
        host.detector.running().is_empty(),
        "no main before the loss"
    );
    let (respawn, _) = unseen(&mut host, |host| host.monit_starts_postgres(monit, 500));
    let findings = host.feed(lost(9));
    let [Finding::EventsLost { count: 9, at_risk }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    let [risk] = &at_risk[..] else {
        panic!("{at_risk:#?}");
    };
    assert_eq!(risk.service, "postgres");
    assert_eq!(risk.window, None);
    assert_eq!(risk.stopped_by.as_ref().unwrap().loginuid, Some(1000));
    assert_eq!(risk.started_unseen, Some(respawn.pid));
    assert_eq!(
        risk.started_unseen_loginuid, None,
        "a supervisor started it"
    );
    assert_eq!(host.detector.running(), [("postgres", respawn.pid)]);
    assert!(
        host.detector.stop_of("postgres").is_some(),
        "still stopped as far as the operator is concerned"
    );

    // Another loss: the same process runs, nothing new started unseen.
    let findings = host.feed(lost(2));
    let [Finding::EventsLost { at_risk, .. }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(at_risk[0].started_unseen, None);
}

#[test]
fn the_exec_record_of_a_start_reported_at_a_loss_is_not_a_second_start() {
    let (mut host, monit, postgres) = setup();
    let shell = alice_shell(&mut host);
    host.signal(shell, postgres, 15);
    host.exit(postgres, None, Some(15));
    let (respawn, _) = unseen(&mut host, |host| host.monit_starts_postgres(monit, 500));
    host.feed(lost(4));
    // Written to the ring before the overflow, read after the loss check.
    let findings = host.exec(
        respawn,
        "/usr/lib/postgresql/15/bin/postgres",
        &["postgres", "-D", "/srv/pg"],
    );
    assert!(findings.is_empty(), "{findings:#?}");
    assert_eq!(host.detector.running(), [("postgres", respawn.pid)]);
}

#[test]
fn a_start_nobody_saw_names_the_login_of_the_person_who_ran_it() {
    let (mut host, _monit, postgres) = setup();
    let shell = alice_shell(&mut host);
    host.signal(shell, postgres, 15);
    host.exit(postgres, None, Some(15));
    let (mine, _) = unseen(&mut host, |host| {
        host.spawn(
            shell,
            450,
            "/usr/lib/postgresql/15/bin/postgres",
            &["postgres"],
        )
    });
    let findings = host.feed(lost(3));
    let [Finding::EventsLost { at_risk, .. }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(at_risk[0].started_unseen, Some(mine.pid));
    assert_eq!(at_risk[0].started_unseen_loginuid, Some(1000));
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
    let services = [service("postgres", "/usr/lib/postgresql/*/bin/postgres")];
    let mut fresh = Detector::new(&services);
    fresh.adopt(&host.table);
    assert_eq!(fresh.running(), [("postgres", 202)]);
}

mod instances;
mod systemd;
