//! `cargo xtask bench`: the agent's cost on a fork+exec+wait storm, measured
//! side by side with runs that have no agent attached.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agent_common::boot_ns;
use anyhow::{Context, Result, bail};

use crate::{
    is_root,
    measure::{cpu_time, number_after, unpin},
    step,
};

#[derive(clap::Args)]
pub struct Args {
    /// fork+exec+wait of /bin/true per run [default: 2000, 3000 with --peers].
    #[arg(long)]
    execs: Option<u32>,
    /// Pairs of runs (without, then with the agent); medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Operator stops answered by a runsv respawn, to time exec -> alert (0: skip).
    #[arg(long, default_value_t = 50)]
    respawns: u32,
    /// Spooled alerts the agent delivers to a loopback webhook, to time the spool (0: skip).
    #[arg(long, default_value_t = 500)]
    spool: u32,
    /// Compare with peer tracers instead (execsnoop + exitsnoop, bpftrace,
    /// auditd) on the same storm, with 1 and 2 workers, in one table; no
    /// respawn or spool timings.
    #[arg(long)]
    peers: bool,
}

struct AgentRun {
    wall: Duration,
    /// CPU time the agent spent while the storm ran.
    agent_cpu: Duration,
    /// (program, run count, run time) over the storm.
    programs: BTreeMap<String, (u64, Duration)>,
    exec_events: u64,
    events: u64,
    lost: u64,
}

pub fn run(agent: &Path, args: &Args) -> Result<()> {
    if args.peers {
        return crate::peers::run(agent, args.execs.unwrap_or(3000), args.rounds);
    }
    let execs = args.execs.unwrap_or(2000);
    if !is_root() {
        bail!("the benchmark loads eBPF programs: run it as root");
    }
    step(&format!(
        "{} rounds of {} fork+exec+wait of /bin/true, without and with `stopguard trace --json > /dev/null`",
        args.rounds, execs
    ));
    let mut without = Vec::new();
    let mut with = Vec::new();
    storm(200); // warm the page cache and the spawn path
    for round in 1..=args.rounds {
        let base = storm(execs);
        let run = with_agent(agent, execs)?;
        eprintln!(
            "    round {round}: without {:.3} s, with {:.3} s, {} exec events, {} lost",
            base.as_secs_f64(),
            run.wall.as_secs_f64(),
            run.exec_events,
            run.lost
        );
        without.push(base);
        with.push(run);
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let base = median(without.clone());
    let agent_wall = median(with.iter().map(|r| r.wall).collect());
    let per_exec = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(execs);
    println!(
        "stopguard bench: {} fork+exec+wait of /bin/true per run, {} rounds",
        execs, args.rounds
    );
    println!(
        "  wall time, median       without agent {:.3} s ({:.0} µs/exec)   with agent {:.3} s ({:.0} µs/exec)   ratio {:.3}",
        base.as_secs_f64(),
        per_exec(base),
        agent_wall.as_secs_f64(),
        per_exec(agent_wall),
        agent_wall.as_secs_f64() / base.as_secs_f64()
    );
    let expected = u64::from(execs) * u64::from(args.rounds);
    let captured: u64 = with.iter().map(|r| r.exec_events).sum();
    let lost: u64 = with.iter().map(|r| r.lost).sum();
    let events: u64 = with.iter().map(|r| r.events).sum();
    println!(
        "  exec events captured    {captured} (storm: {expected}; the rest is the machine's own)   lost records {lost}"
    );
    let cpu: Duration = with.iter().map(|r| r.agent_cpu).sum();
    println!(
        "  agent CPU               {:.2} µs per event ({} events, {:.3} s CPU)",
        cpu.as_secs_f64() * 1e6 / events.max(1) as f64,
        events,
        cpu.as_secs_f64()
    );
    let mut programs: BTreeMap<String, (u64, Duration)> = BTreeMap::new();
    for run in &with {
        for (name, (count, time)) in &run.programs {
            let slot = programs.entry(name.clone()).or_default();
            slot.0 += count;
            slot.1 += *time;
        }
    }
    for (name, (count, time)) in programs {
        println!(
            "  in-kernel {:<13} {:.0} ns per run ({count} runs)",
            name,
            time.as_nanos() as f64 / count.max(1) as f64
        );
    }
    if args.respawns > 0 {
        crate::toolchain::ensure_test_packages()?;
        let (mut latencies, mut webhook) = respawn_latencies(agent, args.respawns)?;
        let quantiles = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
            (at(0.5), at(0.99), v[v.len() - 1])
        };
        let (median, p99, max) = quantiles(&mut latencies);
        println!(
            "  respawn exec -> alert   median {median:.2} ms, p99 {p99:.2} ms, max {max:.2} ms ({} respawns by runsv)",
            latencies.len()
        );
        let (median, p99, max) = quantiles(&mut webhook);
        println!(
            "  respawn exec -> webhook median {median:.2} ms, p99 {p99:.2} ms, max {max:.2} ms (request arriving at a loopback receiver)"
        );
    }
    if args.spool > 0 {
        let (seconds, count) = spool_throughput(agent, args.spool)?;
        println!(
            "  spool -> webhook        {:.0} alerts/s ({count} spooled alerts after the first in {seconds:.2} s, one fsync'd spool update each)",
            count as f64 / seconds
        );
    }
    Ok(())
}

