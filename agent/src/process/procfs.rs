//! Reading processes from /proc, to seed and resynchronise the table.

use procfs::process::{Process as ProcProcess, all_processes};

use super::Process;
use crate::events::ProcessKey;

/// Every process now in /proc. Processes that vanish mid-scan are skipped.
/// Each /proc entry is read and closed before the next is opened: holding
/// one descriptor per process would fail under a low descriptor limit and
/// leave processes unknown.
pub fn scan() -> Vec<Process> {
    let Ok(all) = all_processes() else {
        return Vec::new();
    };
    let read: Vec<(Process, i32)> = all.filter_map(|p| read(&p.ok()?)).collect();
    let starts: std::collections::HashMap<i32, u64> = read
        .iter()
        .map(|(p, _)| (p.pid as i32, p.key.start_ticks))
        .collect();
    read.into_iter()
        .map(|(mut process, ppid)| {
            process.parent = starts.get(&ppid).map(|&start| ProcessKey {
                pid: ppid as u32,
                start_ticks: start,
            });
            process
        })
        .collect()
}

/// A process as /proc shows it, and its parent's pid.
fn read(p: &ProcProcess) -> Option<(Process, i32)> {
    let stat = p.stat().ok()?;
    let status = p.status().ok();
    let loginuid = p.loginuid().ok().filter(|&l| l != u32::MAX);
    let process = Process {
        key: ProcessKey {
            pid: stat.pid as u32,
            start_ticks: stat.starttime,
        },
        pid: stat.pid as u32,
        parent: None,
        uid: status.map(|s| s.ruid).unwrap_or(0),
        loginuid,
        comm: stat.comm,
        exe: p.exe().ok().map(|e| e.to_string_lossy().into_owned()),
        cmdline: p.cmdline().unwrap_or_default(),
        unit: cgroups(stat.pid as u32)
            .as_deref()
            .and_then(unit_of_cgroups),
        exited: None,
    };
    Some((process, stat.ppid))
}

fn cgroups(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()
}

/// The systemd unit of the process `key` as /proc shows it now; None when
/// it is in none, or has gone (its pid another process's or nobody's).
pub fn unit_of(key: ProcessKey) -> Option<String> {
    let cgroups = cgroups(key.pid)?;
    let now = ProcProcess::new(key.pid as i32).ok()?.stat().ok()?;
    (now.starttime == key.start_ticks)
        .then(|| unit_of_cgroups(&cgroups))
        .flatten()
}

/// The command line of the process `key` as /proc shows it now; None when
/// it has gone.
pub fn cmdline(key: ProcessKey) -> Option<Vec<String>> {
    let process = ProcProcess::new(key.pid as i32).ok()?;
    let cmdline = process.cmdline().ok()?;
    (process.stat().ok()?.starttime == key.start_ticks).then_some(cmdline)
}

/// The path of the process `key` in the unified (v2) hierarchy, as /proc
/// shows it now; None when it has gone (its pid another process's or
/// nobody's).
pub fn unified_cgroup(key: ProcessKey) -> Option<String> {
    let cgroups = cgroups(key.pid)?;
    let now = ProcProcess::new(key.pid as i32).ok()?.stat().ok()?;
    let path = cgroups.lines().find_map(|line| line.strip_prefix("0::"))?;
    (now.starttime == key.start_ticks).then(|| path.to_string())
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
        let stat = ProcProcess::myself().unwrap().stat().unwrap();
        assert_eq!(this.key.start_ticks, stat.starttime);
        assert_eq!(this.parent.map(|k| k.pid), Some(stat.ppid as u32));
        assert_eq!(
            this.exe.as_deref(),
            std::env::current_exe().unwrap().to_str()
        );
        assert_eq!(this.cmdline, std::env::args().collect::<Vec<_>>());
    }
}
