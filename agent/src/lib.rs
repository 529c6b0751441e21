//! stopguard: catches supervisors restarting services an operator stopped.
//!
//! - `kernel`: loading the eBPF programs, reading their ring buffer.
//! - `events`: the typed lifecycle events decoded from kernel records.
//! - `detect`: operator stops and respawns, a pure state machine.
//! - `process`: the process table (ancestry, supervisors), seeded from /proc.
//! - `supervisors`: the supervisors known, one file each, and their control
//!   commands.
//! - `monitor`: the event loop that keeps the table current.
//! - `trace`, `agent`: the `trace` and `run` commands; `control`: the
//!   socket through which `stopguard window/status/thaw` reach the agent.
//! - `actions`: freeze, thaw, kill; `alert`: the alert records.
//! - `config`: the TOML configuration and its embedded default.

pub mod actions;
pub mod agent;
pub mod alert;
pub mod audit;
pub mod clock;
pub mod config;
pub mod control;
pub mod detect;
pub mod events;
pub mod files;
pub mod identity;
pub mod kernel;
pub mod metrics;
pub mod monitor;
pub mod process;
pub mod request;
pub mod sinks;
pub mod supervisors;
pub mod trace;
