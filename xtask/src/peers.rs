//! `cargo xtask bench --peers`: stopguard beside the tracers a host may
//! already run (execsnoop + exitsnoop from libbpf-tools, bpftrace, auditd),
//! each on the same fork+exec+wait storm, in one table.
//!
//! Each round runs, for each tracer in turn, the storm without a tracer and
//! then with it, with 1 and with 2 workers, so that drift on a shared machine
//! hits both sides of a pair; the table shows medians of the pairs' ratios.
//! Everything it starts, mounts, writes or switches on is undone by guards,
//! on success, on error and on Ctrl-C.

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
    bench::{cpu_time, number_after, unpin},
    step, toolchain,
};

/// The peers' Debian packages: execsnoop and exitsnoop, bpftrace, auditd
/// (with auditctl).
const PACKAGES: &[&str] = &["libbpf-tools", "bpftrace", "auditd"];

/// The bpftrace script: one line per exec and per exit, as a user would
/// write it to watch processes come and go.
const BPFTRACE_SCRIPT: &str = r#"tracepoint:sched:sched_process_exec { printf("exec %d %s\n", pid, comm); }
tracepoint:sched:sched_process_exit { printf("exit %d %s\n", pid, comm); }"#;

/// The audit rule: every 64-bit execve, as hardening guides ask for.
const AUDIT_RULE: &[&str] = &["always,exit", "-F", "arch=b64", "-S", "execve"];

