//! Every process at the agent's start, from the kernel's task iterator:
//! what /proc/PID/stat, loginuid and status say of each, without the
//! kernel formatting three files per process and the agent parsing them.

use std::io::Read;

use agent_common::{TaskRecord, names};
use anyhow::{Context, Result};
use aya::{Btf, Ebpf, programs::Iter};

/// Every process now, read once the probes are attached, so that whatever
/// starts meanwhile is in the ring. None when the kernel refuses the
/// iterator: /proc is read instead, which says the same more slowly.
pub(super) fn snapshot(ebpf: &mut Ebpf, btf: &Btf) -> Option<Vec<TaskRecord>> {
    match iterate(ebpf, btf) {
        Ok(tasks) => Some(tasks),
        Err(err) => {
            tracing::warn!("the task iterator failed ({err:#}): reading processes from /proc");
            None
        }
    }
}

fn iterate(ebpf: &mut Ebpf, btf: &Btf) -> Result<Vec<TaskRecord>> {
    let program: &mut Iter = ebpf
        .program_mut(names::TASKS)
        .with_context(|| format!("program {} missing from the object", names::TASKS))?
        .try_into()?;
    program
        .load("task", btf)
        .with_context(|| format!("loading program {}", names::TASKS))?;
    let link = program.attach().context("attaching the task iterator")?;
    let mut output = program
        .take_link(link)?
        .into_file()
        .context("creating the task iterator")?;
    let mut bytes = Vec::with_capacity(1 << 20);
    output
        .read_to_end(&mut bytes)
        .context("reading the task iterator")?;
    drop(output);
    program.unload().context("unloading the task iterator")?;
    Ok(decode(&bytes))
}

/// The records in what the iterator wrote, which holds nothing else.
fn decode(bytes: &[u8]) -> Vec<TaskRecord> {
    bytes
        .chunks_exact(size_of::<TaskRecord>())
        // SAFETY: each chunk holds a whole record, plain repr(C) data for
        // which any bit pattern is valid.
        .map(|chunk| unsafe { chunk.as_ptr().cast::<TaskRecord>().read_unaligned() })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::{ProbeOptions, Probes};
    use crate::process::{
        Process,
        procfs::{self, Notables},
    };

    /// What both ways of reading a process must agree on; the command line
    /// is read from /proc either way.
    fn seen(p: &Process) -> impl PartialEq + std::fmt::Debug {
        let comm = p.exe.is_some().then(|| p.comm.clone());
        (
            p.key,
            p.parent,
            p.uid,
            p.loginuid,
            comm,
            p.exe.clone(),
            p.unit.clone(),
        )
    }

    #[test]
    fn the_task_iterator_tells_what_proc_tells() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI: this test loads eBPF programs and must run as root"
            );
            eprintln!("skipped: loading eBPF programs needs root");
            return;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let mut probes = Probes::attach(&ProbeOptions {
            notable: Some(Vec::new()),
            ..ProbeOptions::default()
        })
        .expect("the probes load");
        let tasks = probes.take_tasks().expect("the task iterator ran");
        let from_kernel: HashMap<_, _> = procfs::complete(&tasks, &Notables::everyone())
            .into_iter()
            .map(|p| (p.key, p))
            .collect();
        let from_proc = procfs::scan(&Notables::everyone());

        let me = from_kernel
            .values()
            .find(|p| p.pid == std::process::id())
            .expect("this process is among the iterator's");
        let exe = std::env::current_exe().unwrap();
        assert_eq!(me.exe.as_deref(), exe.to_str(), "{me:?}");
        assert!(
            from_kernel
                .values()
                .any(|p| p.pid == 1 && p.parent.is_none()),
            "PID 1 is known"
        );
        // Processes started well before this test: what started or exec'd
        // between the two reads may differ.
        let settled = agent_common::boot_ns() / 10_000_000 - 200;
        let old: Vec<&Process> = from_proc
            .iter()
            .filter(|p| p.key.start_ticks < settled)
            .collect();
        let differing: Vec<String> = old
            .iter()
            .filter_map(|p| match from_kernel.get(&p.key) {
                None => Some(format!("missing: {p:?}")),
                Some(k) if seen(k) != seen(p) => {
                    Some(format!("/proc: {:?}\nkernel: {:?}", seen(p), seen(k)))
                }
                Some(_) => None,
            })
            .collect();
        assert!(old.len() > 1, "found {} settled processes", old.len());
        // /proc fills in what the iterator leaves out: here, PID 1 at most.
        let unlisted: Vec<u32> = old
            .iter()
            .map(|p| p.pid)
            .filter(|&pid| !tasks.iter().any(|t| t.actor.task.tgid == pid))
            .collect();
        assert!(
            unlisted.len() <= 1,
            "not in the iterator's records: {unlisted:?}"
        );
        assert!(
            differing.is_empty(),
            "{} of {} processes differ:\n{}",
            differing.len(),
            old.len(),
            differing.join("\n")
        );
    }
}
