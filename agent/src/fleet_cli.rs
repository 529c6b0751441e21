//! `stopguard fleet` and `window open --cluster`: fleet mode on the
//! command line.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use clap::Subcommand;

use stopguard::config::Config;

use super::{ask, print_lines};

#[derive(Subcommand)]
pub enum FleetCommand {
    /// Every host of the cluster: up or down, its guard, services, windows,
    /// held processes and last alert.
    #[command(after_help = "Examples:\n  \
        stopguard fleet status\n  \
        stopguard fleet status --json | jq '.hosts[] | select(.presence == null) | .host'\n\n\
        A host whose lease expired is shown DOWN since it was seen last; its\n\
        pinned guard (if pinned) still holds there.\n\n\
        Exit status: 0 when every member is up, 4 when some are down, 1 on\n\
        an error (no agent, fleet mode off, etcd unreachable).")]
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Simulated hosts of the config's cluster, without probes, until
    /// SIGTERM (the fleet tests' peers).
    #[command(hide = true)]
    Simulate {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long = "host", value_name = "NAME", required = true)]
        hosts: Vec<String>,
        #[arg(long = "service", value_name = "NAME")]
        services: Vec<String>,
    },
    /// The fleet's load driver (`cargo xtask fleet-bench`).
    #[command(hide = true)]
    Bench {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, default_value_t = 1000)]
        hosts: usize,
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
        rest: std::time::Duration,
    },
}

/// `stopguard window open --cluster`: exits 4 when some hosts did not
/// apply it in time.
pub fn open_window(
    socket: Option<PathBuf>,
    service: String,
    reason: String,
    duration: Option<std::time::Duration>,
    hosts: String,
    wait: std::time::Duration,
) -> Result<()> {
    let (opened, _) = ask(
        socket,
        stopguard::control::OpenClusterWindow {
            service,
            reason,
            for_secs: duration.map_or(0, |d| d.as_secs().max(1)),
            hosts,
            wait_secs: wait.as_secs(),
            and_pause: false,
        },
    )?;
    print_lines(&opened);
    if !opened.complete() {
        std::process::exit(4);
    }
    Ok(())
}

pub fn run(
    command: FleetCommand,
    socket: Option<PathBuf>,
    runtime: &tokio::runtime::Runtime,
) -> Result<()> {
    match command {
        FleetCommand::Simulate {
            config,
            hosts,
            services,
        } => {
            let fleet = fleet_of(&config)?;
            runtime.block_on(async {
                stopguard::fleet::sim::start(&fleet, &hosts, &services, true)?;
                let mut terminate =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                Ok(())
            })
        }
        FleetCommand::Bench {
            config,
            hosts,
            rounds,
            rest,
        } => {
            let fleet = fleet_of(&config)?;
            runtime.block_on(stopguard::fleet::sim::bench(&fleet, hosts, rounds, rest))
        }
        FleetCommand::Status { json } => {
            let (view, answer) = ask(socket, stopguard::control::GetFleetStatus {})?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print_lines(&view);
            }
            if view.hosts.iter().any(|h| h.presence.is_none()) {
                std::process::exit(4);
            }
            Ok(())
        }
    }
}

/// The `[fleet]` table of the config at `path`.
fn fleet_of(path: &Path) -> Result<stopguard::config::Fleet> {
    Config::load(Some(path))?
        .fleet
        .ok_or_else(|| anyhow!("{} has no [fleet] table", path.display()))
}
