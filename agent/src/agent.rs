//! `stopguard run`: the long-running agent. Kernel events keep the process
//! table current; detection turns them into findings; findings become
//! actions (guard, freeze, release), alert records and audit lines. The
//! control socket opens and closes windows, thaws, and reports status.

use std::{
    collections::HashMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    actions,
    alert::{self, Alert, WindowInfo},
    audit::{self, AuditLog},
    config::{Config, InWindow, Service, UnexpectedRespawn},
    control::{self, Answer, Request},
    detect::{ControlCommand, Detector, Finding, Intent, Started, Window},
    events::Event,
    kernel::ProbeOptions,
    kernel::comm_key,
    metrics::Metrics,
    monitor::Monitor,
    process::ProcessTable,
    sinks::{self, Delivery},
    trace::{Clock, boot_ns},
};

/// Unresolved alerts kept for resolving later.
const MAX_FIRING: usize = 1000;

/// How often the agent logs what it has seen.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// What one batch of events asked of the agent.
#[derive(Default)]
struct Batch {
    findings: Vec<Finding>,
    /// Processes the kernel stopped at exec because their name is guarded.
    guard_stopped: Vec<u32>,
    lost: Option<u64>,
}

/// A process the agent holds frozen.
struct Held {
    service: String,
    frozen: actions::Frozen,
}

/// Respawns of one service after the first was frozen.
struct Train {
    frozen_pid: u32,
    retries: u32,
}

/// What the agent keeps in `state_dir` across restarts, `kill -9` included.
#[derive(Default, Serialize, serde::Deserialize)]
struct State {
    detector: crate::detect::Saved,
    /// Frozen processes and the service each belongs to.
    held: Vec<(String, actions::Frozen)>,
    /// Service names in the kernel guard map.
    guarded: Vec<String>,
    /// Alerts not yet resolved (thaw, kill, window close).
    #[serde(default)]
    firing: Vec<Value>,
}

/// Respawn alerts of one service held back from the sinks after the first.
struct Group {
    until: Instant,
    first_id: String,
    held: Vec<Value>,
}

struct Agent {
    delivery: Delivery,
    metrics: Metrics,
    /// Event counts already added to the metrics.
    counted: crate::monitor::Counts,
    group_interval: Duration,
    groups: HashMap<String, Group>,
    firing: Vec<Value>,
    freezer: actions::Freezer,
    state_path: PathBuf,
    audit_path: PathBuf,
    guarded: std::collections::BTreeSet<String>,
    host: String,
    services: HashMap<String, Service>,
    detector: Detector,
    audit: AuditLog,
    clock: Clock,
    held: HashMap<u32, Held>,
    trains: HashMap<String, Train>,
    lost: u64,
}

