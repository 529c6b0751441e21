//! Reading a task: its ids, start, parent, comm, credentials, login and
//! cgroup, at offsets the loader learns from the running kernel's BTF.

use agent_common::{Actor, COMM_LEN, Offsets, Task};
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid,
    bpf_probe_read_kernel,
};

#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets {
    task_pid: 0,
    task_real_parent: 0,
    task_group_leader: 0,
    task_start_boottime: 0,
    task_loginuid: 0,
    task_exit_code: 0,
    task_flags: 0,
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

#[inline(always)]
pub(crate) fn offsets() -> Offsets {
    // The loader rewrites the global; read it through a volatile load so the
    // compiler does not fold the zeroes above into the code.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// One offset, loaded from the global where it is used: the global is
/// frozen read-only, so the verifier knows the value and folds it into the
/// typed pointer it is added to; a copy kept on the stack would lose that
/// on kernels before 5.16, which track no 4-byte spills.
#[inline(always)]
pub(crate) fn off(field: impl FnOnce(&Offsets) -> &u32) -> usize {
    // SAFETY: a read of a static.
    unsafe { core::ptr::read_volatile(field(&OFFSETS)) as usize }
}

/// A field of a kernel struct at a BTF-given offset, through a helper: for
/// pointers the verifier knows nothing of (the sender of a signal).
#[inline(always)]
unsafe fn field<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel(base.add(offset as usize).cast::<T>()) }
}

/// A field of a kernel struct that a BTF-typed pointer (a tracepoint's
/// argument, or a pointer read from one) reaches: a plain load, which the
/// verifier checks against the type and the kernel guards against faults
/// (a faulting load reads 0). Each load must stay within one member, so
/// adjacent members are never read as one.
#[inline(always)]
pub(crate) unsafe fn load<T: Copy>(base: *const u8, offset: usize) -> T {
    // SAFETY: the verifier turns this into a fault-handled kernel load.
    unsafe { core::ptr::read_volatile(base.add(offset).cast::<T>()) }
}

/// A task's (pid, tgid).
#[inline(always)]
pub(crate) unsafe fn ids(task: *const u8) -> (u32, u32) {
    let pid = off(|o| &o.task_pid);
    unsafe { (load(task, pid), load(task, pid + 4)) }
}

/// The task with the start time of its process (its group leader's).
#[inline(always)]
pub(crate) unsafe fn task(task: *const u8, pid: u32, tgid: u32) -> Task {
    unsafe {
        Task {
            pid,
            tgid,
            start_ns: load(leader(task, pid, tgid), off(|o| &o.task_start_boottime)),
        }
    }
}

/// The thread group's leader.
#[inline(always)]
pub(crate) unsafe fn leader(task: *const u8, pid: u32, tgid: u32) -> *const u8 {
    if pid == tgid {
        task
    } else {
        unsafe { load(task, off(|o| &o.task_group_leader)) }
    }
}

#[inline(always)]
pub(crate) unsafe fn ppid(task: *const u8) -> u32 {
    unsafe {
        let parent: *const u8 = load(task, off(|o| &o.task_real_parent));
        load(parent, off(|o| &o.task_pid) + 4)
    }
}

/// A task's comm as the kernel holds it, bytes after the NUL included.
#[inline(always)]
pub(crate) unsafe fn comm_raw(task: *const u8) -> [u64; 2] {
    let comm = off(|o| &o.task_comm);
    unsafe { [load(task, comm), load(task, comm + 8)] }
}

/// A task's comm, NUL-padded as `bpf_get_current_comm` gives it: older
/// kernels leave a longer earlier name's bytes after the NUL, and the
/// guard and notable maps are keyed by the padded name.
#[inline(always)]
unsafe fn comm(task: *const u8) -> [u8; COMM_LEN] {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let [mut low, mut high] = unsafe { comm_raw(task) };
    // The lowest flagged byte is the first NUL (higher flags may be false).
    let nul = low.wrapping_sub(ONES) & !low & HIGHS;
    if nul != 0 {
        low &= ((nul & nul.wrapping_neg()) >> 7).wrapping_sub(1);
        high = 0;
    } else {
        let nul = high.wrapping_sub(ONES) & !high & HIGHS;
        if nul != 0 {
            high &= ((nul & nul.wrapping_neg()) >> 7).wrapping_sub(1);
        }
    }
    let mut out = [0u8; COMM_LEN];
    out[..8].copy_from_slice(&low.to_le_bytes());
    out[8..].copy_from_slice(&high.to_le_bytes());
    out
}

/// A task's uid, as `bpf_get_current_uid_gid` gives current's.
#[inline(always)]
unsafe fn uid(task: *const u8) -> u32 {
    unsafe {
        let cred: *const u8 = load(task, off(|o| &o.task_cred));
        load(cred, off(|o| &o.cred_uid))
    }
}

/// A task's cgroup (v2) id, as `bpf_get_current_cgroup_id` gives current's.
#[inline(always)]
pub(crate) unsafe fn cgroup_id(task: *const u8) -> u64 {
    unsafe {
        let css_set: *const u8 = load(task, off(|o| &o.task_cgroups));
        let cgroup: *const u8 = load(css_set, off(|o| &o.css_set_dfl_cgrp));
        let kn: *const u8 = load(cgroup, off(|o| &o.cgroup_kn));
        load(kn, off(|o| &o.kernfs_node_id))
    }
}

/// `current`, given as a tracepoint argument, as an actor.
#[inline(always)]
pub(crate) unsafe fn actor(current: *const u8) -> Actor {
    unsafe {
        let (pid, tgid) = ids(current);
        let login = off(|o| &o.task_loginuid);
        Actor {
            task: task(current, pid, tgid),
            uid: uid(current),
            loginuid: load(current, login),
            sessionid: load(current, login + 4),
            _pad: 0,
            comm: comm(current),
        }
    }
}

/// The task with the start time of its process, through helpers.
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

/// The current task as an actor, through helpers: for a tracepoint whose
/// arguments do not include it.
#[inline(always)]
pub(crate) unsafe fn current_actor(off: &Offsets) -> Result<Actor, i32> {
    unsafe {
        let current = bpf_get_current_task() as *const u8;
        let ids = bpf_get_current_pid_tgid();
        // loginuid and sessionid are adjacent: one read.
        let login: u64 = field(current, off.task_loginuid).unwrap_or(u64::MAX);
        Ok(Actor {
            task: task_with_ids(current, ids as u32, (ids >> 32) as u32, off)?,
            uid: bpf_get_current_uid_gid() as u32,
            loginuid: login as u32,
            sessionid: (login >> 32) as u32,
            _pad: 0,
            comm: bpf_get_current_comm()?,
        })
    }
}
