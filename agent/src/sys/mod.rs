//! What the agent needs of the system it runs on, each with no knowledge
//! of the agent's domain.
//!
//! - `clock`: the boot clock the kernel stamps records with, and wall time.
//! - `files`: writes that survive a crash, private directories.
//! - `identity`: user names and the person behind a login uid.
//! - `logging`: log lines the journal reads with their priority.
//! - `notify`: telling systemd the agent is ready, reloading, stopping.
//! - `metrics`: the Prometheus metrics and their endpoint.

pub mod clock;
pub mod files;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod notify;