pub async fn run(config: Config, socket: Option<PathBuf>) -> Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let audit = AuditLog::open(&config.agent.audit_log)?;
    let metrics = Metrics::new();
    let delivery = Delivery::start(
        sinks::load(&config.sinks)?,
        &config.agent.state_dir.join("spool"),
        audit.clone(),
        metrics.clone(),
    )?;
    if let Some(addr) = config.agent.metrics_listen {
        metrics.clone().serve(addr).await?;
    }
    let mut agent = Agent {
        delivery,
        metrics,
        counted: Default::default(),
        group_interval: humantime::parse_duration(&config.agent.group_interval)?,
        groups: HashMap::new(),
        firing: Vec::new(),
        freezer: config.agent.freezer,
        state_path: config.agent.state_dir.join("state.json"),
        audit_path: config.agent.audit_log.clone(),
        guarded: Default::default(),
        host: config.agent.host.clone(),
        services: config
            .services
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect(),
        detector: Detector::new(&config.services)?,
        audit,
        clock: Clock::now(),
        held: HashMap::new(),
        trains: HashMap::new(),
        lost: 0,
    };
    let socket = socket.unwrap_or_else(|| config.agent.socket.clone());
    agent.detector.set_agent_pid(std::process::id());
    let mut monitor = Monitor::start(&ProbeOptions {
        ring_bytes: config.agent.ring_bytes,
        ..ProbeOptions::default()
    })?;
    let (call_tx, mut calls) = mpsc::channel(16);
    control::serve(&socket, config.agent.control_group.as_deref(), call_tx)?;
    agent.detector.adopt(monitor.table());
    let restored = agent.restore(&mut monitor)?;
    let services: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    tracing::info!(
        host = %config.agent.host,
        config = %config.source,
        socket = %socket.display(),
        "stopguard running: 4 probes attached, {} processes known, watching {} services ({}); running now: {:?}",
        monitor.table().len_live(),
        services.len(),
        services.join(", "),
        agent.detector.running()
    );
    if let Some(restored) = restored {
        tracing::info!("{restored}");
    }
    let mut summary = tokio::time::interval(SUMMARY_EVERY);
    summary.tick().await;
    let mut second = tokio::time::interval(Duration::from_secs(1));
    let mut batch = Batch::default();
    loop {
        let detector = &mut agent.detector;
        let on_event = |event: &Event, table: &ProcessTable| {
            batch.findings.extend(detector.observe(event, table));
            match event {
                Event::Exec(exec) if exec.guard_stopped => {
                    batch.guard_stopped.push(exec.process.pid)
                }
                Event::Lost(lost) => batch.lost = Some(lost.count),
                _ => {}
            }
        };
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = summary.tick() => log_summary(&monitor),
            _ = second.tick() => {
                agent.follow_up_groups();
                continue;
            }
            Some(call) = calls.recv() => {
                let changes = call.permitted && call.request.changes_state();
                let answer = agent.call(&mut monitor, call.request.clone(), call.peer, call.permitted);
                if changes {
                    agent.save();
                }
                match answer {
                    Answer::Now(answer) => {
                        let _ = call.reply.send(answer);
                    }
                    Answer::Later(answer) => {
                        tokio::spawn(async move {
                            let _ = call.reply.send(answer.await);
                        });
                    }
                }
                continue;
            }
            result = monitor.next(on_event) => result?,
        }
        agent.update_metrics(&monitor);
        let work = std::mem::take(&mut batch);
        let changes = !work.findings.is_empty();
        agent.act(&mut monitor, work)?;
        if changes {
            agent.save();
        }
    }
    let mut tail = Batch::default();
    monitor.flush(|e, t| tail.findings.extend(agent.detector.observe(e, t)))?;
    for finding in tail.findings {
        agent.audit.write(&finding);
    }
    let _ = fs::remove_file(&socket);
    log_summary(&monitor);
    tracing::info!("stopguard stopped");
    Ok(())
}

fn log_summary(monitor: &Monitor) {
    tracing::info!(
        "{}; {} processes tracked ({} alive)",
        monitor.counts(),
        monitor.table().len(),
        monitor.table().len_live()
    );
}

