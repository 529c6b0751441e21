//! Reading processes from /proc, to seed and resynchronise the table, and
//! to complete the kernel task iterator's records at start.
//!
//! Read by hand rather than through the procfs crate: a scan reads several
//! files of every process on the host, and at 10,000 processes parsing all
//! of `status` into a map (for one uid) and reopening each process's
//! directory made the scan most of the agent's start. Each file costs the
//! kernel an open and a formatting, so a scan reads no more than the table
//! needs: nothing past `stat` for kernel threads, the units of all
//! processes from the cgroup tree at once, and command lines only where an
//! exec's arguments would have been read (see [`Notables`]). With the
//! iterator's records, not even `stat`: what is left is each process's
//! program, and those command lines.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    fs::File,
    io::Read,
    os::unix::fs::MetadataExt,
    path::Path,
};

use agent_common::{NO_LOGINUID, TASK_KERNEL, TaskRecord};

use super::{
    Process,
    cgroup::{self, unit_of_cgroup, unit_of_cgroups},
};
use crate::events::ProcessKey;

/// The processes a scan reads in full: those whose arguments the kernel
/// reads at exec (notable names, or everyone), and those in units of
/// services known by unit alone. A process that was running before the
/// agent is known no better and no worse than one exec'd since.
///
/// Others are read without their command line and without `status`, the
/// costliest file to format: their uid is the owner of /proc/PID, which is
/// the effective uid (as `ps` reads it). It differs from the real one only
/// under a setuid program, and no finding names such a process's uid: the
/// actors findings name are notable (control commands, the services).
#[derive(Clone, Debug, Default)]
pub struct Notables {
    /// Names (comm, cut as the kernel cuts it) whose arguments are read;
    /// None: everyone's.
    names: Option<HashSet<String>>,
    units: Vec<glob::Pattern>,
}

impl Notables {
    /// `names` as the kernel's notable map holds them (None: it reads every
    /// exec's arguments), and the units read whatever runs there.
    pub fn new(names: Option<&[(String, u32)]>, units: Vec<glob::Pattern>) -> Notables {
        let names = names.map(|names| {
            names
                .iter()
                .filter(|(_, bits)| bits & agent_common::notable::ARGS != 0)
                .map(|(name, _)| name.clone())
                .collect()
        });
        Notables { names, units }
    }

    /// Every process's.
    pub fn everyone() -> Notables {
        Notables::default()
    }

    pub fn in_unit(&self, unit: Option<&str>) -> bool {
        unit.is_some_and(|unit| self.units.iter().any(|p| p.matches(unit)))
    }

    /// Whether a process named `comm` that runs `exe` in `unit` is read in
    /// full. The kernel matched the name at exec, when comm was
    /// the file's name: a process may have renamed itself since.
    fn wanted(&self, comm: &str, exe: Option<&str>, unit: Option<&str>) -> bool {
        let Some(names) = &self.names else {
            return true;
        };
        let file = exe.and_then(|e| e.rsplit('/').next()).map(super::comm_of);
        names.contains(comm) || file.is_some_and(|f| names.contains(f)) || self.in_unit(unit)
    }
}

/// Every process now in /proc. Processes that vanish mid-scan are skipped.
/// Each /proc entry is read and closed before the next is opened: holding
/// one descriptor per process would fail under a low descriptor limit and
/// leave processes unknown.
pub fn scan(notables: &Notables) -> Vec<Process> {
    // Before the processes: one that starts meanwhile is not in the tree
    // and has its own cgroup file read.
    let members = cgroup::unified_mount().and_then(|(mount, _)| cgroup_members(&mount));
    let pids: Vec<Source> = pids().into_iter().map(Source::Proc).collect();
    read_all(&pids, members.as_ref(), notables)
}

/// Every process in `tasks`, the kernel's task iterator's records, and any
/// other /proc lists: /proc is read only for what the records lack, each
/// process's program and, where [`Notables`] say, its command line.
pub fn complete(tasks: &[TaskRecord], notables: &Notables) -> Vec<Process> {
    let members = cgroup::unified_mount().and_then(|(mount, _)| cgroup_members(&mount));
    let known: HashSet<u32> = tasks.iter().map(|t| t.actor.task.tgid).collect();
    // A process the iterator did not show (it has been seen to leave out
    // PID 1) is read from /proc in full.
    let sources: Vec<Source> = tasks
        .iter()
        .map(Source::Kernel)
        .chain(
            pids()
                .into_iter()
                .filter(|pid| !known.contains(pid))
                .map(Source::Proc),
        )
        .collect();
    read_all(&sources, members.as_ref(), notables)
}

