mod manual;

mod fleet_cli;
mod stop_cli;
mod window_cli;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Result, anyhow, bail};
use clap::{CommandFactory, Parser, Subcommand};
use stopguard::{
    config::{Config, RingBytes},
    control::{Ask, AuditRead, Explain, GetStatus, ReadAudit, TestAlert, Thaw, client},
    kernel::ProbeOptions,
    trace::TraceOptions,
};

#[derive(Parser)]
#[command(
    version,
    about = "Catches supervisors restarting database services an operator stopped",
    after_help = "Examples (as root):\n  \
        stopguard trace                   # every exec, exit, fork and signal\n  \
        stopguard trace --comm postgres   # only what involves postgres\n  \
        stopguard run                     # the agent, on the embedded default config\n  \
        stopguard stop postgres --reason 'schema change'   # maintenance, in one command\n  \
        stopguard window close postgres   # maintenance over\n  \
        stopguard audit --since 1h        # what happened"
)]
struct Cli {
    /// The agent's control socket (default: the config's `socket`).
    #[arg(long, global = true, env = "STOPGUARD_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
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
        /// One JSON object per line (fields: the trace output reference in the docs).
        #[arg(long)]
        json: bool,
        /// Only events where a process of this name (its comm) takes part; repeatable.
        #[arg(long = "comm", value_name = "NAME")]
        comms: Vec<String>,
        /// Kernel ring buffer size in bytes (a power of two, 4096 to 256 MiB).
        #[arg(long, value_name = "BYTES", default_value_t = RingBytes::DEFAULT.get())]
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
    /// Check a configuration file and say what it watches.
    #[command(after_help = "Examples:\n  \
        stopguard check-config /etc/stopguard/stopguard.toml\n  \
        stopguard check-config /etc/stopguard/stopguard.toml --reach\n\n\
        Exit status: 0 when valid (and, with --reach, etcd answered), 1 with\n\
        the file, line and key when not, or what etcd said.")]
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Also reach etcd with the `[fleet]` settings (TLS, user) and list
        /// the cluster's hosts.
        #[arg(long)]
        reach: bool,
    },
    /// Open, close or list maintenance windows.
    #[command(subcommand)]
    Window(window_cli::WindowCommand),
    /// Fleet mode: every host of the cluster, from etcd.
    #[command(subcommand)]
    Fleet(fleet_cli::FleetCommand),
    /// Show the watched services, open windows, frozen processes, event loss.
    #[command(after_help = "Examples:\n  \
        stopguard status\n  \
        stopguard status --json")]
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Let a frozen respawn run: by pid, or every one of a service.
    #[command(after_help = "Examples (as root):\n  \
        stopguard thaw 4121\n  \
        stopguard thaw postgres")]
    Thaw {
        #[arg(value_name = "PID|SERVICE")]
        target: String,
    },
    /// Start maintenance in one command: open a window, then stop the service.
    #[command(after_help = "Examples (as root):\n  \
        stopguard stop postgres --reason 'schema change'\n  \
        stopguard stop redis --reason 'kernel upgrade' --for 2h\n  \
        stopguard stop postgres --and-pause --cluster --for 2h --reason 'minor upgrade'\n\n\
        Opens a window (or uses the one open), then runs the service's\n\
        `stop_command`, or sends SIGTERM to its main process, and waits until\n\
        the main process is gone. A supervisor that restarts it is caught as\n\
        a respawn in the window. End maintenance with `stopguard window close`.\n\n\
        It first prints what would start the service again (`stopguard\n\
        explain`); with --and-pause it switches those off before the stop,\n\
        as you, and the window's close switches them back on.\n\n\
        With --and-pause --cluster (fleet mode, under Patroni) it opens a\n\
        cluster window as `window open --cluster` does, runs `patronictl pause`\n\
        once for the whole Patroni cluster, then stops the service here.\n\
        `window close --cluster` resumes Patroni; so does this host when the\n\
        window runs out unclosed.\n\n\
        Exit status: 0 once stopped, 1 when it could not be stopped (the\n\
        window stays open); with --cluster, 4 when some hosts did not apply\n\
        the window in time (they are named).")]
    Stop(stop_cli::StopArgs),
    /// What would start a service again if it stopped now, and how to
    /// switch each of those off.
    #[command(after_help = "Examples:\n  \
        stopguard explain postgres\n  \
        stopguard explain postgresql@15-main --json\n  \
        stopguard explain mariadb && echo 'nothing restarts it'\n\n\
        Shows its main process and how it was started (the creator chain\n\
        recorded at its exec, or what /proc shows for one started before the\n\
        agent), then every supervisor watching it: monit, systemd, Patroni,\n\
        runit, s6, daemontools, supervisord, mysqld_safe; each with its state\n\
        and the command that switches it off.\n\n\
        Exit status: 0 when nothing would start it again, 3 when something\n\
        would, 1 on an error (no agent, no such service).")]
    Explain {
        service: String,
        #[arg(long)]
        json: bool,
    },
    /// Alert delivery: send a test alert through the sinks.
    #[command(subcommand)]
    Alert(AlertCommand),
    /// What happened: stops, starts, respawns, alerts, windows, oldest first.
    #[command(after_help = "Examples:\n  \
        stopguard audit --since 2h\n  \
        stopguard audit --service postgres\n  \
        stopguard audit --json | jq 'select(.alert)'")]
    Audit {
        /// Only entries this recent (e.g. 30m, 2h, 1day).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Only entries about this service.
        #[arg(long, value_name = "NAME")]
        service: Option<String>,
        /// One JSON object per line, as written to the audit log.
        #[arg(long)]
        json: bool,
    },
    /// Detach the probes the agent left pinned, so that nothing holds
    /// after it (the package's purge runs this).
    #[command(after_help = "Examples (as root):\n  \
        systemctl stop stopguard && stopguard unpin\n\n\
        The agent pins its probes in /sys/fs/bpf/stopguard so that the guard holds while \
        it is down (a restart, an upgrade); they stay until this runs or the host reboots.\n\n\
        Exit status: 0 when nothing is pinned any more, 1 when an agent runs or removing failed.")]
    Unpin,
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Examples:\n  \
        stopguard completions bash > ~/.local/share/bash-completion/completions/stopguard\n  \
        stopguard completions fish > ~/.config/fish/completions/stopguard.fish\n\n\
        The Debian package installs them for bash, zsh and fish already.")]
    Completions { shell: clap_complete::Shell },
    /// Create the cgroup that holds frozen processes (the packaged unit
    /// runs it with full privileges before the agent).
    #[command(hide = true)]
    PrepareFreezer,
    /// Write the manual pages (section 8) into DIR, one per command.
    #[command(hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum AlertCommand {
    /// Send a test alert through every sink (or one) and print each result.
    #[command(after_help = "Examples (as root):\n  \
        stopguard alert test\n  \
        stopguard alert test --sink slack\n\n\
        Exit status: 0 when every sink took it, 1 when any failed.")]
    Test {
        /// Only this sink (its `name`, or its kind when unnamed).
        #[arg(long, value_name = "NAME")]
        sink: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// `--for`: a duration of at most 30 days.
fn window_length(text: &str) -> Result<std::time::Duration, String> {
    let length = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    stopguard::control::check_window(length.as_secs())?;
    Ok(length)
}

/// `--wait`: a duration of at most a day.
fn wait_length(text: &str) -> Result<std::time::Duration, String> {
    let length = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if length.as_secs() > stopguard::control::MAX_WAIT_SECS {
        return Err("at most 24 hours".into());
    }
    Ok(length)
}

/// `stopguard unpin`: refused while an agent runs on the probes.
fn unpin() -> Result<()> {
    use stopguard::{agent::host_lock, kernel::pins};
    if let Some(holder) = host_lock::holder() {
        bail!(
            "an agent runs on the pinned probes ({holder}): stop it first (systemctl stop stopguard)"
        );
    }
    let root = Path::new(pins::ROOT);
    let removed = pins::unpin_all(root)?;
    if removed.is_empty() {
        println!("nothing pinned in {}", root.display());
    } else {
        println!(
            "unpinned {} ({}): the probes are detached",
            root.display(),
            removed.join(", ")
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. } | Command::Trace { .. }) {
        // A client whose reader went away (`stopguard status | head -1`)
        // ends quietly, as command-line tools do; the agent and `trace`
        // handle a closed stdout themselves.
        // SAFETY: setting a signal's disposition to the default, before any
        // thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    stopguard::sys::logging::init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", stopguard::sys::logging::fatal(&err));
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
        } => {
            let ring_bytes = RingBytes::new(ring_bytes).ok_or_else(|| {
                anyhow!(
                    "ring buffer size {ring_bytes} is not a power of two from 4096 bytes to 256 MiB"
                )
            })?;
            runtime.block_on(stopguard::trace::run(TraceOptions {
                json,
                comms,
                probes: ProbeOptions {
                    ring_bytes,
                    ..ProbeOptions::default()
                },
            }))
        }
        Command::Run { config } => {
            let loaded = Config::load(config.as_deref())?;
            runtime.block_on(stopguard::agent::run(loaded, config, cli.socket))
        }
        Command::Window(command) => window_cli::run(command, cli.socket),
        Command::Status { json } => show(cli.socket, GetStatus {}, json),
        Command::Fleet(command) => fleet_cli::run(command, cli.socket, &runtime),
        Command::Unpin => unpin(),
        Command::CheckConfig { file, reach } => {
            let config = Config::load(Some(&file))?;
            stopguard::agent::preflight::check(&config)?;
            println!("{}: valid; host {}", file.display(), config.agent.host);
            for line in config.describe() {
                println!("  {line}");
            }
            if reach {
                let Some(fleet) = &config.fleet else {
                    bail!("--reach: {} has no [fleet] table", file.display());
                };
                let view = stopguard::fleet::Cluster::new(fleet)?.view()?;
                println!(
                    "  etcd answers: cluster {} has {} member{}",
                    fleet.cluster,
                    view.hosts.len(),
                    if view.hosts.len() == 1 { "" } else { "s" }
                );
            }
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "stopguard",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::PrepareFreezer => {
            for dir in stopguard::custody::actions::prepare_freezer()? {
                println!("created {}", dir.display());
            }
            Ok(())
        }
        Command::Man { dir } => {
            for page in manual::write_pages(Cli::command(), &dir)? {
                println!("{}", page.display());
            }
            Ok(())
        }
        Command::Thaw { target } => show(cli.socket, Thaw { target }, false),
        Command::Stop(stop) => stop_cli::run(cli.socket, stop),
        Command::Explain { service, json } => {
            let (explanation, answer) = ask(cli.socket, Explain { service })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print_lines(&explanation);
            }
            if explanation.would_restart {
                std::io::Write::flush(&mut std::io::stdout())?;
                std::process::exit(3);
            }
            Ok(())
        }
        Command::Alert(AlertCommand::Test { sink, json }) => {
            let (tested, answer) = ask(cli.socket, TestAlert { sink })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print_lines(&tested);
            }
            let failed = tested.results.iter().filter(|r| !r.ok).count();
            if failed > 0 {
                anyhow::bail!("{failed} of {} sinks failed", tested.results.len());
            }
            Ok(())
        }
        Command::Audit {
            since,
            service,
            json,
        } => {
            let read = ReadAudit {
                since_secs: since.map(|d| d.as_secs()),
                service,
            };
            let (AuditRead { timeline }, _) = ask(cli.socket, read)?;
            if timeline.left_out > 0 {
                eprintln!(
                    "stopguard: {} older entries left out (the newest {} shown); narrow with --since",
                    timeline.left_out,
                    stopguard::audit::MAX_ENTRIES
                );
            }
            for entry in &timeline.entries {
                if json {
                    println!("{entry}");
                } else {
                    let line = stopguard::audit::describe(entry);
                    println!("{}", stopguard::escape::terminal_lines(&line));
                }
            }
            Ok(())
        }
    }
}

