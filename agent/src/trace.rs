//! `stopguard trace`: every lifecycle event on the host, one line each.

use std::{
    io::{self, Write},
    time::SystemTime,
};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    events::Event, kernel::ProbeOptions, monitor::Monitor, process::ProcessTable, sys::clock::Clock,
};

pub struct TraceOptions {
    pub json: bool,
    /// Only events involving a process of one of these names.
    pub comms: Vec<String>,
    pub probes: ProbeOptions,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    #[serde(serialize_with = "as_text")]
    time: humantime::Rfc3339Timestamp,
    #[serde(flatten)]
    event: &'a Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    chain: Option<Vec<ChainLink<'a>>>,
}

/// A `Link` borrowed from the table, serialized as one.
#[derive(Serialize)]
struct ChainLink<'a> {
    pid: u32,
    comm: &'a str,
}

fn as_text<S: serde::Serializer>(
    value: &impl std::fmt::Display,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

struct Printer<W: Write> {
    out: W,
    json: bool,
    comms: Vec<String>,
    clock: Clock,
    failed: Option<io::Error>,
}

impl<W: Write> Printer<W> {
    fn print(&mut self, event: &Event, table: &ProcessTable) {
        if self.failed.is_some() || !wanted(event, &self.comms) {
            return;
        }
        let written = if self.json {
            write_json_line(&mut self.out, event, table, &self.clock)
        } else {
            writeln!(self.out, "{}", human_line(event, table, &self.clock))
        };
        if let Err(err) = written {
            self.failed = Some(err);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.failed.take() {
            Some(err) => Err(err),
            None => self.out.flush(),
        }
    }
}

pub async fn run(options: TraceOptions) -> Result<()> {
    // Listeners made once, before anyone is told we run: a signal arriving
    // at any moment after that must be seen.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut monitor = Monitor::start(&options.probes, Vec::new())?;
    eprintln!(
        "stopguard: tracing exec, exit, fork and signals ({} processes known); Ctrl-C to stop",
        monitor.table().len_live()
    );
    let mut printer = Printer {
        out: io::BufWriter::new(io::stdout().lock()),
        json: options.json,
        comms: options.comms,
        clock: Clock::now(),
        failed: None,
    };
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            result = monitor.next(|e, t| printer.print(e, t)) => result?,
        }
        match printer.flush() {
            Ok(()) => {}
            // The reader went away (`stopguard trace | head`): done.
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(err) => return Err(err).context("writing events"),
        }
    }
    monitor.flush(|e, t| printer.print(e, t))?;
    printer.flush().context("writing events")?;
    eprintln!("stopguard: {}", monitor.counts());
    Ok(())
}

fn wanted(event: &Event, comms: &[String]) -> bool {
    if comms.is_empty() {
        return true;
    }
    let names: [&str; 2] = match event {
        Event::Exec(e) => [&e.process.comm, ""],
        Event::Exit(e) => [&e.comm, ""],
        Event::Fork(e) => [&e.parent.comm, ""],
        Event::Signal(e) => [&e.sender.comm, &e.target.comm],
        Event::Lost(_) => return true,
    };
    comms.iter().any(|c| {
        let c = &c[..c.len().min(agent_common::COMM_LEN - 1)];
        names.contains(&c)
    })
}

/// One event as a JSON line, written straight into `out`.
fn write_json_line(
    out: &mut impl Write,
    event: &Event,
    table: &ProcessTable,
    clock: &Clock,
) -> io::Result<()> {
    let time = event
        .time_ns()
        .map(|t| clock.wall(t))
        .unwrap_or_else(SystemTime::now);
    let chain = match event {
        Event::Exec(exec) => Some(ancestors(table, exec)),
        _ => None,
    };
    let line = JsonLine {
        time: humantime::format_rfc3339_millis(time),
        event,
        chain,
    };
    serde_json::to_writer(&mut *out, &line).map_err(io::Error::other)?;
    out.write_all(b"\n")
}

/// The exec'ing process's parent chain, nearest first.
fn ancestors<'a>(table: &'a ProcessTable, exec: &crate::events::Exec) -> Vec<ChainLink<'a>> {
    table
        .ancestry(&exec.process.key)
        .into_iter()
        .skip(1)
        .map(|p| ChainLink {
            pid: p.pid,
            comm: &p.comm,
        })
        .collect()
}

fn login(loginuid: Option<u32>) -> String {
    loginuid.map_or_else(|| "-".to_string(), |l| l.to_string())
}

pub fn human_line(event: &Event, table: &ProcessTable, clock: &Clock) -> String {
    let time = event
        .time_ns()
        .map(|t| clock.wall(t))
        .unwrap_or_else(SystemTime::now);
    let stamp = humantime::format_rfc3339_millis(time).to_string();
    let stamp = &stamp[11..23]; // HH:MM:SS.mmm (UTC)
    match event {
        Event::Exec(e) => {
            let mut line = format!(
                "{stamp} EXEC   {:<7} {:<15} uid={} login={}  {}",
                e.process.pid,
                e.process.comm,
                e.process.uid,
                login(e.process.loginuid),
                e.filename
            );
            for arg in e.args.iter().skip(1) {
                line.push(' ');
                line.push_str(arg);
            }
            if e.args_truncated {
                line.push_str(" ...");
            }
            if e.guard_stopped {
                line.push_str("  [stopped by guard]");
            }
            for link in ancestors(table, e) {
                line.push_str(&format!("  <- {}({})", link.comm, link.pid));
            }
            line
        }
        Event::Exit(e) => {
            let how = match (e.exit_code, e.signal) {
                (Some(code), _) => format!("exit {code}"),
                (None, Some(sig)) => format!(
                    "killed by {}{}",
                    crate::events::signal_name(sig.into()),
                    if e.core_dumped { " (core dumped)" } else { "" }
                ),
                (None, None) => "exit ?".into(),
            };
            format!(
                "{stamp} EXIT   {:<7} {:<15} {how}  ppid={}",
                e.pid, e.comm, e.ppid
            )
        }
        Event::Fork(e) => format!(
            "{stamp} FORK   {:<7} {:<15} -> child {}  uid={} login={}",
            e.parent.pid,
            e.parent.comm,
            e.child_pid,
            e.parent.uid,
            login(e.parent.loginuid)
        ),
        Event::Signal(e) => format!(
            "{stamp} SIGNAL {:<7} {:<15} {} -> {}({}) {}  uid={} login={}",
            e.sender.pid,
            e.sender.comm,
            e.signal_name,
            e.target.comm,
            e.target.pid,
            e.result.as_str(),
            e.sender.uid,
            login(e.sender.loginuid),
        ),
        Event::Lost(l) => format!(
            "{stamp} LOST   {} records lost (ring buffer full; {} so far)",
            l.count, l.by_kind
        ),
    }
}