/// A loopback HTTP receiver answering 200 to everything; each request's
/// `webhook-id` and arrival time (CLOCK_BOOTTIME) go to the channel.
fn receiver() -> Result<(u16, std::sync::mpsc::Receiver<(String, u64)>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(&stream);
            let (mut id, mut length, mut line) = (String::new(), 0usize, String::new());
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("webhook-id:") {
                    id = line["webhook-id:".len()..].trim().to_string();
                }
                line.clear();
            }
            let mut body = vec![0; length];
            let _ = std::io::Read::read_exact(&mut reader, &mut body);
            let arrived = boot_ns();
            let _ = std::io::Write::write_all(
                &mut &stream,
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
            if tx.send((id, arrived)).is_err() {
                break;
            }
        }
    });
    Ok((port, rx))
}

/// Spools `count` alerts for a webhook sink, starts the agent, and times
/// until the receiver has them all.
fn spool_throughput(agent: &Path, count: u32) -> Result<(f64, u32)> {
    let dir = std::env::temp_dir().join(format!("stopguard-bench-spool-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("state/spool"))?;
    let (port, arrivals) = receiver()?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    for i in 0..count {
        let entry = serde_json::json!({
            "alert": {"version": 1, "id": format!("bench-{i:05}"), "kind": "respawn_after_operator_stop",
                      "severity": "critical", "host": "bench", "service": "sgdaemon",
                      "summary": "bench alert", "action": "alerted", "at": "2026-01-01T00:00:00Z",
                      "process": null, "respawned_by": null, "stopped_by": null, "window": null,
                      "detected_after_ms": 0.0},
            "spooled_at_unix_ms": now_ms + i as u64,
            "sinks": {"webhook": {"status": "pending", "attempts": 0, "last_error": null}},
        });
        fs::write(
            dir.join(format!("state/spool/bench-{i:05}.json")),
            serde_json::to_vec(&entry)?,
        )?;
    }
    let config = dir.join("stopguard.toml");
    fs::write(
        &config,
        format!(
            "[agent]\naudit_log = \"{d}/audit.jsonl\"\nstate_dir = \"{d}/state\"\nsocket = \"{d}/sock\"\n\
             [[sink]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\n",
            d = dir.display()
        ),
    )?;
    let mut child = Command::new(agent)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Timed from the first arrival, so the agent's start is not counted.
    let result = (|| -> Result<(f64, u32)> {
        let (mut first, mut last) = (None, 0);
        for _ in 0..count {
            let (_, at) = arrivals
                .recv_timeout(Duration::from_secs(30))
                .context("spooled alerts stopped arriving")?;
            first.get_or_insert(at);
            last = at;
        }
        Ok(((last - first.unwrap_or(last)) as f64 / 1e9, count - 1))
    })();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait()?;
    unpin(agent)?;
    let _ = fs::remove_dir_all(&dir);
    result
}

/// runsv supervises a fixture daemon; an operator (loginuid 1000) stops it
/// `count` times; each respawn's alert says how long after the exec it
/// came, and a loopback receiver when its webhook request arrived.
fn respawn_latencies(agent: &Path, count: u32) -> Result<(Vec<f64>, Vec<f64>)> {
    let (port, arrivals) = receiver()?;
    let dir = std::env::temp_dir().join(format!("stopguard-bench-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("sv"))?;
    let daemon = dir.join("sgdaemon");
    fs::copy(
        crate::workspace_root().join("tests/fixtures/sgdaemon"),
        &daemon,
    )?;
    let data = dir.join("data");
    fs::write(
        dir.join("sv/run"),
        format!("#!/bin/sh\nexec {} {}\n", daemon.display(), data.display()),
    )?;
    sh(&format!(
        "chmod 0755 {}/sv/run {}",
        dir.display(),
        daemon.display()
    ))?;
    let config = dir.join("stopguard.toml");
    fs::write(
        &config,
        format!(
            "[agent]\naudit_log = \"{d}/audit.jsonl\"\nstate_dir = \"{d}/state\"\nsocket = \"{d}/sock\"\n\
             group_interval = \"0s\"\n[[service]]\nname = \"sgdaemon\"\nexe = [\"{}\"]\n\
             on_unexpected_respawn = \"alert\"\n[[sink]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\n",
            daemon.display(),
            d = dir.display(),
        ),
    )?;
    let mut runsv = Command::new("runsv")
        .arg(dir.join("sv"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting runsv")?;
    let result = (|| -> Result<(Vec<f64>, Vec<f64>)> {
        let mut pid = wait_for_start(&data, None)?;
        let mut child = Command::new(agent)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        stderr.read_line(&mut first)?;
        std::thread::spawn(move || for _ in stderr.lines() {});
        let mut alerts = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut latencies = Vec::new();
        let mut webhook = Vec::new();
        eprint!("    respawns: ");
        for i in 0..count {
            sh(&format!(
                "echo 1000 > /proc/self/loginuid && kill -TERM {pid}"
            ))?;
            let line = alerts.next().context("the agent stopped")??;
            let alert: serde_json::Value = serde_json::from_str(&line)?;
            latencies.push(
                alert["detected_after_ms"]
                    .as_f64()
                    .context("no detected_after_ms")?,
            );
            // The id ends with the exec's kernel time (CLOCK_BOOTTIME ns).
            let id = alert["id"].as_str().context("no id")?.to_string();
            let exec_ns: u64 = id.rsplit('-').next().unwrap_or("").parse()?;
            let (got, arrived) = arrivals
                .recv_timeout(Duration::from_secs(10))
                .context("the webhook request did not arrive")?;
            if got != id {
                bail!("webhook {got} arrived for alert {id}");
            }
            webhook.push(arrived.saturating_sub(exec_ns) as f64 / 1e6);
            pid = wait_for_start(&data, Some(pid))?;
            if (i + 1) % 10 == 0 {
                eprint!("{} ", i + 1);
            }
        }
        eprintln!();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait()?;
        unpin(agent)?;
        Ok((latencies, webhook))
    })();
    let _ = runsv.kill();
    let _ = runsv.wait();
    let _ = Command::new("pkill")
        .arg("-KILL")
        .arg("-f")
        .arg(&daemon)
        .status();
    let _ = fs::remove_dir_all(&dir);
    result
}

/// The pid of the daemon's latest start line other than `old`.
fn wait_for_start(data: &Path, old: Option<u32>) -> Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let text = fs::read_to_string(data).unwrap_or_default();
        let last = text
            .lines()
            .filter_map(|l| l.strip_prefix("start "))
            .filter_map(|p| p.parse::<u32>().ok())
            .next_back();
        if let Some(pid) = last.filter(|p| Some(*p) != old) {
            return Ok(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("the fixture daemon did not start within 10 s")
}

fn sh(script: &str) -> Result<()> {
    let status = Command::new("/bin/sh").arg("-c").arg(script).status()?;
    if !status.success() {
        bail!("`{script}` failed ({status})");
    }
    Ok(())
}

fn storm(execs: u32) -> Duration {
    let start = Instant::now();
    for _ in 0..execs {
        let status = Command::new("/bin/true")
            .status()
            .expect("running /bin/true");
        assert!(status.success());
    }
    start.elapsed()
}

fn with_agent(agent: &Path, execs: u32) -> Result<AgentRun> {
    let mut child = Command::new(agent)
        .args(["trace", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", agent.display()))?;
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first)?;
    if !first.contains("tracing") {
        let _ = child.kill();
        bail!("stopguard trace did not start: {first}");
    }
    // Collects run time and count while it is held; dropping the fd stops it.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics")?;
    let before_programs = program_stats()?;
    let before_cpu = cpu_time(child.id())?;
    let wall = storm(execs);
    // Let the agent read what the storm left in the ring before measuring.
    std::thread::sleep(Duration::from_millis(50));
    let agent_cpu = cpu_time(child.id())? - before_cpu;
    let after_programs = program_stats()?;
    drop(stats);
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait()?;
    let mut rest = String::new();
    stderr.read_to_string(&mut rest)?;
    if !status.success() {
        bail!("stopguard trace failed ({status}): {first}{rest}");
    }
    let programs = after_programs
        .into_iter()
        .map(|(name, (count, time))| {
            let (c0, t0) = before_programs.get(&name).copied().unwrap_or_default();
            (name, (count - c0, time - t0))
        })
        .collect();
    let summary = rest
        .lines()
        .find(|l| l.contains(" events (exec "))
        .with_context(|| format!("no summary from stopguard trace: {rest}"))?;
    Ok(AgentRun {
        wall,
        agent_cpu,
        programs,
        exec_events: number_after(summary, "(exec ")?,
        events: number_after(summary, "stopguard: ")?,
        lost: number_after(summary, "), ")?,
    })
}

/// stopguard's programs (named sg_*): run count and run time so far.
fn program_stats() -> Result<BTreeMap<String, (u64, Duration)>> {
    let mut stats = BTreeMap::new();
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        if let Some(name) = info.name_as_str().filter(|n| n.starts_with("sg_")) {
            let slot = stats.entry(name.to_string()).or_insert((0, Duration::ZERO));
            slot.0 += info.run_count();
            slot.1 += info.run_time();
        }
    }
    Ok(stats)
}
