//! The process table: every process on the host, keyed by pid and start
//! time so that pid reuse cannot confuse it, with exited entries kept for a
//! while so that later events can still be attributed to them.

pub mod procfs;

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::events::{Event, ProcessKey};

/// Supervisors that restart what they watch, by the comm they run under.
pub const SUPERVISORS: &[&str] = &[
    "monit",
    "systemd",
    "supervisord",
    "runsv",
    "s6-supervise",
    "supervise",
    "containerd-shim",
    "kubelet",
];

pub fn is_supervisor(comm: &str) -> bool {
    SUPERVISORS.contains(&comm) || comm.starts_with("containerd-shim")
}

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
    #[serde(skip)]
    pub exited: Option<Exited>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exited {
    pub time_ns: u64,
    pub exit_code: Option<u8>,
    pub signal: Option<u8>,
}

/// A link of an ancestry chain, as printed and exported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Link {
    pub pid: u32,
    pub comm: String,
}

pub struct ProcessTable {
    processes: HashMap<ProcessKey, Process>,
    live: HashMap<u32, ProcessKey>,
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
            processes: HashMap::new(),
            live: HashMap::new(),
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

    /// The live process with this pid.
    pub fn live(&self, pid: u32) -> Option<&Process> {
        self.live.get(&pid).and_then(|k| self.processes.get(k))
    }

    pub fn set_cmdline(&mut self, key: &ProcessKey, cmdline: Vec<String>) {
        if let Some(p) = self.processes.get_mut(key) {
            p.cmdline = cmdline;
        }
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
                    exited: None,
                };
                self.insert_live(child);
            }
            Event::Exec(exec) => {
                let key = exec.process.key;
                let process = self.processes.entry(key).or_insert_with(|| Process {
                    key,
                    pid: exec.process.pid,
                    parent: None,
                    uid: 0,
                    loginuid: None,
                    comm: String::new(),
                    exe: None,
                    cmdline: Vec::new(),
                    exited: None,
                });
                process.parent = Some(exec.parent);
                process.uid = exec.process.uid;
                process.loginuid = exec.process.loginuid;
                process.comm = exec.process.comm.clone();
                process.exe = Some(exec.filename.clone());
                process.cmdline = exec.args.clone();
                self.live.insert(key.pid, key);
            }
            Event::Exit(exit) => {
                if let Some(p) = self.processes.get_mut(&exit.key) {
                    p.exited = Some(Exited {
                        time_ns: exit.time_ns,
                        exit_code: exit.exit_code,
                        signal: exit.signal,
                    });
                } else {
                    // Started before we looked: remember it exited, with
                    // what little we know, so later references resolve.
                    self.processes.insert(
                        exit.key,
                        Process {
                            key: exit.key,
                            pid: exit.pid,
                            parent: None,
                            uid: 0,
                            loginuid: None,
                            comm: exit.comm.clone(),
                            exe: None,
                            cmdline: Vec::new(),
                            exited: Some(Exited {
                                time_ns: exit.time_ns,
                                exit_code: exit.exit_code,
                                signal: exit.signal,
                            }),
                        },
                    );
                }
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
            .find(|p| is_supervisor(&p.comm))
    }
}
