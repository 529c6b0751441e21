//! What the agent does to a process: freeze it (SIGSTOP, then a frozen
//! cgroup that also holds its children against a stray SIGCONT), thaw it,
//! kill it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use nix::{sys::signal, unistd::Pid};
use procfs::process::MountInfo;

use crate::config::Freezer;

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

/// The cgroup v2 hierarchy's mount point: `/sys/fs/cgroup` under systemd,
/// `/sys/fs/cgroup/unified` on hybrid hosts, wherever the host put it.
fn cgroup2_root() -> Option<PathBuf> {
    cgroup2_mount(&fs::read_to_string("/proc/self/mountinfo").ok()?)
}

/// The cgroup v1 freezer hierarchy's mount point, when one is mounted.
fn freezer_v1_root() -> Option<PathBuf> {
    freezer_v1_mount(&fs::read_to_string("/proc/self/mountinfo").ok()?)
}

/// The first mount of the whole hierarchy (mount root `/`, not a bind
/// mount of a sub-cgroup: cgroup paths in /proc/PID/cgroup are relative to
/// the hierarchy's root) that `wanted` accepts, from a mountinfo text.
fn hierarchy_mount(mountinfo: &str, wanted: impl Fn(&MountInfo) -> bool) -> Option<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| MountInfo::from_line(line).ok())
        .find(|m| m.root == "/" && wanted(m))
        .map(|m| m.mount_point)
}

fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    hierarchy_mount(mountinfo, |m| m.fs_type == "cgroup2")
}

fn freezer_v1_mount(mountinfo: &str) -> Option<PathBuf> {
    hierarchy_mount(mountinfo, |m| {
        m.fs_type == "cgroup" && m.super_options.contains_key("freezer")
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
    for root in [cgroup2_root(), freezer_v1_root()].into_iter().flatten() {
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
    for (root, is_v1) in [(v2, false), (v1, true)] {
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
    let roots = [cgroup2_root(), freezer_v1_root()];
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

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/self/mountinfo of a systemd host (cgroup v2 only), trimmed.
    const UNIFIED: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
24 22 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
27 24 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
28 24 0:25 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:5 - pstore pstore rw
";

    /// A hybrid host: v1 hierarchies under a tmpfs, v2 at `unified`.
    const HYBRID: &str = "\
25 24 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:6 - cgroup cgroup rw,xattr,name=systemd
31 25 0:28 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,freezer
32 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn cgroup2_is_found_where_the_host_mounted_it() {
        assert_eq!(
            cgroup2_mount(UNIFIED),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(freezer_v1_mount(UNIFIED), None);
        assert_eq!(
            freezer_v1_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/freezer"))
        );
    }

    #[test]
    fn a_bind_mount_of_a_sub_cgroup_is_not_the_hierarchy() {
        let text = "\
40 22 0:26 /system.slice/docker.service /mnt/x rw shared:9 - cgroup2 cgroup2 rw
41 22 0:26 / /run/cg rw shared:9 - cgroup2 cgroup2 rw
";
        assert_eq!(cgroup2_mount(text), Some(PathBuf::from("/run/cg")));
        assert_eq!(cgroup2_mount("garbage\n"), None);
    }
}
