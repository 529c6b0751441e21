//! Reading processes from /proc, to seed and resynchronise the table.
//!
//! Read by hand rather than through the procfs crate: a scan reads six
//! files of every process on the host, and at 10,000 processes parsing all
//! of `status` into a map (for one uid) and reopening each process's
//! directory made the scan most of the agent's start.

use std::{fmt::Write as _, fs::File, io::Read};

use super::Process;
use crate::events::ProcessKey;

/// Every process now in /proc. Processes that vanish mid-scan are skipped.
/// Each /proc entry is read and closed before the next is opened: holding
/// one descriptor per process would fail under a low descriptor limit and
/// leave processes unknown.
pub fn scan() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .collect();
    // Reading /proc is the kernel formatting text, one process at a time:
    // each core takes a share of the processes.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let share = pids.len().div_ceil(cores).max(1);
    let read: Vec<(Process, u32)> = std::thread::scope(|scope| {
        let readers: Vec<_> = pids
            .chunks(share)
            .map(|pids| {
                scope.spawn(move || {
                    let mut proc = ProcReader::default();
                    pids.iter()
                        .filter_map(|&pid| proc.process(pid))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        readers
            .into_iter()
            .flat_map(|reader| reader.join().unwrap_or_default())
            .collect()
    });
    let starts: std::collections::HashMap<u32, u64> = read
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

/// What /proc/PID/stat says: pid, comm, ppid and start time (clock ticks
/// since boot).
struct Stat {
    pid: u32,
    comm: String,
    ppid: u32,
    start_ticks: u64,
}

/// Reads /proc files of one process after another into one buffer.
#[derive(Default)]
struct ProcReader {
    path: String,
    buf: Vec<u8>,
}

impl ProcReader {
    /// A process as /proc shows it, and its parent's pid.
    fn process(&mut self, pid: u32) -> Option<(Process, u32)> {
        let stat = self.stat(pid)?;
        let uid = self
            .read(pid, "status")
            .and_then(|status| {
                let line = status
                    .split(|&b| b == b'\n')
                    .find(|l| l.starts_with(b"Uid:"))?;
                first_number(&line[4..])
            })
            .unwrap_or(0);
        let loginuid = self
            .read(pid, "loginuid")
            .and_then(first_number)
            .filter(|&l| l != u32::MAX);
        let exe = std::fs::read_link(self.path(pid, "exe"))
            .ok()
            .map(|e| e.to_string_lossy().into_owned());
        let cmdline = self.cmdline(pid).unwrap_or_default();
        let unit = self
            .read(pid, "cgroup")
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(unit_of_cgroups);
        let process = Process {
            key: ProcessKey {
                pid: stat.pid,
                start_ticks: stat.start_ticks,
            },
            pid: stat.pid,
            parent: None,
            uid,
            loginuid,
            comm: stat.comm,
            exe,
            cmdline: cmdline.into(),
            unit,
            exited: None,
        };
        Some((process, stat.ppid))
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
        // After the comm: state, ppid, ... starttime (the 20th).
        let mut fields = tail.split_ascii_whitespace();
        let ppid = fields.nth(1)?.parse().ok()?;
        let start_ticks = fields.nth(17)?.parse().ok()?;
        Some(Stat {
            pid: pid.trim().parse().ok()?,
            comm: comm.to_string(),
            ppid,
            start_ticks,
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

/// The service unit in a /proc/PID/cgroup text: from the cgroup v2 line
/// (`0::/system.slice/redis-server.service`), else systemd's own v1
/// hierarchy (`1:name=systemd:/...`) on a legacy host.
fn unit_of_cgroups(text: &str) -> Option<String> {
    let path = |wanted: &str| {
        text.lines().find_map(|line| {
            let (_, rest) = line.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            (controllers == wanted).then_some(path)
        })
    };
    path("")
        .or_else(|| path("name=systemd"))
        .and_then(unit_of_cgroup)
}

/// The system service unit a cgroup path is in: the first name below the
/// slices (`/system.slice/system-postgresql.slice/postgresql@15-main.service`
/// is `postgresql@15-main.service`, as is a sub-cgroup of it). None for a
/// user's session or user manager, a scope, init.scope, or a cgroup
/// systemd does not manage.
pub fn unit_of_cgroup(path: &str) -> Option<String> {
    let mut names = path.split('/').filter(|n| !n.is_empty());
    let mut name = names.next()?;
    if name == "user.slice" {
        return None;
    }
    while name.ends_with(".slice") {
        name = names.next()?;
    }
    name.ends_with(".service").then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_from_cgroup_paths() {
        let unit = |path| unit_of_cgroup(path);
        assert_eq!(
            unit("/system.slice/system-postgresql.slice/postgresql@15-main.service").as_deref(),
            Some("postgresql@15-main.service")
        );
        assert_eq!(
            unit("/system.slice/redis-server.service").as_deref(),
            Some("redis-server.service")
        );
        assert_eq!(
            unit("/system.slice/docker.service/payload").as_deref(),
            Some("docker.service"),
            "a sub-cgroup of a unit is in the unit"
        );
        for none in [
            "/",
            "/init.scope",
            "/user.slice/user-1000.slice/session-3.scope",
            "/user.slice/user-1000.slice/user@1000.service/app.slice/x.service",
            "/system.slice/run-r1.scope",
            "/stopguard/frozen-42",
            "/machine.slice",
            "",
        ] {
            assert_eq!(unit(none), None, "{none}");
        }
    }

    #[test]
    fn units_from_proc_cgroup_texts() {
        assert_eq!(
            unit_of_cgroups("0::/system.slice/redis-server.service\n").as_deref(),
            Some("redis-server.service")
        );
        let hybrid = "\
12:freezer:/
1:name=systemd:/system.slice/postgresql@15-main.service
0::/system.slice/postgresql@15-main.service
";
        assert_eq!(
            unit_of_cgroups(hybrid).as_deref(),
            Some("postgresql@15-main.service")
        );
        let legacy = "2:freezer:/\n1:name=systemd:/system.slice/cron.service\n";
        assert_eq!(unit_of_cgroups(legacy).as_deref(), Some("cron.service"));
        // No systemd: the v2 path is whatever the host made of it.
        assert_eq!(unit_of_cgroups("0::/\n"), None);
    }

    #[test]
    fn scan_finds_this_process_with_its_parent_and_command() {
        let me = std::process::id();
        let all = scan();
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