/// How long a tracer gets after a storm to read what the storm left behind
/// (execsnoop polls its perf buffer every 100 ms, auditd flushes in batches).
const SETTLE: Duration = Duration::from_millis(200);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tracer {
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

    fn label(self) -> &'static str {
        match self {
            Tracer::StopguardRun => "stopguard run",
            Tracer::StopguardTrace => "stopguard trace --json",
            Tracer::Snoops => "execsnoop + exitsnoop",
            Tracer::Bpftrace => "bpftrace",
            Tracer::Auditd => "auditd (+ kauditd)",
        }
    }

    /// A name for its directory.
    fn slug(self) -> &'static str {
        match self {
            Tracer::StopguardRun => "stopguard-run",
            Tracer::StopguardTrace => "stopguard-trace",
            Tracer::Snoops => "snoops",
            Tracer::Bpftrace => "bpftrace",
            Tracer::Auditd => "auditd",
        }
    }

    fn is_stopguard(self) -> bool {
        matches!(self, Tracer::StopguardRun | Tracer::StopguardTrace)
    }

    /// Why this tracer cannot be measured on this host, if it cannot.
    fn unavailable(self) -> Result<Option<String>> {
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
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> Result<()> {
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
    print_table(execs, rounds, &results, &tracers);
    Ok(())
}

/// fork+exec+wait of /bin/true, `execs` in all, split over `workers`
/// threads; the wall time from the first to the last.
fn storm(execs: u32, workers: u32) -> Result<Duration> {
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

/// What one tracer's session measured over its two storms (1 and 2 workers).
struct Run {
    wall: [Duration; 2],
    /// The tracer's CPU time during the storms and the settling after them.
    cpu: Duration,
    /// Per program label: runs and run time during the storms.
    programs: BTreeMap<String, (u64, Duration)>,
    /// The storms' execs the tracer reported (stopguard: every exec it read,
    /// the host's own included, since its output goes to /dev/null).
    captured: u64,
    /// Events the tracer read or wrote (records, lines).
    events: u64,
    lost: u64,
    /// stopguard's resident memory before the storms and its peak after.
    rss: Option<(u64, u64)>,
}

#[derive(Default)]
struct Results {
    /// Per worker count: the with/without wall ratio of each pair.
    ratios: [Vec<f64>; 2],
    base: [Vec<Duration>; 2],
    cpu: Duration,
    programs: BTreeMap<String, (u64, Duration)>,
    captured: u64,
    expected: u64,
    events: u64,
    lost: u64,
    rss_idle: Vec<u64>,
    rss_peak: u64,
}

impl Results {
    fn add(&mut self, execs: u32, base: [Duration; 2], run: Run) {
        self.expected += 2 * u64::from(execs);
        for (w, base) in base.into_iter().enumerate() {
            self.ratios[w].push(run.wall[w].as_secs_f64() / base.as_secs_f64());
            self.base[w].push(base);
        }
        self.cpu += run.cpu;
        for (label, (count, time)) in run.programs {
            let slot = self.programs.entry(label).or_default();
            slot.0 += count;
            slot.1 += time;
        }
        self.captured += run.captured;
        self.events += run.events;
        self.lost += run.lost;
        if let Some((idle, peak)) = run.rss {
            self.rss_idle.push(idle);
            self.rss_peak = self.rss_peak.max(peak);
        }
    }

    /// The execs of all the storms run under this tracer.
    fn storm_execs(&self) -> f64 {
        self.expected as f64
    }

    fn kernel_ns(&self) -> Option<f64> {
        if self.programs.is_empty() {
            return None;
        }
        let total: Duration = self.programs.values().map(|(_, t)| *t).sum();
        Some(total.as_nanos() as f64 / self.storm_execs())
    }

    fn cpu_per_exec_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.storm_execs()
    }
}

fn median<T: Copy + PartialOrd>(values: &[T]) -> T {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn print_table(
    execs: u32,
    rounds: u32,
    results: &[(Tracer, Results)],
    all: &[(Tracer, Option<String>)],
) {
    println!(
        "stopguard bench --peers: {execs} fork+exec+wait of /bin/true per storm, \
         1 and 2 workers, {rounds} rounds; {}",
        machine()
    );
    println!(
        "{:<30} {:>7} {:>7} {:>9} {:>9} {:>10} {:>15} {:>6} {:>11}",
        "", "wall", "ratio", "CPU µs/", "CPU µs/", "kernel ns/", "storm execs", "", "RSS MiB"
    );
    println!(
        "{:<30} {:>7} {:>7} {:>9} {:>9} {:>10} {:>15} {:>6} {:>11}",
        "tracer", "1 wkr", "2 wkr", "exec", "event", "exec", "seen/expected", "lost", "idle/peak"
    );
    let mut bases: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for (_, r) in results {
        for (all, these) in bases.iter_mut().zip(&r.base) {
            all.extend(these);
        }
    }
    if !bases[0].is_empty() {
        let us = |w: usize| median(&bases[w]).as_secs_f64() * 1e6 / f64::from(execs);
        println!(
            "{:<30} {:>7} {:>7}",
            "no tracer (µs per exec)",
            format!("{:.0}", us(0)),
            format!("{:.0}", us(1))
        );
    }
    for (tracer, r) in results {
        let per_event = if r.events == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", r.cpu.as_secs_f64() * 1e6 / r.events as f64)
        };
        let rss = if r.rss_idle.is_empty() {
            "-".to_string()
        } else {
            let mib = |kib: u64| kib as f64 / 1024.0;
            format!("{:.1}/{:.1}", mib(median(&r.rss_idle)), mib(r.rss_peak))
        };
        println!(
            "{:<30} {:>7.3} {:>7.3} {:>9.2} {:>9} {:>10} {:>15} {:>6} {:>11}",
            tracer.label(),
            median(&r.ratios[0]),
            median(&r.ratios[1]),
            r.cpu_per_exec_us(),
            per_event,
            r.kernel_ns()
                .map_or("-".to_string(), |ns| format!("{ns:.0}")),
            format!("{}/{}", r.captured, r.expected),
            r.lost,
            rss
        );
        for (label, (count, time)) in &r.programs {
            println!(
                "{:<30} {:>7} {:>7} {:>9} {:>9} {:>10} {:>15}",
                format!("  {label}"),
                "",
                "",
                "",
                "",
                format!("{:.0}/run", time.as_nanos() as f64 / (*count).max(1) as f64),
                format!("{:.2} runs/exec", *count as f64 / r.storm_execs())
            );
        }
    }
    for (tracer, why) in all {
        if let Some(why) = why {
            println!("{:<30} skipped: {why}", tracer.label());
        }
    }
    let find = |t: Tracer| results.iter().find(|(x, _)| *x == t).map(|(_, r)| r);
    if let Some(snoops) = find(Tracer::Snoops) {
        for tracer in [Tracer::StopguardRun, Tracer::StopguardTrace] {
            let Some(ours) = find(tracer) else { continue };
            let kernel = match (ours.kernel_ns(), snoops.kernel_ns()) {
                (Some(a), Some(b)) => format!("{:.2}x", a / b),
                _ => "-".to_string(),
            };
            println!(
                "{} vs execsnoop + exitsnoop: in-kernel ns per storm exec {kernel} (target <= 0.08x), \
                 CPU per storm exec {:.2}x (target <= 0.15x)",
                tracer.label(),
                ours.cpu_per_exec_us() / snoops.cpu_per_exec_us()
            );
        }
    }
}

/// "2 CPUs, AMD EPYC, kernel 6.1.0-18-amd64": what the numbers were taken on.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, {model}, kernel {}", kernel.trim())
}

