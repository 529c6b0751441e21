//! The agent's side of the gap while no agent ran: what attaching did with
//! an earlier agent's pinned probes, said in the log, and when the gap
//! began, for adopting what ran before it.

use std::path::Path;

use crate::{
    kernel::{Pinning, Probes},
    monitor::Backlog,
    sys::clock::boot_ns,
};

/// When no agent ran from, as far as the records tell (boot ns): the
/// earliest waiting record; with records lost meanwhile, no later than the
/// state's last save, since what was lost may be older than what is left.
pub(super) fn gap_began(backlog: &Backlog, state_path: &Path) -> Option<u64> {
    if !backlog.lost {
        return backlog.first_ns;
    }
    let saved = std::fs::metadata(state_path)
        .and_then(|m| m.modified())
        .ok()?;
    let age = std::time::SystemTime::now()
        .duration_since(saved)
        .unwrap_or_default();
    let saved_ns = boot_ns().saturating_sub(age.as_nanos() as u64);
    Some(
        backlog
            .first_ns
            .map_or(saved_ns, |first| first.min(saved_ns)),
    )
}

/// Logs what attaching did with an earlier agent's probes and whether this
/// agent's outlive it. Returns whether an earlier agent's probes ran until
/// now (its records are a gap's).
pub(super) fn report_handover(probes: &Probes, backlog: &Backlog) -> bool {
    let handover = probes.handover();
    if handover.mounted_bpffs {
        tracing::warn!("bpffs was not mounted: mounted it at /sys/fs/bpf to pin the probes");
    }
    for failure in &handover.failures {
        tracing::error!("older pinned probes could not be taken apart: {failure}");
    }
    if handover.unreadable > 0 {
        tracing::error!(
            "{} records of older probes are in a layout this agent does not read: counted as lost",
            handover.unreadable
        );
    }
    let gap = backlog
        .first_ns
        .map(|first| {
            format!(
                ", the earliest {:.1} s ago",
                (backlog.read_ns.saturating_sub(first)) as f64 / 1e9
            )
        })
        .unwrap_or_default();
    match probes.pinning() {
        Pinning::Pinned {
            dir, adopted: true, ..
        } => {
            tracing::info!(
                "probes pinned in {dir} taken over: they ran while no agent did; {} records waiting{gap}",
                backlog.records
            );
            true
        }
        Pinning::Pinned { dir, .. } if !handover.replaced.is_empty() => {
            tracing::info!(
                "probes loaded and pinned in {dir}, then older ones {:?} detached; {} records waiting from them{gap}",
                handover.replaced,
                backlog.records
            );
            true
        }
        Pinning::Pinned { dir, .. } => {
            tracing::info!("probes pinned in {dir}: they hold while the agent is down");
            false
        }
        Pinning::Failed { reason } => {
            tracing::error!(
                "probes NOT pinned ({reason}): while the agent is down nothing is stopped at exec or recorded"
            );
            false
        }
        Pinning::Off => false,
    }
}
