//! A tracer running under the bench: started, measured over a storm, stopped,
//! and what it captured read back.

use super::*;

/// A running tracer: its processes, the BPF programs it loaded, and the
/// guards that undo what starting it did. Fields drop in order: the audit
/// rule goes before auditd stops, which goes before the audit state is
/// restored; stopguard's pins go after the agent stops.
pub(super) struct Session {
    pub(super) tracer: Tracer,
    pub(super) agent: PathBuf,
    pub(super) rule: Option<AuditRule>,
    pub(super) processes: Vec<Tracee>,
    /// Kernel threads working for the tracer (kauditd), counted in its CPU.
    pub(super) kernel_threads: Vec<u32>,
    /// The programs the tracer loaded: id and label.
    pub(super) programs: Vec<(u32, String)>,
    pub(super) dir: PathBuf,
    /// stopguard run's control socket.
    pub(super) socket: Option<PathBuf>,
    /// stopguard trace's stderr after its first line, read until it exits.
    pub(super) trace_stderr: Option<std::thread::JoinHandle<String>>,
    pub(super) _audit: Option<AuditState>,
    pub(super) _unpin: Option<Unpin>,
    pub(super) _stats: std::os::fd::OwnedFd,
}

impl Session {
    pub(super) fn start(tracer: Tracer, agent: &Path, root: &Path) -> Result<Session> {
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
                    let child = default_signals(&mut Command::new(tool))
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
                let child = default_signals(&mut Command::new("bpftrace"))
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
    pub(super) fn add_programs(&mut self, ids: &[u32], tool: Option<&str>) -> Result<()> {
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

    pub(super) fn start_stopguard_trace(&mut self, agent: &Path) -> Result<()> {
        let before = program_ids()?;
        let mut child = default_signals(&mut Command::new(agent))
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

    pub(super) fn start_stopguard_run(&mut self, agent: &Path) -> Result<()> {
        let before = program_ids()?;
        self.processes.push(spawn_run(agent, &self.dir)?);
        self.socket = Some(self.dir.join("sock"));
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
    pub(super) fn stopguard_counts(&self) -> Result<Counts> {
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

    pub(super) fn start_auditd(&mut self) -> Result<()> {
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

    pub(super) fn pids(&self) -> Vec<u32> {
        self.processes
            .iter()
            .map(|p| p.child.id())
            .chain(self.kernel_threads.iter().copied())
            .collect()
    }

    pub(super) fn cpu(&self) -> Result<Duration> {
        self.pids().into_iter().map(cpu_time).sum()
    }

    pub(super) fn program_stats(&self) -> Result<BTreeMap<String, (u64, Duration)>> {
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
    pub(super) fn measure(mut self, execs: u32) -> Result<Run> {
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
    pub(super) fn stopguard_rss(&self, field: &str) -> Result<Option<u64>> {
        if !self.tracer.is_stopguard() {
            return Ok(None);
        }
        status_kib(self.processes[0].child.id(), field).map(Some)
    }

    /// Stops the tracer (the audit rule first) and reads what it captured.
    pub(super) fn stop(&mut self) -> Result<Counts> {
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

/// `stopguard run` on the default config with its paths moved into `dir`,
/// its log in `dir/agent.log`, in a process group of its own.
pub(super) fn spawn_run(agent: &Path, dir: &Path) -> Result<Tracee> {
    let config = dir.join("stopguard.toml");
    fs::write(&config, run_config(dir)?)
        .with_context(|| format!("writing {}", config.display()))?;
    let child = Command::new(agent)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(file(dir, "agent.log")?)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {} run", agent.display()))?;
    Ok(Tracee::new("stopguard run", child, libc::SIGTERM))
}

/// A field of /proc/`pid`/status, in kB (`VmRSS`, `VmHWM`).
pub(super) fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .with_context(|| format!("no {field} in {path}"))?;
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected {path}: {line}"))
}

/// "exec 1234 true": a bpftrace line for one of the storm's processes.
pub(super) fn is_storm_line(line: &str, kind: &str) -> bool {
    line.strip_prefix(kind)
        .and_then(|rest| rest.split_whitespace().nth(1))
        == Some("true")
}

#[derive(Default)]
pub(super) struct Counts {
    pub(super) exec: u64,
    pub(super) events: u64,
    pub(super) lost: u64,
}
