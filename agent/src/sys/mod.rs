//! What the agent needs of the system it runs on, each with no knowledge
//! of the agent's domain.
//!
//! - `clock`: the boot clock the kernel stamps records with, and wall time.
//! - `files`: writes that survive a crash, private directories.
//! - `identity`: user names and the person behind a login uid.
//! - `logging`: log lines the journal reads with their priority.
//! - `notify`: telling systemd the agent is ready, reloading, stopping.
//! - `metrics`: the Prometheus metrics and their endpoint.
//! - `raise_fd_limit`: the open-file limit raised to what the system allows.

pub mod clock;
pub mod files;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod notify;

/// Raises the soft file descriptor limit to the hard one: the agent holds
/// a descriptor per BPF map and program, per control client, per freeze.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(err) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!("raising the file descriptor limit from {soft} to {hard}: {err}");
    }
}
