//! The incident, for real: PostgreSQL 15 from Debian under monit. An
//! operator stops it with pg_ctl; monit starts it again; the agent freezes
//! the new postmaster before it runs, and says who did what.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use stopguard_tests::{
    Agent, bash, in_frozen_cgroup, remove_frozen_cgroups, root_test, start_monit, state_of,
    stopguard_bin,
};

const BIN: &str = "/usr/lib/postgresql/15/bin";

struct Cluster {
    dir: PathBuf,
    port: u16,
    monit: Option<Child>,
    agent: Option<Agent>,
    /// Held until everything is cleaned up.
    probes: Option<std::sync::MutexGuard<'static, ()>>,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = std::env::temp_dir().join(format!("sg-e2e-pg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let port = 56000 + (std::process::id() % 1000) as u16;
        bash(&format!(
            "chown postgres:postgres {d} && \
             setpriv --reuid=postgres --regid=postgres --init-groups {BIN}/initdb -D {d}/data -A trust >/dev/null",
            d = dir.display()
        ));
        Cluster {
            dir,
            port,
            monit: None,
            agent: None,
            probes: None,
        }
    }

    fn pg_ctl(&self, action: &str) -> String {
        format!(
            "{BIN}/pg_ctl -D {d}/data -o '-p {p} -k {d}' -l {d}/log {action}",
            d = self.dir.display(),
            p = self.port
        )
    }

    fn start_monit(&mut self) {
        let d = self.dir.display();
        self.monit = Some(start_monit(
            &self.dir,
            &format!(
                "check process postgres with pidfile {d}/data/postmaster.pid\n  \
                 start program = \"{}\" as uid postgres and gid postgres with timeout 20 seconds",
                self.pg_ctl("start")
            ),
        ));
    }

    fn postmaster(&self) -> Option<u32> {
        let text = fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    fn wait_serving(&self, timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(pid) = self.postmaster()
                && self.query("select 1").as_deref() == Some("1")
            {
                return pid;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "postgres did not come up; log:\n{}",
            fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    fn query(&self, sql: &str) -> Option<String> {
        let out = Command::new("timeout")
            .args([
                "3",
                "setpriv",
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
            ])
            .arg(format!("{BIN}/psql"))
            .args([
                "-h",
                &self.dir.to_string_lossy(),
                "-p",
                &self.port.to_string(),
            ])
            .args(["-d", "postgres", "-tAc", sql])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Names, sizes and modification times of everything in the data dir.
    fn data_snapshot(&self) -> String {
        bash(&format!(
            "find {}/data -printf '%p %s %T@\\n' | sort",
            self.dir.display()
        ))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut monit) = self.monit.take() {
            let _ = monit.kill();
            let _ = monit.wait();
        }
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &format!("{}/data", self.dir.display())])
            .status();
        self.agent.take();
        std::thread::sleep(Duration::from_millis(300));
        remove_frozen_cgroups();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The incident, with or without a window opened first by the operator:
/// returns the cluster (agent running, the respawn frozen) and the alert.
fn incident(test: &str, window: bool) -> Option<(Cluster, serde_json::Value)> {
    let probes = root_test(test)?;
    assert!(
        Path::new(BIN).exists(),
        "PostgreSQL 15 is not installed: run `cargo xtask test`"
    );
    let mut cluster = Cluster::new();
    cluster.probes = Some(probes);
    cluster.start_monit();
    let first = cluster.wait_serving(Duration::from_secs(30));
    cluster
        .query("create table t (x int); insert into t values (1)")
        .unwrap();
    let d = cluster.dir.display();
    cluster.agent = Some(Agent::start(
        &cluster.dir.join("stopguard.toml"),
        &format!(
            "[agent]\nhost = \"db-test\"\naudit_log = \"{d}/agent/audit.jsonl\"\nsocket = \"{d}/agent/sock\"\n\
             state_dir = \"{d}/agent/state\"\n\n[[service]]\nname = \"postgres\"\n\
             exe = [\"{BIN}/postgres\"]\non_unexpected_respawn = \"freeze\"\n"
        ),
    ));

    // The operator, logged in as uid 1000, stops the database for maintenance.
    let open = if window {
        format!(
            "{} --socket {d}/agent/sock window open postgres --reason 'schema change' >/dev/null && ",
            stopguard_bin().display()
        )
    } else {
        String::new()
    };
    bash(&format!(
        "echo 1000 > /proc/self/loginuid && {open}\
         setpriv --reuid=postgres --regid=postgres --init-groups {} -m fast >/dev/null",
        cluster.pg_ctl("stop")
    ));
    let alert = cluster
        .agent
        .as_ref()
        .unwrap()
        .next_alert(Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "no alert after monit restarted postgres; audit:\n{}",
                fs::read_to_string(cluster.dir.join("agent/audit.jsonl")).unwrap_or_default()
            )
        });
    let kind = if window {
        "respawn_in_window"
    } else {
        "respawn_after_operator_stop"
    };
    assert_eq!(alert["kind"], kind, "{alert:#}");
    assert_eq!(alert["service"], "postgres");
    assert_eq!(alert["respawned_by"]["supervisor"], "monit", "{alert:#}");
    assert_eq!(alert["stopped_by"]["loginuid"], 1000, "{alert:#}");
    assert_eq!(alert["stopped_by"]["comm"], "pg_ctl", "{alert:#}");
    assert!(
        alert["detected_after_ms"].as_f64().unwrap() < 1000.0,
        "{alert:#}"
    );
    let chain: Vec<&str> = alert["respawned_by"]["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["comm"].as_str().unwrap())
        .collect();
    assert!(chain.starts_with(&["pg_ctl", "monit"]), "{chain:?}");
    let summary = alert["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("postgres respawned by monit "),
        "{summary}"
    );
    assert!(
        summary.contains("uid 1000") && summary.contains("pg_ctl"),
        "{summary}"
    );

    let respawned = alert["process"]["pid"].as_u64().unwrap() as u32;
    assert_ne!(respawned, first);
    assert_eq!(
        state_of(respawned),
        'T',
        "the new postmaster is not stopped"
    );
    assert!(
        in_frozen_cgroup(respawned),
        "the new postmaster is not in a frozen cgroup"
    );
    let before = cluster.data_snapshot();
    assert_eq!(
        cluster.query("select 1"),
        None,
        "a frozen postgres must not serve"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        cluster.data_snapshot(),
        before,
        "the data directory changed while frozen"
    );
    Some((cluster, alert))
}

#[test]
fn pg_ctl_stop_then_monit_respawn_is_frozen_before_it_serves() {
    incident(
        "pg_ctl_stop_then_monit_respawn_is_frozen_before_it_serves",
        false,
    );
}

#[test]
fn inside_a_window_the_respawn_is_frozen_until_the_window_closes_with_thaw() {
    let Some((cluster, alert)) = incident(
        "inside_a_window_the_respawn_is_frozen_until_the_window_closes_with_thaw",
        true,
    ) else {
        return;
    };
    assert_eq!(alert["window"]["id"], "w1", "{alert:#}");
    assert_eq!(alert["window"]["reason"], "schema change", "{alert:#}");
    assert!(
        alert["window"]["opened_by"]
            .as_str()
            .unwrap()
            .contains("uid 1000"),
        "{alert:#}"
    );
    assert!(
        alert["summary"]
            .as_str()
            .unwrap()
            .ends_with("window w1 'schema change'"),
        "{alert:#}"
    );
    let respawned = alert["process"]["pid"].as_u64().unwrap();
    let out = bash(&format!(
        "{} --socket {}/agent/sock window close postgres --thaw",
        stopguard_bin().display(),
        cluster.dir.display()
    ));
    assert_eq!(
        out,
        format!("window w1 on postgres closed\nthawed: {respawned}\n")
    );
    // The thawed postmaster finishes starting and serves the data.
    assert_eq!(
        cluster.wait_serving(Duration::from_secs(30)),
        respawned as u32
    );
    assert_eq!(cluster.query("select x from t").as_deref(), Some("1"));
}
