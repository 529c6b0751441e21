//! stopguard's kernel programs: four raw tracepoints that copy fixed-size
//! records into one ring buffer. No policy lives here beyond one guard-map
//! lookup at exec; userspace does the rest.
#![no_std]
#![no_main]

use agent_common::{
    ARGS_LEN, Actor, COMM_LEN, Capture, ExecRecord, ExitRecord, ForkRecord, Header, LOST_SLOTS,
    Offsets, PATH_LEN, SignalRecord, Task, WakePolicy, flag, kind, notable,
};
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes,
        bpf_send_signal, generated,
    },
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use aya_log_ebpf::warn;

const SIGSTOP: u32 = 19;

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

#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets {
    task_pid: 0,
    task_real_parent: 0,
    task_group_leader: 0,
    task_start_boottime: 0,
    task_loginuid: 0,
    task_exit_code: 0,
    task_comm: 0,
    task_signal: 0,
    task_mm: 0,
    signal_live: 0,
    bprm_filename: 0,
    mm_arg_start: 0,
    task_cred: 0,
    cred_uid: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
};

#[unsafe(no_mangle)]
static WAKE: WakePolicy = WakePolicy { batch_bytes: 0 };

#[unsafe(no_mangle)]
static CAPTURE: Capture = Capture {
    all_args: 0,
    _pad: 0,
};

#[inline(always)]
fn offsets() -> Offsets {
    // The loader rewrites the global; read it through a volatile load so the
    // compiler does not fold the zeroes above into the code.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// A field of a kernel struct at a BTF-given offset.
#[inline(always)]
unsafe fn field<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel(base.add(offset as usize).cast::<T>()) }
}

/// A task's (pid, tgid): adjacent fields, one read.
#[inline(always)]
unsafe fn ids_of(task: *const u8, off: &Offsets) -> Result<(u32, u32), i32> {
    let ids: u64 = unsafe { field(task, off.task_pid)? };
    Ok((ids as u32, (ids >> 32) as u32))
}

/// The task with the start time of its process (its group leader's).
#[inline(always)]
unsafe fn task_with_ids(task: *const u8, pid: u32, tgid: u32, off: &Offsets) -> Result<Task, i32> {
    unsafe {
        let leader: *const u8 = if pid == tgid {
            task
        } else {
            field(task, off.task_group_leader)?
        };
        Ok(Task {
            pid,
            tgid,
            start_ns: field(leader, off.task_start_boottime)?,
        })
    }
}

#[inline(always)]
unsafe fn task_of(task: *const u8, off: &Offsets) -> Result<Task, i32> {
    unsafe {
        let (pid, tgid) = ids_of(task, off)?;
        task_with_ids(task, pid, tgid, off)
    }
}

#[inline(always)]
unsafe fn ppid_of(task: *const u8, off: &Offsets) -> u32 {
    unsafe {
        field::<*const u8>(task, off.task_real_parent)
            .and_then(|parent| ids_of(parent, off))
            .map(|(_, tgid)| tgid)
            .unwrap_or(0)
    }
}

