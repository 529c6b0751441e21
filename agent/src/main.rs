use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};
use stopguard::{
    config::Config,
    kernel::{DEFAULT_RING_BYTES, ProbeOptions},
    trace::TraceOptions,
};

#[derive(Parser)]
#[command(
    version,
    about = "Catches supervisors restarting database services an operator stopped",
    after_help = "Examples (as root):\n  \
        stopguard trace                   # every exec, exit, fork and signal\n  \
        stopguard trace --comm postgres   # only what involves postgres\n  \
        stopguard run                     # the agent, on the embedded default config"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every process start, exit, fork and signal as it happens.
    #[command(after_help = "Examples (as root):\n  \
        stopguard trace\n  \
        stopguard trace --json | jq 'select(.kind == \"signal\")'\n  \
        stopguard trace --comm postgres --comm pg_ctl\n\n\
        Exit status: 0 when stopped by Ctrl-C or SIGTERM, 1 on error.")]
    Trace {
        /// One JSON object per line (fields: see the README).
        #[arg(long)]
        json: bool,
        /// Only events where a process of this name (its comm) takes part; repeatable.
        #[arg(long = "comm", value_name = "NAME")]
        comms: Vec<String>,
        /// Kernel ring buffer size in bytes (a power of two, at least 4096).
        #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_BYTES)]
        ring_bytes: u32,
    },
    /// Run the agent.
    #[command(after_help = "Examples (as root):\n  \
        stopguard run\n  \
        stopguard run --config /etc/stopguard/stopguard.toml\n\n\
        Without --config it reads /etc/stopguard/stopguard.toml when it exists,\n\
        otherwise the embedded default config (the common database daemons).")]
    Run {
        /// Configuration file (TOML).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("stopguard: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Trace {
            json,
            comms,
            ring_bytes,
        } => runtime.block_on(stopguard::trace::run(TraceOptions {
            json,
            comms,
            probes: ProbeOptions {
                ring_bytes,
                ..ProbeOptions::default()
            },
        })),
        Command::Run { config } => {
            let config = Config::load(config.as_deref())?;
            runtime.block_on(stopguard::agent::run(config))
        }
    }
}
