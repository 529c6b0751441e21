//! Typed lifecycle events: the user view of the kernel records in
//! `agent_common`, decoded from the bytes of one ring buffer entry.

use std::mem::size_of;

use agent_common::{
    Actor, ExecRecord, ExitRecord, ForkRecord, Header, NO_LOGINUID, SignalRecord, Task, flag, kind,
};
use serde::Serialize;

/// Clock ticks per second of /proc's start times (USER_HZ; 100 on Linux).
pub const USER_HZ: u64 = 100;

/// Names a process for its whole life: pid reuse gives a new `start_ticks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ProcessKey {
    pub pid: u32,
    /// Start time in clock ticks since boot, as field 22 of /proc/PID/stat.
    pub start_ticks: u64,
}

impl ProcessKey {
    pub fn from_task(task: &Task) -> Self {
        ProcessKey {
            pid: task.tgid,
            start_ticks: task.start_ns / (1_000_000_000 / USER_HZ),
        }
    }
}

/// Who did something: the process, its thread, credentials and name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Who {
    pub pid: u32,
    pub tid: u32,
    #[serde(skip)]
    pub key: ProcessKey,
    pub comm: String,
    pub uid: u32,
    /// None when the process never logged in.
    pub loginuid: Option<u32>,
    pub sessionid: Option<u32>,
}