/// Sends one request to the agent and reads its reply (and the answer as
/// sent); an answer that is not ok is the error.
fn ask<A: Ask>(socket: Option<PathBuf>, ask: A) -> Result<(A::Reply, serde_json::Value)> {
    let socket = match socket {
        Some(path) => path,
        None => Config::load(None)?.agent.socket,
    };
    client::ask(&socket, ask)
}

/// Sends one request to the agent and prints its answer: JSON with
/// `--json`, otherwise in words for a person.
fn show<A: Ask>(socket: Option<PathBuf>, request: A, json: bool) -> Result<()>
where
    A::Reply: std::fmt::Display,
{
    let (reply, answer) = ask(socket, request)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print_lines(&reply);
    }
    Ok(())
}

/// Prints an answer in words; nothing at all when it has none (no windows).
fn print_lines(answer: &impl std::fmt::Display) {
    // What a process or a person wrote is escaped field by field; this
    // catches what slipped through, keeping our own line breaks.
    let text = stopguard::escape::terminal_lines(&answer.to_string());
    if !text.is_empty() {
        println!("{text}");
    }
}

#[cfg(test)]
#[path = "../../xtask/src/docs/examples.rs"]
mod examples;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `stopguard …` line of a shell block in the README and the book
    /// parses with this command line.
    #[test]
    fn docs_examples_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let (mut checked, mut problems) = (0, Vec::new());
        for file in examples::documents(&root) {
            let text = std::fs::read_to_string(&file).unwrap();
            for example in examples::commands(&text, &["stopguard"]) {
                checked += 1;
                let argv = std::iter::once("stopguard".to_string()).chain(example.args);
                if let Err(err) = Cli::try_parse_from(argv)
                    && !matches!(
                        err.kind(),
                        clap::error::ErrorKind::DisplayHelp
                            | clap::error::ErrorKind::DisplayVersion
                    )
                {
                    let why = err.to_string();
                    problems.push(format!(
                        "{}:{}: `{}`: {}",
                        file.display(),
                        example.line,
                        example.text,
                        why.lines().next().unwrap_or("")
                    ));
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        assert!(checked >= 20, "only {checked} `stopguard` examples found");
    }

    /// The command line reference has a section for every command a
    /// person runs (not the hidden ones the package runs), and every
    /// subcommand of `window` and `alert`.
    #[test]
    fn the_cli_reference_covers_every_command() {
        const CLI: &str = include_str!("../../docs/src/reference/cli.md");
        let mut missing = Vec::new();
        for command in Cli::command()
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
        {
            let name = format!("stopguard {}", command.get_name());
            if !CLI.contains(&format!("`{name}")) {
                missing.push(name.clone());
            }
            for sub in command.get_subcommands().filter(|c| !c.is_hide_set()) {
                let full = format!("{name} {}", sub.get_name());
                if !CLI.contains(&full) {
                    missing.push(full);
                }
            }
        }
        assert!(
            missing.is_empty(),
            "docs/src/reference/cli.md does not cover: {missing:?}"
        );
    }
}
