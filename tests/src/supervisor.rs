//! The supervisors the tests run a service under, each started the way a
//! host would run it, in the foreground as a child of the test.

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
}

impl Supervisor {
    /// Starts this supervisor on the service in `dir`: the service dir
    /// `dir/sv` for runsv, s6-supervise and supervise; for supervisord a
    /// config with one program running `dir/bin/sgdaemon dir/data`.
    pub fn start(self, dir: &Path) -> Child {
        let mut command = match self {
            Supervisor::Runit => Command::new("runsv"),
            Supervisor::S6 => Command::new("s6-supervise"),
            Supervisor::Daemontools => Command::new("supervise"),
            Supervisor::Supervisord => {
                let d = dir.display();
                let conf = dir.join("supervisord.conf");
                fs::write(
                    &conf,
                    format!(
                        "[supervisord]\nnodaemon=true\nuser=root\nlogfile={d}/supervisord.log\n\
                         pidfile={d}/supervisord.pid\n\n\
                         [program:sgdaemon]\ncommand={d}/bin/sgdaemon {d}/data\n\
                         autorestart=true\nstartsecs=0\nstartretries=100\n"
                    ),
                )
                .unwrap();
                let mut command = Command::new("supervisord");
                command.arg("-c").arg(conf);
                command
            }
        };
        if self != Supervisor::Supervisord {
            command.arg(dir.join("sv"));
        }
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {self:?}: {e}"))
    }
}

/// Starts monit in the foreground with a 1 s cycle, its files in `dir`,
/// checking what `check` says (one `check ...` block).
pub fn start_monit(dir: &Path, check: &str) -> Child {
    let d = dir.display();
    let rc = dir.join("monitrc");
    std::fs::write(
        &rc,
        format!(
            "set daemon 1\nset logfile {d}/monit.log\nset pidfile {d}/monit.pid\n\
             set idfile {d}/monit.id\nset statefile {d}/monit.state\n{check}\n"
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
