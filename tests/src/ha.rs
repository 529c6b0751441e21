//! The HA tools that restart a stopped database on their own, each run for
//! real in a private dir: Patroni (with etcd as its store) over PostgreSQL
//! 15, and MariaDB under mysqld_safe. A fixture owns what it starts and
//! leaves nothing running when it drops. Nothing here sets a loginuid: the
//! tools run as daemons do, and a test plays the person (`as_person`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::free_port;

/// PostgreSQL 15's programs, as Debian installs them.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Runs a program as the `postgres` user, as Debian's packages run
/// PostgreSQL and Patroni (no login: the loginuid stays unset).
const AS_POSTGRES: [&str; 4] = [
    "setpriv",
    "--reuid=postgres",
    "--regid=postgres",
    "--init-groups",
];

/// A private dir in the temp dir, `sg-PID-N-KIND`, so that parallel tests
/// and parallel runs do not share one. Its name is in the command line of
/// everything the fixture starts, and no other fixture's name contains it.
fn private_dir(kind: &str, owner: &str) -> PathBuf {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sg-{}-{}-{kind}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    run(Command::new("chown")
        .arg(format!("{owner}:{owner}"))
        .arg(&dir));
    dir
}

/// Runs `command`; returns its stdout, panicking with its stderr when it
/// fails.
fn run(command: &mut Command) -> String {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process started with output to `log`, no stdin, a plain environment
/// (no pyenv shims or Python variables of the caller).
fn spawn(command: &mut Command, log: &Path) -> Child {
    let out = fs::File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command:?} (installed by `cargo xtask test`): {e}"))
}

