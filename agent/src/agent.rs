//! `stopguard run`: the long-running agent. Kernel events keep the process
//! table current; detection turns them into findings; findings become
//! actions (guard, freeze, release), alert records and audit lines.

use std::{
    collections::HashMap,
    fs,
    io::Write,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    actions,
    alert::{self, Alert},
    config::{Config, UnexpectedRespawn},
    detect::{Detector, Finding},
    events::Event,
    kernel::{ProbeOptions, comm_key},
    monitor::Monitor,
    process::ProcessTable,
};

/// How often the agent logs what it has seen.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Appends JSON lines to the audit log.
struct AuditLog {
    file: fs::File,
}

#[derive(Serialize)]
struct AuditLine<'a, T: Serialize> {
    at: String,
    #[serde(flatten)]
    entry: &'a T,
}

impl AuditLog {
    fn open(path: &Path) -> Result<AuditLog> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the audit log {}", path.display()))?;
        Ok(AuditLog { file })
    }

    fn write(&mut self, entry: &impl Serialize) {
        let line = AuditLine {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            entry,
        };
        let text = serde_json::to_string(&line).expect("audit entries serialize");
        if let Err(err) = writeln!(self.file, "{text}") {
            tracing::error!("writing the audit log: {err}");
        }
    }
}

/// Respawns of one service after the first was frozen.
struct Train {
    frozen_pid: u32,
    retries: u32,
}

/// What one batch of events asked of the agent.
#[derive(Default)]
struct Batch {
    findings: Vec<Finding>,
    /// Processes the kernel stopped at exec because their name is guarded.
    guard_stopped: Vec<u32>,
    lost: Option<u64>,
}

pub async fn run(config: Config) -> Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut audit = AuditLog::open(&config.agent.audit_log)?;
    let mut detector = Detector::new(&config.services)?;
    let policies: HashMap<String, UnexpectedRespawn> = config
        .services
        .iter()
        .map(|s| (s.name.clone(), s.on_unexpected_respawn))
        .collect();
    let mut monitor = Monitor::start(&ProbeOptions::default())?;
    detector.adopt(monitor.table());
    let services: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    tracing::info!(
        host = %config.agent.host,
        config = %config.source,
        "stopguard running: 4 probes attached, {} processes known, watching {} services ({}); running now: {:?}",
        monitor.table().len_live(),
        services.len(),
        services.join(", "),
        detector.running()
    );
    let mut summary = tokio::time::interval(SUMMARY_EVERY);
    summary.tick().await;
    let mut trains: HashMap<String, Train> = HashMap::new();
    let mut batch = Batch::default();
    loop {
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
            result = monitor.next(on_event) => result?,
        }
        let work = std::mem::take(&mut batch);
        if let Some(count) = work.lost {
            tracing::warn!(
                "{count} kernel records lost (ring buffer full): state unknown, process table resynchronised from /proc"
            );
            audit.write(&serde_json::json!({"event": "events_lost", "count": count}));
        }
        let mut keep_stopped = Vec::new();
        for finding in work.findings {
            audit.write(&finding);
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
                    if policies.get(&stop.service) == Some(&UnexpectedRespawn::Freeze) {
                        let comm = monitor
                            .table()
                            .live(stop.pid)
                            .map(|p| p.comm.clone())
                            .unwrap_or_else(|| stop.service.clone());
                        if let Err(err) = monitor.probes().guard()?.insert(comm_key(&comm), 1, 0) {
                            tracing::error!("guarding {comm}: {err}");
                        }
                    }
                }
                Finding::Respawn {
                    started,
                    stopped_by,
                } => {
                    let policy = policies.get(&started.service).copied().unwrap_or_default();
                    if policy == UnexpectedRespawn::Freeze
                        && let Some(train) = trains.get_mut(&started.service)
                        && Path::new(&format!("/proc/{}", train.frozen_pid)).exists()
                    {
                        // A supervisor that sees no pidfile tries again each
                        // cycle: keep the first frozen, end the retries.
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
                        audit.write(&serde_json::json!({
                            "event": "respawn_retry_killed",
                            "service": started.service,
                            "pid": started.pid,
                            "retries": train.retries,
                            "frozen_pid": train.frozen_pid,
                            "error": killed.err().map(|e| format!("{e:#}")),
                        }));
                        continue;
                    }
                    let action = match policy {
                        UnexpectedRespawn::Freeze => match actions::freeze(started.pid) {
                            Ok(state) => {
                                let action = match &state.cgroup {
                                    Some(cgroup) => format!(
                                        "frozen (SIGSTOP at exec, cgroup frozen); thaw with: echo 0 > {}/cgroup.freeze; kill -CONT {}",
                                        cgroup.display(),
                                        started.pid
                                    ),
                                    None => format!(
                                        "frozen (SIGSTOP at exec); thaw with: kill -CONT {}",
                                        started.pid
                                    ),
                                };
                                trains.insert(
                                    started.service.clone(),
                                    Train {
                                        frozen_pid: started.pid,
                                        retries: 0,
                                    },
                                );
                                keep_stopped.push(started.pid);
                                action
                            }
                            Err(err) => format!("freeze failed: {err:#}"),
                        },
                        UnexpectedRespawn::Alert => "alerted".to_string(),
                        UnexpectedRespawn::Ignore => continue,
                    };
                    let record: Alert = alert::respawn(
                        &config.agent.host,
                        started,
                        stopped_by,
                        &action,
                        SystemTime::now(),
                        crate::trace::boot_ns(),
                    );
                    tracing::error!("{}", record.summary);
                    println!(
                        "{}",
                        serde_json::to_string(&record).expect("alerts serialize")
                    );
                    audit.write(&serde_json::json!({"alert": record}));
                }
                Finding::OperatorStart { started, loginuid } => {
                    tracing::info!(
                        "{} started by uid {loginuid} (pid {})",
                        started.service,
                        started.pid
                    );
                    if let Some(p) = monitor.table().live(started.pid) {
                        let comm = comm_key(&p.comm.clone());
                        let _ = monitor.probes().guard()?.remove(&comm);
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
                    Ok(()) => {
                        audit.write(&serde_json::json!({"event": "guard_released", "pid": pid}))
                    }
                    Err(err) => tracing::warn!("releasing pid {pid}: {err:#}"),
                }
            }
        }
    }
    let mut tail = Batch::default();
    monitor.flush(|e, t| tail.findings.extend(detector.observe(e, t)))?;
    for finding in tail.findings {
        audit.write(&finding);
    }
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
