//! `cargo xtask bench --peers`: stopguard beside the tracers a host may
//! already run (execsnoop + exitsnoop from libbpf-tools, bpftrace, auditd),
//! each on the same fork+exec+wait storm, in one table.
//!
//! Each round runs, for each tracer in turn, the storm without a tracer and
//! then with it, with 1 and with 2 workers, so that drift on a shared machine
//! hits both sides of a pair; the table shows medians of the pairs' ratios.
//! Everything it starts, mounts, writes or switches on is undone by guards,
//! on success, on error and on Ctrl-C.

mod guards;
mod programs;
mod session;
mod startup;
mod table;

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    io::{BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    measure::{cpu_time, number_after, unpin},
    step, toolchain,
};

use self::{guards::*, programs::*, session::*, table::*};

/// The peers' Debian packages: execsnoop and exitsnoop, bpftrace, auditd
/// (with auditctl).
pub(super) const PACKAGES: &[&str] = &["libbpf-tools", "bpftrace", "auditd"];

/// The bpftrace script: one line per exec and per exit, as a user would
/// write it to watch processes come and go.
pub(super) const BPFTRACE_SCRIPT: &str = r#"tracepoint:sched:sched_process_exec { printf("exec %d %s\n", pid, comm); }
tracepoint:sched:sched_process_exit { printf("exit %d %s\n", pid, comm); }"#;

/// The audit rule: every 64-bit execve, as hardening guides ask for.
pub(super) const AUDIT_RULE: &[&str] = &["always,exit", "-F", "arch=b64", "-S", "execve"];

/// How long a tracer gets after a storm to read what the storm left behind
/// (execsnoop polls its perf buffer every 100 ms, auditd flushes in batches).
pub(super) const SETTLE: Duration = Duration::from_millis(200);

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Tracer {
    StopguardRun,
    StopguardTrace,
    Snoops,
    Bpftrace,
    Auditd,
}

impl Tracer {
    const ALL: [Tracer; 5] = [
        Tracer::StopguardRun,
        Tracer::StopguardTrace,
        Tracer::Snoops,
        Tracer::Bpftrace,
        Tracer::Auditd,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Tracer::StopguardRun => "stopguard run",
            Tracer::StopguardTrace => "stopguard trace --json",
            Tracer::Snoops => "execsnoop + exitsnoop",
            Tracer::Bpftrace => "bpftrace",
            Tracer::Auditd => "auditd (+ kauditd)",
        }
    }

    /// A name for its directory.
    pub(super) fn slug(self) -> &'static str {
        match self {
            Tracer::StopguardRun => "stopguard-run",
            Tracer::StopguardTrace => "stopguard-trace",
            Tracer::Snoops => "snoops",
            Tracer::Bpftrace => "bpftrace",
            Tracer::Auditd => "auditd",
        }
    }

    pub(super) fn is_stopguard(self) -> bool {
        matches!(self, Tracer::StopguardRun | Tracer::StopguardTrace)
    }

    /// Why this tracer cannot be measured on this host, if it cannot.
    pub(super) fn unavailable(self) -> Result<Option<String>> {
        if self != Tracer::Auditd {
            return Ok(None);
        }
        let status = AuditStatus::read()?;
        Ok(if status.pid != 0 {
            Some(format!(
                "an audit daemon (pid {}) already runs on this host",
                status.pid
            ))
        } else if status.enabled == 2 {
            Some("the kernel's audit configuration is locked (enabled 2)".to_string())
        } else {
            None
        })
    }
}

/// Set by SIGINT or SIGTERM: the bench stops at the next exec and unwinds,
/// its guards undoing what it did.
pub(super) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub(super) fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; everything the bench started was stopped and undone");
    }
    Ok(())
}

