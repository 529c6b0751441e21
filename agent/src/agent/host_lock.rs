//! One agent per host. Two would fight over the kernel guard, freeze the
//! same respawn twice and alert twice, and the second would take the
//! first's control socket. The lock is host-wide (not per socket or state
//! directory), held for the agent's life and released by the kernel when it
//! dies, however it dies.

use std::{
    fs,
    io::{Read, Seek, Write},
    path::Path,
};

use anyhow::{Context, Result, bail};
use nix::fcntl::{Flock, FlockArg};

/// In the runtime directory: the only part of /run a hardened unit may
/// write (`RuntimeDirectory=stopguard`).
pub const LOCK_PATH: &str = "/run/stopguard/agent.lock";

/// Held while the agent runs.
pub struct HostLock {
    _file: Flock<fs::File>,
}

/// Takes the host's agent lock, recording this agent's pid and socket in it
/// so that a second agent can say which one runs.
pub fn acquire(socket: &Path) -> Result<HostLock> {
    let path = Path::new(LOCK_PATH);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(file) => file,
        Err((mut file, _)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let mut lines = holder.lines();
            let pid = lines.next().unwrap_or("?");
            let their_socket = lines.next().unwrap_or("?");
            bail!(
                "another stopguard agent runs on this host (pid {pid}, socket {their_socket}); \
                 two would fight over the kernel guard: stop it first"
            );
        }
    };
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}\n{}", std::process::id(), socket.display())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(HostLock { _file: file })
}

/// The agent holding the lock ("pid 812, socket /run/stopguard/control.sock"),
/// or None when no agent runs.
pub fn holder() -> Option<String> {
    let mut file = fs::File::open(LOCK_PATH).ok()?;
    let mut holder = String::new();
    let _ = file.read_to_string(&mut holder);
    let _lock = match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(lock) => lock,
        Err(_) => {
            let mut lines = holder.lines();
            let pid = lines.next().unwrap_or("?");
            let socket = lines.next().unwrap_or("?");
            return Some(format!("pid {pid}, socket {socket}"));
        }
    };
    None
}
