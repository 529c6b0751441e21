//! What crosses the control socket: each request `stopguard <command>`
//! sends, and the reply it is answered with. `Ask` ties a request to its
//! reply type, so the agent cannot answer one request with another's reply
//! and the command line cannot read it as one: a mismatch does not compile.
//!
//! On the wire a request is one JSON line tagged by `command`
//! (`{"command":"window_open","service":...}`), and the answer one JSON
//! line: the reply's fields with `"ok": true`, or `{"ok": false, "error"}`.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;

use crate::{
    alert::WindowInfo,
    config::{Severity, SinkKind},
    detect::OperatorStop,
    fleet::{ClusterClosed, ClusterOpened, ClusterWindow, FleetView},
    monitor::Counts,
    process::Link,
    supervisors::watch::Watcher,
    sys::files::WriteFailure,
};

pub use crate::supervisors::bounded::SwitchRun;

/// Larger requests are refused: no command needs more.
pub const MAX_REQUEST: u64 = 64 * 1024;

/// A request, with the type of its reply.
pub trait Ask: Serialize + Into<Request> {
    type Reply: Serialize + DeserializeOwned;
}

/// Every request, as the socket carries it and the audit log records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    WindowOpen(OpenWindow),
    WindowClose(CloseWindow),
    WindowList(ListWindows),
    Status(GetStatus),
    Thaw(Thaw),
    Stop(Stop),
    Explain(Explain),
    AlertTest(TestAlert),
    Audit(ReadAudit),
    ClusterOpen(OpenClusterWindow),
    ClusterClose(CloseClusterWindow),
    FleetStatus(GetFleetStatus),
}

