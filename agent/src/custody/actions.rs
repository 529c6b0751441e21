//! What the agent does to a process: freeze it (SIGSTOP, then a frozen
//! cgroup that also holds its children against a stray SIGCONT), thaw it,
//! kill it.
//!
//! A process systemd started as its unit's service is frozen where it is,
//! in the unit's own cgroup, with the cgroup v2 freezer systemd itself
//! uses: `systemctl status` lists it in its unit, and the unit's jobs (an
//! operator's stop, the host's shutdown) reach it once the cgroup is
//! thawed for them (by systemd 252 itself, which goes by the kernel's
//! state; for later ones, which thaw only what they froze, by custody).
//! Any other process is moved into a frozen cgroup of the agent's,
//! `stopguard/frozen-PID`: freezing a unit that holds a supervisor (runsv,
//! monit) would freeze the supervisor too.

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
    /// The systemd unit whose own cgroup `cgroup` is: the process was
    /// frozen where systemd put it, so a thaw moves nothing and removes
    /// nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
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
    let path = if v1 {
        cgroup_path(&text, |c| c.split(',').any(|c| c == "freezer"))
    } else {
        cgroup_path(&text, str::is_empty)
    };
    path.map(|p| PathBuf::from(p.trim_start_matches('/')))
}

/// The path of the hierarchy whose controllers field `wanted` accepts, in
/// a /proc/PID/cgroup text (`0::/system.slice/x.service` for cgroup v2).
fn cgroup_path(text: &str, wanted: impl Fn(&str) -> bool) -> Option<&str> {
    text.lines().find_map(|l| {
        let (_, rest) = l.split_once(':')?;
        let (controllers, path) = rest.split_once(':')?;
        wanted(controllers).then_some(path)
    })
}

/// The cgroup of systemd unit `unit` (relative to the v2 hierarchy's root)
/// holding the process whose /proc/PID/cgroup is `text`: its v2 path cut
/// after the last component ending in `.service`, when that component is
/// `unit`. None on a hybrid or legacy host (a `name=systemd` v1
/// hierarchy): systemd tracks units there and neither reports nor undoes
/// a v2 freeze, so its stop would not reach the process.
fn unit_cgroup(text: &str, unit: &str) -> Option<PathBuf> {
    if cgroup_path(text, |c| c == "name=systemd").is_some() {
        return None;
    }
    let path = cgroup_path(text, str::is_empty)?;
    let names: Vec<&str> = path.split('/').filter(|n| !n.is_empty()).collect();
    let last = names.iter().rposition(|n| n.ends_with(".service"))?;
    (names[last] == unit).then(|| names[..=last].iter().collect())
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

/// Freezes the cgroup of `unit`, systemd's service holding `pid`, where
/// it is: its `cgroup.freeze`, the file `systemctl freeze` writes.
fn freeze_unit(pid: u32, unit: &str, frozen: &mut Frozen) -> Result<()> {
    let root = cgroup2_root().context("no cgroup v2 hierarchy is mounted")?;
    let proc_cgroup = format!("/proc/{pid}/cgroup");
    let text =
        fs::read_to_string(&proc_cgroup).with_context(|| format!("reading {proc_cgroup}"))?;
    let path = unit_cgroup(&text, unit).with_context(|| {
        format!(
            "{proc_cgroup} has no cgroup v2 path in {unit} on a host where systemd keeps its units there: {}",
            text.trim()
        )
    })?;
    let cgroup = root.join(path);
    write(&cgroup.join("cgroup.freeze"), "1")?;
    frozen.cgroup = Some(cgroup);
    frozen.unit = Some(unit.to_string());
    Ok(())
}

/// Stops `pid` now and freezes it: in `unit`'s own cgroup when systemd
/// started it as that unit's service, else (or when that fails) in a
/// frozen cgroup of its own under `stopguard/`: cgroup v2 where it is
/// mounted, else the v1 freezer (or the one `freezer` names).
pub fn freeze(pid: u32, freezer: Freezer, unit: Option<&str>) -> Result<Frozen> {
    signal::kill(Pid::from_raw(pid as i32), signal::Signal::SIGSTOP)
        .with_context(|| format!("SIGSTOP to pid {pid}"))?;
    let mut frozen = Frozen {
        pid,
        start_ticks: start_ticks(pid),
        cgroup: None,
        previous_cgroup: None,
        unit: None,
    };
    // systemd's freezer is cgroup v2's: not when v1 is asked for.
    if let Some(unit) = unit.filter(|_| freezer != Freezer::Cgroup1) {
        match freeze_unit(pid, unit, &mut frozen) {
            Ok(()) => return Ok(frozen),
            Err(err) => tracing::warn!(
                "pid {pid} not frozen in {unit}'s cgroup ({err:#}): moved to a frozen cgroup of its own"
            ),
        }
    }
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
                    unit: None,
                });
            }
        }
    }
    found
}