/// Polls `ready` every 50 ms until it gives a value, for up to `timeout`.
pub fn poll<T>(timeout: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = ready() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `poll`, panicking after `timeout` with `what` and the log `log`.
fn wait_for<T>(timeout: Duration, what: &str, log: &Path, ready: impl FnMut() -> Option<T>) -> T {
    poll(timeout, ready).unwrap_or_else(|| {
        panic!(
            "{what} after {timeout:?}; {}:\n{}",
            log.display(),
            fs::read_to_string(log).unwrap_or_default()
        )
    })
}

/// The pid on the first line of `pid_file`, if that process runs.
fn pid_from(pid_file: &Path) -> Option<u32> {
    let text = fs::read_to_string(pid_file).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    running(pid).then_some(pid)
}

/// Whether `pid` is a process that has not exited (zombies have).
fn running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// The processes whose command line holds `marker` (a fixture's dir name,
/// also in its PostgreSQL backends' titles through the cluster name).
fn processes_of(marker: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter(|&pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

/// Stops `child` with SIGTERM, SIGKILL after `grace`.
fn stop_child(child: &mut Child, grace: Duration) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    if poll(grace, || child.try_wait().ok().flatten()).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Kills whatever of a fixture is still running, then removes its dir.
fn clean_up(dir: &Path) {
    let marker = dir.file_name().unwrap().to_string_lossy().into_owned();
    for pid in processes_of(&marker) {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    poll(Duration::from_secs(5), || {
        (!processes_of(&marker).into_iter().any(running)).then_some(())
    });
    let _ = fs::remove_dir_all(dir);
}

/// A single-node Patroni 3.0 cluster over PostgreSQL 15 with its own etcd
/// 3.4 (v2 API, which Debian's python3-etcd speaks), as the `postgres`
/// user, all on free loopback ports, its files in a private dir.
pub struct Patroni {
    dir: PathBuf,
    etcd: Child,
    patroni: Child,
    rest_port: u16,
}

impl Patroni {
    /// Patroni's HA loop (bootstrap `loop_wait`), short so that the tests
    /// are fast: a postgres stopped behind Patroni's back is started again
    /// within two loops (1.7 to 3.4 s measured), a pause at the next loop.
    pub const LOOP_WAIT: Duration = Duration::from_secs(2);

    /// Starts etcd, then Patroni, which bootstraps the cluster (initdb,
    /// trust for local and loopback connections); returns once Patroni
    /// reports postgres running as the primary, holding the leader lock
    /// (about 6 s).
    pub fn start() -> Patroni {
        let dir = private_dir("patroni", "postgres");
        let scope = dir.file_name().unwrap().to_string_lossy().into_owned();
        let d = dir.display();
        let loop_wait = Self::LOOP_WAIT.as_secs();
        let (etcd_port, peer_port, rest_port, pg_port) =
            (free_port(), free_port(), free_port(), free_port());
        let mut etcd = spawn(
            Command::new("etcd")
                .args(["--name", "sg", "--enable-v2=true", "--data-dir"])
                .arg(dir.join("etcd"))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
                .arg(format!(
                    "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
                ))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
                ))
                .arg(format!("--initial-cluster=sg=http://127.0.0.1:{peer_port}")),
            &dir.join("etcd.log"),
        );
        let health = format!("http://127.0.0.1:{etcd_port}/health");
        if poll(Duration::from_secs(20), || {
            get_json(&health).filter(|h| h["health"] == "true")
        })
        .is_none()
        {
            let log = fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
            stop_child(&mut etcd, Duration::from_secs(5));
            clean_up(&dir);
            panic!("etcd is not healthy after 20 s; its log:\n{log}");
        }
        // Trust for local and loopback connections: no passwords to keep.
        let config = format!(
            r#"scope: {scope}
name: node1
restapi:
  listen: 127.0.0.1:{rest_port}
  connect_address: 127.0.0.1:{rest_port}
etcd:
  host: 127.0.0.1:{etcd_port}
bootstrap:
  dcs:
    ttl: 30
    loop_wait: {loop_wait}
    retry_timeout: 10
  initdb:
    - auth: trust
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {d}/data
  bin_dir: {PG_BIN}
  pgpass: {d}/pgpass
  authentication:
    superuser:
      username: postgres
    replication:
      username: replicator
  parameters:
    unix_socket_directories: {d}
"#
        );
        fs::write(dir.join("patroni.yml"), config).unwrap();
        let patroni = spawn(
            Command::new(AS_POSTGRES[0])
                .args(&AS_POSTGRES[1..])
                .arg("/usr/bin/patroni")
                .arg(dir.join("patroni.yml")),
            &dir.join("patroni.log"),
        );
        let patroni = Patroni {
            dir,
            etcd,
            patroni,
            rest_port,
        };
        wait_for(
            Duration::from_secs(90),
            "patroni did not bring up a primary holding the leader lock",
            &patroni.dir.join("patroni.log"),
            || {
                let s = patroni.try_status()?;
                (s["state"] == "running"
                    && (s["role"] == "master" || s["role"] == "primary")
                    && s.get("cluster_unlocked").is_none())
                .then_some(())
            },
        );
        patroni
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("patroni.yml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Patroni's REST API, e.g. `http://127.0.0.1:PORT`.
    pub fn rest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rest_port)
    }

    /// Patroni's own process (comm `patroni`, as postgres).
    pub fn patroni_pid(&self) -> u32 {
        self.patroni.id()
    }

    /// The running postmaster (postmaster.pid's first line), if any.
    pub fn postmaster_pid(&self) -> Option<u32> {
        pid_from(&self.data_dir().join("postmaster.pid"))
    }

    /// Waits up to `timeout` for a running postmaster other than `not`;
    /// returns it.
    pub fn wait_for_postmaster(&self, not: Option<u32>, timeout: Duration) -> Option<u32> {
        poll(timeout, || {
            self.postmaster_pid().filter(|&pid| Some(pid) != not)
        })
    }

    /// Runs `patronictl -c CONFIG ARGS` (as root, the way an operator with
    /// sudo would); returns its stdout, panicking when it fails.
    pub fn patronictl(&self, args: &[&str]) -> String {
        run(Command::new("/usr/bin/python3")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .args(["/usr/bin/patronictl", "-c"])
            .arg(self.config_path())
            .args(args))
    }

    /// The shell command an operator stops PostgreSQL with behind
    /// Patroni's back: `pg_ctl stop -m fast` (SIGINT) as postgres.
    pub fn operator_stop_command(&self) -> String {
        format!(
            "{} {PG_BIN}/pg_ctl -D {} stop -m fast",
            AS_POSTGRES.join(" "),
            self.data_dir().display()
        )
    }

    /// `GET /patroni`: state, role, and `"pause": true` while paused (the
    /// key is absent otherwise). Answered with 503 while postgres is down.
    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("GET {}/patroni gave no JSON", self.rest_url()))
    }

    fn try_status(&self) -> Option<Value> {
        get_json(&format!("{}/patroni", self.rest_url()))
    }

    /// Whether Patroni reports maintenance mode (`patronictl pause`).
    pub fn is_paused(&self) -> bool {
        self.status()["pause"] == true
    }
}

impl Drop for Patroni {
    fn drop(&mut self) {
        // Patroni stops postgres (fast) when it gets SIGTERM: about 4 s.
        stop_child(&mut self.patroni, Duration::from_secs(30));
        stop_child(&mut self.etcd, Duration::from_secs(10));
        clean_up(&self.dir);
    }
}

/// `GET url` as JSON, whatever the HTTP status; None when nothing answers.
fn get_json(url: &str) -> Option<Value> {
    let mut response = ureq::get(url)
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .call()
        .ok()?;
    serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()
}

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
