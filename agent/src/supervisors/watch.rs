//! Which supervisors would start a service again if it stopped now, and
//! how to switch each off: what `stopguard explain` tells, `stop
//! --and-pause` runs and `status` lists. Each supervisor's file holds its
//! own probe ([`super::Supervisor::watching`]); this file holds what they
//! share: the service as /proc shows it, and bounded commands and HTTP.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// How long one probe's command or HTTP request may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A watched service, as the agent knows it and /proc shows it.
#[derive(Clone, Debug, Default)]
pub struct Subject {
    pub service: String,
    /// The systemd unit it runs in.
    pub unit: Option<String>,
    /// Its main process, when it runs.
    pub main: Option<Main>,
    /// The pids of its creator chain as recorded at its exec (parent first), when the
    /// agent saw it start.
    pub chain: Vec<u32>,
    /// Every process now running.
    pub processes: Vec<Running>,
    /// Its last main process as seen running, while it is stopped.
    pub was: Option<Main>,
}

#[derive(Clone, Debug, Default)]
pub struct Main {
    pub pid: u32,
    pub cmdline: Vec<String>,
    /// Its working directory (a postmaster's is its data directory).
    pub cwd: Option<PathBuf>,
    /// Its ancestors now, parent first, up to PID 1.
    pub ancestors: Vec<Running>,
}

/// A running process: what a probe needs of it.
#[derive(Clone, Debug, Default)]
pub struct Running {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub cmdline: Vec<String>,
}

/// One supervisor that watches a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Watcher {
    /// The supervisor's name (`monit`, `systemd`, `patroni`).
    pub supervisor: String,
    /// Its process.
    pub pid: Option<u32>,
    /// What it knows the service as: monit's check, runit's service
    /// directory, the unit, Patroni's cluster.
    pub name: String,
    /// Whether it would start the service again if it stopped now.
    pub would_restart: bool,
    /// Its state, in its own words (`Restart=always`, `paused`,
    /// `not monitored`).
    pub state: String,
    /// When it restarts, in a sentence a person reads.
    pub how: String,
    /// The command that stops it from restarting the service, and the one
    /// that undoes it; none when there is nothing to switch.
    pub off: Option<Vec<String>>,
    pub on: Option<Vec<String>>,
    /// Whether switching it off also stops the service (`sv down`).
    #[serde(default)]
    pub off_stops: bool,
}

impl Watcher {
    pub fn paused(&self) -> bool {
        !self.would_restart
    }
}

impl Subject {
    /// Reads `pid`'s ancestors, its working directory and every running
    /// process from /proc.
    pub fn read_proc(&mut self, main: Option<(u32, Vec<String>)>) {
        if self.processes.is_empty() {
            self.processes = running();
        }
        // A main process that has just exited is not running, though the
        // agent has not read its exit yet.
        let main = main.filter(|(pid, _)| self.process(*pid).is_some());
        self.main = main.map(|(pid, cmdline)| {
            let mut ancestors = Vec::new();
            let mut next = self.process(pid).map(|p| p.ppid);
            while let Some(ppid) = next.filter(|&p| p != 0 && ancestors.len() < 64) {
                let Some(parent) = self.process(ppid) else {
                    break;
                };
                next = Some(parent.ppid);
                ancestors.push(parent.clone());
            }
            Main {
                pid,
                cmdline,
                cwd: std::fs::read_link(format!("/proc/{pid}/cwd")).ok(),
                ancestors,
            }
        });
    }

    pub fn process(&self, pid: u32) -> Option<&Running> {
        self.processes.iter().find(|p| p.pid == pid)
    }

    /// The running processes named `comm`.
    pub fn named<'a>(&'a self, comm: &'a str) -> impl Iterator<Item = &'a Running> {
        self.processes
            .iter()
            .filter(move |p| super::name_of(&p.comm, &p.cmdline) == comm)
    }

