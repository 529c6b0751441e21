//! Where a process sits in the cgroup tree, as paths say it: the unified
//! (v2) hierarchy's mount, and the systemd service unit a cgroup path or a
//! /proc/PID/cgroup text names.

use std::{os::unix::fs::MetadataExt, path::PathBuf};

/// The unified (v2) hierarchy's mount point and root id: /sys/fs/cgroup
/// on a unified host, /sys/fs/cgroup/unified on a hybrid one.
pub fn unified_mount() -> Option<(PathBuf, u64)> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        // id parent major:minor root mount-point options... - fstype source
        let (fields, rest) = line.split_once(" - ")?;
        let mut fields = fields.split(' ');
        let root = fields.nth(3)?;
        let point = fields.next()?;
        (rest.split(' ').next() == Some("cgroup2") && root == "/").then(|| {
            let point = PathBuf::from(point);
            let id = std::fs::metadata(&point).ok()?.ino();
            Some((point, id))
        })?
    })
}

/// The service unit in a /proc/PID/cgroup text: from the cgroup v2 line
/// (`0::/system.slice/redis-server.service`), else systemd's own v1
/// hierarchy (`1:name=systemd:/...`) on a legacy host.
pub fn unit_of_cgroups(text: &str) -> Option<String> {
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
    fn the_unified_root_is_found_where_this_host_mounts_it() {
        let Some((point, id)) = unified_mount() else {
            let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            assert!(
                !text.contains(" - cgroup2 "),
                "cgroup2 mounted but not found"
            );
            return;
        };
        assert!(point.starts_with("/sys/fs/cgroup"), "{}", point.display());
        assert!(point.join("cgroup.procs").exists());
        assert_ne!(id, 0);
    }

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
}