impl Who {
    fn from_actor(actor: &Actor) -> Self {
        Who {
            pid: actor.task.tgid,
            tid: actor.task.pid,
            key: ProcessKey::from_task(&actor.task),
            comm: c_string(&actor.comm),
            uid: actor.uid,
            loginuid: login_id(actor.loginuid),
            sessionid: login_id(actor.sessionid),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Exec {
    pub time_ns: u64,
    #[serde(flatten)]
    pub process: Who,
    pub ppid: u32,
    #[serde(skip)]
    pub parent: ProcessKey,
    pub filename: String,
    pub filename_truncated: bool,
    /// argv of the new image, as far as it fit in the record.
    pub args: Vec<String>,
    pub args_truncated: bool,
    /// The kernel stopped it at exec because its name is guarded.
    pub guard_stopped: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Exit {
    pub time_ns: u64,
    pub pid: u32,
    #[serde(skip)]
    pub key: ProcessKey,
    pub ppid: u32,
    pub comm: String,
    /// Set when the process exited by itself.
    pub exit_code: Option<u8>,
    /// Set when a signal terminated it.
    pub signal: Option<u8>,
    pub core_dumped: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fork {
    pub time_ns: u64,
    #[serde(flatten)]
    pub parent: Who,
    pub child_pid: u32,
    #[serde(skip)]
    pub child: ProcessKey,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    pub pid: u32,
    pub tid: u32,
    #[serde(skip)]
    pub key: ProcessKey,
    pub comm: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Signal {
    pub time_ns: u64,
    pub signal: u32,
    pub signal_name: String,
    pub sender: Who,
    pub target: Target,
    pub result: SignalResult,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalResult {
    Delivered,
    Ignored,
    AlreadyPending,
    Overflow,
    InfoLost,
    Unknown,
}

impl SignalResult {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Ignored => "ignored",
            Self::AlreadyPending => "already_pending",
            Self::Overflow => "overflow",
            Self::InfoLost => "info_lost",
            Self::Unknown => "unknown",
        }
    }

    fn from_kernel(result: u32) -> Self {
        match result {
            0 => Self::Delivered,
            1 => Self::Ignored,
            2 => Self::AlreadyPending,
            3 => Self::Overflow,
            4 => Self::InfoLost,
            _ => Self::Unknown,
        }
    }
}

/// Records the kernel could not write because the ring buffer was full.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lost {
    /// Newly lost since the previous report.
    pub count: u64,
    /// Lost since the probes were attached.
    pub total: u64,
    pub exec: u64,
    pub exit: u64,
    pub fork: u64,
    pub signal: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Exec(Exec),
    Exit(Exit),
    Fork(Fork),
    Signal(Signal),
    Lost(Lost),
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short { kind: u32, len: usize, want: usize },
    UnknownKind(u32),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short { kind, len, want } => {
                write!(f, "record of kind {kind} is {len} bytes, expected {want}")
            }
            DecodeError::UnknownKind(kind) => write!(f, "unknown record kind {kind}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            kind,
            len: bytes.len(),
            want: size_of::<T>(),
        });
    }
    // SAFETY: the length is checked and every T here is plain repr(C) data
    // for which any bit pattern is valid.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

impl Event {
    /// Decodes one ring buffer entry.
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        let header: Header = read(bytes, 0)?;
        Ok(match header.kind {
            kind::EXEC => {
                let r: ExecRecord = read(bytes, header.kind)?;
                Event::Exec(Exec {
                    time_ns: header.time_ns,
                    process: Who::from_actor(&r.actor),
                    ppid: r.parent.tgid,
                    parent: ProcessKey::from_task(&r.parent),
                    filename: c_string(&r.filename),
                    filename_truncated: header.flags & flag::FILENAME_TRUNCATED != 0,
                    args: split_args(&r.args[..(r.args_len as usize).min(r.args.len())]),
                    args_truncated: header.flags & flag::ARGS_TRUNCATED != 0,
                    guard_stopped: header.flags & flag::GUARD_STOPPED != 0,
                })
            }
            kind::EXIT => {
                let r: ExitRecord = read(bytes, header.kind)?;
                let (exit_code, signal, core_dumped) = split_wait_status(r.status);
                Event::Exit(Exit {
                    time_ns: header.time_ns,
                    pid: r.task.tgid,
                    key: ProcessKey::from_task(&r.task),
                    ppid: r.parent.tgid,
                    comm: c_string(&r.comm),
                    exit_code,
                    signal,
                    core_dumped,
                })
            }
            kind::FORK => {
                let r: ForkRecord = read(bytes, header.kind)?;
                Event::Fork(Fork {
                    time_ns: header.time_ns,
                    parent: Who::from_actor(&r.parent),
                    child_pid: r.child.tgid,
                    child: ProcessKey::from_task(&r.child),
                })
            }
            kind::SIGNAL => {
                let r: SignalRecord = read(bytes, header.kind)?;
                Event::Signal(Signal {
                    time_ns: header.time_ns,
                    signal: r.signal,
                    signal_name: signal_name(r.signal),
                    sender: Who::from_actor(&r.sender),
                    target: Target {
                        pid: r.target.tgid,
                        tid: r.target.pid,
                        key: ProcessKey::from_task(&r.target),
                        comm: c_string(&r.target_comm),
                    },
                    result: SignalResult::from_kernel(r.result),
                })
            }
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }

    pub fn time_ns(&self) -> Option<u64> {
        match self {
            Event::Exec(e) => Some(e.time_ns),
            Event::Exit(e) => Some(e.time_ns),
            Event::Fork(e) => Some(e.time_ns),
            Event::Signal(e) => Some(e.time_ns),
            Event::Lost(_) => None,
        }
    }
}

/// (exit code, terminating signal, core dumped) of a wait status.
pub fn split_wait_status(status: u32) -> (Option<u8>, Option<u8>, bool) {
    let signal = (status & 0x7f) as u8;
    if signal == 0 {
        (Some(((status >> 8) & 0xff) as u8), None, false)
    } else {
        (None, Some(signal), status & 0x80 != 0)
    }
}

/// NUL-separated arguments as a list; a trailing NUL ends the last one.
pub fn split_args(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn login_id(raw: u32) -> Option<u32> {
    (raw != NO_LOGINUID).then_some(raw)
}

/// The bytes up to the first NUL, as text.
pub fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The conventional name of a signal number: "SIGTERM", or "SIGRT34" for a
/// real-time signal.
pub fn signal_name(signal: u32) -> String {
    i32::try_from(signal)
        .ok()
        .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|| format!("SIGRT{signal}"))
}
