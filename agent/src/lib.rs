//! stopguard: catches supervisors restarting services an operator stopped.
//!
//! From the kernel to the people who read the alert:
//! - `kernel`: loading the eBPF programs, reading their ring buffer.
//! - `events`: the typed lifecycle events decoded from kernel records.
//! - `monitor`: the event loop that keeps the process table current.
//! - `process`: the process table (ancestry), seeded from /proc.
//! - `supervisors`: the supervisors known, one file each, and their control
//!   commands.
//! - `detect`: operator stops and respawns, a pure state machine.
//! - `decide`: what the agent does about a finding: the effects to carry
//!   out and the alert to raise (pure).
//! - `agent`: `stopguard run`, the shell: the event loop, the facts
//!   `decide` needs, its effects carried out, control requests, saved
//!   state.
//! - `custody`: the kernel guard, the respawns held frozen, retry trains;
//!   freeze, thaw, kill.
//! - `alert`: the alert record; `sinks`: delivering it (one file per kind).
//! - `audit`: the audit log and its reader.
//! - `control`: what `stopguard <command>` asks the agent over its socket
//!   (`control::protocol`: each request and its typed reply), the server
//!   and the client.
//! - `config`: the TOML configuration and its embedded default.
//! - `trace`: the `trace` command; `metrics`: Prometheus metrics.
//! - `notify`, `logging`: telling systemd the agent is ready, and log lines
//!   the journal reads with their priority.
//! - `files`, `identity`, `clock`: safe writes, user names, the boot clock.

pub mod agent;
pub mod alert;
pub mod audit;
pub mod clock;
pub mod config;
pub mod control;
pub mod custody;
pub mod decide;
pub mod detect;
pub mod events;
pub mod files;
pub mod identity;
pub mod kernel;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod process;
pub mod sinks;
pub mod supervisors;
pub mod trace;