pub fn run(agent: &Path, execs: u32, rounds: u32) -> Result<()> {
    if !crate::is_root() {
        bail!("the peers benchmark loads eBPF programs and audit rules: run it as root");
    }
    if execs < 2 || rounds == 0 {
        bail!("--execs must be at least 2 and --rounds at least 1");
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    toolchain::ensure_packages(PACKAGES)?;
    let _tracefs = Tracefs::mount()?;
    let dir = TempDir::new("stopguard-bench-peers")?;
    let tracers: Vec<(Tracer, Option<String>)> = Tracer::ALL
        .iter()
        .map(|&t| Ok((t, t.unavailable()?)))
        .collect::<Result<_>>()?;
    for (tracer, why) in &tracers {
        if let Some(why) = why {
            step(&format!("skipping {}: {why}", tracer.label()));
        }
    }
    let measured: Vec<Tracer> = tracers
        .iter()
        .filter(|(_, why)| why.is_none())
        .map(|(t, _)| *t)
        .collect();
    step(&format!(
        "{rounds} rounds of {execs} fork+exec+wait of /bin/true with 1 and 2 workers, \
         without and with each of: {}",
        measured
            .iter()
            .map(|t| t.label())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    storm(200, 1)?; // warm the page cache and the spawn path
    let mut results: Vec<(Tracer, Results)> =
        measured.iter().map(|&t| (t, Results::default())).collect();
    let started = Instant::now();
    for round in 1..=rounds {
        for (tracer, results) in &mut results {
            let base = [storm(execs, 1)?, storm(execs, 2)?];
            let session = Session::start(*tracer, agent, &dir.0)?;
            let run = session.measure(execs)?;
            eprintln!(
                "    round {round} {:<24} without {:.2}/{:.2} s, with {:.2}/{:.2} s (1/2 workers), \
                 {} storm execs seen, {} lost",
                tracer.label(),
                base[0].as_secs_f64(),
                base[1].as_secs_f64(),
                run.wall[0].as_secs_f64(),
                run.wall[1].as_secs_f64(),
                run.captured,
                run.lost
            );
            results.add(execs, base, run);
        }
    }
    eprintln!(
        "    {} rounds in {:.0} s",
        rounds,
        started.elapsed().as_secs_f64()
    );
    let startup = if measured.contains(&Tracer::StopguardRun) {
        step(&format!(
            "stopguard run's start with {} more live processes, {rounds} times",
            startup::LIVE
        ));
        Some(startup::measure(agent, &dir.0, rounds)?)
    } else {
        None
    };
    print_table(execs, rounds, &results, &tracers);
    if let Some(startup) = startup {
        println!(
            "stopguard run start with {} processes on the host: running in {:.2} s (target <= 0.5 s), \
             VmRSS then {:.1} MiB (target <= 30), medians of {rounds}",
            startup.processes,
            median(&startup.times).as_secs_f64(),
            median(&startup.rss) as f64 / 1024.0
        );
    }
    Ok(())
}

/// fork+exec+wait of /bin/true, `execs` in all, split over `workers`
/// threads; the wall time from the first to the last.
pub(super) fn storm(execs: u32, workers: u32) -> Result<Duration> {
    let start = Instant::now();
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..workers)
            .map(|w| {
                let share = execs / workers + u32::from(w < execs % workers);
                scope.spawn(move || -> Result<()> {
                    for _ in 0..share {
                        check_interrupted()?;
                        let status = Command::new("/bin/true")
                            .status()
                            .context("running /bin/true")?;
                        if !status.success() {
                            bail!("/bin/true failed ({status})");
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        threads
            .into_iter()
            .try_for_each(|t| t.join().expect("a storm worker panicked"))
    })?;
    Ok(start.elapsed())
}

/// stopguard's embedded default config (its 6 watched services), with the
/// [agent] paths moved into `dir`.
pub(super) fn run_config(dir: &Path) -> Result<String> {
    let path = crate::workspace_root().join("agent/src/default-config.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut moved = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            for (key, file) in [
                ("state_dir", "state"),
                ("socket", "sock"),
                ("audit_log", "audit.jsonl"),
            ] {
                if line.starts_with(&format!("{key} =")) {
                    moved += 1;
                    return format!("{key} = \"{}\"", dir.join(file).display());
                }
            }
            line.to_string()
        })
        .collect();
    if moved != 3 {
        bail!(
            "{}: expected state_dir, socket and audit_log in [agent], found {moved} of them",
            path.display()
        );
    }
    Ok(lines.join("\n") + "\n")
}