/// Declares each request's struct, its reply, and its place in `Request`.
macro_rules! asks {
    ($($(#[$doc:meta])* $variant:ident($ask:ident) -> $reply:ty { $($(#[$fdoc:meta])* $field:ident: $ty:ty,)* })*) => {
        $(
            $(#[$doc])*
            #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
            // A request with fields it does not know is refused.
            #[serde(deny_unknown_fields)]
            pub struct $ask {
                $($(#[$fdoc])* pub $field: $ty,)*
            }

            impl Ask for $ask {
                type Reply = $reply;
            }

            impl From<$ask> for Request {
                fn from(ask: $ask) -> Request {
                    Request::$variant(ask)
                }
            }
        )*
    };
}

asks! {
    /// `window open`.
    WindowOpen(OpenWindow) -> WindowOpened {
        service: String,
        reason: String,
        /// Seconds until it closes by itself.
        for_secs: Option<u64>,
    }
    /// `window close`.
    WindowClose(CloseWindow) -> WindowClosed {
        target: String,
        thaw: bool,
        kill: bool,
    }
    /// `window list`.
    WindowList(ListWindows) -> WindowList {}
    /// `status`.
    Status(GetStatus) -> Status {}
    /// `thaw`: a pid, or every frozen respawn of a service.
    Thaw(Thaw) -> Thawed {
        target: String,
    }
    /// `stop`: open a window (unless one is open) and stop the service.
    Stop(Stop) -> Stopped {
        service: String,
        reason: String,
        for_secs: Option<u64>,
        /// How long to wait for the main process to exit.
        wait_secs: u64,
        /// Switch off, before the stop, every supervisor that would start
        /// it again; undone when the window closes.
        #[serde(default)]
        and_pause: bool,
    }
    /// `explain`: what would start a service again if it stopped now.
    Explain(Explain) -> Explanation {
        service: String,
    }
    /// `alert test`: a test alert through every sink, or the one named.
    AlertTest(TestAlert) -> AlertTested {
        sink: Option<String>,
    }
    /// `audit`: the audit log, oldest first.
    Audit(ReadAudit) -> AuditRead {
        since_secs: Option<u64>,
        service: Option<String>,
    }
    /// `window open --cluster`: a window on every host `hosts` matches.
    ClusterOpen(OpenClusterWindow) -> ClusterOpened {
        service: String,
        reason: String,
        for_secs: u64,
        /// A glob of host names.
        hosts: String,
        /// How long to wait for every live host's acknowledgement.
        wait_secs: u64,
        /// `stop --and-pause --cluster`: then switch off, once for every
        /// host, the Patroni cluster that would start the service again
        /// here; refused before anything opens when there is none.
        #[serde(default)]
        and_pause: bool,
    }
    /// `window close --cluster`.
    ClusterClose(CloseClusterWindow) -> ClusterClosed {
        target: String,
        thaw: bool,
        kill: bool,
    }
    /// `fleet status`.
    FleetStatus(GetFleetStatus) -> FleetView {}
}

impl Request {
    /// One line read from the control socket, parsed and checked; the error
    /// is the answer to send back.
    pub fn from_line(line: &str) -> Result<Request, String> {
        let request: Request =
            serde_json::from_str(line.trim()).map_err(|err| format!("malformed request: {err}"))?;
        request.check()?;
        Ok(request)
    }

    /// Checks the values a request carries; the error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Request::WindowOpen(open) => open.for_secs.map_or(Ok(()), check_window),
            Request::ClusterOpen(open) => {
                if open.wait_secs > MAX_WAIT_SECS {
                    return Err("--wait is at most 24 hours".into());
                }
                check_window(open.for_secs)
            }
            Request::Stop(stop) => {
                if stop.wait_secs > MAX_WAIT_SECS {
                    return Err(format!(
                        "--wait is at most 24 hours (asked for {})",
                        humantime::format_duration(std::time::Duration::from_secs(stop.wait_secs))
                    ));
                }
                stop.for_secs.map_or(Ok(()), check_window)
            }
            Request::WindowClose(_)
            | Request::WindowList(_)
            | Request::Status(_)
            | Request::Thaw(_)
            | Request::AlertTest(_)
            | Request::Explain(_)
            | Request::Audit(_)
            | Request::ClusterClose(_)
            | Request::FleetStatus(_) => Ok(()),
        }
    }

    /// Whether the request changes state (and so needs root or the group).
    pub fn changes_state(&self) -> bool {
        !matches!(
            self,
            Request::WindowList(_)
                | Request::Status(_)
                | Request::Audit(_)
                | Request::Explain(_)
                | Request::FleetStatus(_)
        )
    }

    /// Whether answering it asks supervisors (runs their probes): a
    /// request that may be slow, which its client may give up on.
    pub fn asks_supervisors(&self) -> bool {
        matches!(self, Request::Explain(_))
    }

    /// The request's command in words ("window open").
    pub fn command(&self) -> String {
        serde_json::to_value(self).expect("requests serialize")["command"]
            .as_str()
            .unwrap_or("?")
            .replace('_', " ")
    }

    /// The service, target or sink it names, when it names one.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Request::WindowOpen(OpenWindow { service, .. })
            | Request::ClusterOpen(OpenClusterWindow { service, .. })
            | Request::Stop(Stop { service, .. })
            | Request::Explain(Explain { service }) => Some(service),
            Request::WindowClose(CloseWindow { target, .. })
            | Request::ClusterClose(CloseClusterWindow { target, .. })
            | Request::Thaw(Thaw { target }) => Some(target),
            Request::Audit(ReadAudit { service, .. }) => service.as_deref(),
            Request::AlertTest(TestAlert { sink }) => sink.as_deref(),
            Request::WindowList(_) | Request::Status(_) | Request::FleetStatus(_) => None,
        }
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

/// The longest a window may stay open by itself (`--for`): a maintenance
/// that runs longer opens a new one. Also what keeps the expiry time from
/// overflowing, which would close the window at once and disarm the guard.
pub const MAX_WINDOW_SECS: u64 = 30 * 24 * 3600;

/// The longest `stopguard stop` waits for a service to exit.
pub const MAX_WAIT_SECS: u64 = 24 * 3600;

/// Checks a window length given to `--for`.
pub fn check_window(secs: u64) -> Result<(), String> {
    if secs > MAX_WINDOW_SECS {
        return Err(format!(
            "a window lasts at most 30 days (asked for {}); open a new one when it ends",
            humantime::format_duration(std::time::Duration::from_secs(secs))
        ));
    }
    Ok(())
}

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

/// `window list`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WindowList {
    pub windows: Vec<WindowInfo>,
    /// In fleet mode: the cluster's windows and each host's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Vec<ClusterWindow>>,
    /// Why the cluster's windows could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_error: Option<String>,
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
    /// The cluster window its window applies (fleet mode), which
    /// `window close --cluster` ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
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
    /// False for a service no longer in the configuration that a process
    /// is still held frozen for.
    #[serde(default = "watched")]
    pub watched: bool,
}

fn watched() -> bool {
    true
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
    pub sinks: Vec<SinkStatus>,
    /// Whether the kernel side outlives the agent (pinned), and since when.
    #[serde(default)]
    pub pinning: Option<crate::kernel::Pinning>,
    /// Fleet mode: the cluster, and whether etcd answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetLinkStatus>,
}

/// This host's link to its cluster, in `stopguard status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetLinkStatus {
    pub cluster: String,
    pub reachable: bool,
    /// Unix seconds etcd stopped answering, while it does not.
    pub unreachable_since: Option<u64>,
    /// The cluster windows this host applies: cluster id and local id.
    pub applied: Vec<(String, String)>,
}

/// A sink in `stopguard status`: the URL without its path.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SinkStatus {
    pub name: String,
    pub kind: SinkKind,
    pub url: String,
    pub min_severity: Severity,
    pub health: Health,
}

