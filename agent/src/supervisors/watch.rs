//! Which supervisors would start a service again if it stopped now, and
//! how to switch each off: what `stopguard explain` tells, `stop
//! --and-pause` runs and `status` lists. Each supervisor's file holds its
//! own probe ([`super::Supervisor::watching`]); this file holds what they
//! share: the service as /proc shows it, and which supervisors it trusts.
//!
//! A supervisor counts for a service only if it could have started it: it
//! is in the creator chain recorded at the service's exec, or it runs as
//! root or as the service's own user. Anything else is listed as not
//! trusted and never acted on. What the agent does for a trusted one (its
//! status command, its config, its off switch) it does with that
//! supervisor's own credentials and a deadline (`super::bounded`).

use std::{cell::RefCell, path::PathBuf};

use super::bounded::{Credentials, run_as};
use crate::escape::needs_escape;

use serde::{Deserialize, Serialize};

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
    /// The supervisor processes a probe passed over as not trusted.
    pub untrusted: RefCell<Vec<Running>>,
}

#[derive(Clone, Debug, Default)]
pub struct Main {
    pub pid: u32,
    /// The user it runs as.
    pub uid: Option<u32>,
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
    /// The user it runs as (the owner of its /proc directory).
    pub uid: u32,
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
    /// The user its process runs as: its switches run as that user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// False for a process named like a supervisor that could not have
    /// started the service (neither in its creator chain, nor root, nor
    /// the service's user): listed, never acted on.
    #[serde(default = "yes")]
    pub trusted: bool,
}

fn yes() -> bool {
    true
}

impl Watcher {
    /// A trusted supervisor that would not start the service again now.
    pub fn paused(&self) -> bool {
        self.trusted && !self.would_restart
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
                uid: self.process(pid).map(|p| p.uid),
                cmdline,
                cwd: std::fs::read_link(format!("/proc/{pid}/cwd")).ok(),
                ancestors,
            }
        });
    }

    pub fn process(&self, pid: u32) -> Option<&Running> {
        self.processes.iter().find(|p| p.pid == pid)
    }

    /// The user the service runs as, or ran as last.
    pub fn uid(&self) -> Option<u32> {
        self.main.as_ref().or(self.was.as_ref()).and_then(|m| m.uid)
    }

    /// Whether supervisor process `p` could have started the service: it
    /// is in the chain recorded at its exec, or runs as root or as the
    /// service's user. One that is not is remembered as passed over.
    pub fn trusts(&self, p: &Running) -> bool {
        let trusted = p.uid == 0 || Some(p.uid) == self.uid() || self.started_by(p.pid);
        if !trusted {
            let mut untrusted = self.untrusted.borrow_mut();
            if !untrusted.iter().any(|u| u.pid == p.pid) {
                untrusted.push(p.clone());
            }
        }
        trusted
    }

    /// The running processes named `comm` that the service trusts.
    pub fn named<'a>(&'a self, comm: &'a str) -> impl Iterator<Item = &'a Running> {
        self.processes
            .iter()
            .filter(move |p| super::name_of(&p.comm, &p.cmdline) == comm && self.trusts(p))
    }

    /// The nearest ancestor of the main process named one of `comms` that
    /// the service trusts, and the one below it (the child it runs, the
    /// service's own process or what execs it).
    pub fn ancestor(&self, comms: &[&str]) -> Option<(&Running, Option<&Running>)> {
        let main = self.main.as_ref()?;
        let at = main
            .ancestors
            .iter()
            .position(|a| comms.contains(&super::name_of(&a.comm, &a.cmdline)) && self.trusts(a))?;
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
                .filter(|p| comms.contains(&super::name_of(&p.comm, &p.cmdline)) && self.trusts(p))
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
            uid: p.uid().ok()?,
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

/// `argv` as words a person can paste into a shell; a word holding a
/// control character in bash's `$'...'` quoting, so that it shows as
/// escapes rather than acting on the terminal.
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b))
            {
                a.clone()
            } else if a.chars().any(needs_escape) {
                let mut quoted = String::from("$'");
                for c in a.chars() {
                    match c {
                        '\\' => quoted.push_str("\\\\"),
                        '\'' => quoted.push_str("\\'"),
                        '\n' => quoted.push_str("\\n"),
                        '\t' => quoted.push_str("\\t"),
                        '\r' => quoted.push_str("\\r"),
                        '\x1b' => quoted.push_str("\\e"),
                        c if needs_escape(c) && (c as u32) < 0x80 => {
                            quoted.push_str(&format!("\\x{:02x}", c as u32));
                        }
                        c if needs_escape(c) => quoted.push_str(&format!("\\u{:04x}", c as u32)),
                        c => quoted.push(c),
                    }
                }
                quoted.push('\'');
                quoted
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
        let (state, would_restart) = match run_as(Credentials::of(supervise.pid).as_ref(), &status)
        {
            Ok(out) => supervise_state(&out),
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
            uid: Some(supervise.uid),
            trusted: true,
        }]
    }
}

/// What a supervise-style status line (`sv status`, `s6-svstat`, `svstat`)
/// says: the state, and whether the supervisor would start the service
/// again (while up unless `want down`, while down only on `want up`).
pub fn supervise_state(out: &str) -> (String, bool) {
    // `sv status` adds its log service after a `;`.
    let state = out.split(';').next().unwrap_or("").trim().to_string();
    let up = state.contains(": up") || state.starts_with("up") || state.starts_with("run:");
    let restarts = if up {
        !state.contains("want down")
    } else {
        state.contains("want up")
    };
    (state, restarts)
}

/// Owned words from string literals.
pub fn words(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use std::process::Command;

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
            uid: 0,
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
    fn only_a_supervisor_that_could_have_started_the_service_is_trusted() {
        let process = |pid, uid, comm: &str| Running {
            pid,
            ppid: 1,
            uid,
            comm: comm.into(),
            cmdline: words(&[comm]),
        };
        let subject = Subject {
            processes: vec![
                process(10, 0, "monit"),
                process(11, 26, "monit"),
                process(12, 1001, "monit"),
                process(13, 1002, "monit"),
            ],
            main: Some(Main {
                pid: 50,
                uid: Some(26),
                ..Main::default()
            }),
            chain: vec![13],
            ..Subject::default()
        };
        let trusted: Vec<u32> = subject.named("monit").map(|p| p.pid).collect();
        assert_eq!(
            trusted,
            [10, 11, 13],
            "root, the service's user, its creator"
        );
        let passed_over: Vec<u32> = subject.untrusted.take().iter().map(|p| p.pid).collect();
        assert_eq!(passed_over, [12]);
    }

    /// The words bash reads back from `line`.
    fn bash_words(line: &str) -> Vec<String> {
        let out = Command::new("bash")
            .args([
                "-c",
                &format!("for w in {line}; do printf '%s\\0' \"$w\"; done"),
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_terminator('\0')
            .map(String::from)
            .collect()
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
        assert_eq!(
            shell_words(&words(&["x", "a\x1b]0;t\x07'\n"])),
            "x $'a\\e]0;t\\x07\\'\\n'"
        );
        let pasted = bash_words(&shell_words(&words(&["a b", "c\x1bd'e\u{9b}"])));
        assert_eq!(pasted, ["a b", "c\x1bd'e\u{9b}"]);
    }
}
