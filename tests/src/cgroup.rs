//! What the agent leaves in cgroups and /proc: frozen cgroups (v2 and the
//! v1 freezer) and process states.

use std::process::Command;

/// Whether `pid` sits in its own frozen cgroup made by the agent.
pub fn in_frozen_cgroup(pid: u32) -> bool {
    let dir =
        std::path::Path::new("/sys/fs/cgroup/unified/stopguard").join(format!("frozen-{pid}"));
    std::fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|e| e.lines().any(|l| l == "frozen 1"))
        && std::fs::read_to_string(dir.join("cgroup.procs"))
            .is_ok_and(|p| p.lines().any(|l| l == pid.to_string()))
}

/// Whether `pid` sits in its own frozen cgroup v1 freezer cgroup.
pub fn in_frozen_v1_cgroup(pid: u32) -> bool {
    let dir =
        std::path::Path::new("/sys/fs/cgroup/freezer/stopguard").join(format!("frozen-{pid}"));
    std::fs::read_to_string(dir.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
        && std::fs::read_to_string(dir.join("cgroup.procs"))
            .is_ok_and(|p| p.lines().any(|l| l == pid.to_string()))
}

/// The fields of /proc/PID/stat after the command name: `[0]` is the
/// state letter, `[11]` and `[12]` user and system CPU ticks, `[19]` the
/// start time in ticks since boot.
pub fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, after) = stat.rsplit_once(')').unwrap();
    after.split_whitespace().map(String::from).collect()
}

/// The state letter of /proc/PID/stat ('T' when stopped).
pub fn state_of(pid: u32) -> char {
    stat_fields(pid)[0].chars().next().unwrap()
}

/// Peak resident memory of `pid` (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// Removes the agent's frozen cgroups left empty by a test.
pub fn remove_frozen_cgroups() {
    let _ = Command::new("/bin/sh")
        .arg("-c")
        .arg("for d in /sys/fs/cgroup/unified/stopguard/frozen-* /sys/fs/cgroup/freezer/stopguard/frozen-*; do [ -d \"$d\" ] && rmdir \"$d\"; done; true")
        .status();
}
