//! Loaded BPF programs: which a tracer loaded, and their run-time statistics.

use super::*;

/// Loaded BPF programs: id -> (name, run count, run time).
pub(super) fn program_stats() -> Result<BTreeMap<u32, (String, u64, Duration)>> {
    let mut stats = BTreeMap::new();
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        let name = info.name_as_str().unwrap_or("?").to_string();
        stats.insert(info.id(), (name, info.run_count(), info.run_time()));
    }
    Ok(stats)
}

pub(super) fn program_ids() -> Result<HashSet<u32>> {
    Ok(program_stats()?.into_keys().collect())
}

pub(super) fn new_ids(before: &HashSet<u32>) -> Result<Vec<u32>> {
    Ok(program_ids()?
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect())
}

/// Waits until `tool` (the last of `processes`) has loaded programs and
/// one of them runs on an exec (probes with /bin/sh, so that the storm's
/// counts stay the storm's); returns their ids.
pub(super) fn wait_for_programs(
    before: &HashSet<u32>,
    processes: &mut [Tracee],
    tool: &str,
) -> Result<Vec<u32>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let process = processes.last_mut().expect("a process was started");
    loop {
        check_interrupted()?;
        if let Some(status) = process.child.try_wait()? {
            bail!("{tool} exited ({status}) before it was ready");
        }
        if Instant::now() > deadline {
            bail!("{tool} did not attach within 60 s");
        }
        let ids = new_ids(before)?;
        if !ids.is_empty() {
            let runs = |stats: &BTreeMap<u32, (String, u64, Duration)>| -> u64 {
                ids.iter().filter_map(|id| stats.get(id)).map(|s| s.1).sum()
            };
            let runs0 = runs(&program_stats()?);
            Command::new("/bin/sh")
                .args(["-c", ":"])
                .status()
                .context("running /bin/sh")?;
            if runs(&program_stats()?) > runs0 {
                // Attached (at least one of them); the rest attach right after.
                std::thread::sleep(Duration::from_millis(300));
                return new_ids(before);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pids of processes (kernel threads included) whose comm is `name`.
pub(super) fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}
