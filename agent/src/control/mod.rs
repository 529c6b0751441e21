//! The control plane: `stopguard <command>` talks to the running agent over
//! a Unix socket, one JSON request and one JSON answer per connection. The
//! request and every answer are types here, shared by both ends: the agent
//! (`server`) writes them, the command line (`client`) reads and prints them.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

pub use crate::request::{MAX_REQUEST, Peer, Request};
use crate::{
    alert::WindowInfo, audit::Timeline, detect::OperatorStop, files::WriteFailure, monitor::Counts,
    process::Link, sinks::TestResult, supervisors::watch::Watcher,
};

/// `window open`: the window opened.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WindowOpened {
    pub window: WindowInfo,
}

/// `window close`: the window closed, and what was let go of.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WindowClosed {
    pub window: WindowInfo,
    /// With --thaw (or neither flag: empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thawed: Option<Vec<u32>>,
    /// With --kill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed: Option<Vec<u32>>,
    /// Respawns of the service still held frozen.
    pub still_frozen: Vec<u32>,
    /// The off switches `stop --and-pause` ran, switched back on: each
    /// command, and what went wrong when one failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resumed: Vec<SwitchRun>,
}

/// A supervisor's switch as run, and how it went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwitchRun {
    pub supervisor: String,
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `window list`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WindowList {
    pub windows: Vec<WindowInfo>,
}

/// `thaw`: the pids let run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Thawed {
    pub thawed: Vec<u32>,
}

/// `stop`: the window it stopped the service in, and how it went.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stopped {
    pub service: String,
    pub window: WindowInfo,
    /// The main process it stopped; none when it was not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The main process is a respawn held frozen: nothing was signalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_frozen: Option<u32>,
    /// The service's `stop_command`, as run, and the tail of its output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The signal sent when there is no stop_command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// How long the stop took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// With --and-pause: the off switches run before the stop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paused: Vec<SwitchRun>,
}

/// `explain`: a service's main process, how it started, and what would
/// start it again if it stopped now.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Explanation {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub state: ServiceState,
    pub main: Option<MainProcess>,
    pub stopped_by: Option<OperatorStop>,
    /// Every supervisor that watches it.
    pub supervisors: Vec<Watcher>,
    /// Whether any of them would start it again.
    pub would_restart: bool,
}

/// A main process in `explain`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MainProcess {
    pub pid: u32,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    /// Whether the agent saw it start (else it was running before).
    pub seen_starting: bool,
    /// When it started, for one seen starting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Its creator chain as recorded at its exec (parent first); for one
    /// running before the agent, its ancestors as /proc showed them.
    pub chain: Vec<Link>,
    /// The supervisor that started it, per that chain.
    pub started_by: Option<String>,
    /// The person who started it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by_person: Option<String>,
}

/// A watched service in `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// The systemd unit it is, for an instance of a per-instance service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub pid: Option<u32>,
    pub state: ServiceState,
    pub stopped_by: Option<OperatorStop>,
    pub frozen: Vec<u32>,
    /// The supervisors that watch it, as last looked at.
    #[serde(default)]
    pub supervisors: Vec<Watcher>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    Running,
    StoppedByOperator,
    NotRunning,
}

/// `status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub host: String,
    pub services: Vec<ServiceStatus>,
    pub windows: Vec<WindowInfo>,
    pub frozen: Vec<u32>,
    pub events: Counts,
    pub lost: u64,
    pub spool_depth: usize,
    /// Alerts the disk refused, held in memory, and the last refusal.
    #[serde(default)]
    pub spool_unsynced: usize,
    #[serde(default)]
    pub spool_error: Option<WriteFailure>,
    /// Why state.json could not be saved, while it cannot.
    #[serde(default)]
    pub state_error: Option<WriteFailure>,
    pub sinks: Vec<crate::sinks::SinkStatus>,
    /// Whether the kernel side outlives the agent (pinned), and since when.
    #[serde(default)]
    pub pinning: Option<crate::kernel::Pinning>,
}

/// `alert test`: each sink's result.
#[derive(Debug, Serialize, Deserialize)]
pub struct AlertTested {
    pub results: Vec<TestResult>,
}

/// `audit`: the timeline.
#[derive(Debug, Serialize, Deserialize)]
pub struct AuditRead {
    pub timeline: Timeline,
}
