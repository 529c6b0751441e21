//! Typed lifecycle events: the user view of the kernel records in
//! `agent_common`, decoded from the bytes of one ring buffer entry.

use std::{mem::size_of, sync::Arc};

use agent_common::{
    Actor, ExecRecord, ExitRecord, ForkRecord, Header, NO_LOGINUID, SignalRecord, Task, flag, kind,
};
use serde::{Deserialize, Serialize};

/// Clock ticks per second of /proc's start times (USER_HZ; 100 on Linux).
pub const USER_HZ: u64 = 100;

/// Names a process for its whole life: pid reuse gives a new `start_ticks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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
    pub filename: String,
    pub filename_truncated: bool,
    /// argv of the new image, as far as it fit in the record; shared with
    /// the process table's entry.
    pub args: Arc<[String]>,
    pub args_truncated: bool,
    /// The kernel did not read its arguments (`args` is empty): its name
    /// is not one whose arguments matter.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub args_unread: bool,
    /// The kernel stopped it at exec because its name is guarded.
    pub guard_stopped: bool,
    /// Its cgroup's id (v2).
    #[serde(skip)]
    pub cgroup: u64,
    /// Its systemd unit, from its cgroup: not in the kernel record, found
    /// by the monitor as the record is handled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
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
    /// `total` by kind, each kind a field of its own.
    #[serde(flatten)]
    pub by_kind: PerKind<u64>,
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

/// The kinds of record the kernel writes. Counts per kind ([`PerKind`])
/// follow [`RecordKind::ALL`]; a new kind does not build until it has a
/// name, a wire value and a decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Exec,
    Exit,
    Fork,
    Signal,
}

impl RecordKind {
    /// Every kind, in declaration order.
    pub const ALL: [RecordKind; 4] = [
        RecordKind::Exec,
        RecordKind::Exit,
        RecordKind::Fork,
        RecordKind::Signal,
    ];

    /// Its name in output: JSON fields, log lines, metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            RecordKind::Exec => "exec",
            RecordKind::Exit => "exit",
            RecordKind::Fork => "fork",
            RecordKind::Signal => "signal",
        }
    }

    /// Its value in a record's header, shared with the kernel programs.
    pub const fn wire(self) -> u32 {
        match self {
            RecordKind::Exec => kind::EXEC,
            RecordKind::Exit => kind::EXIT,
            RecordKind::Fork => kind::FORK,
            RecordKind::Signal => kind::SIGNAL,
        }
    }

    fn from_wire(wire: u32) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.wire() == wire)
    }
}

// Fails the build when `ALL` and the kinds disagree: each kind in its place,
// and one for every wire kind the kernel counts (1 to kind::COUNT - 1).
const _: () = {
    assert!(RecordKind::ALL.len() == kind::COUNT as usize - 1);
    let mut i = 0;
    while i < RecordKind::ALL.len() {
        assert!(RecordKind::ALL[i] as usize == i);
        assert!(RecordKind::ALL[i].wire() < kind::COUNT);
        i += 1;
    }
};

/// One value per record kind, as in [`RecordKind::ALL`]. Serialized as one
/// field per kind, named by [`RecordKind::name`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerKind<T>([T; RecordKind::ALL.len()]);

impl<T> PerKind<T> {
    pub fn from_fn(value: impl FnMut(RecordKind) -> T) -> PerKind<T> {
        PerKind(RecordKind::ALL.map(value))
    }

    pub fn iter(&self) -> impl Iterator<Item = (RecordKind, &T)> {
        RecordKind::ALL.into_iter().zip(&self.0)
    }
}

impl PerKind<u64> {
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl<T> std::ops::Index<RecordKind> for PerKind<T> {
    type Output = T;

    fn index(&self, kind: RecordKind) -> &T {
        &self.0[kind as usize]
    }
}

impl<T> std::ops::IndexMut<RecordKind> for PerKind<T> {
    fn index_mut(&mut self, kind: RecordKind) -> &mut T {
        &mut self.0[kind as usize]
    }
}

impl<T: Serialize> Serialize for PerKind<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter().map(|(kind, value)| (kind.name(), value)))
    }
}

impl<'de, T: serde::Deserialize<'de> + Default> serde::Deserialize<'de> for PerKind<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut fields = std::collections::BTreeMap::<String, T>::deserialize(deserializer)?;
        Ok(PerKind::from_fn(|kind| {
            fields.remove(kind.name()).unwrap_or_default()
        }))
    }
}

