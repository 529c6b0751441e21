//! etcd on the host's loopback, for the fleet's load driver and lab: a
//! single member, its data in a directory of the caller's.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// One etcd on loopback, its data in `dir`.
pub struct Etcd {
    pub dir: PathBuf,
    child: Child,
}

/// A free loopback port below the kernel's ephemeral range, where none of
/// the hosts' own connections can take it while etcd restarts.
pub fn free_port(after: u16) -> Result<u16> {
    let start = 20000 + (std::process::id() % 5000) as u16;
    (start.max(after + 1)..30000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .context("no free port from 20000 to 30000")
}

impl Etcd {
    pub fn start(dir: &Path, port: u16, peer: u16) -> Result<Etcd> {
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak and current resident memory, in MiB.
    pub fn memory(&self) -> (f64, f64) {
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

    pub fn stop(&mut self) {
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
