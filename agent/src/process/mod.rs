//! The process table: every process on the host, keyed by pid and start
//! time so that pid reuse cannot confuse it, with exited entries kept for a
//! while so that later events can still be attributed to them.
//!
//! An exited process that is the parent of one still in the table is a link
//! of a chain (the pg_ctl behind a double-forked postgres): it is kept for
//! the whole retention. One that is nobody's parent is only wanted by
//! records about itself, which follow its exit closely: far fewer of those
//! are kept, so that a host running short-lived commands by the thousand
//! does not fill the table with them.

mod cgroup;
mod ids;
pub mod procfs;
mod units;

pub use self::{
    ids::{IdHasher, IdMap},
    units::Units,
};

use std::{collections::VecDeque, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    events::{Event, ProcessKey},
    supervisors::{is_supervisor, name_of},
};

/// The comm a program of this file name runs under: its first 15 bytes,
/// cut where a character starts.
pub fn comm_of(file: &str) -> &str {
    let mut end = file.len().min(agent_common::COMM_LEN - 1);
    while !file.is_char_boundary(end) {
        end -= 1;
    }
    &file[..end]
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Process {
    #[serde(skip)]
    pub key: ProcessKey,
    pub pid: u32,
    #[serde(skip)]
    pub parent: Option<ProcessKey>,
    /// The real uid. For a process seeded from /proc that the scan did not
    /// read in full, the effective one (see `procfs::Notables`).
    pub uid: u32,
    pub loginuid: Option<u32>,
    pub comm: String,
    /// The executable: the exec'd filename, or /proc/PID/exe when seeded.
    pub exe: Option<String>,
    /// Shared with its exec record and its children until they exec.
    pub cmdline: Arc<[String]>,
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
            cmdline: Arc::default(),
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
    /// How many entries of the table name each process as their parent.
    children: IdMap<ProcessKey, u32>,
    /// Exited processes, oldest exit first.
    exited: VecDeque<(u64, ProcessKey)>,
    /// Exited processes kept as parents of entries still in the table.
    parents: VecDeque<(u64, ProcessKey)>,
    retention_ns: u64,
    max_exited: usize,
}

/// How far up a chain is followed: deeper means a loop in bad data.
const MAX_DEPTH: usize = 64;
/// At most this many exited parents are kept, whatever their age.
const MAX_PARENTS: usize = 65_536;

impl Default for ProcessTable {
    fn default() -> Self {
        Self::new(300_000_000_000, 4_096)
    }
}

impl ProcessTable {
    /// A table keeping exited processes for `retention_ns` (event time),
    /// and at most `max_exited` of those that are nobody's parent.
    pub fn new(retention_ns: u64, max_exited: usize) -> Self {
        ProcessTable {
            processes: IdMap::default(),
            live: IdMap::default(),
            children: IdMap::default(),
            exited: VecDeque::new(),
            parents: VecDeque::new(),
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
        self.children.clear();
        for parent in self.processes.values().filter_map(|p| p.parent) {
            *self.children.entry(parent).or_default() += 1;
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
                let adopted = parent.filter(|_| process.parent.is_none());
                process.parent = process.parent.or(parent);
                process.uid = exec.process.uid;
                process.loginuid = exec.process.loginuid;
                process.comm = exec.process.comm.clone();
                process.exe = Some(exec.filename.clone());
                process.cmdline = exec.args.clone();
                process.unit = exec.unit.clone();
                self.live.insert(key.pid, key);
                if let Some(parent) = adopted {
                    *self.children.entry(parent).or_default() += 1;
                }
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
        if let Some(parent) = process.parent {
            *self.children.entry(parent).or_default() += 1;
        }
        if let Some(replaced) = self.processes.insert(process.key, process) {
            self.unlink(replaced.parent);
        }
    }

    /// One entry naming `parent` as its parent is gone.
    fn unlink(&mut self, parent: Option<ProcessKey>) {
        if let Some(parent) = parent
            && let Some(count) = self.children.get_mut(&parent)
        {
            *count -= 1;
            if *count == 0 {
                self.children.remove(&parent);
            }
        }
    }

    /// Drops `key` when it is an exited entry.
    fn forget(&mut self, key: &ProcessKey) {
        if self.processes.get(key).is_some_and(|p| p.exited.is_some())
            && let Some(gone) = self.processes.remove(key)
        {
            self.unlink(gone.parent);
        }
    }

    fn prune(&mut self, now_ns: u64) {
        let retention_ns = self.retention_ns;
        let expired = |time: u64| now_ns.saturating_sub(time) > retention_ns;
        while let Some(&(time, key)) = self.exited.front() {
            if !expired(time) && self.exited.len() <= self.max_exited {
                break;
            }
            self.exited.pop_front();
            if !expired(time) && self.children.contains_key(&key) {
                self.parents.push_back((time, key));
            } else {
                self.forget(&key);
            }
        }
        while let Some(&(time, key)) = self.parents.front() {
            if !expired(time) && self.parents.len() <= MAX_PARENTS {
                break;
            }
            self.parents.pop_front();
            self.forget(&key);
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
mod tests;