/// How a sink has been doing, for `stopguard status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Health {
    pub delivered: u64,
    pub failed_attempts: u64,
    pub undeliverable: u64,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

/// The result of a test alert to one sink.
#[derive(Debug, Serialize, Deserialize)]
pub struct TestResult {
    pub sink: String,
    pub ok: bool,
    pub status: Option<u16>,
    pub latency_ms: f64,
    pub error: Option<String>,
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

/// What `audit` found: the entries asked for (the newest
/// `audit::MAX_ENTRIES`), and how many older ones matched but were left
/// out. Entries are the log's lines as written, not re-encoded.
#[derive(Debug, Serialize, Deserialize)]
pub struct Timeline {
    pub entries: Vec<Box<RawValue>>,
    pub left_out: usize,
    /// Lines that were not JSON (a torn last line after a crash).
    pub unreadable: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_with_unknown_fields_are_refused() {
        for line in [
            r#"{"command":"status","extra":1}"#,
            r#"{"command":"window_open","service":"pg","reason":"x","for_secs":null,"bogus":1}"#,
            r#"{"command":"thaw","target":"pg","kill":true}"#,
            r#"{"command":"window_list","service":"pg"}"#,
        ] {
            assert!(
                serde_json::from_str::<Request>(line).is_err(),
                "accepted {line}"
            );
        }
        let ok: Request = serde_json::from_str(r#"{"command":"thaw","target":"pg"}"#).unwrap();
        assert_eq!(
            ok,
            Request::Thaw(Thaw {
                target: "pg".into()
            })
        );
    }

    #[test]
    fn requests_keep_their_wire_form() {
        let lines = [
            r#"{"command":"window_open","service":"pg","reason":"x","for_secs":7200}"#,
            r#"{"command":"window_close","target":"pg","thaw":true,"kill":false}"#,
            r#"{"command":"window_list"}"#,
            r#"{"command":"status"}"#,
            r#"{"command":"thaw","target":"4121"}"#,
            r#"{"command":"stop","service":"pg","reason":"x","for_secs":null,"wait_secs":60,"and_pause":true}"#,
            r#"{"command":"explain","service":"pg"}"#,
            r#"{"command":"alert_test","sink":null}"#,
            r#"{"command":"audit","since_secs":3600,"service":"pg"}"#,
        ];
        for line in lines {
            let request = Request::from_line(line).unwrap();
            assert_eq!(serde_json::to_string(&request).unwrap(), line);
        }
        // `and_pause` came later: a request without it is a plain stop.
        let old =
            r#"{"command":"stop","service":"pg","reason":"x","for_secs":null,"wait_secs":60}"#;
        assert!(matches!(
            Request::from_line(old).unwrap(),
            Request::Stop(Stop {
                and_pause: false,
                ..
            })
        ));
    }

    #[test]
    fn commands_and_subjects_in_words() {
        let close: Request = CloseWindow {
            target: "pg".into(),
            thaw: false,
            kill: true,
        }
        .into();
        assert_eq!(close.command(), "window close");
        assert_eq!(close.subject(), Some("pg"));
        let status: Request = GetStatus {}.into();
        assert_eq!(status.command(), "status");
        assert_eq!(status.subject(), None);
        assert!(close.changes_state() && !status.changes_state());
    }

    #[test]
    fn window_lengths_over_thirty_days_are_refused() {
        let open = |for_secs| {
            Request::from(OpenWindow {
                service: "pg".into(),
                reason: "x".into(),
                for_secs,
            })
        };
        assert!(open(Some(MAX_WINDOW_SECS)).check().is_ok());
        assert!(open(None).check().is_ok());
        let err = open(Some(18_446_744_074)).check().unwrap_err();
        assert!(err.contains("at most 30 days"), "{err}");
    }
}
