//! `stopguard window`: open, close and list maintenance windows, on this
//! host or (`--cluster`) on every host of the cluster.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use stopguard::control::{CloseClusterWindow, CloseWindow, ListWindows, OpenWindow};

use super::{fleet_cli, show, wait_length, window_length};

#[derive(Subcommand)]
pub enum WindowCommand {
    /// Declare maintenance: the service is meant to stay down until closed.
    #[command(after_help = "Examples (as root):\n  \
        stopguard window open postgres --reason 'schema change' --for 2h\n  \
        stopguard window open postgres --cluster --for 2h --reason 'minor upgrade'\n  \
        stopguard window open postgres --cluster --hosts 'db-[23]' --for 30m --wait 20s\n\n\
        Prints the window id. With --cluster (fleet mode) the window is one\n\
        record in etcd that every host of the cluster matching --hosts applies;\n\
        it waits for each live host's answer and prints it.\n\n\
        Exit status: 0 when opened (with --cluster: applied on every live\n\
        host), 4 when some hosts did not apply it in time (they are named),\n\
        1 on an error.")]
    Open {
        service: String,
        #[arg(long, default_value = "maintenance")]
        reason: String,
        /// Close by itself after this long (e.g. 30m, 2h); needed with --cluster.
        #[arg(long = "for", value_name = "DURATION", value_parser = window_length,
              required_if_eq("cluster", "true"))]
        duration: Option<std::time::Duration>,
        /// For every host of the cluster (fleet mode), not this one alone.
        #[arg(long)]
        cluster: bool,
        /// With --cluster: only hosts whose name matches this glob.
        #[arg(long, value_name = "GLOB", default_value = "*", requires = "cluster")]
        hosts: String,
        /// With --cluster: how long to wait for every host's answer.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = wait_length,
              requires = "cluster")]
        wait: std::time::Duration,
    },
    /// End maintenance; --thaw lets a frozen respawn run, --kill ends it.
    #[command(after_help = "Examples (as root):\n  \
        stopguard window close postgres --thaw\n  \
        stopguard window close w3 --kill\n  \
        stopguard window close postgres --cluster\n\n\
        With --cluster the cluster window ends on every host (its record\n\
        goes from etcd); --thaw and --kill then act on every host.")]
    Close {
        #[arg(value_name = "SERVICE|ID")]
        target: String,
        #[arg(long, conflicts_with = "kill")]
        thaw: bool,
        #[arg(long)]
        kill: bool,
        /// End the cluster window with this id or on this service everywhere.
        #[arg(long)]
        cluster: bool,
    },
    /// List open windows (in fleet mode, the cluster's too, with each
    /// host's answer).
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: WindowCommand, socket: Option<PathBuf>) -> Result<()> {
    match command {
        WindowCommand::Open {
            service,
            reason,
            duration,
            cluster: true,
            hosts,
            wait,
        } => fleet_cli::open_window(socket, service, reason, duration, hosts, wait),
        WindowCommand::Open {
            service,
            reason,
            duration,
            ..
        } => show(
            socket,
            OpenWindow {
                service,
                reason,
                for_secs: duration.map(|d| d.as_secs().max(1)),
            },
            false,
        ),
        WindowCommand::Close {
            target,
            thaw,
            kill,
            cluster: true,
        } => show(socket, CloseClusterWindow { target, thaw, kill }, false),
        WindowCommand::Close {
            target, thaw, kill, ..
        } => show(socket, CloseWindow { target, thaw, kill }, false),
        WindowCommand::List { json } => show(socket, ListWindows {}, json),
    }
}
