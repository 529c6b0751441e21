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
        exited: None,
    };
    Some((process, stat.ppid))
}

#[cfg(test)]
mod tests {
    use super::*;

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
