//! The supervisors the tests run a service under, each started the way a
//! host would run it, in the foreground as a child of the test, and the
//! control commands a person (or a script) runs through each.

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
};

/// The supervisors the respawn tests run, each as its own service runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Supervisor {
    /// runit's runsv on a service dir.
    Runit,
    /// s6-supervise on the same kind of dir.
    S6,
    /// daemontools' supervise on the same kind of dir.
    Daemontools,
    /// supervisord with one [program].
    Supervisord,
    /// monit checking the daemon by its pidfile, as a pg_ctl-managed
    /// database would be.
    Monit,
}

/// What a control command asks its supervisor to do with the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Stop,
    Start,
    Restart,
}

impl Supervisor {
    pub const ALL: [Supervisor; 5] = [
        Supervisor::Monit,
        Supervisor::Supervisord,
        Supervisor::Runit,
        Supervisor::S6,
        Supervisor::Daemontools,
    ];

    /// The comm its supervising process runs under: the agent names it as
    /// the one that respawned the service.
    pub fn comm(self) -> &'static str {
        match self {
            Supervisor::Runit => "runsv",
            Supervisor::S6 => "s6-supervise",
            Supervisor::Daemontools => "supervise",
            Supervisor::Supervisord => "supervisord",
            Supervisor::Monit => "monit",
        }
    }

    /// Starts this supervisor on the service in `dir`: the service dir
    /// `dir/sv` for runsv, s6-supervise and supervise; for supervisord a
    /// config with one program running `dir/bin/sgdaemon dir/data`; for
    /// monit a 1 s cycle checking `dir/daemon.pid`.
    pub fn start(self, dir: &Path) -> Child {
        let d = dir.display();
        let mut command = match self {
            Supervisor::Runit => Command::new("runsv"),
            Supervisor::S6 => Command::new("s6-supervise"),
            Supervisor::Daemontools => Command::new("supervise"),
            Supervisor::Supervisord => {
                let conf = dir.join("supervisord.conf");
                fs::write(
                    &conf,
                    format!(
                        "[supervisord]\nnodaemon=true\nuser=root\nlogfile={d}/supervisord.log\n\
                         pidfile={d}/supervisord.pid\n\n\
                         [unix_http_server]\nfile={d}/supervisord.sock\n\n\
                         [supervisorctl]\nserverurl=unix://{d}/supervisord.sock\n\n\
                         [rpcinterface:supervisor]\n\
                         supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
                         [program:sgdaemon]\ncommand={d}/bin/sgdaemon {d}/data\n\
                         autorestart=true\nstartsecs=0\nstartretries=100\n"
                    ),
                )
                .unwrap();
                let mut command = Command::new("supervisord");
                command.arg("-c").arg(conf);
                command
            }
            Supervisor::Monit => {
                return start_monit(
                    dir,
                    &format!(
                        "check process sgdaemon with pidfile {d}/daemon.pid\n  \
                         start program = \"/bin/sh -c '{d}/bin/sgdaemon {d}/data {d}/daemon.pid &'\" with timeout 2 seconds\n  \
                         stop program = \"/bin/sh -c 'kill $(cat {d}/daemon.pid)'\""
                    ),
                );
            }
        };
        if matches!(
            self,
            Supervisor::Runit | Supervisor::S6 | Supervisor::Daemontools
        ) {
            command.arg(dir.join("sv"));
        }
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {self:?}: {e}"))
    }

    /// The shell command that asks this supervisor, started on `dir`, to
    /// stop, start or restart the service; None where it has no such verb
    /// (daemontools restarts only by a stop and a start).
    pub fn control(self, dir: &Path, verb: Verb) -> Option<String> {
        let d = dir.display();
        Some(match (self, verb) {
            (Supervisor::Runit, _) => {
                let verb = match verb {
                    Verb::Stop => "down",
                    Verb::Start => "up",
                    Verb::Restart => "restart",
                };
                format!("sv {verb} {d}/sv")
            }
            (Supervisor::S6, _) => {
                let flag = match verb {
                    Verb::Stop => "-d",
                    Verb::Start => "-u",
                    Verb::Restart => "-r",
                };
                format!("s6-svc {flag} {d}/sv")
            }
            (Supervisor::Daemontools, Verb::Restart) => return None,
            (Supervisor::Daemontools, _) => {
                let flag = if verb == Verb::Stop { "-d" } else { "-u" };
                format!("svc {flag} {d}/sv")
            }
            (Supervisor::Supervisord, _) => {
                format!(
                    "supervisorctl -c {d}/supervisord.conf {} sgdaemon >/dev/null",
                    verb.word()
                )
            }
            (Supervisor::Monit, _) => {
                format!("monit -c {d}/monitrc {} sgdaemon", verb.word())
            }
        })
    }
}

impl Verb {
    fn word(self) -> &'static str {
        match self {
            Verb::Stop => "stop",
            Verb::Start => "start",
            Verb::Restart => "restart",
        }
    }
}

/// Starts monit in the foreground with a 1 s cycle, its files in `dir`,
/// checking what `check` says (one `check ...` block); `monit -c
/// dir/monitrc` reaches it through its socket `dir/monit.sock`.
pub fn start_monit(dir: &Path, check: &str) -> Child {
    let d = dir.display();
    let rc = dir.join("monitrc");
    std::fs::write(
        &rc,
        format!(
            "set daemon 1\nset logfile {d}/monit.log\nset pidfile {d}/monit.pid\n\
             set idfile {d}/monit.id\nset statefile {d}/monit.state\n\
             set httpd unixsocket {d}/monit.sock allow stopguard:test\n{check}\n"
        ),
    )
    .unwrap();
    // monit refuses a control file others can read.
    std::fs::set_permissions(&rc, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    Command::new("monit")
        .args(["-I", "-c"])
        .arg(&rc)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting monit")
}
