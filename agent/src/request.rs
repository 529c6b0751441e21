//! What a person asks of the agent through `stopguard <command>`, and who
//! asked: the control socket carries these, the audit log records them.

use serde::{Deserialize, Serialize};

/// Larger requests are refused: no command needs more.
pub const MAX_REQUEST: u64 = 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    WindowOpen {
        service: String,
        reason: String,
        /// Seconds until it closes by itself.
        for_secs: Option<u64>,
    },
    WindowClose {
        target: String,
        thaw: bool,
        kill: bool,
    },
    WindowList,
    Status,
    Thaw {
        target: String,
    },
    /// Open a window (unless one is open) and stop the service.
    Stop {
        service: String,
        reason: String,
        for_secs: Option<u64>,
        /// How long to wait for the main process to exit.
        wait_secs: u64,
    },
    /// A test alert through every sink, or the one named.
    AlertTest {
        sink: Option<String>,
    },
    /// The audit log, oldest first.
    Audit {
        since_secs: Option<u64>,
        service: Option<String>,
    },
}

impl Request {
    /// Whether the request changes state (and so needs root or the group).
    pub fn changes_state(&self) -> bool {
        !matches!(
            self,
            Request::WindowList | Request::Status | Request::Audit { .. }
        )
    }
}

/// The peer of a control connection, from SO_PEERCRED.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub loginuid: Option<u32>,
}