    /// The nearest ancestor of the main process named one of `comms`, and
    /// the one below it (the child it runs, the service's own process or
    /// what execs it).
    pub fn ancestor(&self, comms: &[&str]) -> Option<(&Running, Option<&Running>)> {
        let main = self.main.as_ref()?;
        let at = main
            .ancestors
            .iter()
            .position(|a| comms.contains(&super::name_of(&a.comm, &a.cmdline)))?;
        Some((
            &main.ancestors[at],
            at.checked_sub(1).map(|i| &main.ancestors[i]),
        ))
    }

    /// The process of a supervisor named one of `comms` that runs the
    /// service: an ancestor of its main process, else (when it is not
    /// running) one that still runs in the chain recorded at its last exec
    /// or, for one started before the agent, among the ancestors of its
    /// last main process (a runsv told `sv down` still watches it).
    pub fn supervising(&self, comms: &[&str]) -> Option<&Running> {
        if self.main.is_some() {
            return self.ancestor(comms).map(|(s, _)| s);
        }
        let was = self
            .was
            .iter()
            .flat_map(|w| w.ancestors.iter().map(|a| a.pid));
        self.chain.iter().copied().chain(was).find_map(|pid| {
            self.process(pid)
                .filter(|p| comms.contains(&super::name_of(&p.comm, &p.cmdline)))
        })
    }

    /// Whether the chain recorded at the main process's exec passes
    /// through `pid`.
    pub fn started_by(&self, pid: u32) -> bool {
        self.chain.contains(&pid)
    }
}

/// Every process now running, as /proc shows it.
pub fn running() -> Vec<Running> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(|p| {
        let p = p.ok()?;
        let stat = p.stat().ok()?;
        Some(Running {
            pid: stat.pid as u32,
            ppid: stat.ppid as u32,
            comm: stat.comm,
            cmdline: p.cmdline().unwrap_or_default(),
        })
    })
    .collect()
}

/// The value of option `short` or `long` in `args` (`-c FILE`, `-cFILE`,
/// `--config FILE`, `--config=FILE`).
pub fn option(args: &[String], short: &str, long: &str) -> Option<String> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == short || arg == long {
            return args.next().cloned();
        }
        if let Some(value) = arg.strip_prefix(&format!("{long}=")) {
            return Some(value.to_string());
        }
        if short.len() == 2
            && let Some(value) = arg.strip_prefix(short).filter(|v| !v.is_empty())
        {
            return Some(value.to_string());
        }
    }
    None
}

/// Runs `argv` with no input, for at most [`PROBE_TIMEOUT`]; its standard
/// output, or what went wrong in a line.
pub fn run(argv: &[&str]) -> Result<String, String> {
    let shown = argv.join(" ");
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("`{shown}`: {err}"))?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{shown}` did not answer within {} s",
                    PROBE_TIMEOUT.as_secs()
                ));
            }
            Err(err) => return Err(format!("`{shown}`: {err}")),
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut err);
    }
    if status.success() {
        Ok(out)
    } else {
        let said = if err.trim().is_empty() { &out } else { &err };
        Err(format!(
            "`{shown}` failed ({status}): {}",
            said.trim().lines().next().unwrap_or("")
        ))
    }
}

/// `GET path` from an HTTP server at `address` (`host:port`), for at most
/// [`PROBE_TIMEOUT`]; the body of a 200 answer.
pub fn http_get(address: &str, path: &str) -> Result<String, String> {
    let failed = |err: std::io::Error| format!("GET http://{address}{path}: {err}");
    let target = address
        .to_socket_addrs()
        .map_err(failed)?
        .next()
        .ok_or_else(|| format!("GET http://{address}{path}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&target, PROBE_TIMEOUT).map_err(failed)?;
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .map_err(failed)?;
    stream
        .set_write_timeout(Some(PROBE_TIMEOUT))
        .map_err(failed)?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nAccept: application/json\r\n\r\n"
    )
    .map_err(failed)?;
    let mut answer = Vec::new();
    stream
        .take(1024 * 1024)
        .read_to_end(&mut answer)
        .map_err(failed)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET http://{address}{path}: no HTTP answer"))?;
    let status = head.lines().next().unwrap_or("");
    // Patroni answers /patroni with 503 on a member that is not running.
    if !(status.contains(" 200 ") || status.contains(" 503 ")) {
        return Err(format!("GET http://{address}{path}: {status}"));
    }
    Ok(body.to_string())
}

/// `argv` as words a person can paste into a shell.
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The working directory of `pid` (a runsv's, an s6-supervise's is its
/// service directory).
pub fn cwd(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/cwd"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// A supervise-style supervisor's watch over the service (runit's runsv,
/// s6's s6-supervise, daemontools' supervise): its process named `comm`
/// above the service, whose working directory is the service directory,
/// and what `status` (`sv status`, `s6-svstat`, `svstat`) says of that
/// directory. It starts the service again unless told to keep it down:
/// while up unless it says `want down`, while down only if it says `want
/// up` (a restart due within a second). `control` with `down` keeps it
/// down, with `up` undoes it.
pub struct Supervise {
    pub supervisor: &'static str,
    pub comm: &'static str,
    pub status: &'static [&'static str],
    pub control: &'static str,
    pub down: &'static str,
    pub up: &'static str,
}

