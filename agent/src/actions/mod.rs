//! What the agent does to a process: freeze it (SIGSTOP, then a frozen
//! cgroup that also holds its children against a stray SIGCONT), thaw it,
//! kill it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use nix::{sys::signal, unistd::Pid};

/// cgroup v2 hierarchy as mounted on hybrid hosts, then the unified root.
const CGROUP2_ROOTS: [&str; 2] = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"];

/// How a process was frozen, to undo it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Frozen {
    pub pid: u32,
    /// Its start time (clock ticks since boot), so a restarted agent can
    /// tell it from a later process with the same pid.
    pub start_ticks: Option<u64>,
    /// The frozen cgroup holding it, when cgroup v2 freezing worked.
    pub cgroup: Option<PathBuf>,
    /// Its cgroup before, to move it back on thaw.
    pub previous_cgroup: Option<PathBuf>,
}

fn cgroup2_root() -> Option<&'static Path> {
    CGROUP2_ROOTS
        .iter()
        .map(Path::new)
        .find(|root| root.join("cgroup.freeze").exists() || root.join("cgroup.procs").exists())
        .filter(|root| {
            fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
                m.lines().any(|l| {
                    l.contains(" - cgroup2 ") && l.contains(&format!(" {} ", root.display()))
                })
            })
        })
}

fn current_cgroup(pid: u32) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim_start_matches('/')))
}

/// Stops `pid` now and, where cgroup v2 is available, moves it into a
/// frozen cgroup of its own under `stopguard/`.
pub fn freeze(pid: u32) -> Result<Frozen> {
    signal::kill(Pid::from_raw(pid as i32), signal::Signal::SIGSTOP)
        .with_context(|| format!("SIGSTOP to pid {pid}"))?;
    let mut frozen = Frozen {
        pid,
        start_ticks: start_ticks(pid),
        cgroup: None,
        previous_cgroup: None,
    };
    let Some(root) = cgroup2_root() else {
        tracing::warn!("no cgroup v2 hierarchy: pid {pid} is held by SIGSTOP alone");
        return Ok(frozen);
    };
    let cgroup = root.join("stopguard").join(format!("frozen-{pid}"));
    let attempt = (|| -> Result<()> {
        fs::create_dir_all(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        frozen.previous_cgroup = current_cgroup(pid);
        write(&cgroup.join("cgroup.procs"), &pid.to_string())?;
        write(&cgroup.join("cgroup.freeze"), "1")
    })();
    match attempt {
        Ok(()) => frozen.cgroup = Some(cgroup),
        Err(err) => tracing::warn!("pid {pid} is held by SIGSTOP alone: {err:#}"),
    }
    Ok(frozen)
}

/// Lets a frozen process run again, and puts it back where it was.
pub fn thaw(frozen: &Frozen) -> Result<()> {
    if let Some(cgroup) = &frozen.cgroup {
        write(&cgroup.join("cgroup.freeze"), "0")?;
        if let (Some(root), Some(previous)) = (cgroup2_root(), &frozen.previous_cgroup) {
            let _ = write(
                &root.join(previous).join("cgroup.procs"),
                &frozen.pid.to_string(),
            );
        }
        let _ = fs::remove_dir(cgroup);
    }
    signal::kill(Pid::from_raw(frozen.pid as i32), signal::Signal::SIGCONT)
        .with_context(|| format!("SIGCONT to pid {}", frozen.pid))
}

/// Lets a process the kernel stopped at exec run again.
pub fn release(pid: u32) -> Result<()> {
    signal::kill(Pid::from_raw(pid as i32), signal::Signal::SIGCONT)
        .with_context(|| format!("SIGCONT to pid {pid}"))
}

pub fn kill(pid: u32) -> Result<()> {
    signal::kill(Pid::from_raw(pid as i32), signal::Signal::SIGKILL)
        .with_context(|| format!("SIGKILL to pid {pid}"))
}

/// A process's start time from /proc, in clock ticks since boot.
pub fn start_ticks(pid: u32) -> Option<u64> {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.starttime)
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("writing {value} to {}", path.display()))
}
