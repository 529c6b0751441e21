//! Records shared by stopguard's kernel programs and its agent.
//!
//! Every record the kernel writes to the ring buffer starts with a [`Header`];
//! its `kind` says which of the fixed-size records follows. Both sides compile
//! these definitions, so a layout exists exactly once.
#![no_std]

/// Length of a task's `comm` (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;
/// Bytes of the exec'd filename copied into an exec record, NUL included.
pub const PATH_LEN: usize = 256;
/// Bytes of the new image's arguments copied into an exec record.
pub const ARGS_LEN: usize = 256;

/// Record kinds, the first field of every [`Header`].
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const EXIT: u32 = 2;
    pub const FORK: u32 = 3;
    pub const SIGNAL: u32 = 4;
    /// One past the largest kind: the size of per-kind counter maps.
    pub const COUNT: u32 = 5;
}

/// The version of everything an agent reads from kernel programs another
/// agent loaded: the records, the map keys and values, the slots of the
/// lost-record counters. Bump it on any change to those; pinned programs
/// of another layout are never read as this one's.
pub const LAYOUT: u32 = 2;

/// The lost-record counters: entry K (a kind) counts records of kind K the
/// kernel could not write; entry `COUNT + K`, written by userspace on CPU
/// 0's slot only, how many of those an agent has reported. With the map
/// pinned, what was lost while no agent ran is the difference.
pub const LOST_SLOTS: u32 = 2 * kind::COUNT;

/// Bits of [`Header::flags`].
pub mod flag {
    /// The exec'd name was in the guard map and the kernel sent SIGSTOP.
    pub const GUARD_STOPPED: u32 = 1 << 0;
    /// The filename did not fit in [`PATH_LEN`](crate::PATH_LEN) and was cut.
    pub const FILENAME_TRUNCATED: u32 = 1 << 1;
    /// The arguments did not fit in [`ARGS_LEN`](crate::ARGS_LEN) and were cut.
    pub const ARGS_TRUNCATED: u32 = 1 << 2;
    /// The arguments were not read: the new image's name is not notable
    /// for its arguments, and not every exec's are read.
    pub const ARGS_UNREAD: u32 = 1 << 3;
}

/// Bits of the `NOTABLE` map's values: what an exec of that name calls for.
pub mod notable {
    /// Read its arguments.
    pub const ARGS: u32 = 1 << 0;
    /// Wake the reader at once: a watched service starting.
    pub const WAKE: u32 = 1 << 1;
}

/// The filter in front of the exec program's two lookups: one bit per
/// hash of a name in `NOTABLE` or `GUARD`, so that the exec of any other
/// name (nearly all of them) costs one array load, not two hash lookups.
/// A set bit may be another name's: the lookups decide.
pub mod filter {
    use crate::COMM_LEN;

    /// Words of the `NAME_FILTER` map's one value: 4096 bits.
    pub const WORDS: usize = 64;

    /// The word and the bit of a NUL-padded comm, from its two
    /// little-endian halves.
    #[inline(always)]
    pub fn slot(low: u64, high: u64) -> (usize, u64) {
        let hash = (low ^ high.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let bit = (hash >> 52) as usize; // 12 bits
        (bit >> 6, 1 << (bit & 63))
    }

    /// [`slot`] of a comm as bytes.
    pub fn slot_of(comm: &[u8; COMM_LEN]) -> (usize, u64) {
        let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = *comm;
        slot(
            u64::from_le_bytes([a, b, c, d, e, f, g, h]),
            u64::from_le_bytes([i, j, k, l, m, n, o, p]),
        )
    }
}

/// `loginuid` of a task that never logged in ((uid_t)-1).
pub const NO_LOGINUID: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub kind: u32,
    pub flags: u32,
    /// Time of the event in ns since boot (CLOCK_BOOTTIME).
    pub time_ns: u64,
}

/// A process as the kernel sees it at the event: `pid` is the thread id, `tgid`
/// the process id, `start_ns` the process's (group leader's) start time in ns
/// since boot, which with `tgid` names the process even after the pid is reused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tgid: u32,
    pub start_ns: u64,
}

/// A credentialed actor: the task that exec'd, forked or sent a signal.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    pub task: Task,
    pub uid: u32,
    /// Audit login uid; [`NO_LOGINUID`] when unset. Survives sudo and su.
    pub loginuid: u32,
    pub sessionid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// A new program image: `sched_process_exec`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecRecord {
    pub header: Header,
    /// The process after the exec; `comm` is the new image's.
    pub actor: Actor,
    /// The parent (`real_parent`) at the moment of the exec. Its start time
    /// is not needed: in ring order its exit, if any, comes after this.
    pub ppid: u32,
    /// Bytes of `args` that hold arguments.
    pub args_len: u32,
    /// The id of its cgroup (v2; on a legacy-only host, the root's), which
    /// with the cgroup's path read once names its systemd unit.
    pub cgroup: u64,
    /// The path given to execve, NUL-terminated within the array.
    pub filename: [u8; PATH_LEN],
    /// argv as the new image sees it: NUL-separated, read from its stack at
    /// the exec, where the kernel has just written it (so it is in memory,
    /// unlike argv read at execve entry).
    pub args: [u8; ARGS_LEN],
}