impl Supervise {
    pub fn watching(&self, subject: &Subject) -> Vec<Watcher> {
        let Some(supervise) = subject.supervising(&[self.comm]) else {
            return Vec::new();
        };
        let dir = cwd(supervise.pid).unwrap_or_else(|| "SERVICE_DIR".into());
        let mut status = self.status.to_vec();
        status.push(&dir);
        let (state, would_restart) = match run(&status) {
            Ok(out) => {
                // `sv status` adds its log service after a `;`.
                let state = out.split(';').next().unwrap_or("").trim().to_string();
                let up =
                    state.contains(": up") || state.starts_with("up") || state.starts_with("run:");
                let restarts = if up {
                    !state.contains("want down")
                } else {
                    state.contains("want up")
                };
                (state, restarts)
            }
            Err(err) => (format!("unknown: {err}"), true),
        };
        vec![Watcher {
            supervisor: self.supervisor.into(),
            pid: Some(supervise.pid),
            name: dir.clone(),
            would_restart,
            state,
            how: format!("{} starts it again a second after any exit", self.comm),
            off: Some(words(&[self.control, self.down, &dir])),
            on: Some(words(&[self.control, self.up, &dir])),
            off_stops: true,
        }]
    }
}

/// Owned words from string literals.
pub fn words(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_in_their_spellings() {
        let args = words(&["-I", "-c", "/etc/monitrc", "--pidfile=/run/m.pid"]);
        assert_eq!(
            option(&args, "-c", "--conf").as_deref(),
            Some("/etc/monitrc")
        );
        assert_eq!(
            option(&args, "-p", "--pidfile").as_deref(),
            Some("/run/m.pid")
        );
        assert_eq!(
            option(&words(&["-c/x.conf"]), "-c", "--configuration").as_deref(),
            Some("/x.conf")
        );
        assert_eq!(option(&args, "-x", "--none"), None);
    }

    #[test]
    fn a_stopped_service_is_supervised_by_what_still_runs_above_its_last_main() {
        let runsv = Running {
            pid: 40,
            ppid: 1,
            comm: "runsv".into(),
            cmdline: words(&["runsv", "/etc/sv/pg"]),
        };
        let mut subject = Subject {
            processes: vec![runsv.clone()],
            was: Some(Main {
                pid: 41,
                ancestors: vec![runsv],
                ..Main::default()
            }),
            ..Subject::default()
        };
        assert_eq!(subject.supervising(&["runsv"]).map(|r| r.pid), Some(40));
        // Gone since: nothing supervises it.
        subject.processes.clear();
        assert_eq!(subject.supervising(&["runsv"]).map(|r| r.pid), None);
    }

    #[test]
    fn shell_words_quote_what_needs_it() {
        assert_eq!(
            shell_words(&words(&[
                "monit",
                "-c",
                "/etc/monitrc",
                "unmonitor",
                "my pg"
            ])),
            "monit -c /etc/monitrc unmonitor 'my pg'"
        );
    }
}