/// Removes the `stopguard/frozen-*` cgroups no process is left in (their
/// process ended while no agent ran); returns those removed.
pub fn remove_empty_frozen() -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for root in [cgroup2_root(), freezer_v1_root()].into_iter().flatten() {
        let Ok(entries) = fs::read_dir(root.join("stopguard")) else {
            continue;
        };
        for entry in entries.flatten() {
            let cgroup = entry.path();
            let ours = entry.file_name().to_string_lossy().starts_with("frozen-");
            let empty = fs::read_to_string(cgroup.join("cgroup.procs"))
                .is_ok_and(|procs| procs.trim().is_empty());
            if ours && empty && fs::remove_dir(&cgroup).is_ok() {
                removed.push(cgroup);
            }
        }
    }
    removed
}

/// Checks a freeze read back from saved state against the process and
/// the cgroups: the state is evidence, not orders. Its cgroup must be
/// where this agent freezes `frozen.pid` (`stopguard/frozen-PID`, or the
/// cgroup of the unit it names that holds the process, which must be in
/// it), the cgroup to put it back in a path inside the same hierarchy,
/// and a process held by SIGSTOP alone must be stopped.
pub fn check_saved(frozen: &Frozen) -> Result<(), String> {
    use std::path::Component;
    let pid = frozen.pid;
    if let Some(previous) = &frozen.previous_cgroup
        && previous
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "its cgroup to go back to, {}, is not a path inside the hierarchy",
            previous.display()
        ));
    }
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|err| format!("reading /proc/{pid}/cgroup: {err}"))?;
    match (&frozen.cgroup, &frozen.unit) {
        (None, _) => {
            let state = procfs::process::Process::new(pid as i32)
                .and_then(|p| p.stat())
                .map(|s| s.state)
                .unwrap_or('?');
            if !matches!(state, 'T' | 't') {
                return Err(format!("it is not stopped (state {state})"));
            }
        }
        (Some(cgroup), None) => {
            let own = PathBuf::from("stopguard").join(format!("frozen-{pid}"));
            let inside = [(cgroup2_root(), false), (freezer_v1_root(), true)]
                .into_iter()
                .any(|(root, v1)| {
                    root.is_some_and(|root| {
                        *cgroup == root.join(&own) && current_cgroup(pid, v1).as_ref() == Some(&own)
                    })
                });
            if !inside {
                return Err(format!(
                    "{} is not its own frozen cgroup of stopguard's, or it is not in it",
                    cgroup.display()
                ));
            }
        }
        (Some(cgroup), Some(unit)) => {
            let root = cgroup2_root().ok_or("no cgroup v2 hierarchy is mounted")?;
            if unit_cgroup(&text, unit)
                .map(|path| root.join(path))
                .as_ref()
                != Some(cgroup)
            {
                return Err(format!(
                    "{} is not the cgroup of {unit} that holds it",
                    cgroup.display()
                ));
            }
        }
    }
    Ok(())
}

/// Whether a saved freeze of a process that has ended names a unit's
/// cgroup (inside the v2 hierarchy, named after the unit), the only kind
/// undone for what else runs there.
pub fn is_unit_cgroup(frozen: &Frozen) -> bool {
    match (&frozen.cgroup, &frozen.unit, cgroup2_root()) {
        (Some(cgroup), Some(unit), Some(root)) => {
            cgroup.starts_with(&root)
                && cgroup.file_name().is_some_and(|n| n == unit.as_str())
                && !cgroup
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
        }
        _ => false,
    }
}

/// Lets a frozen process run again, and puts it back where it was.
pub fn thaw(frozen: &Frozen) -> Result<()> {
    release_cgroup(frozen)?;
    signal::kill(Pid::from_raw(frozen.pid as i32), signal::Signal::SIGCONT)
        .with_context(|| format!("SIGCONT to pid {}", frozen.pid))
}

/// Ends a frozen process: SIGKILL, which the freezers let through, then
/// its cgroup thawed as a thaw would, so that nothing else stays frozen
/// in a unit (Debian's pg_ctlcluster and pg_ctl, waiting on the
/// postmaster for PID 1's start job) and systemd sees the start fail.
pub fn kill_frozen(frozen: &Frozen) -> Result<()> {
    kill(frozen.pid)?;
    release_cgroup(frozen)
}

