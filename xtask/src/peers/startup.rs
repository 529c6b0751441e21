//! `stopguard run` starting on a host with many live processes: the time
//! from its launch to its "stopguard running" line, and its memory then.
//! Its start reads /proc for every process, so this is what a busy host
//! waits before the agent watches anything.

use super::*;

/// Live processes the host holds while the agent starts.
pub(super) const LIVE: usize = 10_000;

/// The agent's starts with [`LIVE`] processes running.
pub(super) struct Startup {
    /// The host's processes when the agent started (the sleepers and the
    /// rest).
    pub(super) processes: usize,
    pub(super) times: Vec<Duration>,
    /// VmRSS at "stopguard running", KiB.
    pub(super) rss: Vec<u64>,
}

/// Starts the agent `rounds` times, one at a time, with [`LIVE`] sleeping
/// processes added to the host's own.
pub(super) fn measure(agent: &Path, root: &Path, rounds: u32) -> Result<Startup> {
    let dir = root.join("startup");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _sleepers = Sleepers::spawn(LIVE)?;
    let mut startup = Startup {
        processes: processes()?,
        times: Vec::new(),
        rss: Vec::new(),
    };
    for round in 1..=rounds {
        let _unpin = Unpin(agent.to_path_buf());
        let log = dir.join("agent.log");
        let began = Instant::now();
        let mut run = spawn_run(agent, &dir)?;
        let took = loop {
            check_interrupted()?;
            if fs::read_to_string(&log).is_ok_and(|l| l.contains("stopguard running")) {
                break began.elapsed();
            }
            if let Some(status) = run.child.try_wait()? {
                bail!("stopguard run exited ({status}): {}", tail(&log));
            }
            if began.elapsed() > Duration::from_secs(60) {
                bail!("stopguard run was not running within 60 s: {}", tail(&log));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let rss = status_kib(run.child.id(), "VmRSS")?;
        let status = run.stop()?;
        if !status.success() {
            bail!("stopguard run failed ({status}): {}", tail(&log));
        }
        eprintln!(
            "    start {round} with {} processes: running in {:.3} s, VmRSS {:.1} MiB",
            startup.processes,
            took.as_secs_f64(),
            rss as f64 / 1024.0
        );
        startup.times.push(took);
        startup.rss.push(rss);
    }
    Ok(startup)
}

/// Processes in /proc now.
fn processes() -> Result<usize> {
    Ok(fs::read_dir("/proc")
        .context("reading /proc")?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .count())
}

/// Sleeping processes, killed and reaped when dropped.
struct Sleepers(Vec<Child>);

impl Sleepers {
    fn spawn(count: usize) -> Result<Sleepers> {
        step(&format!("starting {count} sleeping processes"));
        let mut sleepers = Sleepers(Vec::with_capacity(count));
        for _ in 0..count {
            check_interrupted()?;
            let child = Command::new("sleep")
                .arg("3600")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting a sleeping process")?;
            sleepers.0.push(child);
        }
        Ok(sleepers)
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}
