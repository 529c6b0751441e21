//! MariaDB under mysqld_safe.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use super::*;

/// MariaDB 10.11 under mysqld_safe, started as root the way its SysV init
/// script does, the server running as `mysql`, on a free loopback port and
/// a socket in a private dir.
pub struct Mariadb {
    dir: PathBuf,
    mysqld_safe: Child,
}

/// Options both the install and the server take: a small redo log, so
/// that creating the data dir takes 1 s rather than 5.
const MARIADB_SMALL: &str = "--innodb-log-file-size=8M";

impl Mariadb {
    /// Creates the data dir (`mariadb-install-db`, root without a
    /// password), starts mysqld_safe and returns once the server answers
    /// `ping` (1.5 to 7 s here, mostly the install's fsyncs).
    pub fn start() -> Mariadb {
        let dir = private_dir("mariadb", "mysql");
        let d = dir.display();
        run(Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={d}/data"))
            .args([
                "--user=mysql",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                MARIADB_SMALL,
            ]));
        let port = free_port();
        let mysqld_safe = spawn(
            Command::new("mysqld_safe")
                .arg("--no-defaults")
                .arg(format!("--datadir={d}/data"))
                .arg(format!("--socket={d}/mysqld.sock"))
                .arg(format!("--pid-file={d}/mysqld.pid"))
                .arg(format!("--log-error={d}/error.log"))
                .arg(format!("--port={port}"))
                .args(["--bind-address=127.0.0.1", "--user=mysql", MARIADB_SMALL]),
            &dir.join("mysqld_safe.log"),
        );
        let mariadb = Mariadb { dir, mysqld_safe };
        mariadb.wait_for_server(None, Duration::from_secs(60));
        mariadb
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    /// The server (mariadbd) from its pid file, if it runs.
    pub fn server_pid(&self) -> Option<u32> {
        pid_from(&self.dir.join("mysqld.pid"))
    }

    /// The mysqld_safe shell loop, the server's parent.
    pub fn mysqld_safe_pid(&self) -> u32 {
        self.mysqld_safe.id()
    }

    /// Waits up to `timeout` for mysqld_safe to exit; its status, or None
    /// when it still runs.
    pub fn mysqld_safe_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll(timeout, || self.mysqld_safe.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for a server other than `not` that answers
    /// `ping`; returns its pid, panicking with the error log when none does.
    pub fn wait_for_server(&self, not: Option<u32>, timeout: Duration) -> u32 {
        wait_for(
            timeout,
            "mariadbd does not answer",
            &self.dir.join("error.log"),
            || {
                let pid = self.server_pid().filter(|&pid| Some(pid) != not)?;
                self.try_admin(&["ping"])
                    .filter(|out| out.contains("is alive"))
                    .map(|_| pid)
            },
        )
    }

    /// Runs `mariadb-admin ARGS` as root on the socket; returns its stdout,
    /// panicking when it fails.
    pub fn admin(&self, args: &[&str]) -> String {
        run(&mut self.admin_command(args))
    }

    fn try_admin(&self, args: &[&str]) -> Option<String> {
        let out = self.admin_command(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn admin_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("mariadb-admin");
        command
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["--user=root", "--connect-timeout=2"])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// The shell command an operator shuts the server down with:
    /// `mysqladmin shutdown`, after which mysqld_safe exits.
    pub fn operator_stop_command(&self) -> String {
        format!(
            "mysqladmin --no-defaults --socket={} --user=root shutdown",
            self.socket().display()
        )
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        // mysqld_safe ends after a clean shutdown; SIGKILL it first if not,
        // so that it cannot start the server again.
        if self.server_pid().is_some() {
            let _ = self.try_admin(&["shutdown"]);
        }
        if self.mysqld_safe_exit(Duration::from_secs(30)).is_none() {
            let _ = self.mysqld_safe.kill();
            let _ = self.mysqld_safe.wait();
        }
        clean_up(&self.dir);
    }
}
