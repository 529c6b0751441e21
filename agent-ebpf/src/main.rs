//! stopguard's kernel programs: four BTF-typed tracepoints that copy
//! fixed-size records into one ring buffer, and a task iterator the agent
//! runs once at its start. No policy lives here beyond one guard-map
//! lookup at exec, made only for names the name filter lets through;
//! userspace does the rest.
#![no_std]
#![no_main]

use agent_common::{
    ARGS_LEN, COMM_LEN, Capture, ExecRecord, ExitRecord, ForkRecord, Header, LOST_SLOTS, PATH_LEN,
    SignalRecord, TASK_KERNEL, Task, TaskRecord, WakePolicy, filter, flag, kind, notable,
};
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, seq_file},
    helpers::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str_bytes, bpf_send_signal, generated},
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;

mod task;
use task::{
    actor, cgroup_id, comm_raw, current_actor, ids, leader, load, off, offsets, ppid, task,
};

const SIGSTOP: u32 = 19;
const SIGCHLD: u32 = 17;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Records lost because the ring buffer was full, per kind, per CPU; the
/// upper half is userspace's (see `LOST_SLOTS`).
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

/// Bit N set: signal N is worth a record. Filled by userspace.
#[map]
static SIGNAL_INTEREST: Array<u64> = Array::with_max_entries(1, 0);

/// Guarded image names (comm, NUL-padded): an exec of one is stopped at once.
#[map]
static GUARD: HashMap<[u8; COMM_LEN], u32> = HashMap::with_max_entries(1024, 0);

/// Image names (comm, NUL-padded) that matter at exec, with `notable` bits:
/// control commands, supervisors, interpreters, watched services. Filled by
/// userspace.
#[map]
static NOTABLE: HashMap<[u8; COMM_LEN], u32> = HashMap::with_max_entries(1024, 0);

/// A bit for each name in GUARD or NOTABLE (see `filter`): a clear bit
/// spares an exec both lookups. Filled by userspace.
#[map]
static NAME_FILTER: Array<[u64; filter::WORDS]> = Array::with_max_entries(1, 0);

#[unsafe(no_mangle)]
static WAKE: WakePolicy = WakePolicy { batch_bytes: 0 };

#[unsafe(no_mangle)]
static CAPTURE: Capture = Capture {
    all_args: 0,
    _pad: 0,
};

#[inline(always)]
fn header(kind: u32, flags: u32) -> Header {
    Header {
        kind,
        flags,
        time_ns: unsafe { bpf_ktime_get_boot_ns() },
    }
}

#[inline(always)]
fn count_lost(kind: u32) {
    if let Some(counter) = LOST.get_ptr_mut(kind) {
        unsafe { *counter += 1 };
    }
}

