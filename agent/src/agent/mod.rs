//! `stopguard run`: the long-running agent. Kernel events keep the process
//! table current; detection turns them into findings; `decide` says what
//! each finding asks for; custody freezes, alerting tells people.
//!
//! - `requests`: what the control socket asks of the agent.
//! - `state`: what survives a restart; `gap`: what the probes recorded
//!   while no agent ran, and when that began.
//! - `units`: what systemd says about a service's unit.

mod cluster;
mod cluster_switch;
mod explain;
mod fleet_requests;
mod gap;
pub mod host_lock;
mod memory;
pub mod preflight;
mod reload;
mod report;
mod requests;
mod respond;
mod state;
mod stop;
mod units;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use self::report::log_summary;
use crate::{
    alerting::Alerting,
    alerting::sinks::Delivery,
    audit::AuditLog,
    config::{Config, Settings, SinkConfig},
    control::{self, server::Wire},
    custody::Custody,
    decide,
    detect::{self, Detector, Finding},
    events::{Event, ProcessKey},
    kernel::{Pinning, ProbeOptions, pins},
    monitor::{Counts, Monitor},
    process::ProcessTable,
    sys::clock::Clock,
    sys::files::WriteFailure,
    sys::metrics::Metrics,
    sys::notify::{Notice, Notifier},
};

/// How often the agent logs what it has seen.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// How often the supervisors of every service are looked at again (also
/// after each start and stop), for `status` and alerts.
const LOOK_EVERY: Duration = Duration::from_secs(15);

/// What one batch of events asked of the agent.
#[derive(Default)]
struct Batch {
    findings: Vec<Finding>,
    /// Processes the kernel stopped at exec because their name is guarded.
    guard_stopped: Vec<u32>,
    /// Processes systemd (PID 1) signalled or started: its jobs on units.
    by_systemd: Vec<ProcessKey>,
    lost: Option<u64>,
}

struct Agent {
    host: String,
    clock: Clock,
    detector: Detector,
    restart_policies: units::RestartPolicies,
    custody: Custody,
    alerting: Alerting,
    audit: AuditLog,
    audit_path: PathBuf,
    state_path: PathBuf,
    /// Why state.json could not be saved last, until a save works again.
    state_failure: Option<WriteFailure>,
    metrics: Metrics,
    /// Event counts already added to the metrics.
    counted: Counts,
    lost: u64,
    /// The running `[agent]` table and sinks, to tell what a reload changes.
    settings: Settings,
    sinks: Vec<SinkConfig>,
    /// When this agent read what its predecessor's pinned probes recorded
    /// (boot ns): what started before happened while no agent ran.
    down_until_ns: Option<u64>,
    /// What the supervisors said last of each service.
    watchers: explain::Watchers,
    /// Off switches `stop --and-pause` ran, not yet in their windows.
    switched: stop::Switched,
    /// Fleet mode: this host's link to its cluster in etcd.
    fleet: Option<cluster::Fleet>,
}

