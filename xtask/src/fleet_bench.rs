//! `cargo xtask fleet-bench`: many simulated hosts (the agent's real fleet
//! code, without probes: `stopguard fleet bench`) against a real etcd on
//! loopback. It times a cluster window's open to every host's answer,
//! counts etcd's writes at rest, restarts etcd and times every host's
//! return, and reads etcd's CPU and memory from /proc.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{
    etcd::{Etcd, free_port},
    measure::cpu_time,
    step,
};

#[derive(clap::Args)]
pub struct Args {
    /// Simulated hosts, each with its own lease, presence and watch.
    #[arg(long, default_value_t = 1000)]
    hosts: usize,
    /// Cluster windows opened and closed, one after the other.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// How long the writes at rest are counted.
    #[arg(long, default_value = "60s")]
    rest: String,
}

pub fn run(agent: &Path, args: &Args) -> Result<()> {
    // Two connections a host, on both sides.
    raise_fd_limit();
    let dir = std::env::temp_dir().join(format!("sg-fleet-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = free_port(0)?;
    let peer = free_port(port)?;
    let mut etcd = Etcd::start(&dir, port, peer)?;
    let config = dir.join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nhost = \"bench\"\n\n[fleet]\netcd = [\"http://127.0.0.1:{port}\"]\ncluster = \"bench\"\n"
        ),
    )?;
    step(&format!(
        "fleet-bench: {} simulated hosts against etcd on 127.0.0.1:{port} (heartbeat 5s)",
        args.hosts
    ));
    let mut bench = Command::new(agent)
        .args(["fleet", "bench", "--config"])
        .arg(&config)
        .args(["--hosts", &args.hosts.to_string()])
        .args(["--rounds", &args.rounds.to_string()])
        .args(["--rest", &args.rest])
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", agent.display()))?;
    let out = BufReader::new(bench.stdout.take().expect("piped"));
    let mut rest_cpu = None;
    for line in out.lines() {
        let line = line?;
        println!("  {line}");
        if line.starts_with("resting") {
            rest_cpu = Some((cpu_time(etcd.pid())?, std::time::Instant::now()));
        } else if line.starts_with("at rest") {
            if let Some((before, at)) = rest_cpu.take() {
                let used = cpu_time(etcd.pid())? - before;
                println!(
                    "  etcd at rest: {:.1} % of one core",
                    used.as_secs_f64() * 100.0 / at.elapsed().as_secs_f64()
                );
            }
            let (peak, now) = etcd.memory();
            println!(
                "  etcd memory: {now:.0} MiB resident, {peak:.0} MiB peak; CPU so far {:.1} s",
                cpu_time(etcd.pid())?.as_secs_f64()
            );
        } else if line.starts_with("stop etcd now") {
            etcd.stop();
        } else if line.ends_with("start etcd now") {
            etcd = Etcd::start(&etcd.dir.clone(), port, peer)?;
        }
    }
    let status = bench.wait()?;
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
    if !status.success() {
        bail!("stopguard fleet bench failed ({status})");
    }
    Ok(())
}

fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
