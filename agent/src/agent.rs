//! `stopguard run`: the long-running agent.

use std::time::Duration;

use anyhow::Result;
use tokio::signal::unix::{SignalKind, signal};

use crate::{config::Config, events::Event, kernel::ProbeOptions, monitor::Monitor};

/// How often the agent logs what it has seen.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

pub async fn run(config: Config) -> Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut monitor = Monitor::start(&ProbeOptions::default())?;
    let services: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    tracing::info!(
        host = %config.agent.host,
        config = %config.source,
        "stopguard running: 4 probes attached, {} processes known, watching {} services ({})",
        monitor.table().len_live(),
        services.len(),
        services.join(", ")
    );
    let mut summary = tokio::time::interval(SUMMARY_EVERY);
    summary.tick().await;
    let on_event = |event: &Event, _: &crate::process::ProcessTable| {
        if let Event::Lost(lost) = event {
            tracing::warn!(
                "{} kernel records lost (ring buffer full, {} in all): process table resynchronised from /proc",
                lost.count,
                lost.total
            );
        }
    };
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = summary.tick() => log_summary(&monitor),
            result = monitor.next(on_event) => result?,
        }
    }
    monitor.flush(on_event)?;
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
