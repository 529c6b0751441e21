//! The process table's tests: chains, pid reuse, retention.

use super::*;
use crate::events::{Exec, Exit, Fork, Who};

fn key(pid: u32, start: u64) -> ProcessKey {
    ProcessKey {
        pid,
        start_ticks: start,
    }
}

fn who(k: ProcessKey, comm: &str, loginuid: Option<u32>) -> Who {
    Who {
        pid: k.pid,
        tid: k.pid,
        key: k,
        comm: comm.into(),
        uid: 0,
        loginuid,
        sessionid: None,
    }
}

fn seeded(pid: u32, start: u64, parent: Option<ProcessKey>, comm: &str) -> Process {
    Process {
        key: key(pid, start),
        pid,
        parent,
        uid: 0,
        loginuid: None,
        comm: comm.into(),
        exe: None,
        cmdline: Vec::new().into(),
        unit: None,
        exited: None,
    }
}

fn fork(t: u64, parent: ProcessKey, comm: &str, child: ProcessKey) -> Event {
    Event::Fork(Fork {
        time_ns: t,
        parent: who(parent, comm, None),
        child_pid: child.pid,
        child,
    })
}

fn exec(t: u64, k: ProcessKey, parent: ProcessKey, comm: &str, file: &str) -> Event {
    Event::Exec(Exec {
        time_ns: t,
        process: who(k, comm, None),
        ppid: parent.pid,
        filename: file.into(),
        filename_truncated: false,
        args: vec![comm.to_string()].into(),
        args_truncated: false,
        args_unread: false,
        guard_stopped: false,
        cgroup: 0,
        unit: None,
    })
}

fn exit(t: u64, k: ProcessKey, comm: &str) -> Event {
    Event::Exit(Exit {
        time_ns: t,
        pid: k.pid,
        key: k,
        ppid: 1,
        comm: comm.into(),
        exit_code: Some(0),
        signal: None,
        core_dumped: false,
    })
}

/// init(1) -> monit(100) -> sh(200) -> pg_ctl(300) -> sh(400) -> postgres
fn daemon_start() -> (ProcessTable, ProcessKey) {
    let mut table = ProcessTable::default();
    let init = key(1, 1);
    let monit = key(100, 10);
    table.seed([
        seeded(1, 1, None, "init"),
        seeded(100, 10, Some(init), "monit"),
    ]);
    let (sh, pg_ctl, sh2) = (key(200, 50), key(300, 51), key(400, 52));
    for event in [
        fork(1, monit, "monit", sh),
        exec(2, sh, monit, "sh", "/bin/sh"),
        fork(3, sh, "sh", pg_ctl),
        exec(4, pg_ctl, sh, "pg_ctl", "/usr/bin/pg_ctl"),
        fork(5, pg_ctl, "pg_ctl", sh2),
        exec(
            6,
            sh2,
            pg_ctl,
            "postgres",
            "/usr/lib/postgresql/15/bin/postgres",
        ),
        // The double fork: everything above it exits at once.
        exit(7, pg_ctl, "pg_ctl"),
        exit(8, sh, "sh"),
    ] {
        table.apply(&event);
    }
    (table, sh2)
}

#[test]
fn ancestry_survives_the_double_fork() {
    let (table, postgres) = daemon_start();
    let chain: Vec<(u32, String)> = table
        .chain(&postgres)
        .into_iter()
        .map(|l| (l.pid, l.comm))
        .collect();
    assert_eq!(
        chain,
        [
            (400, "postgres".to_string()),
            (300, "pg_ctl".into()),
            (200, "sh".into()),
            (100, "monit".into()),
            (1, "init".into()),
        ]
    );
    assert_eq!(table.nearest_supervisor(&postgres).unwrap().pid, 100);
    assert_eq!(
        table.live(400).unwrap().exe.as_deref(),
        Some("/usr/lib/postgresql/15/bin/postgres")
    );
    assert!(table.live(300).is_none(), "pg_ctl exited");
    assert!(table.get(&key(300, 51)).unwrap().exited.is_some());
}

#[test]
fn pid_reuse_is_a_new_process() {
    let (mut table, _) = daemon_start();
    // pid 300 comes back as something else, forked by init.
    let reused = key(300, 9_000);
    table.apply(&fork(100, key(1, 1), "init", reused));
    table.apply(&exec(101, reused, key(1, 1), "cron", "/usr/sbin/cron"));
    assert_eq!(table.live(300).unwrap().comm, "cron");
    assert_eq!(table.get(&key(300, 51)).unwrap().comm, "pg_ctl");
    assert!(table.nearest_supervisor(&reused).is_none());
}

#[test]
fn a_lost_exit_is_noticed_when_the_pid_returns() {
    let mut table = ProcessTable::default();
    table.seed([
        seeded(1, 1, None, "init"),
        seeded(50, 2, Some(key(1, 1)), "old"),
    ]);
    table.apply(&fork(10, key(1, 1), "init", key(50, 99)));
    assert!(table.get(&key(50, 2)).unwrap().exited.is_some());
    assert_eq!(table.live(50).unwrap().key, key(50, 99));
}

#[test]
fn exited_entries_are_pruned_by_age_and_count() {
    let mut table = ProcessTable::new(1_000, 2);
    table.seed([seeded(1, 1, None, "init")]);
    for pid in 10..15 {
        let k = key(pid, pid.into());
        table.apply(&fork(pid.into(), key(1, 1), "init", k));
        table.apply(&exit(pid.into(), k, "init"));
    }
    // Only the newest two exited ones are kept.
    assert_eq!(table.len(), 3);
    assert!(table.get(&key(14, 14)).is_some());
    table.apply(&fork(5_000, key(1, 1), "init", key(20, 20)));
    table.apply(&exit(5_000, key(20, 20), "init"));
    assert!(
        table.get(&key(14, 14)).is_none(),
        "older than the retention"
    );
    assert!(table.get(&key(20, 20)).is_some());
    assert!(
        table.get(&key(1, 1)).is_some(),
        "live processes are never pruned"
    );
}

#[test]
fn seeding_replaces_the_live_view_but_keeps_the_exited() {
    let (mut table, postgres) = daemon_start();
    table.seed([seeded(1, 1, None, "init")]);
    assert!(table.live(400).is_none());
    assert_eq!(table.len_live(), 1);
    assert!(table.get(&key(300, 51)).is_some());
    assert!(table.get(&postgres).is_none());
}

#[test]
fn exited_parents_outlast_the_count_of_exited_leaves() {
    let (mut table, postgres) = daemon_start();
    table.max_exited = 2;
    // A storm of short-lived commands under init, long after the start.
    for pid in 1_000..1_100 {
        let k = key(pid, pid.into());
        table.apply(&fork(1_000, key(1, 1), "init", k));
        table.apply(&exit(1_000, k, "init"));
    }
    assert!(table.get(&key(1_000, 1_000)).is_none(), "leaves are pruned");
    assert_eq!(
        table.chain(&postgres).len(),
        5,
        "the exited pg_ctl and sh still link postgres to monit"
    );
    // Past the retention, they go too.
    table.retention_ns = 500;
    table.apply(&fork(2_000, key(1, 1), "init", key(2_000, 2_000)));
    table.apply(&exit(2_000, key(2_000, 2_000), "init"));
    assert!(table.get(&key(300, 51)).is_none());
}