/// A whole-process exit: `sched_process_exit` of the last thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitRecord {
    pub header: Header,
    pub task: Task,
    pub ppid: u32,
    /// The wait status: exit code in bits 8..16, terminating signal in bits 0..7.
    pub status: u32,
    pub comm: [u8; COMM_LEN],
}

/// A new process (not a thread): `sched_process_fork`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkRecord {
    pub header: Header,
    pub parent: Actor,
    pub child: Task,
}

/// A signal generated for a task: `signal_generate`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalRecord {
    pub header: Header,
    /// The task running when the signal was generated: the sender for kill(2)
    /// and friends.
    pub sender: Actor,
    pub target: Task,
    pub target_comm: [u8; COMM_LEN],
    pub signal: u32,
    /// The kernel's `TRACE_SIGNAL_*` result: 0 delivered, 1 ignored,
    /// 2 already pending, 3 overflow, 4 info lost.
    pub result: u32,
}

/// A process as the task iterator shows it, read once at the agent's
/// start in place of /proc/PID/stat, loginuid and status: `actor` as an
/// exec record holds it (its uid the real one), with its parent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    pub actor: Actor,
    /// The parent's (`real_parent`) process id.
    pub ppid: u32,
    /// [`TASK_KERNEL`] for a kernel thread.
    pub flags: u32,
}

/// `PF_KTHREAD`, as a [`TaskRecord`]'s flags keep it.
pub const TASK_KERNEL: u32 = 0x0020_0000;

/// Kernel struct field offsets, read from BTF by the agent at start and set as
/// a global of the kernel programs before they load. Rust eBPF has no CO-RE,
/// so this is how the programs stay correct across kernel builds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// `tgid` must directly follow `pid`: its offset is this one's plus 4.
    pub task_pid: u32,
    pub task_real_parent: u32,
    pub task_group_leader: u32,
    pub task_start_boottime: u32,
    /// `sessionid` must directly follow `loginuid`: its offset is this
    /// one's plus 4.
    pub task_loginuid: u32,
    pub task_exit_code: u32,
    /// `task->flags`, whose `PF_KTHREAD` marks a kernel thread.
    pub task_flags: u32,
    pub task_comm: u32,
    pub task_signal: u32,
    pub task_mm: u32,
    pub signal_live: u32,
    pub bprm_filename: u32,
    /// `arg_end` must directly follow `arg_start`: its offset is this one's
    /// plus 8.
    pub mm_arg_start: u32,
    /// `task->cred->uid`: what `bpf_get_current_uid_gid` reads, without
    /// the helper call.
    pub task_cred: u32,
    pub cred_uid: u32,
    /// `task->cgroups->dfl_cgrp->kn->id`: what `bpf_get_current_cgroup_id`
    /// reads, without the helper call.
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
}

/// Ring buffer wake-up policy, a global of the kernel programs: records are
/// submitted without waking the reader until this many bytes wait, so a storm
/// costs one wake-up per batch, not one per record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WakePolicy {
    pub batch_bytes: u64,
}

/// What the exec program reads, a global of the kernel programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    /// Non-zero: every exec's arguments are read (`trace`); zero: only those
    /// of names the `NOTABLE` map says (`run`).
    pub all_args: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C) plain data with explicit padding.
    unsafe impl aya::Pod for Offsets {}
    unsafe impl aya::Pod for WakePolicy {}
    unsafe impl aya::Pod for Capture {}
}

/// Where `cargo xtask build-ebpf` puts the kernel programs, from the
/// workspace root; the agent embeds the object from there.
pub const OBJECT_PATH: &str = "target/ebpf/bpfel-unknown-none/release/stopguard";

/// Now, in the records' clock: ns since boot (CLOCK_BOOTTIME), which counts
/// suspended time too, as the kernel's `bpf_ktime_get_boot_ns` does.
#[cfg(feature = "user")]
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Map and program names, shared so that neither side spells them twice.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const LOST: &str = "LOST";
    pub const SIGNAL_INTEREST: &str = "SIGNAL_INTEREST";
    pub const GUARD: &str = "GUARD";
    pub const NOTABLE: &str = "NOTABLE";
    pub const NAME_FILTER: &str = "NAME_FILTER";
    pub const CAPTURE: &str = "CAPTURE";
    pub const OFFSETS: &str = "OFFSETS";
    pub const WAKE: &str = "WAKE";
    /// (program, tracepoint) pairs. Program names stay short: the
    /// kernel keeps 15 bytes of them, and tools tell them apart by name.
    pub const PROGRAMS: [(&str, &str); 4] = [
        ("sg_exec", "sched_process_exec"),
        ("sg_exit", "sched_process_exit"),
        ("sg_fork", "sched_process_fork"),
        ("sg_signal", "signal_generate"),
    ];
    /// The task iterator: loaded, run and unloaded once, at the start.
    pub const TASKS: &str = "sg_tasks";
}
