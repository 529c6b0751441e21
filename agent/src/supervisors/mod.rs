//! The supervisors stopguard knows: the processes that restart what they
//! watch, and the control commands through which a person stops or starts
//! a service by way of them.
//!
//! Each supervisor is one file holding one [`Supervisor`]: the comms its
//! supervising process runs under, and its control commands with how each
//! reads its arguments. [`ALL`] registers them; the process table's notion
//! of a supervisor and the detector's list of control commands both come
//! from it.
//!
//! To add a supervisor: one file + one line in [`ALL`].

pub mod bounded;
mod containerd;
mod daemontools;
mod kubelet;
mod monit;
mod mysqld_safe;
pub mod patroni;
mod postgresql;
mod runit;
mod s6;
mod supervisord;
pub mod systemd;
pub mod watch;

use serde::{Deserialize, Serialize};

use self::watch::{Subject, Watcher};

/// Every supervisor, one line each.
pub const ALL: &[&Supervisor] = &[
    &monit::MONIT,
    &systemd::SYSTEMD,
    &supervisord::SUPERVISORD,
    &runit::RUNIT,
    &s6::S6,
    &daemontools::DAEMONTOOLS,
    &containerd::CONTAINERD,
    &kubelet::KUBELET,
    &postgresql::POSTGRESQL,
    &patroni::PATRONI,
    &mysqld_safe::MYSQLD_SAFE,
];

/// What stopguard knows of one supervisor.
#[derive(Debug)]
pub struct Supervisor {
    pub name: &'static str,
    /// Comms its supervising process runs under; a trailing `*` matches
    /// any comm that starts with the rest. Empty for a tool that controls
    /// a service but does not restart it.
    pub comms: &'static [&'static str],
    /// The commands a person runs to stop or start a service through it.
    pub control: &'static [Control],
    /// Finds what of it watches a service and whether it would start the
    /// service again; none for one whose state stopguard cannot read.
    pub watching: Option<Probe>,
}

/// A supervisor's probe: what of it watches the subject.
pub type Probe = fn(&Subject) -> Vec<Watcher>;

/// A control command: what it is called and what its arguments ask.
#[derive(Debug)]
pub struct Control {
    pub comm: &'static str,
    /// The intent of its arguments (argv without argv[0]).
    pub intent: fn(&[String]) -> Intent,
    /// For a command that asks systemd (PID 1) to act (`systemctl`, and
    /// what redirects there): the units its arguments name. What PID 1
    /// then does is matched to it by unit, never by any other guess.
    pub units: Option<Units>,
}

/// Reads the units a command's arguments name.
pub type Units = fn(&[String]) -> Vec<String>;

impl Control {
    /// What this command run with `argv` asks for.
    pub fn intent_of(&self, argv: &[String]) -> Intent {
        (self.intent)(self.arguments(argv))
    }

    /// Its own arguments in `argv`: after argv[0], or for a script after
    /// the interpreter and its options too (`/bin/sh /usr/sbin/service pg
    /// stop`, `/usr/bin/perl -wT /usr/bin/pg_ctlcluster 15 main stop`).
    fn arguments<'a>(&self, argv: &'a [String]) -> &'a [String] {
        let named_so = |a: &String| a.rsplit('/').next().is_some_and(|n| n == self.comm);
        let own = argv.iter().take(3).position(named_so).unwrap_or(0);
        argv.get(own + 1..).unwrap_or_default()
    }
}

impl Supervisor {
    fn runs_as(&self, comm: &str) -> bool {
        self.comms.iter().any(|c| match c.strip_suffix('*') {
            Some(prefix) => comm.starts_with(prefix),
            None => comm == *c,
        })
    }
}

/// Every supervisor that watches `subject`, each with whether it would
/// start it again if it stopped now and how to switch that off; then the
/// processes named like one that the service does not trust, never acted
/// on.
pub fn watching(subject: &Subject) -> Vec<Watcher> {
    let mut watchers: Vec<Watcher> = ALL
        .iter()
        .filter_map(|s| s.watching)
        .flat_map(|probe| probe(subject))
        .collect();
    for p in subject.untrusted.take() {
        let name = name_of(&p.comm, &p.cmdline);
        let supervisor = ALL
            .iter()
            .find(|s| s.runs_as(name))
            .map_or(name, |s| s.name);
        watchers.push(Watcher {
            supervisor: supervisor.to_string(),
            pid: Some(p.pid),
            name: name.to_string(),
            would_restart: false,
            state: format!(
                "not trusted (owned by {}): neither root, nor the service's user, nor in its creator chain",
                crate::sys::identity::person(Some(p.uid))
            ),
            how: "never asked, read or switched off by stopguard".into(),
            off: None,
            on: None,
            off_stops: false,
            uid: Some(p.uid),
            trusted: false,
        });
    }
    watchers
}