/// Submit flags: wake the reader only for urgent records or once a batch waits.
#[inline(always)]
fn wake_flags(urgent: bool) -> u64 {
    let batch = unsafe { core::ptr::read_volatile(&WAKE) }.batch_bytes;
    if urgent || EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= batch {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sg_exec(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm);
    // p is current.
    let current: *const u8 = ctx.arg(0);
    let bprm: *const u8 = ctx.arg(2);
    match unsafe { try_exec(&ctx, current, bprm) } {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

unsafe fn try_exec(
    ctx: &BtfTracePointContext,
    current: *const u8,
    bprm: *const u8,
) -> Result<(), i32> {
    let actor = unsafe { actor(current) };
    let named = filtered(&actor.comm);
    let mut flags = 0;
    // The one decision taken in the kernel: a guarded name is stopped before
    // its first user-space instruction. Userspace decides what happens next.
    if named && unsafe { GUARD.get(actor.comm) }.is_some() {
        let err = unsafe { bpf_send_signal(SIGSTOP) };
        if err == 0 {
            flags |= flag::GUARD_STOPPED;
        } else {
            warn!(
                ctx,
                "guard: SIGSTOP to pid {} failed: {}", actor.task.tgid, err
            );
        }
    }
    let Some(mut entry) = EVENTS.reserve::<ExecRecord>(0) else {
        count_lost(kind::EXEC);
        return Ok(());
    };
    let record = entry.as_mut_ptr();
    unsafe {
        (*record).actor = actor;
        (*record).ppid = ppid(current);
        let filename: *const u8 = load(bprm, off(|o| &o.bprm_filename));
        match bpf_probe_read_kernel_str_bytes(filename, &mut (*record).filename) {
            Ok(name) if name.len() >= PATH_LEN - 1 => flags |= flag::FILENAME_TRUNCATED,
            Ok(_) => {}
            Err(_) => (*record).filename[0] = 0,
        }
        (*record).args_len = 0;
        (*record).cgroup = cgroup_id(current);
        let notable = if named {
            NOTABLE.get(actor.comm).copied().unwrap_or(0)
        } else {
            0
        };
        if notable & notable::ARGS != 0 || core::ptr::read_volatile(&CAPTURE).all_args != 0 {
            flags |= read_args(current, &mut *record);
        } else {
            flags |= flag::ARGS_UNREAD;
        }
        (*record).header = header(kind::EXEC, flags);
        let urgent = flags & flag::GUARD_STOPPED != 0 || notable & notable::WAKE != 0;
        entry.submit(wake_flags(urgent));
    }
    Ok(())
}

/// Whether `comm` may be in GUARD or NOTABLE: its bit in the name filter
/// is set (or the filter cannot be read).
#[inline(always)]
fn filtered(comm: &[u8; COMM_LEN]) -> bool {
    let (word, bit) = filter::slot_of(comm);
    match NAME_FILTER.get(0) {
        Some(words) => words[word & (filter::WORDS - 1)] & bit != 0,
        None => true,
    }
}

/// The new image's argv into `record`, from its stack where the kernel has
/// just written it (so it is in memory, unlike argv read at execve entry);
/// the flags it earns.
#[inline(always)]
unsafe fn read_args(current: *const u8, record: &mut ExecRecord) -> u32 {
    let mut flags = 0;
    unsafe {
        let mm: *const u8 = load(current, off(|o| &o.task_mm));
        if mm.is_null() {
            return flags;
        }
        let arg_start = off(|o| &o.mm_arg_start);
        let start: u64 = load(mm, arg_start);
        let end: u64 = load(mm, arg_start + 8);
        let mut len = end.saturating_sub(start) as usize;
        if len > ARGS_LEN {
            len = ARGS_LEN;
            flags |= flag::ARGS_TRUNCATED;
        }
        // Only the arguments' own bytes: a fixed-size read could run off
        // the end of a small stack and fail.
        if len > 0
            && generated::bpf_probe_read_user(
                record.args.as_mut_ptr().cast(),
                len as u32,
                start as *const core::ffi::c_void,
            ) == 0
        {
            record.args_len = len as u32;
        }
    }
    flags
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sg_exit(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p, ...)
    let task: *const u8 = ctx.arg(0);
    match unsafe { try_exit(task) } {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

unsafe fn try_exit(task: *const u8) -> Result<(), i32> {
    unsafe {
        // Only the last thread out is the process's exit: by the time this
        // tracepoint fires, do_exit has already dropped signal->live.
        let signal: *const u8 = load(task, off(|o| &o.task_signal));
        let live: i32 = load(signal, off(|o| &o.signal_live));
        if live != 0 {
            return Ok(());
        }
        let Some(mut entry) = EVENTS.reserve::<ExitRecord>(0) else {
            count_lost(kind::EXIT);
            return Ok(());
        };
        let record = entry.as_mut_ptr();
        let (pid, tgid) = ids(task);
        // The last thread out need not be the main one: name the process
        // by its leader's comm, not by the thread's.
        let leader = leader(task, pid, tgid);
        (*record).task = Task {
            pid,
            tgid,
            start_ns: load(leader, off(|o| &o.task_start_boottime)),
        };
        (*record).ppid = ppid(task);
        (*record).status = load(task, off(|o| &o.task_exit_code));
        (*record).comm = core::mem::transmute::<[u64; 2], [u8; COMM_LEN]>(comm_raw(leader));
        (*record).header = header(kind::EXIT, 0);
        entry.submit(wake_flags(false));
    }
    Ok(())
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sg_fork(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *parent, struct task_struct *child);
    // parent is current.
    let parent: *const u8 = ctx.arg(0);
    let child: *const u8 = ctx.arg(1);
    match unsafe { try_fork(parent, child) } {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

unsafe fn try_fork(parent: *const u8, child: *const u8) -> Result<(), i32> {
    unsafe {
        let (pid, tgid) = ids(child);
        if pid != tgid {
            return Ok(()); // a new thread, not a new process
        }
        let Some(mut entry) = EVENTS.reserve::<ForkRecord>(0) else {
            count_lost(kind::FORK);
            return Ok(());
        };
        let child = task(child, pid, tgid);
        entry.write(ForkRecord {
            // The child's start time is the fork's, read by the kernel a
            // moment ago on the records' clock: no clock read of our own.
            header: Header {
                kind: kind::FORK,
                flags: 0,
                time_ns: child.start_ns,
            },
            parent: actor(parent),
            child,
        });
        entry.submit(wake_flags(false));
    }
    Ok(())
}

#[btf_tracepoint(function = "signal_generate")]
pub fn sg_signal(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(int sig, struct kernel_siginfo *info, struct task_struct *task,
    //          int group, int result)
    let signal: u64 = ctx.arg(0);
    let target: *const u8 = ctx.arg(2);
    let result: u64 = ctx.arg(4);
    match unsafe { try_signal(signal as u32, target, result as u32) } {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

unsafe fn try_signal(signal: u32, target: *const u8, result: u32) -> Result<(), i32> {
    // SIGCHLD, one per exit, is never worth a record: out before any load.
    if signal == SIGCHLD || signal == 0 || signal >= 64 {
        return Ok(());
    }
    let interest = SIGNAL_INTEREST.get(0).copied().unwrap_or(0);
    if interest & (1u64 << signal) == 0 {
        return Ok(());
    }
    unsafe {
        // The sender is current, which no argument gives: helpers read it.
        let sender = current_actor(&offsets())?;
        let Some(mut entry) = EVENTS.reserve::<SignalRecord>(0) else {
            count_lost(kind::SIGNAL);
            return Ok(());
        };
        let record = entry.as_mut_ptr();
        (*record).sender = sender;
        let (pid, tgid) = ids(target);
        (*record).target = task(target, pid, tgid);
        (*record).target_comm = core::mem::transmute::<[u64; 2], [u8; COMM_LEN]>(comm_raw(target));
        (*record).signal = signal;
        (*record).result = result;
        (*record).header = header(kind::SIGNAL, 0);
        // Signals are rare and are what an operator stop looks like: no batching.
        entry.submit(wake_flags(true));
    }
    Ok(())
}

/// Every process, for the agent's start: the task iterator calls this for
/// each task (thread), then once with none. One record per process, as
/// /proc/PID/stat, loginuid and status would tell it, at a fraction of
/// the cost of formatting and parsing those files.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub fn sg_tasks(ctx: *const u64) -> i32 {
    // struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; }
    unsafe {
        let meta = core::ptr::read_volatile(ctx) as *const u8;
        let task = core::ptr::read_volatile(ctx.add(1)) as *const u8;
        if task.is_null() {
            return 0;
        }
        let (pid, tgid) = ids(task);
        if pid != tgid {
            return 0;
        }
        let flags: u32 = load(task, off(|o| &o.task_flags));
        let record = TaskRecord {
            actor: actor(task),
            ppid: ppid(task),
            flags: flags & TASK_KERNEL,
        };
        // meta->seq, the first member.
        let seq: *mut seq_file = load(meta, 0);
        generated::bpf_seq_write(
            seq,
            (&record as *const TaskRecord).cast(),
            core::mem::size_of::<TaskRecord>() as u32,
        );
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The license the kernel reads to allow GPL-only helpers. A build with
/// STOPGUARD_EBPF_VARIANT set says "GPL" instead: both are GPL-compatible,
/// and that build's kernel object differs in its bytes from the default's,
/// which is what an upgrade to a new kernel object looks like.
const LICENSE_TEXT: &[u8] = if option_env!("STOPGUARD_EBPF_VARIANT").is_some() {
    b"GPL\0"
} else {
    b"Dual MIT/GPL\0"
};

// As long as its text: aya takes the section as a C string whose only NUL
// ends it, so padding would be refused.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; LICENSE_TEXT.len()] = *LICENSE_TEXT.first_chunk().unwrap();
