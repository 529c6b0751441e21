//! Patroni over PostgreSQL 15, with etcd as its store.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use serde_json::Value;

use super::*;

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
        let dcs = format!("etcd:\n  host: 127.0.0.1:{etcd_port}");
        let config = member_config(&scope, "node1", &dir, (rest_port, pg_port), &dcs, PG_BIN);
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

/// One member's Patroni config: `name` of cluster `scope`, its REST API and
/// postgres on loopback `ports`, its data, password file and sockets in
/// `dir`, `dcs` its store's section, PostgreSQL's programs in `bin_dir`.
/// Trust for local and loopback connections (replication too): no
/// passwords to keep.
pub(super) fn member_config(
    scope: &str,
    name: &str,
    dir: &Path,
    (rest_port, pg_port): (u16, u16),
    dcs: &str,
    bin_dir: &str,
) -> String {
    let d = dir.display();
    let loop_wait = Patroni::LOOP_WAIT.as_secs();
    format!(
        r#"scope: {scope}
name: {name}
restapi:
  listen: 127.0.0.1:{rest_port}
  connect_address: 127.0.0.1:{rest_port}
{dcs}
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
  bin_dir: {bin_dir}
  pgpass: {d}/pgpass
  authentication:
    superuser:
      username: postgres
    replication:
      username: replicator
  parameters:
    unix_socket_directories: {d}
"#
    )
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
pub(super) fn get_json(url: &str) -> Option<Value> {
    let mut response = ureq::get(url)
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .call()
        .ok()?;
    serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()
}
