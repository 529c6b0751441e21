//! Every kind of audit log entry, one type: the agent writes these and
//! `stopguard audit` reads them back, so a new kind of entry has a line for
//! people the moment it exists (the match in `describe` is exhaustive).

use serde::{Deserialize, Serialize};

use crate::{
    alert::Alert,
    control::{Peer, Request},
    detect::{Finding, Window},
};

/// One audit log entry (the log adds the time, `at`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AuditEvent {
    /// What detection found: `{"finding": "respawn", ...}`.
    Finding(Finding),
    /// An alert as raised: `{"alert": {...}}`.
    Alert { alert: Box<Alert> },
    /// What the agent did, or was asked: `{"event": "thawed", ...}`.
    Agent(AgentEvent),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentEvent {
    /// A control request that changes state, from a permitted peer.
    Control {
        request: Request,
        peer: Peer,
    },
    /// A control request refused for the peer's credentials.
    PermissionDenied {
        request: Request,
        peer: Peer,
    },
    WindowExpired {
        window: Window,
    },
    Thawed {
        service: String,
        pid: u32,
    },
    Killed {
        service: String,
        pid: u32,
    },
    /// A supervisor's retry while the first respawn is held frozen.
    RespawnRetryKilled {
        service: String,
        pid: u32,
        retries: u32,
        frozen_pid: u32,
        error: Option<String>,
    },
    /// A supervisor's off switch run for `stop --and-pause` (`on` false),
    /// or run back on as its window closed. For a cluster window
    /// (`--cluster`), `window` is its id and `cluster` the cluster's name.
    SupervisorSwitched {
        service: String,
        window: String,
        supervisor: String,
        on: bool,
        command: String,
        loginuid: Option<u32>,
        error: Option<String>,
        /// The user it ran as; none for root.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster: Option<String>,
    },
    /// A process the kernel guard stopped at exec that was no respawn.
    GuardReleased {
        pid: u32,
    },
    EventsLost {
        count: u64,
    },
    /// SIGHUP: the configuration read again.
    ConfigReloaded {
        source: String,
        services: Vec<String>,
    },
    /// SIGHUP with a configuration that has an error: the running one stays.
    ConfigRefused {
        error: String,
    },
    StateRestored {
        windows: Vec<Window>,
        frozen: Vec<u32>,
    },
    /// A respawn alert held back from the sinks: its group's follow-up
    /// will name it.
    AlertGrouped {
        service: String,
        id: String,
        group_of: String,
    },
    AlertDelivered {
        service: String,
        sink: String,
        id: String,
        attempts: u32,
        status: u16,
    },
    AlertUndeliverable {
        service: String,
        sink: String,
        id: String,
        attempts: u32,
    },
    /// The disk refused an alert (state_dir full or read-only): it is held
    /// in memory and delivered from there.
    SpoolFailed {
        service: String,
        id: String,
        error: String,
    },
    /// The disk took the alerts held in memory again.
    SpoolWritten {
        count: usize,
    },
    /// state.json could not be saved; the agent keeps trying.
    StateSaveFailed {
        error: String,
    },
    StateSaved,
    /// A process held frozen that ended by other hands (its unit stopped).
    FrozenEnded {
        service: String,
        pid: u32,
    },
    /// systemd acted on the unit holding a frozen process (a stop, a
    /// kill): the unit's cgroup thawed for its job; the process stays
    /// stopped until systemd's SIGCONT.
    UnitThawedForSystemd {
        service: String,
        pid: u32,
        unit: String,
        error: Option<String>,
    },
    /// A process found held in a frozen cgroup at start that the saved
    /// state did not name: held again, thawable.
    FrozenAdopted {
        service: String,
        pid: u32,
        cgroup: String,
    },
    /// A process the saved state names as held that is not what it says
    /// (not the service's, not in the cgroup named, not stopped): not
    /// held, nothing done to it.
    SavedHoldRefused {
        service: String,
        pid: u32,
        reason: String,
    },
    /// A cluster window applied here as local window `window`, or not
    /// (`error`: the service is not watched here).
    ClusterWindowApplied {
        cluster: String,
        id: String,
        service: String,
        window: Option<String>,
        error: Option<String>,
        by: crate::fleet::records::Who,
        reason: String,
    },
    /// A cluster window's local window closed: closed on `by`'s request,
    /// or gone from etcd (closed or expired while this host was away).
    ClusterWindowClosed {
        cluster: String,
        id: String,
        window: String,
        service: String,
        by: Option<crate::fleet::records::Who>,
        why: String,
    },
    /// A window record this host will not apply: malformed, or opened on
    /// a host that is not a member of the cluster.
    ClusterWindowRefused {
        cluster: String,
        id: String,
        why: String,
    },
    /// etcd stopped answering (`reachable` false, since `since`, unix
    /// seconds) or answers again.
    FleetReachable {
        cluster: String,
        reachable: bool,
        since: u64,
    },
}

impl From<Finding> for AuditEvent {
    fn from(finding: Finding) -> AuditEvent {
        AuditEvent::Finding(finding)
    }
}

impl From<AgentEvent> for AuditEvent {
    fn from(event: AgentEvent) -> AuditEvent {
        AuditEvent::Agent(event)
    }
}

impl From<Alert> for AuditEvent {
    fn from(alert: Alert) -> AuditEvent {
        AuditEvent::Alert {
            alert: Box::new(alert),
        }
    }
}
