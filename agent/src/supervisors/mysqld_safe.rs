//! mysqld_safe: the shell loop MariaDB and MySQL run under on hosts without
//! their systemd units. It restarts the server after a crash or `kill -9`,
//! but not after a normal shutdown (the server removes its pid file) nor
//! when `$pid_file.shutdown` exists. `mysqladmin shutdown` (also called
//! `mariadb-admin`) asks the server itself to shut down: no signal is sent.

use super::{Control, Intent, Subject, Supervisor, Watcher, watch};

pub const MYSQLD_SAFE: Supervisor = Supervisor {
    name: "mysqld_safe",
    comms: &["mysqld_safe", "mariadbd-safe"],
    control: &[
        Control {
            comm: "mysqladmin",
            intent: admin,
            units: None,
        },
        Control {
            comm: "mariadb-admin",
            intent: admin,
            units: None,
        },
    ],
    watching: Some(watching),
};

/// `mysqladmin [options] shutdown`: a stop. Its other commands (`ping`,
/// `status`, `flush-logs`) ask nothing of the server's running state.
fn admin(args: &[String]) -> Intent {
    if args.iter().any(|a| a == "shutdown") {
        Intent::Stop
    } else {
        Intent::Other
    }
}

/// The mysqld_safe the server runs under. It starts the server again after
/// a crash or a kill, unless `PID_FILE.shutdown` exists; a normal shutdown
/// ends it.
fn watching(subject: &Subject) -> Vec<Watcher> {
    let Some(safe) = subject.supervising(MYSQLD_SAFE.comms) else {
        return Vec::new();
    };
    let pid_file = subject
        .main
        .as_ref()
        .and_then(|m| watch::option(&m.cmdline, "--pid-file", "--pid-file"))
        .or_else(|| watch::option(&safe.cmdline, "--pid-file", "--pid-file"));
    let flag = pid_file.map(|p| format!("{p}.shutdown"));
    let flagged = flag
        .as_ref()
        .is_some_and(|f| std::path::Path::new(f).exists());
    vec![Watcher {
        supervisor: MYSQLD_SAFE.name.into(),
        pid: Some(safe.pid),
        name: safe.comm.clone(),
        would_restart: !flagged,
        state: match &flag {
            Some(flag) if flagged => format!("{flag} exists: will not restart"),
            _ => "restarts after a crash or kill".into(),
        },
        how:
            "mysqld_safe starts it again after a crash or kill -9, not after `mysqladmin shutdown`"
                .into(),
        off: flag.as_ref().map(|f| watch::words(&["touch", f])),
        on: flag.as_ref().map(|f| watch::words(&["rm", "-f", f])),
        off_stops: false,
        uid: Some(safe.uid),
        trusted: true,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisors::args;

    #[test]
    fn mysqladmin_shutdown_is_a_stop() {
        let ctl = |a: &[&str]| admin(&args(a));
        assert_eq!(
            ctl(&["--socket=/run/mysqld/mysqld.sock", "shutdown"]),
            Intent::Stop
        );
        assert_eq!(ctl(&["-uroot", "ping"]), Intent::Other);
        assert_eq!(ctl(&["status"]), Intent::Other);
    }
}
