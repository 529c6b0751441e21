//! Readings the bench and its peers' run share: a process's CPU time, a
//! number in a log line, and the probes a stopped agent left pinned let go.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// CPU time used so far by all threads of process `pid` (schedstat, in ns).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let mut total = 0u64;
    let dir = format!("/proc/{pid}/task");
    for task in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = task?.path().join("schedstat");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        total += text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("unexpected {}: {text}", path.display()))?;
    }
    Ok(Duration::from_nanos(total))
}

/// The number right after `marker` in `line`.
pub fn number_after(line: &str, marker: &str) -> Result<u64> {
    let start = line
        .find(marker)
        .with_context(|| format!("`{marker}` not in `{line}`"))?
        + marker.len();
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .with_context(|| format!("no number after `{marker}` in `{line}`"))
}

/// Detaches what a stopped agent left pinned, so that its programs do not
/// run on through the measurements that follow.
pub fn unpin(agent: &Path) -> Result<()> {
    let status = Command::new(agent)
        .arg("unpin")
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("stopguard unpin failed ({status})");
    }
    Ok(())
}
