//! `stopguard run`: the agent on a config file, its alerts and its log.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::{Mutex, mpsc},
    time::Duration,
};

use serde_json::Value;

use crate::stopguard_bin;

/// A running `stopguard run` on a config file, its alert lines collected.
pub struct Agent {
    child: Child,
    alerts: mpsc::Receiver<String>,
    log: std::sync::Arc<Mutex<String>>,
}

impl Agent {
    /// Writes `config` to `path`, starts the agent on it and waits until it
    /// runs.
    pub fn start(path: &std::path::Path, config: &str) -> Agent {
        Agent::start_with(path, config, |_| {})
    }

    /// Like `start`, with `customize` applied to the command first (limits,
    /// a stdout nobody reads).
    pub fn start_with(
        path: &std::path::Path,
        config: &str,
        customize: impl FnOnce(&mut Command),
    ) -> Agent {
        Agent::start_binary(&stopguard_bin(), path, config, customize)
    }

    /// Like `start_with`, running `binary` (another build of the agent).
    pub fn start_binary(
        binary: &std::path::Path,
        path: &std::path::Path,
        config: &str,
        customize: impl FnOnce(&mut Command),
    ) -> Agent {
        std::fs::write(path, config).unwrap();
        let mut command = Command::new(binary);
        command
            .args(["run", "--config"])
            .arg(path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        customize(&mut command);
        let mut child = command.spawn().expect("starting stopguard run");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        // What it logs before it runs (a lost state, say) is kept in the log.
        let mut line = String::new();
        while !line.contains("stopguard running") {
            let before = line.len();
            if stderr.read_line(&mut line).unwrap_or(0) == 0 || line.len() == before {
                let _ = child.kill();
                let mut rest = String::new();
                let _ = stderr.read_to_string(&mut rest);
                panic!("the agent did not start:\n{line}{rest}");
            }
        }
        let log = std::sync::Arc::new(Mutex::new(line));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let (tx, alerts) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Agent { child, alerts, log }
    }

    /// Everything the agent has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The next alert record, or None after `timeout`.
    pub fn next_alert(&self, timeout: Duration) -> Option<Value> {
        let line = self.alerts.recv_timeout(timeout).ok()?;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("alert is not JSON ({e}): {line}")),
        )
    }
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the agent process still runs (not exited).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL, as a crash or the OOM killer would: no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as `systemctl stop` or a package upgrade would; waits
    /// until it has exited.
    pub fn terminate(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    /// Stops the agent, then detaches the probes it pinned, so that the
    /// next test starts on probes of its own (unless another agent already
    /// runs on them: `stopguard unpin` refuses then).
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        unpin();
    }
}

/// `stopguard unpin`: the pinned probes detached, when no agent runs.
pub fn unpin() {
    let _ = Command::new(stopguard_bin())
        .arg("unpin")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