/// Where a process is read from: its record, or its pid's /proc files.
enum Source<'a> {
    Kernel(&'a TaskRecord),
    Proc(u32),
}

/// The pids /proc lists now.
fn pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

impl Source<'_> {
    /// What /proc/PID/stat would say; None when the process has gone.
    fn stat(&self, proc: &mut ProcReader) -> Option<Stat> {
        let task = match self {
            Source::Proc(pid) => return proc.stat(*pid),
            Source::Kernel(task) => task,
        };
        let loginuid = task.actor.loginuid;
        Some(Stat {
            pid: task.actor.task.tgid,
            comm: crate::events::c_string(&task.actor.comm),
            ppid: task.ppid,
            start_ticks: ProcessKey::from_task(&task.actor.task).start_ticks,
            kernel: task.flags & TASK_KERNEL != 0,
            ids: Some(Ids {
                uid: task.actor.uid,
                loginuid: (loginuid != NO_LOGINUID).then_some(loginuid),
            }),
        })
    }
}

/// Each of `sources` read into a process, with parents linked. `members`
/// are the units of processes found in the cgroup tree.
fn read_all(
    sources: &[Source],
    members: Option<&HashMap<u32, Option<String>>>,
    notables: &Notables,
) -> Vec<Process> {
    // Reading /proc is the kernel formatting text, one process at a time:
    // each core takes a share of the processes.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let share = sources.len().div_ceil(cores).max(1);
    let read: Vec<(Process, u32)> = std::thread::scope(|scope| {
        let readers: Vec<_> = sources
            .chunks(share)
            .map(|sources| {
                scope.spawn(move || {
                    let mut proc = ProcReader::default();
                    sources
                        .iter()
                        .filter_map(|source| {
                            let stat = source.stat(&mut proc)?;
                            proc.process(stat, members, notables)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        readers
            .into_iter()
            .flat_map(|reader| reader.join().unwrap_or_default())
            .collect()
    });
    let starts: HashMap<u32, u64> = read
        .iter()
        .map(|(p, _)| (p.pid, p.key.start_ticks))
        .collect();
    read.into_iter()
        .map(|(mut process, ppid)| {
            process.parent = starts.get(&ppid).map(|&start| ProcessKey {
                pid: ppid,
                start_ticks: start,
            });
            process
        })
        .collect()
}

/// The unit of every process in the unified hierarchy mounted at `mount`,
/// from each cgroup's `cgroup.procs`: one read per cgroup rather than one
/// per process. None when the tree cannot be read.
fn cgroup_members(mount: &Path) -> Option<HashMap<u32, Option<String>>> {
    let mut members = HashMap::new();
    let mut dirs = vec![mount.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Removed meanwhile: its processes have moved on.
            Err(_) if dir != mount => continue,
            Err(_) => return None,
        };
        let path = dir.strip_prefix(mount).ok()?.to_str()?;
        let unit = unit_of_cgroup(path);
        // A threaded cgroup refuses to list processes: its domain does.
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.parse::<u32>().ok()) {
                members.insert(pid, unit.clone());
            }
        }
        dirs.extend(
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    Some(members)
}

/// What /proc/PID/stat says: pid, comm, ppid, start time (clock ticks
/// since boot) and whether it is a kernel thread; with the task iterator's
/// records, also its ids.
struct Stat {
    pid: u32,
    comm: String,
    ppid: u32,
    start_ticks: u64,
    kernel: bool,
    ids: Option<Ids>,
}

/// A process's real uid and login uid, as the kernel holds them.
struct Ids {
    uid: u32,
    loginuid: Option<u32>,
}

/// Reads /proc files of one process after another into one buffer.
#[derive(Default)]
struct ProcReader {
    path: String,
    buf: Vec<u8>,
}

impl ProcReader {
    /// A process as /proc shows it, from what its `stat` says, and its
    /// parent's pid. `members` are the units of processes found in the
    /// cgroup tree.
    fn process(
        &mut self,
        stat: Stat,
        members: Option<&HashMap<u32, Option<String>>>,
        notables: &Notables,
    ) -> Option<(Process, u32)> {
        let pid = stat.pid;
        let mut process = Process {
            key: ProcessKey {
                pid: stat.pid,
                start_ticks: stat.start_ticks,
            },
            pid: stat.pid,
            parent: None,
            uid: 0,
            loginuid: None,
            comm: stat.comm,
            exe: None,
            cmdline: Vec::new().into(),
            unit: None,
            exited: None,
        };
        // Root, no login, no program, no arguments, no unit.
        if stat.kernel {
            return Some((process, stat.ppid));
        }
        process.loginuid = match &stat.ids {
            Some(ids) => ids.loginuid,
            None => self
                .read(pid, "loginuid")
                .and_then(first_number)
                .filter(|&l| l != NO_LOGINUID),
        };
        process.exe = std::fs::read_link(self.path(pid, "exe"))
            .ok()
            .map(|e| e.to_string_lossy().into_owned());
        process.unit = match members.and_then(|m| m.get(&pid)) {
            Some(unit) => unit.clone(),
            None => self
                .read(pid, "cgroup")
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(unit_of_cgroups),
        };
        let wanted = notables.wanted(
            &process.comm,
            process.exe.as_deref(),
            process.unit.as_deref(),
        );
        if wanted {
            process.cmdline = self.cmdline(pid).unwrap_or_default().into();
        }
        process.uid = match &stat.ids {
            Some(ids) => ids.uid,
            None if wanted => self.real_uid(pid).unwrap_or(0),
            None => std::fs::metadata(self.path(pid, "")).map_or(0, |m| m.uid()),
        };
        Some((process, stat.ppid))
    }

    /// The real uid, from `status`.
    fn real_uid(&mut self, pid: u32) -> Option<u32> {
        let status = self.read(pid, "status")?;
        let line = status
            .split(|&b| b == b'\n')
            .find(|l| l.starts_with(b"Uid:"))?;
        first_number(&line[4..])
    }

    fn cmdline(&mut self, pid: u32) -> Option<Vec<String>> {
        let text = std::str::from_utf8(self.read(pid, "cmdline")?).ok()?;
        Some(
            text.split('\0')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }

    fn stat(&mut self, pid: u32) -> Option<Stat> {
        let text = String::from_utf8_lossy(self.read(pid, "stat")?);
        // The comm is in parentheses and may hold any of ") (" itself.
        let (head, tail) = text.rsplit_once(')')?;
        let (pid, comm) = head.split_once('(')?;
        // After the comm: state, ppid, ... flags (the 7th), ... starttime
        // (the 20th).
        let mut fields = tail.split_ascii_whitespace();
        let ppid = fields.nth(1)?.parse().ok()?;
        let flags: u64 = fields.nth(4)?.parse().ok()?;
        let start_ticks = fields.nth(12)?.parse().ok()?;
        Some(Stat {
            pid: pid.trim().parse().ok()?,
            comm: comm.to_string(),
            ppid,
            start_ticks,
            kernel: flags & u64::from(TASK_KERNEL) != 0,
            ids: None,
        })
    }

    fn path(&mut self, pid: u32, file: &str) -> &str {
        self.path.clear();
        let _ = write!(self.path, "/proc/{pid}/{file}");
        &self.path
    }

    /// The contents of /proc/PID/`file`; None when it cannot be read.
    fn read(&mut self, pid: u32, file: &str) -> Option<&[u8]> {
        self.path(pid, file);
        let mut file = File::open(&self.path).ok()?;
        if self.buf.is_empty() {
            self.buf.resize(4096, 0);
        }
        let mut len = 0;
        loop {
            if len == self.buf.len() {
                self.buf.resize(len * 2, 0);
            }
            let n = file.read(&mut self.buf[len..]).ok()?;
            len += n;
            // /proc hands over all it has up to the size asked for: a
            // short read is the end, with no read of nothing to tell it.
            if n == 0 || len < self.buf.len() {
                break;
            }
        }
        Some(&self.buf[..len])
    }
}

/// The first number in a whitespace-separated text (`\t0\t0\t0\t0`).
fn first_number(text: &[u8]) -> Option<u32> {
    std::str::from_utf8(text)
        .ok()?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The systemd unit of the process `key` as /proc shows it now; None when
/// it is in none, or has gone (its pid another process's or nobody's).
pub fn unit_of(key: ProcessKey) -> Option<String> {
    let mut proc = ProcReader::default();
    let cgroups = String::from_utf8(proc.read(key.pid, "cgroup")?.to_vec()).ok()?;
    let now = proc.stat(key.pid)?;
    (now.start_ticks == key.start_ticks)
        .then(|| unit_of_cgroups(&cgroups))
        .flatten()
}

/// The command line of the process `key` as /proc shows it now; None when
/// it has gone.
pub fn cmdline(key: ProcessKey) -> Option<Vec<String>> {
    let mut proc = ProcReader::default();
    let cmdline = proc.cmdline(key.pid)?;
    (proc.stat(key.pid)?.start_ticks == key.start_ticks).then_some(cmdline)
}

/// The path of the process `key` in the unified (v2) hierarchy, as /proc
/// shows it now; None when it has gone (its pid another process's or
/// nobody's).
pub fn unified_cgroup(key: ProcessKey) -> Option<String> {
    let mut proc = ProcReader::default();
    let cgroups = std::str::from_utf8(proc.read(key.pid, "cgroup")?).ok()?;
    let path = cgroups
        .lines()
        .find_map(|line| line.strip_prefix("0::"))?
        .to_string();
    (proc.stat(key.pid)?.start_ticks == key.start_ticks).then_some(path)
}

#[cfg(test)]
mod tests {
    use agent_common::notable;

    use super::*;

    #[test]
    fn command_lines_are_read_where_the_kernel_reads_arguments() {
        let names = [
            ("postgres".to_string(), notable::ARGS | notable::WAKE),
            ("clickhouse-serv".to_string(), notable::ARGS | notable::WAKE),
            ("waker".to_string(), notable::WAKE),
        ];
        let units = vec![glob::Pattern::new("myapp*.service").unwrap()];
        let notables = Notables::new(Some(&names), units);
        assert!(notables.wanted("postgres", None, None));
        assert!(
            notables.wanted("renamed", Some("/usr/lib/postgresql/17/bin/postgres"), None),
            "a process renamed since its exec is known by its program"
        );
        assert!(
            notables.wanted("x", Some("/usr/bin/clickhouse-server"), None),
            "the program's name cut as comm is"
        );
        assert!(!notables.wanted("true", Some("/usr/bin/true"), None));
        assert!(!notables.wanted("waker", None, None), "woken, not read");
        assert!(notables.wanted("anything", None, Some("myapp-1.service")));
        assert!(!notables.wanted("anything", None, Some("cron.service")));
        assert!(Notables::everyone().wanted("true", None, None));
        assert!(Notables::new(None, Vec::new()).wanted("true", None, None));
    }

    #[test]
    fn the_cgroup_tree_gives_each_process_its_unit() {
        let Some((mount, _)) = cgroup::unified_mount() else {
            eprintln!("skipped: no unified cgroup hierarchy on this host");
            return;
        };
        let members = cgroup_members(&mount).expect("the cgroup tree is readable");
        let me = std::process::id();
        let mut proc = ProcReader::default();
        let from_proc = proc
            .read(me, "cgroup")
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(unit_of_cgroups);
        assert_eq!(members.get(&me), Some(&from_proc));
        assert!(members.len() > 1, "more than this process: {members:?}");
    }

    #[test]
    fn a_process_not_read_in_full_has_no_command_line_and_its_effective_uid() {
        let me = std::process::id();
        let none: &[(String, u32)] = &[];
        let all = scan(&Notables::new(Some(none), Vec::new()));
        let this = all.iter().find(|p| p.pid == me).expect("this process");
        assert!(this.cmdline.is_empty());
        // SAFETY: geteuid has no preconditions.
        assert_eq!(this.uid, unsafe { libc::geteuid() });
        assert!(this.exe.is_some(), "its program is read all the same");
    }

    #[test]
    fn kernel_threads_are_known_by_their_stat() {
        let all = scan(&Notables::everyone());
        let Some(kthreadd) = all.iter().find(|p| p.pid == 2 && p.comm == "kthreadd") else {
            eprintln!("skipped: no kthreadd in this pid namespace");
            return;
        };
        assert_eq!(
            (
                kthreadd.uid,
                kthreadd.loginuid,
                &kthreadd.exe,
                kthreadd.cmdline.len()
            ),
            (0, None, &None, 0)
        );
        assert_eq!(kthreadd.unit, None);
    }

    #[test]
    fn scan_finds_this_process_with_its_parent_and_command() {
        let me = std::process::id();
        let all = scan(&Notables::everyone());
        let this = all
            .iter()
            .find(|p| p.pid == me)
            .expect("this process is in /proc");
        let stat = ::procfs::process::Process::myself()
            .unwrap()
            .stat()
            .unwrap();
        assert_eq!(this.key.start_ticks, stat.starttime);
        assert_eq!(this.parent.map(|k| k.pid), Some(stat.ppid as u32));
        assert_eq!(this.comm, stat.comm);
        let status = ::procfs::process::Process::myself()
            .unwrap()
            .status()
            .unwrap();
        assert_eq!(this.uid, status.ruid);
        assert_eq!(
            this.exe.as_deref(),
            std::env::current_exe().unwrap().to_str()
        );
        assert_eq!(*this.cmdline, std::env::args().collect::<Vec<_>>());
    }
}
