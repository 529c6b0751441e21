//! `stopguard trace`: the kernel records as JSON lines, for the probe tests.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::stopguard_bin;

/// A running `stopguard trace`, its output collected as it comes.
pub struct Trace {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

pub struct Traced {
    pub lines: Vec<String>,
    pub stderr: String,
    pub status: std::process::ExitStatus,
}

impl Traced {
    /// Every stdout line parsed as JSON; panics on a line that is not.
    pub fn events(&self) -> Vec<Value> {
        self.lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

impl Trace {
    /// Starts `stopguard trace ARGS` and waits until its probes are attached.
    pub fn start(args: &[&str]) -> Trace {
        let mut child = Command::new(stopguard_bin())
            .arg("trace")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning stopguard trace");
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        err.read_line(&mut first)
            .expect("reading stopguard's stderr");
        if !first.contains("tracing") {
            let _ = child.kill();
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            panic!("stopguard trace did not start:\n{first}{rest}");
        }
        let stderr = std::thread::spawn(move || {
            let mut rest = first;
            let _ = err.read_to_string(&mut rest);
            rest
        });
        Trace {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits until a stdout line satisfies `pred` (consuming lines before
    /// it into `seen`), or panics after `timeout`.
    pub fn wait_for(&self, seen: &mut Vec<String>, timeout: Duration, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let hit = pred(&line);
                    seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no matching line within {timeout:?}; saw {} lines, last: {:?}",
                    seen.len(),
                    seen.last()
                ),
            }
        }
    }

    /// Stops the tracer with SIGINT, as Ctrl-C would, and collects all output.
    pub fn stop(mut self, mut seen: Vec<String>) -> Traced {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("waiting for stopguard trace");
        seen.extend(self.stdout.iter());
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new))
            .join()
            .unwrap();
        Traced {
            lines: seen,
            stderr,
            status,
        }
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
