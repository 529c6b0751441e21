//! `cargo xtask fleet-bench`: many simulated hosts (the agent's real fleet
//! code, without probes: `stopguard fleet bench`) against a real etcd on
//! loopback. It times a cluster window's open to every host's answer,
//! counts etcd's writes at rest, restarts etcd and times every host's
//! return, and reads etcd's CPU and memory from /proc.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{measure::cpu_time, step};

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

/// One etcd on loopback, its data in `dir`.
struct Etcd {
    dir: PathBuf,
    child: Child,
}

/// A free loopback port below the kernel's ephemeral range, where none of
/// the hosts' own connections can take it while etcd restarts.
fn free_port(after: u16) -> Result<u16> {
    let start = 20000 + (std::process::id() % 5000) as u16;
    (start.max(after + 1)..30000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .context("no free port from 20000 to 30000")
}

impl Etcd {
    fn start(dir: &Path, port: u16, peer: u16) -> Result<Etcd> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("etcd.log"))?;
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{port}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{port}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd (apt-get install etcd-server)")?;
        let etcd = Etcd {
            dir: dir.to_path_buf(),
            child,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(etcd);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "etcd did not listen on 127.0.0.1:{port} within 20 s (its log: {}/etcd.log)",
            dir.display()
        )
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak and current resident memory, in MiB.
    fn memory(&self) -> (f64, f64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (kib("VmHWM:") / 1024.0, kib("VmRSS:") / 1024.0)
    }

    fn stop(&mut self) {
        // Once reaped, its pid is no longer its own.
        if let Ok(None) = self.child.try_wait() {
            unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
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