/// "exec 1, exit 2, fork 3, signal 4"
impl<T: std::fmt::Display> std::fmt::Display for PerKind<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (kind, value)) in self.iter().enumerate() {
            let comma = if i == 0 { "" } else { ", " };
            write!(f, "{comma}{} {value}", kind.name())?;
        }
        Ok(())
    }
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
        let Some(record_kind) = RecordKind::from_wire(header.kind) else {
            return Err(DecodeError::UnknownKind(header.kind));
        };
        Ok(match record_kind {
            RecordKind::Exec => {
                let r: ExecRecord = read(bytes, header.kind)?;
                Event::Exec(Exec {
                    time_ns: header.time_ns,
                    process: Who::from_actor(&r.actor),
                    ppid: r.ppid,
                    filename: c_string(&r.filename),
                    filename_truncated: header.flags & flag::FILENAME_TRUNCATED != 0,
                    args: split_args(&r.args[..(r.args_len as usize).min(r.args.len())]).into(),
                    args_truncated: header.flags & flag::ARGS_TRUNCATED != 0,
                    args_unread: header.flags & flag::ARGS_UNREAD != 0,
                    guard_stopped: header.flags & flag::GUARD_STOPPED != 0,
                    cgroup: r.cgroup,
                    unit: None,
                })
            }
            RecordKind::Exit => {
                let r: ExitRecord = read(bytes, header.kind)?;
                let (exit_code, signal, core_dumped) = split_wait_status(r.status);
                Event::Exit(Exit {
                    time_ns: header.time_ns,
                    pid: r.task.tgid,
                    key: ProcessKey::from_task(&r.task),
                    ppid: r.ppid,
                    comm: c_string(&r.comm),
                    exit_code,
                    signal,
                    core_dumped,
                })
            }
            RecordKind::Fork => {
                let r: ForkRecord = read(bytes, header.kind)?;
                Event::Fork(Fork {
                    time_ns: header.time_ns,
                    parent: Who::from_actor(&r.parent),
                    child_pid: r.child.tgid,
                    child: ProcessKey::from_task(&r.child),
                })
            }
            RecordKind::Signal => {
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
        })
    }

    /// The kind of record it came from; none for a loss report.
    pub fn kind(&self) -> Option<RecordKind> {
        match self {
            Event::Exec(_) => Some(RecordKind::Exec),
            Event::Exit(_) => Some(RecordKind::Exit),
            Event::Fork(_) => Some(RecordKind::Fork),
            Event::Signal(_) => Some(RecordKind::Signal),
            Event::Lost(_) => None,
        }
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

#[cfg(test)]
mod tests {
    use agent_common::{ARGS_LEN, COMM_LEN, PATH_LEN};

    use super::*;

    fn bytes_of<T>(record: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain repr(C) value.
        unsafe { std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn fixed<const N: usize>(text: &[u8]) -> [u8; N] {
        let mut out = [0u8; N];
        out[..text.len()].copy_from_slice(text);
        out
    }

    fn actor(tgid: u32, comm: &[u8], loginuid: u32) -> Actor {
        Actor {
            task: Task {
                pid: tgid,
                tgid,
                start_ns: 1_234_560_000_000,
            },
            uid: 0,
            loginuid,
            sessionid: NO_LOGINUID,
            _pad: 0,
            comm: fixed::<COMM_LEN>(comm),
        }
    }

    #[test]
    fn exec_record_decodes_with_args_and_flags() {
        let args = b"pg_ctl\0stop\0-D\0/srv/pg\0";
        let record = ExecRecord {
            header: Header {
                kind: kind::EXEC,
                flags: flag::GUARD_STOPPED,
                time_ns: 42,
            },
            actor: actor(700, b"pg_ctl", 1000),
            ppid: 650,
            args_len: args.len() as u32,
            cgroup: 77,
            filename: fixed::<PATH_LEN>(b"/usr/lib/postgresql/15/bin/pg_ctl"),
            args: fixed::<ARGS_LEN>(args),
        };
        let Event::Exec(exec) = Event::decode(&bytes_of(&record)).unwrap() else {
            panic!("not an exec");
        };
        assert_eq!(exec.time_ns, 42);
        assert_eq!(exec.process.pid, 700);
        assert_eq!(exec.process.comm, "pg_ctl");
        assert_eq!(exec.process.loginuid, Some(1000));
        assert_eq!(exec.process.sessionid, None);
        assert_eq!(
            exec.process.key,
            ProcessKey {
                pid: 700,
                start_ticks: 123_456
            }
        );
        assert_eq!(exec.ppid, 650);
        assert_eq!(exec.filename, "/usr/lib/postgresql/15/bin/pg_ctl");
        assert_eq!(*exec.args, ["pg_ctl", "stop", "-D", "/srv/pg"]);
        assert!(exec.guard_stopped);
        assert!(!exec.filename_truncated && !exec.args_truncated);
    }

    #[test]
    fn exit_record_splits_code_and_signal() {
        let mut record = ExitRecord {
            header: Header {
                kind: kind::EXIT,
                flags: 0,
                time_ns: 1,
            },
            task: Task {
                pid: 9,
                tgid: 9,
                start_ns: 0,
            },
            ppid: 1,
            status: 3 << 8,
            comm: fixed::<COMM_LEN>(b"sh"),
        };
        let Event::Exit(exit) = Event::decode(&bytes_of(&record)).unwrap() else {
            panic!("not an exit");
        };
        assert_eq!(
            (exit.exit_code, exit.signal, exit.core_dumped),
            (Some(3), None, false)
        );
        record.status = 0x80 | 11;
        let Event::Exit(exit) = Event::decode(&bytes_of(&record)).unwrap() else {
            panic!("not an exit");
        };
        assert_eq!(
            (exit.exit_code, exit.signal, exit.core_dumped),
            (None, Some(11), true)
        );
    }

    #[test]
    fn signal_record_names_sender_target_and_result() {
        let record = SignalRecord {
            header: Header {
                kind: kind::SIGNAL,
                flags: 0,
                time_ns: 5,
            },
            sender: actor(100, b"bash", 1000),
            target: Task {
                pid: 201,
                tgid: 200,
                start_ns: 0,
            },
            target_comm: fixed::<COMM_LEN>(b"postgres"),
            signal: 15,
            result: 2,
        };
        let Event::Signal(signal) = Event::decode(&bytes_of(&record)).unwrap() else {
            panic!("not a signal");
        };
        assert_eq!(signal.signal_name, "SIGTERM");
        assert_eq!(signal.sender.loginuid, Some(1000));
        assert_eq!((signal.target.pid, signal.target.tid), (200, 201));
        assert_eq!(signal.target.comm, "postgres");
        assert_eq!(signal.result, SignalResult::AlreadyPending);
        let json = serde_json::to_value(Event::Signal(signal)).unwrap();
        assert_eq!(json["kind"], "signal");
        assert_eq!(json["result"], "already_pending");
        assert_eq!(json["sender"]["comm"], "bash");
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let header = Header {
            kind: kind::EXEC,
            flags: 0,
            time_ns: 0,
        };
        let bytes = bytes_of(&header);
        assert_eq!(
            Event::decode(&bytes),
            Err(DecodeError::Short {
                kind: kind::EXEC,
                len: bytes.len(),
                want: size_of::<ExecRecord>()
            })
        );
        let unknown = Header { kind: 99, ..header };
        assert_eq!(
            Event::decode(&bytes_of(&unknown)),
            Err(DecodeError::UnknownKind(99))
        );
        assert!(matches!(
            Event::decode(&[1, 2]),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn lost_lines_keep_their_fields() {
        let lost = Event::Lost(Lost {
            count: 3,
            total: 10,
            by_kind: PerKind::from_fn(|k| k.wire().into()),
        });
        assert_eq!(
            serde_json::to_string(&lost).unwrap(),
            r#"{"kind":"lost","count":3,"total":10,"exec":1,"exit":2,"fork":3,"signal":4}"#
        );
    }

    #[test]
    fn record_kinds_by_wire_value() {
        for kind in RecordKind::ALL {
            assert_eq!(RecordKind::from_wire(kind.wire()), Some(kind));
        }
        assert_eq!(RecordKind::from_wire(0), None);
        assert_eq!(RecordKind::from_wire(agent_common::kind::COUNT), None);
        let mut counts = PerKind::<u64>::default();
        counts[RecordKind::Fork] += 2;
        assert_eq!(counts.to_string(), "exec 0, exit 0, fork 2, signal 0");
        assert_eq!(counts.total(), 2);
    }

    #[test]
    fn names_and_args() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(34), "SIGRT34");
        assert_eq!(c_string(b"abc\0def"), "abc");
        assert_eq!(c_string(b"full"), "full");
        assert_eq!(split_args(b""), Vec::<String>::new());
        assert_eq!(split_args(b"a\0\0b\0"), ["a", "", "b"]);
        assert_eq!(split_args(b"cut-sho"), ["cut-sho"]);
    }
}