/// Runs every reader of text a supervisor gives stopguard (Patroni's
/// YAML config, `monit status`, `supervisorctl status`, a supervise-style
/// status line, the options of a command line) on `text`, as the fuzz
/// target does: none may panic, loop or take memory out of proportion.
/// Returns how many values they found.
pub fn read_supervisor_text(text: &str) -> usize {
    let words: Vec<String> = text.split_whitespace().map(String::from).collect();
    // These two return text, not values: run for what they may do wrong.
    let _ = (name_of("python3", &words), watch::shell_words(&words));
    patroni::flat_yaml(text).len()
        + monit::parse_status(text).len()
        + usize::from(supervisord::program_of(text, 4242).is_some())
        + usize::from(watch::supervise_state(text).1)
        + usize::from(watch::option(&words, "-c", "--config").is_some())
}

/// The name a process goes by: its comm, or for an interpreter running a
/// script (`/usr/bin/python3 /usr/bin/patroni`, `sh /usr/bin/mysqld_safe`)
/// the script's file name, which is the comm the script has when run
/// directly.
pub fn name_of<'a>(comm: &'a str, cmdline: &'a [String]) -> &'a str {
    if !is_interpreter(comm) {
        return comm;
    }
    // Options come first; `-c CODE` and `-m MODULE` run no script file.
    let script = cmdline.iter().skip(1).find(|a| !a.starts_with('-'));
    let ran_code = cmdline.iter().skip(1).any(|a| a == "-c" || a == "-m");
    match script {
        Some(script) if !ran_code => script.rsplit('/').next().unwrap_or(comm),
        _ => comm,
    }
}

/// Whether a program named `name` (a comm, or an executable's file name)
/// is an interpreter, whose first argument that is no option is the script
/// it runs. Not a wrapper that execs its arguments (`nohup`, `env`): what
/// it runs is seen at its own exec.
pub fn is_interpreter(name: &str) -> bool {
    name.starts_with("python") || matches!(name, "sh" | "bash" | "dash" | "perl" | "ruby")
}

/// The comms whose arguments stopguard reads: every supervisor's (its
/// probe reads its configuration from them) and control command's (its
/// intent is in them). Comms given as a prefix are left out: the kernel
/// matches whole names, and none of those is read.
pub fn notable_names() -> impl Iterator<Item = String> {
    ALL.iter()
        .flat_map(|s| {
            s.comms
                .iter()
                .copied()
                .chain(s.control.iter().map(|c| c.comm))
        })
        .filter(|c| !c.ends_with('*'))
        .map(String::from)
}

/// Whether a process named `comm` is a supervisor's supervising process.
pub fn is_supervisor(comm: &str) -> bool {
    ALL.iter().any(|s| s.runs_as(comm))
}

/// Whether a process named `comm` is systemd (PID 1, or a user's manager).
pub fn is_systemd(comm: &str) -> bool {
    systemd::SYSTEMD.runs_as(comm)
}

/// The control command named `comm`, if it is one.
pub fn control(comm: &str) -> Option<&'static Control> {
    ALL.iter().flat_map(|s| s.control).find(|c| c.comm == comm)
}

/// What a request to systemd asks and of which units, when `comm` run with
/// `argv` is one (`systemctl stop postgresql@15-main`,
/// `pg_ctlcluster 15 main stop`) and names a unit.
pub fn unit_request(comm: &str, argv: &[String]) -> Option<(Intent, Vec<String>)> {
    let control = control(comm)?;
    let units = (control.units?)(control.arguments(argv));
    (!units.is_empty()).then(|| (control.intent_of(argv), units))
}

/// Whether control command `comm` is a request to systemd (matched by
/// unit, not by the service's name).
pub fn asks_systemd(comm: &str) -> bool {
    control(comm).is_some_and(|c| c.units.is_some())
}

/// Whether control command `comm` stops a server by asking it to shut
/// itself down (`mysqladmin shutdown`): no signal is sent, the server just
/// exits.
pub fn shuts_down_itself(comm: &str) -> bool {
    mysqld_safe::MYSQLD_SAFE
        .control
        .iter()
        .any(|c| c.comm == comm)
}

/// What a control command asks for, from its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    Stop,
    Start,
    Restart,
    Other,
}

impl Intent {
    /// The intent of control command `comm` run with `args` (argv).
    pub fn of(comm: &str, args: &[String]) -> Intent {
        control(comm).map_or(Intent::Other, |c| c.intent_of(args))
    }

    pub fn stops(self) -> bool {
        matches!(self, Intent::Stop | Intent::Restart)
    }

    pub fn starts(self) -> bool {
        matches!(self, Intent::Start | Intent::Restart)
    }
}

/// The intent of the first verb among `args`, for the commands that take
/// one (`systemctl stop`, `sv down`, `pg_ctl restart`...). Options (pg_ctl's
/// `-o`, `-t`...) are not verbs; sv's one-letter verbs are among these.
fn verb(args: &[String]) -> Intent {
    for arg in args.iter().filter(|a| !a.starts_with('-')) {
        match arg.as_str() {
            "stop" | "down" | "kill" | "term" | "d" | "k" | "t" => return Intent::Stop,
            "start" | "up" | "once" | "u" | "o" => return Intent::Start,
            "restart" | "force-restart" | "try-restart" | "reload-or-restart" => {
                return Intent::Restart;
            }
            _ => {}
        }
    }
    Intent::Other
}

