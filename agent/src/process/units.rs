//! Which systemd unit an exec'd process runs in, by the cgroup id its exec
//! record carries: the unified hierarchy's path of each id is read from
//! /proc once, not once per exec.

use std::{collections::HashMap, os::unix::fs::MetadataExt, path::PathBuf};

use super::{
    cgroup::{unified_mount, unit_of_cgroup},
    procfs,
};
use crate::events::Exec;

/// Ids remembered at most; past it the cache starts again. Units and
/// scopes come and go (a session, a timer's run), so ids do too.
const MAX_IDS: usize = 4096;

/// The unit of each cgroup (v2) seen at exec.
pub struct Units {
    /// Where the unified hierarchy is mounted, and its root cgroup's id.
    /// None on a host with cgroup v1 alone, where every exec's cgroup id is
    /// the same and /proc is read each time.
    unified: Option<(PathBuf, u64)>,
    by_id: HashMap<u64, Option<String>>,
}

impl Default for Units {
    fn default() -> Units {
        Units {
            unified: unified_mount(),
            by_id: HashMap::new(),
        }
    }
}

impl Units {
    /// The unit of the process that made `exec`, which is alive (or
    /// stopped) at its record.
    pub fn of(&mut self, exec: &Exec) -> Option<String> {
        let Some((mount, root)) = &self.unified else {
            return procfs::unit_of(exec.process.key);
        };
        // The root of the unified hierarchy holds no unit: under systemd
        // only kernel threads stay there, and without systemd everything
        // does.
        if exec.cgroup == *root || exec.cgroup == 0 {
            return None;
        }
        if let Some(unit) = self.by_id.get(&exec.cgroup) {
            return unit.clone();
        }
        let path = procfs::unified_cgroup(exec.process.key)?;
        let unit = unit_of_cgroup(&path);
        // Remembered only when the path is that id's own: the process may
        // have moved since its exec.
        let id = std::fs::metadata(mount.join(path.trim_start_matches('/'))).map(|m| m.ino());
        if id.is_ok_and(|id| id == exec.cgroup) {
            if self.by_id.len() >= MAX_IDS {
                self.by_id.clear();
            }
            self.by_id.insert(exec.cgroup, unit.clone());
        }
        unit
    }
}
