//! The HA tools that restart a stopped database on their own, each run for
//! real in a private dir: Patroni (with etcd as its store) over PostgreSQL
//! 15, and MariaDB under mysqld_safe. A fixture owns what it starts and
//! leaves nothing running when it drops. Nothing here sets a loginuid: the
//! tools run as daemons do, and a test plays the person (`as_person`).
//!
//! Here: what the fixtures use (private dirs, spawning and stopping, the
//! processes of a fixture); `patroni`, `patroni_cluster` (several members
//! over the test's etcd) and `mariadb`: one fixture each.

mod mariadb;
mod patroni;
mod patroni_cluster;

pub use self::{mariadb::Mariadb, patroni::Patroni, patroni_cluster::PatroniCluster};

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::free_port;

/// PostgreSQL 15's programs, as Debian installs them.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Runs a program as the `postgres` user, as Debian's packages run
/// PostgreSQL and Patroni (no login: the loginuid stays unset).
const AS_POSTGRES: [&str; 4] = [
    "setpriv",
    "--reuid=postgres",
    "--regid=postgres",
    "--init-groups",
];

/// A private dir in the temp dir, `sg-PID-N-KIND`, so that parallel tests
/// and parallel runs do not share one. Its name is in the command line of
/// everything the fixture starts, and no other fixture's name contains it.
fn private_dir(kind: &str, owner: &str) -> PathBuf {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sg-{}-{}-{kind}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    run(Command::new("chown")
        .arg(format!("{owner}:{owner}"))
        .arg(&dir));
    dir
}

/// Runs `command`; returns its stdout, panicking with its stderr when it
/// fails.
fn run(command: &mut Command) -> String {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process started with output to `log`, no stdin, a plain environment
/// (no pyenv shims or Python variables of the caller).
fn spawn(command: &mut Command, log: &Path) -> Child {
    let out = fs::File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command:?} (installed by `cargo xtask test`): {e}"))
}

/// Polls `ready` every 50 ms until it gives a value, for up to `timeout`.
pub fn poll<T>(timeout: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = ready() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `poll` for up to `secs`, panicking with `what` when nothing came.
pub fn within<T>(secs: u64, what: &str, ready: impl FnMut() -> Option<T>) -> T {
    poll(Duration::from_secs(secs), ready).unwrap_or_else(|| panic!("not within {secs} s: {what}"))
}

/// `poll`, panicking after `timeout` with `what` and the log `log`.
fn wait_for<T>(timeout: Duration, what: &str, log: &Path, ready: impl FnMut() -> Option<T>) -> T {
    poll(timeout, ready).unwrap_or_else(|| {
        panic!(
            "{what} after {timeout:?}; {}:\n{}",
            log.display(),
            fs::read_to_string(log).unwrap_or_default()
        )
    })
}

/// The pid on the first line of `pid_file`, if that process runs.
fn pid_from(pid_file: &Path) -> Option<u32> {
    let text = fs::read_to_string(pid_file).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    running(pid).then_some(pid)
}

/// Whether `pid` is a process that has not exited (zombies have).
fn running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// The processes whose command line holds `marker` (a fixture's dir name,
/// also in its PostgreSQL backends' titles through the cluster name).
fn processes_of(marker: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter(|&pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

/// Stops `child` with SIGTERM, SIGKILL after `grace`.
fn stop_child(child: &mut Child, grace: Duration) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    if poll(grace, || child.try_wait().ok().flatten()).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Kills whatever of a fixture is still running, then removes its dir.
fn clean_up(dir: &Path) {
    let marker = dir.file_name().unwrap().to_string_lossy().into_owned();
    for pid in processes_of(&marker) {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    poll(Duration::from_secs(5), || {
        (!processes_of(&marker).into_iter().any(running)).then_some(())
    });
    let _ = fs::remove_dir_all(dir);
}