/// A running tracer: its processes, the BPF programs it loaded, and the
/// guards that undo what starting it did. Fields drop in order: the audit
/// rule goes before auditd stops, which goes before the audit state is
/// restored; stopguard's pins go after the agent stops.
struct Session {
    tracer: Tracer,
    agent: PathBuf,
    rule: Option<AuditRule>,
    processes: Vec<Tracee>,
    /// Kernel threads working for the tracer (kauditd), counted in its CPU.
    kernel_threads: Vec<u32>,
    /// The programs the tracer loaded: id and label.
    programs: Vec<(u32, String)>,
    dir: PathBuf,
    /// stopguard run's control socket.
    socket: Option<PathBuf>,
    /// stopguard trace's stderr after its first line, read until it exits.
    trace_stderr: Option<std::thread::JoinHandle<String>>,
    _audit: Option<AuditState>,
    _unpin: Option<Unpin>,
    _stats: std::os::fd::OwnedFd,
}

impl Session {
    fn start(tracer: Tracer, agent: &Path, root: &Path) -> Result<Session> {
        let dir = root.join(tracer.slug());
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Run time and count are collected while this is held.
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics")?;
        let mut session = Session {
            tracer,
            agent: agent.to_path_buf(),
            rule: None,
            processes: Vec::new(),
            kernel_threads: Vec::new(),
            programs: Vec::new(),
            dir: dir.clone(),
            socket: None,
            trace_stderr: None,
            _audit: None,
            _unpin: tracer.is_stopguard().then(|| Unpin(agent.to_path_buf())),
            _stats: stats,
        };
        match tracer {
            Tracer::StopguardRun => session.start_stopguard_run(agent)?,
            Tracer::StopguardTrace => session.start_stopguard_trace(agent)?,
            Tracer::Snoops => {
                for tool in ["execsnoop", "exitsnoop"] {
                    let before = program_ids()?;
                    let child = Command::new(tool)
                        .stdout(file(&dir, &format!("{tool}.out"))?)
                        .stderr(file(&dir, &format!("{tool}.err"))?)
                        .process_group(0)
                        .spawn()
                        .with_context(|| format!("starting {tool}"))?;
                    session
                        .processes
                        .push(Tracee::new(tool, child, libc::SIGINT));
                    let ids = wait_for_programs(&before, &mut session.processes, tool)?;
                    session.add_programs(&ids, Some(tool))?;
                }
            }
            Tracer::Bpftrace => {
                let before = program_ids()?;
                let child = Command::new("bpftrace")
                    .args(["-e", BPFTRACE_SCRIPT])
                    .stdout(file(&dir, "bpftrace.out")?)
                    .stderr(file(&dir, "bpftrace.err")?)
                    .process_group(0)
                    .spawn()
                    .context("starting bpftrace")?;
                session
                    .processes
                    .push(Tracee::new("bpftrace", child, libc::SIGINT));
                let ids = wait_for_programs(&before, &mut session.processes, "bpftrace")?;
                session.add_programs(&ids, None)?;
            }
            Tracer::Auditd => session.start_auditd()?,
        }
        Ok(session)
    }

    /// Labels the programs `ids` by name (with `tool/` before it when the
    /// session runs more than one tool), numbering names loaded twice.
    fn add_programs(&mut self, ids: &[u32], tool: Option<&str>) -> Result<()> {
        let stats = program_stats()?;
        let mut seen: BTreeMap<String, u32> = BTreeMap::new();
        let mut sorted = ids.to_vec();
        sorted.sort();
        let names: Vec<String> = sorted
            .iter()
            .map(|id| {
                stats
                    .get(id)
                    .map_or_else(|| format!("#{id}"), |s| s.0.clone())
            })
            .collect();
        for (id, name) in sorted.iter().zip(&names) {
            let n = seen.entry(name.clone()).or_default();
            *n += 1;
            let mut label = match tool {
                Some(tool) => format!("{tool}/{name}"),
                None => name.clone(),
            };
            if names.iter().filter(|x| *x == name).count() > 1 {
                label = format!("{label}[{n}]");
            }
            self.programs.push((*id, label));
        }
        Ok(())
    }