/// Undoes a freeze whose process has ended (a unit's stop ended it): a
/// unit's cgroup is thawed, for what else runs there; ours is removed.
pub fn forget(frozen: &Frozen) -> Result<()> {
    release_cgroup(frozen)
}

/// Thaws the unit's cgroup holding a frozen process and leaves the process
/// stopped (SIGSTOP): for systemd's jobs on the unit to go through.
pub fn thaw_unit(frozen: &Frozen) -> Result<()> {
    match frozen.unit {
        Some(_) => release_cgroup(frozen),
        None => Ok(()),
    }
}

/// Thaws the cgroup holding a frozen process where it is, the process left
/// stopped (SIGSTOP): at shutdown, so that systemd's last SIGKILL ends it
/// instead of waiting on a frozen process until its timeout.
pub fn thaw_in_place(frozen: &Frozen) -> Result<()> {
    let Some(cgroup) = &frozen.cgroup else {
        return Ok(());
    };
    let (file, thawed) = if cgroup.join("freezer.state").exists() {
        ("freezer.state", "THAWED")
    } else {
        ("cgroup.freeze", "0")
    };
    match fs::write(cgroup.join(file), thawed) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        result => {
            result.with_context(|| format!("writing {thawed} to {}", cgroup.join(file).display()))
        }
    }
}

/// Freezes again the unit's cgroup holding a frozen process, thawed by
/// `thaw_unit` while the agent was away.
pub fn refreeze_unit(frozen: &Frozen) -> Result<()> {
    match (&frozen.unit, &frozen.cgroup) {
        (Some(_), Some(cgroup)) => write(&cgroup.join("cgroup.freeze"), "1"),
        _ => Ok(()),
    }
}

/// Thaws the cgroup holding a frozen process: a unit's own is left where
/// it is (gone already when systemd stopped the unit); one of ours is
/// thawed, the process put back where it was, and removed.
fn release_cgroup(frozen: &Frozen) -> Result<()> {
    let Some(cgroup) = &frozen.cgroup else {
        return Ok(());
    };
    if frozen.unit.is_some() {
        return match fs::write(cgroup.join("cgroup.freeze"), "0") {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            result => result.with_context(|| {
                format!("writing 0 to {}", cgroup.join("cgroup.freeze").display())
            }),
        };
    }
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
    Ok(())
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

    #[test]
    fn a_units_cgroup_is_its_path_cut_after_the_last_service() {
        let unit = "postgresql@15-main.service";
        assert_eq!(
            unit_cgroup(
                "0::/system.slice/system-postgresql.slice/postgresql@15-main.service\n",
                unit
            ),
            Some(PathBuf::from(
                "system.slice/system-postgresql.slice/postgresql@15-main.service"
            ))
        );
        assert_eq!(
            unit_cgroup(
                "0::/system.slice/docker.service/payload\n",
                "docker.service"
            ),
            Some(PathBuf::from("system.slice/docker.service")),
            "a sub-cgroup of a unit: the unit's own cgroup is frozen"
        );
        assert_eq!(
            unit_cgroup("0::/system.slice/redis-server.service\n", unit),
            None,
            "another unit's cgroup is not frozen for this one"
        );
        assert_eq!(
            unit_cgroup("0::/stopguard/frozen-42\n", unit),
            None,
            "already in a cgroup of ours"
        );
        assert_eq!(unit_cgroup("0::/\n", unit), None);
        assert_eq!(unit_cgroup("", unit), None);
    }

    #[test]
    fn a_unit_is_not_frozen_where_systemd_keeps_it_in_cgroup_v1() {
        let hybrid = "\
12:freezer:/
1:name=systemd:/system.slice/postgresql@15-main.service
0::/system.slice/postgresql@15-main.service
";
        assert_eq!(unit_cgroup(hybrid, "postgresql@15-main.service"), None);
        let unified_with_v1_freezer = "\
1:freezer:/
0::/system.slice/postgresql@15-main.service
";
        assert_eq!(
            unit_cgroup(unified_with_v1_freezer, "postgresql@15-main.service"),
            Some(PathBuf::from("system.slice/postgresql@15-main.service"))
        );
    }

    #[test]
    fn a_frozen_process_saved_before_units_were_frozen_reads_back() {
        let saved = r#"{"pid":42,"start_ticks":7,"cgroup":"/sys/fs/cgroup/stopguard/frozen-42","previous_cgroup":"system.slice/x.service"}"#;
        let frozen: Frozen = serde_json::from_str(saved).unwrap();
        assert_eq!(frozen.unit, None);
        assert_eq!(frozen.pid, 42);
    }
}
