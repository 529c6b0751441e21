//! The process table: every process on the host, keyed by pid and start
//! time so that pid reuse cannot confuse it, with exited entries kept for a
//! while so that later events can still be attributed to them.

mod ids;
pub mod procfs;
mod units;

pub use self::{
    ids::{IdHasher, IdMap},
    units::Units,
};

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::{
    events::{Event, ProcessKey},
    supervisors::{is_supervisor, name_of},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Process {
    #[serde(skip)]
    pub key: ProcessKey,
    pub pid: u32,
    #[serde(skip)]
    pub parent: Option<ProcessKey>,
    pub uid: u32,
    pub loginuid: Option<u32>,
    pub comm: String,
    /// The executable: the exec'd filename, or /proc/PID/exe when seeded.
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    /// The systemd unit it runs in (`postgresql@15-main.service`), from its
    /// cgroup; None outside any service unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(skip)]
    pub exited: Option<Exited>,
}

impl Process {
    /// A process known only by its key and name (its start was not seen).
    fn unknown(key: ProcessKey, comm: &str) -> Process {
        Process {
            key,
            pid: key.pid,
            parent: None,
            uid: 0,
            loginuid: None,
            comm: comm.to_string(),
            exe: None,
            cmdline: Vec::new(),
            unit: None,
            exited: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exited {
    pub time_ns: u64,
    pub exit_code: Option<u8>,
    pub signal: Option<u8>,
}

/// A link of an ancestry chain, as printed and exported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub pid: u32,
    pub comm: String,
}

pub struct ProcessTable {
    processes: IdMap<ProcessKey, Process>,
    live: IdMap<u32, ProcessKey>,
    exited: VecDeque<(u64, ProcessKey)>,
    retention_ns: u64,
    max_exited: usize,
}

/// How far up a chain is followed: deeper means a loop in bad data.
const MAX_DEPTH: usize = 64;

impl Default for ProcessTable {
    fn default() -> Self {
        Self::new(300_000_000_000, 65_536)
    }
}

impl ProcessTable {
    /// A table keeping exited processes for `retention_ns` (event time) and
    /// at most `max_exited` of them.
    pub fn new(retention_ns: u64, max_exited: usize) -> Self {
        ProcessTable {
            processes: IdMap::default(),
            live: IdMap::default(),
            exited: VecDeque::new(),
            retention_ns,
            max_exited,
        }
    }

    /// Replaces what the table believes is alive with `processes` (a /proc
    /// scan). Exited entries are kept for attribution.
    pub fn seed(&mut self, processes: impl IntoIterator<Item = Process>) {
        self.live.clear();
        self.processes.retain(|_, p| p.exited.is_some());
        for process in processes {
            self.live.insert(process.pid, process.key);
            self.processes.insert(process.key, process);
        }
    }

    pub fn len_live(&self) -> usize {
        self.live.len()
    }

    pub fn len(&self) -> usize {
        self.processes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    pub fn get(&self, key: &ProcessKey) -> Option<&Process> {
        self.processes.get(key)
    }

    pub fn live_processes(&self) -> impl Iterator<Item = &Process> {
        self.live.values().filter_map(|k| self.processes.get(k))
    }

    /// The live process with this pid.
    pub fn live(&self, pid: u32) -> Option<&Process> {
        self.live.get(&pid).and_then(|k| self.processes.get(k))
    }

    /// Brings the table up to date with one event.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Fork(fork) => {
                let parent = self.processes.get(&fork.parent.key);
                let child = Process {
                    key: fork.child,
                    pid: fork.child_pid,
                    parent: Some(fork.parent.key),
                    uid: fork.parent.uid,
                    loginuid: fork.parent.loginuid,
                    comm: fork.parent.comm.clone(),
                    exe: parent.and_then(|p| p.exe.clone()),
                    cmdline: parent.map(|p| p.cmdline.clone()).unwrap_or_default(),
                    // A child starts in its parent's cgroup.
                    unit: parent.and_then(|p| p.unit.clone()),
                    exited: None,
                };
                self.insert_live(child);
            }
            Event::Exec(exec) => {
                let key = exec.process.key;
                // The creator (from the fork record) names who started it
                // even when it exited before this exec and the process was
                // reparented (`sh -c 'daemon &'`). Without one, records come
                // in order, so the live process with the parent's pid is
                // the parent as it was at the exec.
                let parent = self.live.get(&exec.ppid).copied().filter(|p| *p != key);
                let process = self
                    .processes
                    .entry(key)
                    .or_insert_with(|| Process::unknown(key, ""));
                process.parent = process.parent.or(parent);
                process.uid = exec.process.uid;
                process.loginuid = exec.process.loginuid;
                process.comm = exec.process.comm.clone();
                process.exe = Some(exec.filename.clone());
                process.cmdline = exec.args.clone();
                process.unit = exec.unit.clone();
                self.live.insert(key.pid, key);
            }
            Event::Exit(exit) => {
                // One that started before we looked is remembered with what
                // little we know, so later references to it resolve.
                let process = self
                    .processes
                    .entry(exit.key)
                    .or_insert_with(|| Process::unknown(exit.key, &exit.comm));
                process.exited = Some(Exited {
                    time_ns: exit.time_ns,
                    exit_code: exit.exit_code,
                    signal: exit.signal,
                });
                if self.live.get(&exit.pid) == Some(&exit.key) {
                    self.live.remove(&exit.pid);
                }
                self.exited.push_back((exit.time_ns, exit.key));
                self.prune(exit.time_ns);
            }
            Event::Signal(_) | Event::Lost(_) => {}
        }
    }

    fn insert_live(&mut self, process: Process) {
        if let Some(old) = self.live.insert(process.pid, process.key)
            && old != process.key
            && let Some(stale) = self.processes.get_mut(&old)
            && stale.exited.is_none()
        {
            // Its exit was lost: the pid has been reused since.
            stale.exited = Some(Exited {
                time_ns: 0,
                exit_code: None,
                signal: None,
            });
            self.exited.push_back((0, old));
        }
        self.processes.insert(process.key, process);
    }

    fn prune(&mut self, now_ns: u64) {
        while let Some(&(time, key)) = self.exited.front() {
            let expired = now_ns.saturating_sub(time) > self.retention_ns;
            if !expired && self.exited.len() <= self.max_exited {
                break;
            }
            self.exited.pop_front();
            if self.processes.get(&key).is_some_and(|p| p.exited.is_some()) {
                self.processes.remove(&key);
            }
        }
    }

    /// The process and its ancestors, nearest first, as far as known.
    pub fn ancestry(&self, key: &ProcessKey) -> Vec<&Process> {
        let mut chain = Vec::new();
        let mut next = self.processes.get(key);
        while let Some(process) = next {
            chain.push(process);
            if chain.len() >= MAX_DEPTH {
                break;
            }
            next = process
                .parent
                .filter(|p| p != &process.key)
                .and_then(|p| self.processes.get(&p));
        }
        chain
    }

    /// The ancestry as (pid, comm) links, nearest first.
    pub fn chain(&self, key: &ProcessKey) -> Vec<Link> {
        self.ancestry(key)
            .into_iter()
            .map(|p| Link {
                pid: p.pid,
                comm: p.comm.clone(),
            })
            .collect()
    }

    /// The nearest ancestor (not the process itself) that is a supervisor.
    pub fn nearest_supervisor(&self, key: &ProcessKey) -> Option<&Process> {
        self.ancestry(key)
            .into_iter()
            .skip(1)
            .find(|p| is_supervisor(name_of(&p.comm, &p.cmdline)))
    }
}

#[cfg(test)]
mod tests {
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
            cmdline: Vec::new(),
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
            args: vec![comm.into()],
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
}