/// The intent of the first flag among `args` that `flag` knows, for the
/// commands that take one-letter flags (`s6-svc -d`, `svc -u`), grouped or
/// not (`-wd`).
fn flags(args: &[String], flag: fn(char) -> Option<Intent>) -> Intent {
    args.iter()
        .filter_map(|a| a.strip_prefix('-'))
        .flat_map(str::chars)
        .find_map(flag)
        .unwrap_or(Intent::Other)
}

#[cfg(test)]
fn args(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supervisors_by_comm() {
        for supervisor in ALL {
            for comm in supervisor.comms {
                let comm = comm.trim_end_matches('*');
                assert!(is_supervisor(comm), "{}: {comm}", supervisor.name);
            }
        }
        assert!(is_supervisor("containerd-shim"));
        assert!(is_supervisor("containerd-shim-runc-v2"));
        assert!(!is_supervisor("bash"));
        assert!(!is_supervisor("postgres"));
        assert!(!is_supervisor("pg_ctl"), "controls, does not supervise");
    }

    #[test]
    fn scripts_go_by_their_file_name() {
        let name = |comm, argv: &[&str]| name_of(comm, &args(argv)).to_string();
        assert_eq!(
            name(
                "python3",
                &["/usr/bin/python3", "/usr/bin/patroni", "/etc/patroni.yml"]
            ),
            "patroni"
        );
        assert_eq!(
            name("patroni", &["/usr/bin/python3", "/usr/bin/patroni"]),
            "patroni"
        );
        assert_eq!(
            name(
                "python3",
                &[
                    "/usr/bin/python3",
                    "-B",
                    "-c",
                    "from multiprocessing.spawn import spawn_main"
                ]
            ),
            "python3"
        );
        assert_eq!(
            name("sh", &["/bin/sh", "/usr/bin/mysqld_safe", "--datadir=/x"]),
            "mysqld_safe"
        );
        assert_eq!(
            name(
                "postgres",
                &["/usr/lib/postgresql/15/bin/postgres", "-D", "/x"]
            ),
            "postgres"
        );
    }

    #[test]
    fn control_commands_are_named_once() {
        let mut comms: Vec<&str> = ALL.iter().flat_map(|s| s.control).map(|c| c.comm).collect();
        let count = comms.len();
        comms.sort();
        comms.dedup();
        assert_eq!(comms.len(), count, "{comms:?}");
    }

    #[test]
    fn intents_from_arguments() {
        let of = |argv: &[&str]| Intent::of(argv[0], &args(argv));
        assert_eq!(of(&["systemctl", "stop", "postgresql"]), Intent::Stop);
        assert_eq!(of(&["sv", "down", "pg"]), Intent::Stop);
        assert_eq!(of(&["sv", "u", "pg"]), Intent::Start);
        assert_eq!(of(&["s6-svc", "-u", "/run/s6/pg"]), Intent::Start);
        assert_eq!(of(&["s6-svc", "-wd", "/run/s6/pg"]), Intent::Stop);
        assert_eq!(of(&["supervisorctl", "restart", "pg"]), Intent::Restart);
        assert_eq!(of(&["monit", "status"]), Intent::Other);
        // pg_ctl's options are not verbs: -o passes options, -t is a timeout.
        assert_eq!(
            of(&[
                "pg_ctl", "-D", "/srv/pg", "-o", "-p 5433", "-t", "60", "stop", "-m", "fast"
            ]),
            Intent::Stop
        );
        assert_eq!(
            of(&["bash", "stop"]),
            Intent::Other,
            "not a control command"
        );
        // Scripts: argv starts with the interpreter.
        assert_eq!(
            Intent::of(
                "service",
                &args(&["/bin/sh", "/usr/sbin/service", "pg", "status"])
            ),
            Intent::Other
        );
    }

    #[test]
    fn requests_to_systemd_name_their_units() {
        let request = |argv: &[&str]| unit_request(argv[0], &args(argv));
        assert_eq!(
            request(&["systemctl", "stop", "postgresql@15-main"]),
            Some((Intent::Stop, vec!["postgresql@15-main.service".into()]))
        );
        assert_eq!(
            unit_request(
                "pg_ctlcluster",
                &args(&[
                    "/usr/bin/perl",
                    "-wT",
                    "/usr/bin/pg_ctlcluster",
                    "15",
                    "main",
                    "start"
                ])
            ),
            Some((Intent::Start, vec!["postgresql@15-main.service".into()]))
        );
        assert_eq!(
            unit_request(
                "service",
                &args(&["/bin/sh", "/usr/sbin/service", "redis-server", "restart"])
            ),
            Some((Intent::Restart, vec!["redis-server.service".into()]))
        );
        assert_eq!(request(&["systemctl", "status", "pg"]), None);
        assert_eq!(request(&["monit", "stop", "pg"]), None, "not systemd");
        assert!(asks_systemd("systemctl") && asks_systemd("pg_ctlcluster"));
        assert!(!asks_systemd("monit") && !asks_systemd("pg_ctl"));
    }
}