    fn start_stopguard_trace(&mut self, agent: &Path) -> Result<()> {
        let before = program_ids()?;
        let mut child = Command::new(agent)
            .args(["trace", "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} trace", agent.display()))?;
        let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
        self.processes
            .push(Tracee::new("stopguard trace", child, libc::SIGINT));
        let mut first = String::new();
        stderr.read_line(&mut first)?;
        if !first.contains("tracing") {
            bail!("stopguard trace did not start: {first}");
        }
        self.trace_stderr = Some(std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
            rest
        }));
        let ids = new_ids(&before)?;
        self.add_programs(&ids, None)
    }

    fn start_stopguard_run(&mut self, agent: &Path) -> Result<()> {
        let config = self.dir.join("stopguard.toml");
        let socket = self.dir.join("sock");
        fs::write(&config, run_config(&self.dir)?)
            .with_context(|| format!("writing {}", config.display()))?;
        let before = program_ids()?;
        let child = Command::new(agent)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(file(&self.dir, "agent.log")?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} run", agent.display()))?;
        self.processes
            .push(Tracee::new("stopguard run", child, libc::SIGTERM));
        self.socket = Some(socket);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.stopguard_counts().is_err() {
            check_interrupted()?;
            if let Some(status) = self.processes[0].child.try_wait()? {
                bail!(
                    "stopguard run exited ({status}): {}",
                    tail(&self.dir.join("agent.log"))
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "stopguard run did not answer on its socket within 30 s: {}",
                    tail(&self.dir.join("agent.log"))
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let ids = new_ids(&before)?;
        self.add_programs(&ids, None)
    }

    /// `stopguard status --json` against the agent's socket: its counts.
    fn stopguard_counts(&self) -> Result<Counts> {
        let socket = self.socket.as_ref().context("no socket")?;
        let out = Command::new(&self.agent)
            .args(["status", "--json", "--socket"])
            .arg(socket)
            .output()
            .context("running stopguard status")?;
        if !out.status.success() {
            bail!(
                "stopguard status failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let status: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing stopguard status --json")?;
        let events = &status["events"];
        let field = |k: &str| {
            events[k]
                .as_u64()
                .with_context(|| format!("no events.{k} in stopguard status --json"))
        };
        Ok(Counts {
            exec: field("exec")?,
            events: field("exec")? + field("exit")? + field("fork")? + field("signal")?,
            lost: field("lost")?,
        })
    }

    fn start_auditd(&mut self) -> Result<()> {
        let state = AuditStatus::read()?;
        self._audit = Some(AuditState(state));
        let conf_dir = self.dir.join("audit");
        fs::create_dir_all(conf_dir.join("plugins.d"))?;
        // Debian's auditd.conf, with the log and plugins here instead.
        let conf = format!(
            "local_events = yes\nwrite_logs = yes\nlog_file = {d}/audit.log\nlog_format = ENRICHED\n\
             flush = INCREMENTAL_ASYNC\nfreq = 50\nmax_log_file = 0\nmax_log_file_action = IGNORE\n\
             space_left = 2\nspace_left_action = IGNORE\nadmin_space_left = 1\n\
             admin_space_left_action = IGNORE\ndisk_full_action = IGNORE\ndisk_error_action = IGNORE\n\
             q_depth = 2000\noverflow_action = SYSLOG\nplugin_dir = {d}/plugins.d\nname_format = NONE\n\
             priority_boost = 4\n",
            d = conf_dir.display()
        );
        let path = conf_dir.join("auditd.conf");
        fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
        // auditd refuses a config others can write.
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        // -n: no fork, it stays our child (no systemd here to run it).
        let child = Command::new("auditd")
            .arg("-n")
            .arg("-c")
            .arg(&conf_dir)
            .stdout(file(&self.dir, "auditd.out")?)
            .stderr(file(&self.dir, "auditd.err")?)
            .process_group(0)
            .spawn()
            .context("starting auditd")?;
        let pid = child.id();
        self.processes
            .push(Tracee::new("auditd", child, libc::SIGTERM));
        let deadline = Instant::now() + Duration::from_secs(10);
        while AuditStatus::read()?.pid != pid {
            check_interrupted()?;
            if let Some(status) = self.processes[0].child.try_wait()? {
                bail!(
                    "auditd exited ({status}): {}",
                    tail(&self.dir.join("auditd.err"))
                );
            }
            if Instant::now() > deadline {
                bail!("auditd did not register with the kernel within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Debian's default rules raise the backlog from 64 to 8192.
        auditctl(&["-b", "8192"])?;
        auditctl(&[&["-a"], AUDIT_RULE].concat())?;
        self.rule = Some(AuditRule);
        self.kernel_threads = pids_named("kauditd");
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        self.processes
            .iter()
            .map(|p| p.child.id())
            .chain(self.kernel_threads.iter().copied())
            .collect()
    }

    fn cpu(&self) -> Result<Duration> {
        self.pids().into_iter().map(cpu_time).sum()
    }

    fn program_stats(&self) -> Result<BTreeMap<String, (u64, Duration)>> {
        let stats = program_stats()?;
        let mut by_label: BTreeMap<String, (u64, Duration)> = BTreeMap::new();
        for (id, label) in &self.programs {
            if let Some((_, count, time)) = stats.get(id) {
                let slot = by_label.entry(label.clone()).or_default();
                slot.0 += count;
                slot.1 += *time;
            }
        }
        Ok(by_label)
    }

    /// The two storms under this tracer, then its stop and its counts.
    fn measure(mut self, execs: u32) -> Result<Run> {
        let rss_idle = self.stopguard_rss("VmRSS")?;
        let mut wall = [Duration::ZERO; 2];
        let mut cpu = Duration::ZERO;
        let mut programs: BTreeMap<String, (u64, Duration)> = BTreeMap::new();
        let (mut run_execs, mut run_events, mut run_lost) = (0, 0, 0);
        for (w, workers) in [1, 2].into_iter().enumerate() {
            let counts = self
                .socket
                .is_some()
                .then(|| self.stopguard_counts())
                .transpose()?;
            let (cpu0, programs0) = (self.cpu()?, self.program_stats()?);
            wall[w] = storm(execs, workers)?;
            std::thread::sleep(SETTLE);
            cpu += self.cpu()? - cpu0;
            for (label, (count, time)) in self.program_stats()? {
                let (c0, t0) = programs0.get(&label).copied().unwrap_or_default();
                let slot = programs.entry(label).or_default();
                slot.0 += count - c0;
                slot.1 += time - t0;
            }
            if let Some(before) = counts {
                let after = self.stopguard_counts()?;
                run_execs += after.exec - before.exec;
                run_events += after.events - before.events;
                run_lost += after.lost - before.lost;
            }
        }
        let rss = match (rss_idle, self.stopguard_rss("VmHWM")?) {
            (Some(idle), Some(peak)) => Some((idle, peak)),
            _ => None,
        };
        let counts = self.stop()?;
        let (captured, events, lost) = match self.tracer {
            Tracer::StopguardRun => (run_execs, run_events, run_lost),
            _ => (counts.exec, counts.events, counts.lost),
        };
        Ok(Run {
            wall,
            cpu,
            programs,
            captured,
            events,
            lost,
            rss,
        })
    }

    /// A /proc status field (kB) of the stopguard agent, when this is one.
    fn stopguard_rss(&self, field: &str) -> Result<Option<u64>> {
        if !self.tracer.is_stopguard() {
            return Ok(None);
        }
        let path = format!("/proc/{}/status", self.processes[0].child.id());
        let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .with_context(|| format!("no {field} in {path}"))?;
        let kib = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unexpected {path}: {line}"))?;
        Ok(Some(kib))
    }

    /// Stops the tracer (the audit rule first) and reads what it captured.
    fn stop(&mut self) -> Result<Counts> {
        if let Some(rule) = self.rule.take() {
            rule.delete()?;
        }
        for process in &mut self.processes {
            let status = process.stop()?;
            if status.success() || process.name == "auditd" {
                continue;
            }
            // A peer's failure costs its row's counts, not the comparison.
            if process.name.starts_with("stopguard") {
                bail!("{} failed ({status})", process.name);
            }
            eprintln!(
                "    warning: {} failed ({status}): its counts may be short",
                process.name
            );
        }
        let read = |name: &str| {
            let path = self.dir.join(name);
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        };
        Ok(match self.tracer {
            Tracer::StopguardRun => Counts::default(),
            Tracer::StopguardTrace => {
                let rest = self
                    .trace_stderr
                    .take()
                    .context("no stderr")?
                    .join()
                    .expect("the stderr reader panicked");
                let summary = rest
                    .lines()
                    .find(|l| l.contains(" events (exec "))
                    .with_context(|| format!("no summary from stopguard trace: {rest}"))?;
                Counts {
                    exec: number_after(summary, "(exec ")?,
                    events: number_after(summary, "stopguard: ")?,
                    lost: number_after(summary, "), ")?,
                }
            }
            Tracer::Snoops => {
                let (exec, exit) = (read("execsnoop.out")?, read("exitsnoop.out")?);
                let lines = |t: &str| t.lines().skip(1).count() as u64;
                Counts {
                    exec: exec
                        .lines()
                        .filter(|l| l.split_whitespace().next() == Some("true"))
                        .count() as u64,
                    events: lines(&exec) + lines(&exit),
                    // libbpf-tools: "lost N events on CPU #M".
                    lost: [read("execsnoop.err")?, read("exitsnoop.err")?]
                        .iter()
                        .flat_map(|t| t.lines().map(str::to_string).collect::<Vec<_>>())
                        .filter_map(|l| number_after(&l.to_ascii_lowercase(), "lost ").ok())
                        .sum(),
                }
            }
            Tracer::Bpftrace => {
                let out = read("bpftrace.out")?;
                let err = read("bpftrace.err")?;
                Counts {
                    exec: out.lines().filter(|l| is_storm_line(l, "exec ")).count() as u64,
                    events: out
                        .lines()
                        .filter(|l| l.starts_with("exec ") || l.starts_with("exit "))
                        .count() as u64,
                    // "Lost N events", on either stream.
                    lost: out
                        .lines()
                        .chain(err.lines())
                        .filter_map(|l| number_after(l, "Lost ").ok())
                        .sum(),
                }
            }
            Tracer::Auditd => {
                let log = read("audit/audit.log")?;
                let serials: HashSet<&str> = log
                    .lines()
                    .filter_map(|l| l.split("msg=audit(").nth(1))
                    .filter_map(|l| l.split(')').next())
                    .collect();
                let before = self._audit.as_ref().map_or(0, |a| a.0.lost);
                Counts {
                    exec: log
                        .lines()
                        .filter(|l| {
                            l.starts_with("type=SYSCALL")
                                && l.contains(" syscall=59 ")
                                && l.contains(" comm=\"true\" ")
                        })
                        .count() as u64,
                    events: serials.len() as u64,
                    lost: AuditStatus::read()?.lost.saturating_sub(before),
                }
            }
        })
    }
}

/// "exec 1234 true": a bpftrace line for one of the storm's processes.
fn is_storm_line(line: &str, kind: &str) -> bool {
    line.strip_prefix(kind)
        .and_then(|rest| rest.split_whitespace().nth(1))
        == Some("true")
}

#[derive(Default)]
struct Counts {
    exec: u64,
    events: u64,
    lost: u64,
}

/// stopguard's embedded default config (its 6 watched services), with the
/// [agent] paths moved into `dir`.
fn run_config(dir: &Path) -> Result<String> {
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

/// A tracer's process: stopped by `signal`, then SIGKILL if it lingers;
/// also when the bench unwinds.
struct Tracee {
    name: &'static str,
    child: Child,
    signal: i32,
    status: Option<ExitStatus>,
}

impl Tracee {
    fn new(name: &'static str, child: Child, signal: i32) -> Tracee {
        Tracee {
            name,
            child,
            signal,
            status: None,
        }
    }

    fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        if self.child.try_wait()?.is_none() {
            // SAFETY: our own child, not yet reaped, so the pid is still its.
            unsafe { libc::kill(self.child.id() as i32, self.signal) };
        }
        // bpftrace drains what its buffers hold before it exits: on a busy
        // machine that can take a while.
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                eprintln!("    {} did not stop within 60 s: killing it", self.name);
                self.child.kill()?;
                break self.child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: stopping {}: {e:#}", self.name);
        }
    }
}

/// Runs `stopguard unpin` when dropped, after the agent stopped, so that its
/// programs do not run on through the measurements that follow.
struct Unpin(PathBuf);

impl Drop for Unpin {
    fn drop(&mut self) {
        if let Err(e) = unpin(&self.0) {
            eprintln!("warning: {e:#}; run `stopguard unpin` by hand");
        }
    }
}

/// The bench's execve rule, deleted when dropped.
struct AuditRule;

impl AuditRule {
    fn delete(self) -> Result<()> {
        std::mem::forget(self);
        auditctl(&[&["-d"], AUDIT_RULE].concat())
    }
}

impl Drop for AuditRule {
    fn drop(&mut self) {
        if let Err(e) = auditctl(&[&["-d"], AUDIT_RULE].concat()) {
            eprintln!(
                "warning: {e:#}; delete the rule with `auditctl -d {}`",
                AUDIT_RULE.join(" ")
            );
        }
    }
}

/// The kernel's audit settings from `auditctl -s`.
#[derive(Clone, Copy)]
struct AuditStatus {
    enabled: u64,
    pid: u32,
    backlog_limit: u64,
    lost: u64,
}

impl AuditStatus {
    fn read() -> Result<AuditStatus> {
        let text = toolchain::output(Command::new("auditctl").arg("-s"))?;
        let field = |name: &str| -> Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {name} in `auditctl -s`: {text}"))
        };
        Ok(AuditStatus {
            enabled: field("enabled")?,
            pid: field("pid")? as u32,
            backlog_limit: field("backlog_limit")?,
            lost: field("lost")?,
        })
    }
}

/// Audit's enabled flag and backlog limit as they were before auditd
/// started, put back when dropped (auditd leaves auditing enabled).
struct AuditState(AuditStatus);

impl Drop for AuditState {
    fn drop(&mut self) {
        let restore = || -> Result<()> {
            auditctl(&["-e", &self.0.enabled.to_string()])?;
            auditctl(&["-b", &self.0.backlog_limit.to_string()])
        };
        if let Err(e) = restore() {
            eprintln!(
                "warning: restoring audit settings: {e:#}; run `auditctl -e {} -b {}` by hand",
                self.0.enabled, self.0.backlog_limit
            );
        }
    }
}

fn auditctl(args: &[&str]) -> Result<()> {
    toolchain::output(Command::new("auditctl").args(args))
        .with_context(|| format!("auditctl {}", args.join(" ")))?;
    Ok(())
}

/// tracefs mounted at /sys/kernel/tracing for the peers (they read
/// tracepoint ids there); unmounted when dropped, if it was mounted here.
struct Tracefs {
    mounted: bool,
}

const TRACEFS: &str = "/sys/kernel/tracing";

impl Tracefs {
    fn mount() -> Result<Tracefs> {
        if Path::new(TRACEFS).join("events").exists() {
            return Ok(Tracefs { mounted: false });
        }
        step(&format!(
            "mounting tracefs on {TRACEFS} (unmounted at the end)"
        ));
        let status = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", TRACEFS])
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!("mounting tracefs on {TRACEFS} failed ({status})");
        }
        Ok(Tracefs { mounted: true })
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(TRACEFS)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("warning: unmounting {TRACEFS} failed; unmount it by hand");
            }
        }
    }
}

/// A directory under the temp dir, removed with what is in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn file(dir: &Path, name: &str) -> Result<fs::File> {
    let path = dir.join(name);
    fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
}

/// The last lines of a log, for an error message.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Loaded BPF programs: id -> (name, run count, run time).
fn program_stats() -> Result<BTreeMap<u32, (String, u64, Duration)>> {
    let mut stats = BTreeMap::new();
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        let name = info.name_as_str().unwrap_or("?").to_string();
        stats.insert(info.id(), (name, info.run_count(), info.run_time()));
    }
    Ok(stats)
}

fn program_ids() -> Result<HashSet<u32>> {
    Ok(program_stats()?.into_keys().collect())
}

fn new_ids(before: &HashSet<u32>) -> Result<Vec<u32>> {
    Ok(program_ids()?
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect())
}

/// Waits until `tool` (the last of `processes`) has loaded programs and
/// one of them runs on an exec (probes with /bin/sh, so that the storm's
/// counts stay the storm's); returns their ids.
fn wait_for_programs(
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
fn pids_named(name: &str) -> Vec<u32> {
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
