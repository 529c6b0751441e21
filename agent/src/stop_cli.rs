//! `stopguard stop`: maintenance in one command, on this host, or with
//! `--and-pause --cluster` for every host of the cluster with Patroni
//! paused once for all of them.

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail};
use clap::Args;
use stopguard::control::{Explain, OpenClusterWindow, Stop};

use super::{ask, print_lines, show, wait_length, window_length};

/// How long `stop` waits for the service to exit, unless told.
const STOP_WAIT: Duration = Duration::from_secs(60);
/// How long `--cluster` waits for every host's answer, unless told.
const ACK_WAIT: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct StopArgs {
    service: String,
    #[arg(long, default_value = "maintenance")]
    reason: String,
    /// Close the window by itself after this long (e.g. 30m, 2h).
    #[arg(long = "for", value_name = "DURATION", value_parser = window_length)]
    duration: Option<Duration>,
    /// How long to wait for the service to exit [default: 60s]; with
    /// --cluster, also for every host's answer [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = wait_length)]
    wait: Option<Duration>,
    /// First switch off every supervisor that would start it again
    /// (`patronictl pause`, `monit unmonitor`...); the window's close
    /// switches them back on.
    #[arg(long)]
    and_pause: bool,
    /// With --and-pause: a cluster window for every host (fleet mode),
    /// and Patroni paused once for its whole cluster; needs --for.
    #[arg(long, requires = "and_pause", requires = "duration")]
    cluster: bool,
    /// With --cluster: only hosts whose name matches this glob.
    #[arg(long, value_name = "GLOB", default_value = "*", requires = "cluster")]
    hosts: String,
}

pub fn run(socket: Option<PathBuf>, args: StopArgs) -> Result<()> {
    explain_first(&socket, &args.service);
    if args.cluster {
        return stop_and_pause(socket, args);
    }
    show(
        socket,
        Stop {
            service: args.service,
            reason: args.reason,
            for_secs: args.duration.map(|d| d.as_secs().max(1)),
            wait_secs: args.wait.unwrap_or(STOP_WAIT).as_secs().max(1),
            and_pause: args.and_pause,
        },
        false,
    )
}

/// What would start the service again, before it is stopped.
fn explain_first(socket: &Option<PathBuf>, service: &str) {
    let explain = Explain {
        service: service.to_string(),
    };
    if let Ok((explanation, _)) = ask(socket.clone(), explain) {
        print_lines(&explanation);
        println!();
    }
}

/// `--and-pause --cluster`: a cluster window, with Patroni paused once for
/// every host, then the service stopped here (in this host's window of
/// it). Exits 4 when some hosts did not apply the window in time.
fn stop_and_pause(socket: Option<PathBuf>, args: StopArgs) -> Result<()> {
    let StopArgs {
        service,
        reason,
        duration,
        wait,
        hosts,
        ..
    } = args;
    let for_secs = duration.map(|d| d.as_secs().max(1));
    let (opened, _) = ask(
        socket.clone(),
        OpenClusterWindow {
            service: service.clone(),
            reason: reason.clone(),
            for_secs: for_secs.unwrap_or(0),
            hosts,
            wait_secs: wait.unwrap_or(ACK_WAIT).as_secs(),
            and_pause: true,
        },
    )?;
    print_lines(&opened);
    let here = &opened.window.by.host;
    if !opened
        .acks
        .iter()
        .any(|a| &a.host == here && a.window.is_some())
    {
        bail!(
            "{service} not stopped: this host ({here}) did not apply cluster window {} in time; \
             it stays open (`stopguard window close {service} --cluster` ends it)",
            opened.window.id
        );
    }
    let (stopped, _) = ask(
        socket,
        Stop {
            service,
            reason,
            for_secs,
            wait_secs: wait.unwrap_or(STOP_WAIT).as_secs().max(1),
            and_pause: false,
        },
    )?;
    print_lines(&stopped);
    if !opened.complete() {
        std::io::Write::flush(&mut std::io::stdout())?;
        std::process::exit(4);
    }
    Ok(())
}