/// The current task as an actor: its process, credentials and comm.
#[inline(always)]
unsafe fn current_actor(off: &Offsets) -> Result<(Actor, *const u8), i32> {
    unsafe {
        let current = bpf_get_current_task() as *const u8;
        let ids = bpf_get_current_pid_tgid();
        // loginuid and sessionid are adjacent: one read.
        let login: u64 = field(current, off.task_loginuid).unwrap_or(u64::MAX);
        let actor = Actor {
            task: task_with_ids(current, ids as u32, (ids >> 32) as u32, off)?,
            uid: bpf_get_current_uid_gid() as u32,
            loginuid: login as u32,
            sessionid: (login >> 32) as u32,
            _pad: 0,
            comm: bpf_get_current_comm()?,
        };
        Ok((actor, current))
    }
}

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

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sg_exec(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
    let bprm: *const u8 = ctx.arg(2);
    match unsafe { try_exec(&ctx, bprm) } {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

unsafe fn try_exec(ctx: &RawTracePointContext, bprm: *const u8) -> Result<(), i32> {
    let off = offsets();
    let (actor, current) = unsafe { current_actor(&off)? };
    let mut flags = 0;
    // The one decision taken in the kernel: a guarded name is stopped before
    // its first user-space instruction. Userspace decides what happens next.
    if unsafe { GUARD.get(actor.comm) }.is_some() {
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
        (*record).ppid = ppid_of(current, &off);
        let filename: *const u8 = field(bprm, off.bprm_filename).unwrap_or(core::ptr::null());
        match bpf_probe_read_kernel_str_bytes(filename, &mut (*record).filename) {
            Ok(name) if name.len() >= PATH_LEN - 1 => flags |= flag::FILENAME_TRUNCATED,
            Ok(_) => {}
            Err(_) => (*record).filename[0] = 0,
        }
        (*record).args_len = 0;
        (*record).cgroup = bpf_get_current_cgroup_id();
        let notable = NOTABLE.get(actor.comm).copied().unwrap_or(0);
        if notable & notable::ARGS != 0 || core::ptr::read_volatile(&CAPTURE).all_args != 0 {
            flags |= read_args(current, &off, &mut *record);
        } else {
            flags |= flag::ARGS_UNREAD;
        }
        (*record).header = header(kind::EXEC, flags);
        let urgent = flags & flag::GUARD_STOPPED != 0 || notable & notable::WAKE != 0;
        entry.submit(wake_flags(urgent));
    }
    Ok(())
}

/// The new image's argv into `record`, from its stack where the kernel has
/// just written it (so it is in memory, unlike argv read at execve entry);
/// the flags it earns.
#[inline(always)]
unsafe fn read_args(current: *const u8, off: &Offsets, record: &mut ExecRecord) -> u32 {
    let mut flags = 0;
    unsafe {
        let mm: *const u8 = field(current, off.task_mm).unwrap_or(core::ptr::null());
        if mm.is_null() {
            return flags;
        }
        let [start, end]: [u64; 2] = field(mm, off.mm_arg_start).unwrap_or([0, 0]);
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

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sg_exit(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p, ...)
    let task: *const u8 = ctx.arg(0);
    match unsafe { try_exit(task) } {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

unsafe fn try_exit(task: *const u8) -> Result<(), i32> {
    let off = offsets();
    unsafe {
        // Only the last thread out is the process's exit: by the time this
        // tracepoint fires, do_exit has already dropped signal->live.
        let signal: *const u8 = field(task, off.task_signal)?;
        let live: i32 = field(signal, off.signal_live)?;
        if live != 0 {
            return Ok(());
        }
        let Some(mut entry) = EVENTS.reserve::<ExitRecord>(0) else {
            count_lost(kind::EXIT);
            return Ok(());
        };
        let record = entry.as_mut_ptr();
        let (pid, tgid) = ids_of(task, &off).unwrap_or_default();
        // The last thread out need not be the main one: name the process
        // by its leader's comm, not by the thread's.
        let leader: *const u8 = if pid == tgid {
            task
        } else {
            field(task, off.task_group_leader).unwrap_or(task)
        };
        (*record).task = Task {
            pid,
            tgid,
            start_ns: field(leader, off.task_start_boottime).unwrap_or(0),
        };
        (*record).ppid = ppid_of(task, &off);
        (*record).status = field(task, off.task_exit_code).unwrap_or(0);
        (*record).comm = [0; COMM_LEN];
        let _ = bpf_probe_read_kernel_buf(leader.add(off.task_comm as usize), &mut (*record).comm);
        (*record).header = header(kind::EXIT, 0);
        entry.submit(wake_flags(false));
    }
    Ok(())
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sg_fork(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *parent, struct task_struct *child)
    let child: *const u8 = ctx.arg(1);
    match unsafe { try_fork(child) } {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

unsafe fn try_fork(child: *const u8) -> Result<(), i32> {
    let off = offsets();
    unsafe {
        let (pid, tgid) = ids_of(child, &off)?;
        if pid != tgid {
            return Ok(()); // a new thread, not a new process
        }
        let child_task = task_with_ids(child, pid, tgid, &off)?;
        let (parent, _) = current_actor(&off)?;
        let Some(mut entry) = EVENTS.reserve::<ForkRecord>(0) else {
            count_lost(kind::FORK);
            return Ok(());
        };
        entry.write(ForkRecord {
            header: header(kind::FORK, 0),
            parent,
            child: child_task,
        });
        entry.submit(wake_flags(false));
    }
    Ok(())
}

#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn sg_signal(ctx: RawTracePointContext) -> i32 {
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
    if signal == 0 || signal >= 64 {
        return Ok(());
    }
    let interest = SIGNAL_INTEREST.get(0).copied().unwrap_or(0);
    if interest & (1u64 << signal) == 0 {
        return Ok(());
    }
    let off = offsets();
    unsafe {
        let (sender, _) = current_actor(&off)?;
        let Some(mut entry) = EVENTS.reserve::<SignalRecord>(0) else {
            count_lost(kind::SIGNAL);
            return Ok(());
        };
        let record = entry.as_mut_ptr();
        (*record).sender = sender;
        (*record).target = task_of(target, &off).unwrap_or_default();
        (*record).target_comm = [0; COMM_LEN];
        let _ = bpf_probe_read_kernel_buf(
            target.add(off.task_comm as usize),
            &mut (*record).target_comm,
        );
        (*record).signal = signal;
        (*record).result = result;
        (*record).header = header(kind::SIGNAL, 0);
        // Signals are rare and are what an operator stop looks like: no batching.
        entry.submit(wake_flags(true));
    }
    Ok(())
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
