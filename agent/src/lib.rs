//! stopguard: catches supervisors restarting services an operator stopped.
//!
//! From the kernel to the people who read the alert:
//! - `kernel`: loading the eBPF programs, reading their ring buffer.
//! - `events`: the typed lifecycle events decoded from kernel records.
//! - `monitor`: the event loop that keeps the process table current.
//! - `process`: the process table (ancestry), seeded from the kernel's
//!   task iterator and /proc.
//! - `supervisors`: the supervisors known, one file each, their control
//!   commands and what they say when asked (`systemd`: all of systemd's).
//! - `detect`: operator stops and respawns, a pure state machine.
//! - `decide`: what the agent does about a finding: the effects to carry
//!   out and the alert to raise (pure).
//! - `custody`: the kernel guard, the respawns held frozen, retry trains;
//!   freeze, thaw, kill.
//! - `alert`: the alert record, the schema every sink receives;
//!   `alerting`: raising, grouping and resolving alerts, and delivering
//!   them (`alerting::sinks`, one file per kind).
//! - `audit`: the audit log and its reader.
//! - `control`: what `stopguard <command>` asks the agent over its socket
//!   (`control::protocol`: each request and its typed reply), the server
//!   and the client.
//! - `agent`: `stopguard run`, the shell: the event loop, the facts
//!   `decide` needs, its effects carried out, control requests, saved
//!   state.
//! - `config`: the TOML configuration and its embedded default.
//! - `fleet`: cluster windows and each host's presence, kept in etcd.
//! - `trace`: the `trace` command.
//! - `sys`: the clock, safe file writes, user names, logging, systemd
//!   notification, metrics.
//! - `escape`: text from processes and people, escaped for a terminal,
//!   Slack or Teams.

pub mod agent;
pub mod alert;
pub mod alerting;
pub mod audit;
pub mod config;
pub mod control;
pub mod custody;
pub mod decide;
pub mod detect;
pub mod escape;
pub mod events;
pub mod fleet;
pub mod kernel;
pub mod monitor;
pub mod process;
pub mod supervisors;
pub mod sys;
pub mod trace;