impl Agent {
    /// Writes the state file: to a temporary file, synced, then renamed, so
    /// a crash leaves the old state or the new, never half of one.
    fn save(&self) {
        let state = State {
            detector: self.detector.snapshot(),
            held: self
                .held
                .values()
                .map(|h| (h.service.clone(), h.frozen.clone()))
                .collect(),
            guarded: self.guarded.iter().cloned().collect(),
            firing: self.firing.clone(),
        };
        let write = || -> Result<()> {
            if let Some(dir) = self.state_path.parent() {
                fs::create_dir_all(dir)?;
            }
            let tmp = self.state_path.with_extension("json.tmp");
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&serde_json::to_vec_pretty(&state)?)?;
            file.sync_all()?;
            fs::rename(&tmp, &self.state_path)?;
            Ok(())
        };
        if let Err(err) = write() {
            tracing::error!("saving state to {}: {err:#}", self.state_path.display());
        }
    }

    /// Takes back the state of a previous run: windows, operator stops,
    /// frozen processes (those still alive and still the same process), and
    /// the guard map.
    /// Returns what was restored, in words.
    fn restore(&mut self, monitor: &mut Monitor) -> Result<Option<String>> {
        let text = match fs::read_to_string(&self.state_path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(err).with_context(|| format!("reading {}", self.state_path.display()));
            }
        };
        let state: State = serde_json::from_str(&text)
            .with_context(|| format!("reading the saved state {}", self.state_path.display()))?;
        self.detector.restore(state.detector);
        self.firing = state.firing;
        for (service, frozen) in state.held {
            if frozen.start_ticks.is_some()
                && actions::start_ticks(frozen.pid) == frozen.start_ticks
            {
                self.trains.insert(
                    service.clone(),
                    Train {
                        frozen_pid: frozen.pid,
                        retries: 0,
                    },
                );
                self.held.insert(frozen.pid, Held { service, frozen });
            }
        }
        for service in state.guarded {
            self.guard(monitor, &service, true);
        }
        self.audit.write(&json!({
            "event": "state_restored",
            "windows": self.detector.windows(),
            "frozen": self.held.keys().collect::<Vec<_>>(),
        }));
        Ok(Some(format!(
            "state restored from {}: {} windows, {} frozen, guarding {:?}",
            self.state_path.display(),
            self.detector.windows().len(),
            self.held.len(),
            self.guarded
        )))
    }

    /// The name the kernel guard matches for a service: its running main
    /// process's comm, else its first exe glob's file name.
    fn guard_name(&self, service: &str, table: &ProcessTable) -> Option<String> {
        let running = self
            .detector
            .running()
            .into_iter()
            .find(|(name, _)| *name == service)
            .and_then(|(_, pid)| table.live(pid))
            .map(|p| p.comm.clone());
        running.or_else(|| {
            let exe = self.services.get(service)?.exe.first()?;
            let name = exe.rsplit('/').next()?;
            (!name.contains(['*', '?', '['])).then(|| name.to_string())
        })
    }

    fn guard(&mut self, monitor: &mut Monitor, service: &str, on: bool) {
        let Some(name) = self.guard_name(service, monitor.table()) else {
            tracing::warn!("{service}: no name to guard (exe globs end in a wildcard)");
            return;
        };
        if on {
            self.guarded.insert(service.to_string());
        } else {
            self.guarded.remove(service);
        }
        let result = monitor.probes().guard().and_then(|mut map| {
            if on {
                map.insert(comm_key(&name), 1, 0)?;
            } else {
                let _ = map.remove(&comm_key(&name));
            }
            Ok(())
        });
        if let Err(err) = result {
            tracing::error!("guard map ({name}): {err:#}");
        }
    }

    fn act(&mut self, monitor: &mut Monitor, work: Batch) -> Result<()> {
        if let Some(count) = work.lost {
            self.lost += count;
            tracing::warn!(
                "{count} kernel records lost (ring buffer full): state unknown, process table resynchronised from /proc"
            );
            self.audit
                .write(&json!({"event": "events_lost", "count": count}));
        }
        for expired in self.detector.expire_windows(boot_ns()) {
            tracing::info!("window {} on {} expired", expired.id, expired.service);
            self.audit
                .write(&json!({"event": "window_expired", "window": expired}));
            self.guard(monitor, &expired.service, false);
        }
        let mut keep_stopped = Vec::new();
        for finding in work.findings {
            self.audit.write(&finding);
            match &finding {
                Finding::OperatorStop(stop) => {
                    tracing::warn!(
                        "{} stopped by {} ({} from {} pid {})",
                        stop.service,
                        stop.loginuid.map_or("?".into(), |u| format!("uid {u}")),
                        stop.signal_name,
                        stop.sender.comm,
                        stop.sender.pid
                    );
                    if self
                        .services
                        .get(&stop.service)
                        .map(|s| s.on_unexpected_respawn)
                        == Some(UnexpectedRespawn::Freeze)
                    {
                        self.guard(monitor, &stop.service, true);
                    }
                }
                Finding::Respawn {
                    started,
                    stopped_by,
                    window,
                } => {
                    let Some(service) = self.services.get(&started.service).cloned() else {
                        continue;
                    };
                    let freeze = match window {
                        Some(_) => service.on_respawn == InWindow::Freeze,
                        None => service.on_unexpected_respawn == UnexpectedRespawn::Freeze,
                    };
                    if freeze && self.retry(started) {
                        continue;
                    }
                    let action = if freeze {
                        self.freeze(started, &mut keep_stopped)
                    } else if window.is_some() && service.on_respawn == InWindow::Kill {
                        match actions::kill(started.pid) {
                            Ok(()) => "killed".to_string(),
                            Err(err) => format!("kill failed: {err:#}"),
                        }
                    } else if window.is_none()
                        && service.on_unexpected_respawn == UnexpectedRespawn::Ignore
                    {
                        continue;
                    } else {
                        "alerted".to_string()
                    };
                    let record: Alert = alert::respawn(
                        &self.host,
                        started,
                        stopped_by,
                        window.as_ref(),
                        &action,
                        &self.clock,
                        boot_ns(),
                    );
                    self.raise(record);
                }
                Finding::EventsLost { count, at_risk } => {
                    for risk in at_risk {
                        let process = risk.started_unseen.and_then(|pid| {
                            let p = monitor.table().live(pid)?;
                            Some(alert::ProcessInfo {
                                pid,
                                exe: p.exe.clone().unwrap_or_default(),
                                cmdline: p.cmdline.clone(),
                            })
                        });
                        let record = alert::events_lost(
                            &self.host,
                            *count,
                            risk,
                            process,
                            &self.clock,
                            boot_ns(),
                        );
                        self.raise(record);
                    }
                }
                Finding::OperatorStart { started, loginuid } => {
                    tracing::info!(
                        "{} started by uid {loginuid} (pid {})",
                        started.service,
                        started.pid
                    );
                    if self
                        .detector
                        .windows()
                        .iter()
                        .all(|w| w.service != started.service)
                    {
                        self.guard(monitor, &started.service, false);
                    }
                }
                Finding::CrashRestart { started } => tracing::info!(
                    "{} restarted by {} after a crash (pid {})",
                    started.service,
                    started.supervisor.as_ref().map_or("?", |s| s.comm.as_str()),
                    started.pid
                ),
                Finding::Start { .. } | Finding::Exited { .. } => {}
            }
        }
        // Whatever the guard stopped that detection did not keep: let it go.
        for pid in work.guard_stopped {
            if !keep_stopped.contains(&pid) {
                match actions::release(pid) {
                    Ok(()) => self
                        .audit
                        .write(&json!({"event": "guard_released", "pid": pid})),
                    Err(err) => tracing::warn!("releasing pid {pid}: {err:#}"),
                }
            }
        }
        Ok(())
    }

    /// Announces an alert: the agent's log, stdout (one JSON line), the
    /// audit log.
    fn raise(&mut self, record: Alert) {
        let value = serde_json::to_value(&record).expect("alerts serialize");
        self.metrics
            .alerts
            .get_or_create(&vec![("kind", record.kind.to_string())])
            .inc();
        self.follow_up_groups();
        let grouped = match self.groups.get_mut(&record.service) {
            Some(group) if record.kind.starts_with("respawn") => {
                group.held.push(value.clone());
                self.audit.write(&json!({
                    "event": "alert_grouped", "service": record.service,
                    "id": record.id, "group_of": group.first_id,
                }));
                true
            }
            _ => false,
        };
        if !grouped {
            if record.kind.starts_with("respawn") {
                self.groups.insert(
                    record.service.clone(),
                    Group {
                        until: Instant::now() + self.group_interval,
                        first_id: record.id.clone(),
                        held: Vec::new(),
                    },
                );
            }
            // In the spool, synced, before anyone hears of it.
            if let Err(err) = self.delivery.deliver(&value) {
                tracing::error!("spooling alert {}: {err:#}", record.id);
            }
        }
        if record.kind != "events_lost" {
            self.firing.push(value);
            // Bounded: the oldest unresolved alerts are the least likely
            // to be resolved by a thaw now.
            if self.firing.len() > MAX_FIRING {
                self.firing.remove(0);
            }
        }
        tracing::error!("{}", record.summary);
        println!(
            "{}",
            serde_json::to_string(&record).expect("alerts serialize")
        );
        self.audit.write(&json!({"alert": record}));
    }

    /// Brings the counters and gauges up to date with the monitor and state.
    fn update_metrics(&mut self, monitor: &Monitor) {
        let now = monitor.counts();
        let before = std::mem::replace(&mut self.counted, now);
        for kind in crate::events::RecordKind::ALL {
            self.metrics
                .events
                .get_or_create(&vec![("kind", kind.name().to_string())])
                .inc_by(now.by_kind[kind] - before.by_kind[kind]);
        }
        self.metrics.lost.inc_by(now.lost - before.lost);
        self.metrics.processes.set(monitor.table().len() as i64);
        self.metrics
            .windows_open
            .set(self.detector.windows().len() as i64);
        self.metrics.frozen.set(self.held.len() as i64);
    }

    /// Ends the groups whose interval is over: those that held alerts back
    /// send one follow-up naming how many.
    fn follow_up_groups(&mut self) {
        let now = Instant::now();
        let ended: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, g)| g.until <= now)
            .map(|(s, _)| s.clone())
            .collect();
        for service in ended {
            let group = self.groups.remove(&service).expect("listed above");
            let Some(latest) = group.held.last() else {
                continue;
            };
            let mut follow_up = latest.clone();
            let n = group.held.len();
            follow_up["id"] = json!(format!("{}-group", group.first_id));
            follow_up["summary"] = json!(format!(
                "{service} respawned {n} more time{} within {} of alert {}; latest: {}",
                if n == 1 { "" } else { "s" },
                humantime::format_duration(self.group_interval),
                group.first_id,
                latest["summary"].as_str().unwrap_or("")
            ));
            follow_up["grouped"] = json!(group.held.iter().map(|a| &a["id"]).collect::<Vec<_>>());
            tracing::warn!("{}", follow_up["summary"].as_str().unwrap_or(""));
            if let Err(err) = self.delivery.deliver(&follow_up) {
                tracing::error!("spooling the follow-up for {service}: {err:#}");
            }
        }
    }

    /// Resolves the firing alerts that `ended` picks out.
    fn resolve(&mut self, ended: impl Fn(&Value) -> bool) {
        let (done, firing): (Vec<Value>, Vec<Value>) = std::mem::take(&mut self.firing)
            .into_iter()
            .partition(ended);
        self.firing = firing;
        for alert in done {
            if let Err(err) = self.delivery.resolve(&alert) {
                tracing::error!("spooling the resolution of {}: {err:#}", alert["id"]);
            }
        }
    }

    /// A supervisor that sees no pidfile tries again each cycle: keep the
    /// first respawn frozen and end the retries. True when this was one.
    fn retry(&mut self, started: &Started) -> bool {
        let Some(train) = self.trains.get_mut(&started.service) else {
            return false;
        };
        if !self.held.contains_key(&train.frozen_pid)
            || !Path::new(&format!("/proc/{}", train.frozen_pid)).exists()
        {
            return false;
        }
        train.retries += 1;
        let killed = actions::kill(started.pid);
        tracing::warn!(
            "{} respawned again by {} (tried {} more times); pid {} killed, pid {} stays frozen",
            started.service,
            started.supervisor.as_ref().map_or("?", |s| s.comm.as_str()),
            train.retries,
            started.pid,
            train.frozen_pid
        );
        self.audit.write(&json!({
            "event": "respawn_retry_killed",
            "service": started.service,
            "pid": started.pid,
            "retries": train.retries,
            "frozen_pid": train.frozen_pid,
            "error": killed.err().map(|e| format!("{e:#}")),
        }));
        true
    }

    fn freeze(&mut self, started: &Started, keep_stopped: &mut Vec<u32>) -> String {
        match actions::freeze(started.pid, self.freezer) {
            Ok(frozen) => {
                let how = if frozen.cgroup.is_some() {
                    "frozen (SIGSTOP at exec, cgroup frozen)"
                } else {
                    "frozen (SIGSTOP at exec)"
                };
                self.trains.insert(
                    started.service.clone(),
                    Train {
                        frozen_pid: started.pid,
                        retries: 0,
                    },
                );
                self.held.insert(
                    started.pid,
                    Held {
                        service: started.service.clone(),
                        frozen,
                    },
                );
                keep_stopped.push(started.pid);
                // On disk before anyone hears of it: an agent killed right
                // after the alert must still know what it holds.
                self.save();
                format!("{how}; thaw with: stopguard thaw {}", started.pid)
            }
            Err(err) => format!("freeze failed: {err:#}"),
        }
    }

    /// Thaws (or kills) what is held for `service`, or the one pid.
    fn release_held(&mut self, target: &str, kill: bool) -> Vec<u32> {
        let pids: Vec<u32> = self
            .held
            .iter()
            .filter(|(pid, h)| h.service == target || pid.to_string() == target)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in &pids {
            let held = self.held.remove(pid).expect("listed above");
            self.trains.remove(&held.service);
            let result = if kill {
                actions::kill(*pid).and_then(|()| actions::thaw(&held.frozen))
            } else {
                actions::thaw(&held.frozen)
            };
            if let Err(err) = result {
                tracing::warn!("releasing pid {pid}: {err:#}");
            }
            self.audit.write(&json!({
                "event": if kill { "killed" } else { "thawed" },
                "service": held.service,
                "pid": pid,
            }));
            self.resolve(|a| a["process"]["pid"] == *pid);
        }
        pids
    }

    fn call(
        &mut self,
        monitor: &mut Monitor,
        request: Request,
        peer: control::Peer,
        permitted: bool,
    ) -> Answer {
        if permitted && matches!(request, Request::Stop { .. } | Request::AlertTest { .. }) {
            self.audit
                .write(&json!({"event": "control", "request": request, "peer": peer}));
        }
        match request {
            Request::Stop {
                service,
                reason,
                for_secs,
                wait_secs,
            } if permitted => self.stop(monitor, service, reason, for_secs, wait_secs, peer),
            Request::AlertTest { sink } if permitted => self.alert_test(sink),
            Request::Audit {
                since_secs,
                service,
            } => {
                let path = self.audit_path.clone();
                Answer::Later(Box::pin(async move {
                    let since = since_secs.map(Duration::from_secs);
                    let read = tokio::task::spawn_blocking(move || {
                        audit::read(&path, since, service.as_deref())
                    })
                    .await;
                    match read {
                        Ok(Ok(timeline)) => json!({"ok": true, "timeline": timeline}),
                        Ok(Err(err)) => control::error(format!("{err:#}")),
                        Err(err) => control::error(format!("reading the audit log: {err}")),
                    }
                }))
            }
            request => Answer::Now(self.answer(monitor, request, peer, permitted)),
        }
    }

    /// `stopguard alert test`: a test alert straight to each sink (or the
    /// one named), outside the spool; the answer lists each result.
    fn alert_test(&self, sink: Option<String>) -> Answer {
        let chosen: Vec<sinks::Sink> = self
            .delivery
            .sinks()
            .filter(|s| sink.as_ref().is_none_or(|n| *n == s.name))
            .cloned()
            .collect();
        if chosen.is_empty() {
            let names: Vec<String> = self.delivery.sinks().map(|s| s.name.clone()).collect();
            return Answer::Now(control::error(match sink {
                Some(name) => format!("no sink `{name}` (sinks: {})", names.join(", ")),
                None => "no [[sink]] is configured".to_string(),
            }));
        }
        let alert = alert::test(&self.host, &self.clock, boot_ns());
        Answer::Later(Box::pin(async move {
            let mut results = Vec::new();
            for sink in chosen {
                results.push(sinks::test(sink, alert.clone()).await);
            }
            json!({"ok": true, "results": results})
        }))
    }

    /// Opens a window on `service` for `peer`, arming the guard when the
    /// service's policy freezes.
    fn open_window(
        &mut self,
        monitor: &mut Monitor,
        service: &str,
        reason: &str,
        for_secs: Option<u64>,
        peer: control::Peer,
    ) -> std::result::Result<Window, String> {
        let window = self.detector.open_window(
            service,
            reason,
            (peer.uid, peer.loginuid),
            boot_ns(),
            for_secs.map(|s| s * 1_000_000_000),
        )?;
        if self.services.get(service).map(|s| s.on_respawn) == Some(InWindow::Freeze) {
            self.guard(monitor, service, true);
        }
        tracing::info!("window {} opened on {service}: {reason}", window.id);
        Ok(window)
    }

    /// `stopguard stop`: a window (the open one, or a new one), then the
    /// service's stop command or SIGTERM to its main process; answers once
    /// the main process is gone.
    fn stop(
        &mut self,
        monitor: &mut Monitor,
        service: String,
        reason: String,
        for_secs: Option<u64>,
        wait_secs: u64,
        peer: control::Peer,
    ) -> Answer {
        let open = self
            .detector
            .windows()
            .iter()
            .find(|w| w.service == service)
            .cloned();
        let window = match open {
            Some(window) => window,
            None => match self.open_window(monitor, &service, &reason, for_secs, peer) {
                Ok(window) => window,
                Err(err) => return Answer::Now(control::error(err)),
            },
        };
        self.save();
        self.detector.control_command(ControlCommand {
            pid: peer.pid,
            comm: "stopguard".into(),
            args: vec!["stopguard".into(), "stop".into(), service.clone()],
            intent: Intent::Stop,
            loginuid: peer.loginuid.unwrap_or(peer.uid),
            time_ns: boot_ns(),
        });
        let main = self
            .detector
            .running()
            .into_iter()
            .find(|(name, _)| *name == service)
            .and_then(|(_, pid)| monitor.table().live(pid))
            .map(|p| (p.pid, p.key.start_ticks));
        let window = WindowInfo::new(&window, &self.clock);
        if let Some((pid, _)) = main.filter(|(pid, _)| self.held.contains_key(pid)) {
            return Answer::Now(json!({
                "ok": true, "service": service, "window": window, "held_frozen": pid,
            }));
        }
        let command = self
            .services
            .get(&service)
            .and_then(|s| s.stop_command.clone());
        Answer::Later(Box::pin(stop_service(
            service,
            command,
            main,
            peer.loginuid,
            Duration::from_secs(wait_secs),
            window,
        )))
    }

    fn answer(
        &mut self,
        monitor: &mut Monitor,
        request: Request,
        peer: control::Peer,
        permitted: bool,
    ) -> Value {
        if !permitted {
            tracing::warn!(
                uid = peer.uid,
                pid = peer.pid,
                "refused {request:?}: permission denied"
            );
            self.audit.write(&json!({
                "event": "permission_denied",
                "request": request,
                "peer": peer,
            }));
            return control::error(
                "permission denied: changing state needs root or the control group",
            );
        }
        if request.changes_state() {
            self.audit
                .write(&json!({"event": "control", "request": request, "peer": peer}));
        }
        match request {
            Request::WindowOpen {
                service,
                reason,
                for_secs,
            } => match self.open_window(monitor, &service, &reason, for_secs, peer) {
                Ok(window) => json!({"ok": true, "window": WindowInfo::new(&window, &self.clock)}),
                Err(err) => control::error(err),
            },
            Request::WindowClose { target, thaw, kill } => {
                let Some(window) = self.detector.close_window(&target) else {
                    return control::error(format!("no open window on or named `{target}`"));
                };
                self.guard(monitor, &window.service, false);
                self.resolve(|a| a["service"] == window.service.as_str());
                let released = if thaw || kill {
                    self.release_held(&window.service, kill)
                } else {
                    Vec::new()
                };
                tracing::info!("window {} on {} closed", window.id, window.service);
                json!({
                    "ok": true,
                    "window": WindowInfo::new(&window, &self.clock),
                    if kill { "killed" } else { "thawed" }: released,
                    "still_frozen": self.held.iter().filter(|(_, h)| h.service == window.service).map(|(p, _)| *p).collect::<Vec<_>>(),
                })
            }
            Request::WindowList => json!({
                "ok": true,
                "windows": self.detector.windows().iter().map(|w| WindowInfo::new(w, &self.clock)).collect::<Vec<_>>(),
            }),
            Request::Thaw { target } => {
                let thawed = self.release_held(&target, false);
                if thawed.is_empty() {
                    return control::error(format!("nothing frozen for `{target}`"));
                }
                if let Some(service) = self.services.keys().find(|s| **s == target).cloned() {
                    self.guard(monitor, &service, false);
                }
                json!({"ok": true, "thawed": thawed})
            }
            Request::Status => {
                let running: HashMap<&str, u32> = self.detector.running().into_iter().collect();
                let services: Vec<Value> = self
                    .services
                    .keys()
                    .map(|name| {
                        let stop = self.detector.stop_of(name);
                        json!({
                            "name": name,
                            "pid": running.get(name.as_str()),
                            "state": if running.contains_key(name.as_str()) { "running" } else if stop.is_some() { "stopped_by_operator" } else { "not_running" },
                            "stopped_by": stop,
                            "frozen": self.held.iter().filter(|(_, h)| &h.service == name).map(|(p, _)| *p).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                json!({
                    "ok": true,
                    "host": self.host,
                    "services": services,
                    "windows": self.detector.windows().iter().map(|w| WindowInfo::new(w, &self.clock)).collect::<Vec<_>>(),
                    "frozen": self.held.keys().collect::<Vec<_>>(),
                    "events": monitor.counts(),
                    "lost": self.lost,
                    "spool_depth": self.delivery.spool_depth(),
                    "sinks": self.delivery.status(),
                })
            }
            Request::Stop { .. } | Request::Audit { .. } | Request::AlertTest { .. } => {
                // `call` answers these; never a reason to take the agent down.
                control::error("internal error: request not answered by `call`")
            }
        }
    }
}

/// Stops a service: runs `command` (with the operator's login uid, so what
/// it does is theirs in the audit trail) or sends SIGTERM to `main`, then
/// waits up to `wait` for `main` to exit.
async fn stop_service(
    service: String,
    command: Option<Vec<String>>,
    main: Option<(u32, u64)>,
    loginuid: Option<u32>,
    wait: Duration,
    window: WindowInfo,
) -> Value {
    let started = Instant::now();
    let stays = format!("window {} stays open", window.id);
    let mut answer =
        json!({"ok": true, "service": service, "window": window, "pid": main.map(|m| m.0)});
    if let Some(argv) = command {
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(uid) = loginuid {
            let digits = uid.to_string().into_bytes();
            // SAFETY: between fork and exec only async-signal-safe calls:
            // open, write, close on a path and buffer made beforehand.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = libc::open(c"/proc/self/loginuid".as_ptr(), libc::O_WRONLY);
                    if fd >= 0 {
                        libc::write(fd, digits.as_ptr().cast(), digits.len());
                        libc::close(fd);
                    }
                    Ok(())
                });
            }
        }
        let shown = argv.join(" ");
        let output = match tokio::time::timeout(wait, cmd.output()).await {
            Err(_) => {
                return control::error(format!(
                    "`{shown}` did not finish within {} s; {stays}",
                    wait.as_secs()
                ));
            }
            Ok(Err(err)) => return control::error(format!("running `{shown}`: {err}; {stays}")),
            Ok(Ok(output)) => output,
        };
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = text
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if !output.status.success() {
            return control::error(format!(
                "`{shown}` failed ({}): {}; {stays}",
                output.status,
                tail.join(" / ")
            ));
        }
        answer["command"] = json!(shown);
        answer["output"] = json!(tail.join("\n"));
    } else if let Some((pid, _)) = main {
        if let Err(err) = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        ) {
            return control::error(format!("sending SIGTERM to pid {pid}: {err}; {stays}"));
        }
        answer["signal"] = json!("SIGTERM");
    }
    if let Some((pid, ticks)) = main {
        while actions::start_ticks(pid) == Some(ticks) {
            if started.elapsed() > wait {
                return control::error(format!(
                    "{service} (pid {pid}) still runs {} s later; {stays}",
                    wait.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    answer["seconds"] = json!((started.elapsed().as_secs_f64() * 100.0).round() / 100.0);
    answer
}
