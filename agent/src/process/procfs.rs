//! Reading processes from /proc, to seed and resynchronise the table.

use procfs::process::{Process as ProcProcess, all_processes};

use super::Process;
use crate::events::ProcessKey;

/// Every process now in /proc. Processes that vanish mid-scan are skipped.
pub fn scan() -> Vec<Process> {
    let Ok(all) = all_processes() else {
        return Vec::new();
    };
    let procs: Vec<ProcProcess> = all.filter_map(Result::ok).collect();
    let starts: std::collections::HashMap<i32, u64> = procs
        .iter()
        .filter_map(|p| p.stat().ok().map(|s| (s.pid, s.starttime)))
        .collect();
    procs.iter().filter_map(|p| read(p, &starts)).collect()
}

fn read(p: &ProcProcess, starts: &std::collections::HashMap<i32, u64>) -> Option<Process> {
    let stat = p.stat().ok()?;
    let status = p.status().ok();
    let loginuid = p.loginuid().ok().filter(|&l| l != u32::MAX);
    Some(Process {
        key: ProcessKey {
            pid: stat.pid as u32,
            start_ticks: stat.starttime,
        },
        pid: stat.pid as u32,
        parent: starts.get(&stat.ppid).map(|&start| ProcessKey {
            pid: stat.ppid as u32,
            start_ticks: start,
        }),
        uid: status.map(|s| s.ruid).unwrap_or(0),
        loginuid,
        comm: stat.comm,
        exe: p.exe().ok().map(|e| e.to_string_lossy().into_owned()),
        cmdline: p.cmdline().unwrap_or_default(),
        exited: None,
    })
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
