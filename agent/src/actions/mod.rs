//! What the agent does to a process: freeze it (SIGSTOP, then a frozen
//! cgroup that also holds its children against a stray SIGCONT), thaw it,
//! kill it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use nix::{sys::signal, unistd::Pid};

use crate::config::Freezer;

/// cgroup v2 hierarchy as mounted on hybrid hosts, then the unified root.
const CGROUP2_ROOTS: [&str; 2] = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"];

/// How a process was frozen, to undo it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Frozen {
    pub pid: u32,
    /// Its start time (clock ticks since boot), so a restarted agent can
    /// tell it from a later process with the same pid.
    pub start_ticks: Option<u64>,
    /// The frozen cgroup holding it (v2, or v1 freezer), when freezing worked.
    pub cgroup: Option<PathBuf>,
    /// Its cgroup before (in the same hierarchy, relative to its root), to move it back on thaw.
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

/// The cgroup v1 freezer hierarchy's mount point, when one is mounted.
fn freezer_v1_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let mut fs = fs.split_whitespace();
        let (kind, options) = (fs.next()?, fs.nth(1)?);
        let point = mount.split_whitespace().nth(4)?;
        (kind == "cgroup" && options.split(',').any(|o| o == "freezer"))
            .then(|| PathBuf::from(point))
    })
}

/// `pid`'s cgroup in the v2 hierarchy (`v1` false) or the v1 freezer one,
/// relative to the hierarchy's root.
fn current_cgroup(pid: u32, v1: bool) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            let wanted = if v1 {
                controllers.split(',').any(|c| c == "freezer")
            } else {
                controllers.is_empty()
            };
            wanted.then_some(path)
        })
        .map(|p| PathBuf::from(p.trim_start_matches('/')))
}

/// Creates the agent's `stopguard/` cgroup in every hierarchy it may
/// freeze in (cgroup v2, the v1 freezer); returns the ones it made. A
/// hierarchy's root directory is read-only (0555) to root without
/// CAP_DAC_OVERRIDE: the packaged unit runs this with full privileges
/// before the agent, which then needs no such capability.
pub fn prepare_freezer() -> Result<Vec<PathBuf>> {
    let mut made = Vec::new();
    for root in [cgroup2_root().map(Path::to_path_buf), freezer_v1_root()]
        .into_iter()
        .flatten()
    {
        let dir = root.join("stopguard");
        if !dir.is_dir() {
            fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            made.push(dir);
        }
    }
    Ok(made)
}

/// Moves `pid` into a new cgroup `frozen-PID` under `root/stopguard` and
/// freezes it: v2 `cgroup.freeze`, or the v1 freezer's `freezer.state`.
fn freeze_in(root: &Path, pid: u32, v1: bool, frozen: &mut Frozen) -> Result<()> {
    let cgroup = root.join("stopguard").join(format!("frozen-{pid}"));
    fs::create_dir_all(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
    frozen.previous_cgroup = current_cgroup(pid, v1);
    write(&cgroup.join("cgroup.procs"), &pid.to_string())?;
    if v1 {
        write(&cgroup.join("freezer.state"), "FROZEN")?;
    } else {
        write(&cgroup.join("cgroup.freeze"), "1")?;
    }
    frozen.cgroup = Some(cgroup);
    Ok(())
}

/// Stops `pid` now and moves it into a frozen cgroup of its own under
/// `stopguard/`: cgroup v2 where it is mounted, else the v1 freezer (or
/// the one `freezer` names).
pub fn freeze(pid: u32, freezer: Freezer) -> Result<Frozen> {
    signal::kill(Pid::from_raw(pid as i32), signal::Signal::SIGSTOP)
        .with_context(|| format!("SIGSTOP to pid {pid}"))?;
    let mut frozen = Frozen {
        pid,
        start_ticks: start_ticks(pid),
        cgroup: None,
        previous_cgroup: None,
    };
    let v2 = cgroup2_root().filter(|_| freezer != Freezer::Cgroup1);
    let v1 = freezer_v1_root().filter(|_| freezer != Freezer::Cgroup2);
    let mut errors = Vec::new();
    for (root, is_v1) in [(v2.map(Path::to_path_buf), false), (v1, true)] {
        let Some(root) = root else { continue };
        match freeze_in(&root, pid, is_v1, &mut frozen) {
            Ok(()) => return Ok(frozen),
            Err(err) => errors.push(format!("{err:#}")),
        }
    }
    if errors.is_empty() {
        errors.push(format!("no usable cgroup freezer ({freezer:?})"));
    }
    tracing::warn!("pid {pid} is held by SIGSTOP alone: {}", errors.join("; "));
    Ok(frozen)
}

/// The processes held in `stopguard/frozen-*` cgroups (v2, and the v1
/// freezer): what this agent froze, found again when its saved state is
/// lost or behind. The cgroup they came from is not known any more: a thaw
/// puts them in the hierarchy's root.
pub fn frozen_in_cgroups() -> Vec<Frozen> {
    let roots = [cgroup2_root().map(Path::to_path_buf), freezer_v1_root()];
    let mut found = Vec::new();
    for root in roots.into_iter().flatten() {
        let Ok(entries) = fs::read_dir(root.join("stopguard")) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with("frozen-") {
                continue;
            }
            let cgroup = entry.path();
            let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                found.push(Frozen {
                    pid,
                    start_ticks: start_ticks(pid),
                    cgroup: Some(cgroup.clone()),
                    previous_cgroup: Some(PathBuf::new()),
                });
            }
        }
    }
    found
}

/// Lets a frozen process run again, and puts it back where it was.
pub fn thaw(frozen: &Frozen) -> Result<()> {
    if let Some(cgroup) = &frozen.cgroup {
        if cgroup.join("freezer.state").exists() {
            write(&cgroup.join("freezer.state"), "THAWED")?;
        } else {
            write(&cgroup.join("cgroup.freeze"), "0")?;
        }
        // The cgroup is ROOT/stopguard/frozen-PID.
        let root = cgroup.parent().and_then(Path::parent);
        if let (Some(root), Some(previous)) = (root, &frozen.previous_cgroup) {
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
pub fn resume(pid: u32) -> Result<()> {
    signal::kill(Pid::from_raw(pid as i32), signal::Signal::SIGCONT)
        .with_context(|| format!("SIGCONT to pid {pid}"))
}

pub fn kill(pid: u32) -> Result<()> {
    signal::kill(Pid::from_raw(pid as i32), signal::Signal::SIGKILL)
        .with_context(|| format!("SIGKILL to pid {pid}"))
}

/// Whether the process `pid` that started at `ticks` still runs. A zombie
/// does not: it has exited, whenever its parent gets round to reaping it
/// (a busy or stopped supervisor, PID 1 for a reparented daemon).
pub fn still_runs(pid: u32, ticks: u64) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .is_ok_and(|s| s.starttime == ticks && s.state != 'Z')
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