/// Runs the agent on `config`, read from `path` (None: the default
/// resolution, see `Config::load`), which SIGHUP reads again.
pub async fn run(config: Config, path: Option<PathBuf>, socket: Option<PathBuf>) -> Result<()> {
    let sinks = preflight::check(&config)?;
    let socket = socket.unwrap_or_else(|| config.agent.socket.clone());
    let _host_lock = host_lock::acquire(&socket)?;
    crate::sys::raise_fd_limit();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    crate::sys::files::private_dir(&config.agent.state_dir).context("state_dir")?;
    let audit = AuditLog::open(&config.agent.audit_log)?;
    let metrics = Metrics::new();
    let delivery = Delivery::start(
        sinks,
        &config.agent.state_dir.join("spool"),
        audit.clone(),
        metrics.clone(),
    )?;
    if let Some(addr) = config.agent.metrics_listen {
        metrics.clone().serve(addr).await?;
    }
    let mut agent = Agent {
        host: config.agent.host.clone(),
        clock: Clock::now(),
        detector: Detector::new(&config.services),
        restart_policies: units::RestartPolicies::default(),
        custody: Custody::new(config.agent.freezer, audit.clone()),
        alerting: Alerting::new(
            delivery,
            metrics.clone(),
            audit.clone(),
            config.agent.group_interval,
        ),
        audit,
        audit_path: config.agent.audit_log.clone(),
        state_path: config.agent.state_dir.join("state.json"),
        state_failure: None,
        metrics,
        counted: Counts::default(),
        lost: 0,
        settings: config.agent.clone(),
        sinks: config.sinks.clone(),
        down_until_ns: None,
        watchers: explain::Watchers::default(),
        switched: stop::Switched::default(),
        fleet: None,
    };
    let (news_to_agent, mut news) = mpsc::channel(256);
    if let Some(fleet) = &config.fleet {
        let link = crate::fleet::Link::start(
            crate::fleet::Cluster::new(fleet)?,
            config.agent.host.clone(),
            fleet.heartbeat,
            env!("CARGO_PKG_VERSION").to_string(),
            news_to_agent.clone(),
        );
        agent.alerting.set_cluster(Some(fleet.cluster.clone()));
        agent.fleet = Some(cluster::Fleet::new(link, fleet.unreachable_after));
    }
    agent.detector.set_agent_pid(std::process::id());
    let mut monitor = Monitor::start(
        &ProbeOptions {
            ring_bytes: config.agent.ring_bytes,
            pin_root: Some(PathBuf::from(pins::ROOT)),
            notable: detect::notable_names(&config.services).for_probes(),
            ..ProbeOptions::default()
        },
        detect::arg_units(&config.services),
    )?;
    let backlog = monitor.take_backlog()?;
    if gap::report_handover(monitor.probes_ref(), &backlog) {
        agent.down_until_ns = Some(backlog.read_ns);
    }
    let (call_tx, mut calls) = mpsc::channel(16);
    control::server::serve(&socket, config.agent.control_group.as_deref(), call_tx)?;
    agent.detector.adopt_after_gap(
        monitor.table(),
        &backlog.started,
        &backlog.ended,
        gap::gap_began(&backlog, &agent.state_path),
    );
    agent.ask_units();
    let restored = agent.restore(&mut monitor)?;
    agent.adopt_cluster_windows();
    agent.adopt_frozen(&mut monitor);
    let stale = agent.custody.reconcile_guard(monitor.probes());
    if !stale.is_empty() {
        tracing::info!(
            "guard map: {stale:?} guarded by an earlier agent and not by this one: no longer guarded"
        );
    }
    // What happened while no agent ran, acted on before anything new.
    if backlog.records > 0 {
        let mut batch = Batch::default();
        let detector = &mut agent.detector;
        monitor.flush(|event, table| collect(&mut batch, detector, event, table))?;
        agent.act(&mut monitor, batch);
        agent.save();
    }
    memory::release_startup();
    let services: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    let mut notifier = Notifier::from_env();
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
    notifier.send(Notice::Ready {
        status: &agent.watching(),
    });
    let mut summary = tokio::time::interval(SUMMARY_EVERY);
    summary.tick().await;
    let mut second = tokio::time::interval(Duration::from_secs(1));
    let mut look = tokio::time::interval(LOOK_EVERY);
    let mut batch = Batch::default();
    loop {
        let detector = &mut agent.detector;
        let on_event =
            |event: &Event, table: &ProcessTable| collect(&mut batch, detector, event, table);
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                notifier.reloading();
                agent.reload(path.as_deref(), &mut monitor);
                agent.save();
                notifier.send(Notice::Ready {
                    status: &agent.watching(),
                });
                continue;
            }
            _ = summary.tick() => log_summary(&monitor),
            _ = look.tick() => {
                agent.refresh_watchers(&monitor);
                continue;
            }
            Some(item) = news.recv() => {
                agent.on_news(&mut monitor, item);
                agent.save();
                continue;
            }
            _ = second.tick() => {
                notifier.keep_alive();
                agent.fleet_tick(&monitor);
                agent.alerting.follow_up_groups();
                agent.alerting.retry_spool();
                if agent.state_failure.is_some() {
                    agent.save();
                }
                continue;
            }
            Some(call) = calls.recv() => {
                let changes = call.permitted && call.request.changes_state();
                if changes {
                    // What the kernel recorded before the request is acted
                    // on first: the exit a `stop` waited for is the
                    // operator's stop before its window closes.
                    let detector = &mut agent.detector;
                    monitor.flush(|event, table| collect(&mut batch, detector, event, table))?;
                    let work = std::mem::take(&mut batch);
                    let found = !work.findings.is_empty();
                    agent.act(&mut monitor, work);
                    if found {
                        agent.save();
                    }
                }
                let answer = agent.call(&mut monitor, call.request.clone(), call.peer, call.permitted);
                if changes {
                    agent.save();
                }
                match answer {
                    Wire::Now(answer) => {
                        let _ = call.reply.send(answer);
                    }
                    // What only asks supervisors ends when its client
                    // leaves; what acts (a stop, switches run for a
                    // window) goes on to its end.
                    Wire::Later(answer) if call.request.asks_supervisors() => {
                        let mut reply = call.reply;
                        tokio::spawn(async move {
                            tokio::select! {
                                answer = answer => { let _ = reply.send(answer); }
                                () = reply.closed() => {}
                            }
                        });
                    }
                    Wire::Later(answer) => {
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
        agent.act(&mut monitor, work);
        if changes {
            agent.save();
        }
    }
    notifier.send(Notice::Stopping);
    if let Some(fleet) = &agent.fleet {
        fleet.link.leave();
    }
    if crate::supervisors::systemd::system_stopping() {
        agent.custody.leave_for_shutdown();
    } else {
        agent.custody.leave_units();
    }
    // Pinned probes keep what the ring holds for the next agent, which acts
    // on it; otherwise what is left is at least audited.
    if !matches!(monitor.probes_ref().pinning(), Pinning::Pinned { .. }) {
        let mut tail = Vec::new();
        monitor.flush(|e, t| tail.extend(agent.detector.observe(e, t)))?;
        for finding in tail {
            agent.audit.write(finding);
        }
    }
    let _ = std::fs::remove_file(&socket);
    log_summary(&monitor);
    if let Pinning::Pinned { dir, .. } = monitor.probes_ref().pinning() {
        let guarded = agent.custody.guarded();
        tracing::info!(
            "the probes stay pinned in {dir} until an agent takes them over{}; `stopguard unpin` lets go",
            if guarded.is_empty() {
                String::new()
            } else {
                format!(", still stopping {guarded:?} at exec")
            }
        );
    }
    tracing::info!("stopguard stopped");
    Ok(())
}

/// What one kernel record asks of the agent, added to `batch`.
fn collect(batch: &mut Batch, detector: &mut Detector, event: &Event, table: &ProcessTable) {
    batch.findings.extend(detector.observe(event, table));
    match event {
        Event::Exec(exec) if exec.guard_stopped => batch.guard_stopped.push(exec.process.pid),
        Event::Signal(signal) if signal.sender.pid == 1 => batch.by_systemd.push(signal.target.key),
        Event::Fork(fork) if fork.parent.pid == 1 => batch.by_systemd.push(fork.child),
        Event::Lost(lost) => batch.lost = Some(lost.count),
        _ => {}
    }
}

impl Agent {
    /// One line for `systemctl status`: what is watched.
    fn watching(&self) -> String {
        let mut services: Vec<&str> = self.detector.services().iter().map(|s| s.name).collect();
        services.sort_unstable();
        format!(
            "watching {} service{} ({})",
            services.len(),
            if services.len() == 1 { "" } else { "s" },
            services.join(", ")
        )
    }

    /// The name the kernel guard matches for a service: its running main
    /// process's comm, else its first exe glob's file name, else the name
    /// its main process had last (a service known by its unit alone).
    fn guard_name(&self, service: &str, table: &ProcessTable) -> Option<String> {
        let running = decide::requests::main_pid(&self.detector, service)
            .and_then(|pid| table.live(pid))
            .map(|p| p.comm.clone());
        let configured = || {
            let exe = self.detector.config_of(service)?.exe.first()?.as_str();
            let name = exe.rsplit('/').next()?;
            (!name.contains(['*', '?', '['])).then(|| name.to_string())
        };
        running
            .or_else(configured)
            .or_else(|| self.detector.comm_of(service).map(str::to_string))
    }

    /// Asks systemd about the units the services run in now.
    fn ask_units(&self) {
        for view in self.detector.services() {
            if let Some(unit) = self.detector.unit_of(view.name) {
                self.restart_policies.refresh(unit);
            }
        }
    }

    fn guard(&mut self, monitor: &mut Monitor, service: &str, on: bool) {
        let Some(name) = self.guard_name(service, monitor.table()) else {
            tracing::warn!(
                "{service}: no name to guard (exe globs end in a wildcard, or its unit never ran)"
            );
            return;
        };
        self.custody.guard(monitor.probes(), service, &name, on);
    }

    fn window_open(&self, service: &str) -> bool {
        self.detector.window_of(service).is_some()
    }
}
