//! A Patroni cluster of several members on this one host, all as the
//! `postgres` user: one scope, each member its own REST and postgres
//! ports, data dir and sockets, over an etcd the test runs (v3, through
//! the JSON gateway Patroni's `etcd3` speaks), which the agent's fleet
//! records can share. Each member runs PostgreSQL through a `bin/` of
//! links of its own, so that its postmaster's argv[0] names the member
//! (`.../node1/bin/postgres`): a service glob can pick one member, as one
//! host runs one.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command},
    time::Duration,
};

use serde_json::Value;

use super::{
    patroni::{get_json, member_config},
    *,
};

/// Members of one Patroni cluster; dropping it stops them all.
pub struct PatroniCluster {
    dir: PathBuf,
    scope: String,
    members: Vec<Member>,
}

/// One member: its Patroni process, its files in a dir of its own.
pub struct Member {
    pub name: String,
    dir: PathBuf,
    patroni: Child,
    rest_port: u16,
}

impl PatroniCluster {
    /// Starts `n` members of one scope on the etcd at `etcd` (`host:port`):
    /// the first bootstraps the cluster (initdb) and leads; the others
    /// then start as its streaming replicas (pg_basebackup). Returns once
    /// every member runs postgres in its role.
    pub fn start(etcd: &str, n: usize) -> PatroniCluster {
        let dir = private_dir("patronis", "postgres");
        let scope = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut cluster = PatroniCluster {
            dir,
            scope,
            members: Vec::new(),
        };
        // The leader first: the others copy its data.
        cluster.add("node1", etcd);
        cluster.members[0].wait_running("primary");
        for i in 2..=n {
            cluster.add(&format!("node{i}"), etcd);
        }
        for member in &cluster.members[1..] {
            member.wait_running("replica");
        }
        cluster
    }

    fn add(&mut self, name: &str, etcd: &str) {
        let dir = self.dir.join(name);
        fs::create_dir_all(&dir).unwrap();
        run(Command::new("chown").arg("postgres:postgres").arg(&dir));
        let bin = dir.join("bin");
        fs::create_dir_all(&bin).unwrap();
        for program in fs::read_dir(PG_BIN).unwrap() {
            let program = program.unwrap().path();
            std::os::unix::fs::symlink(&program, bin.join(program.file_name().unwrap())).unwrap();
        }
        let rest_port = free_port();
        let dcs = format!("etcd3:\n  host: {etcd}");
        let ports = (rest_port, free_port());
        let config = member_config(&self.scope, name, &dir, ports, &dcs, &bin.to_string_lossy());
        fs::write(dir.join("patroni.yml"), config).unwrap();
        let patroni = spawn(
            Command::new(AS_POSTGRES[0])
                .args(&AS_POSTGRES[1..])
                .arg("/usr/bin/patroni")
                .arg(dir.join("patroni.yml")),
            &dir.join("patroni.log"),
        );
        self.members.push(Member {
            name: name.to_string(),
            dir,
            patroni,
            rest_port,
        });
    }

    /// The cluster's name (`scope`), as Patroni keys it in etcd
    /// (`/service/SCOPE/...`).
    pub fn scope(&self) -> &str {
        &self.scope
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Whether each member reports maintenance mode, in member order.
    pub fn paused(&self) -> Vec<bool> {
        self.members
            .iter()
            .map(|m| m.status()["pause"] == true)
            .collect()
    }
}

impl Member {
    /// Its PostgreSQL programs: `bin/postgres` is its postmaster's argv[0].
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("patroni.yml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("patroni.log")
    }

    pub fn patroni_pid(&self) -> u32 {
        self.patroni.id()
    }

    /// The running postmaster (postmaster.pid's first line), if any.
    pub fn postmaster_pid(&self) -> Option<u32> {
        pid_from(&self.data_dir().join("postmaster.pid"))
    }

    /// Waits up to `timeout` for a running postmaster other than `not`.
    pub fn wait_for_postmaster(&self, not: Option<u32>, timeout: Duration) -> Option<u32> {
        poll(timeout, || {
            self.postmaster_pid().filter(|&pid| Some(pid) != not)
        })
    }

    /// `GET /patroni` (`"pause": true` while paused); null when nothing
    /// answers.
    pub fn status(&self) -> Value {
        get_json(&format!("http://127.0.0.1:{}/patroni", self.rest_port)).unwrap_or_default()
    }

    /// Waits until Patroni reports postgres running as `role` (`primary`
    /// or `replica`).
    fn wait_running(&self, role: &str) {
        wait_for(
            Duration::from_secs(120),
            &format!("{} did not run postgres as the {role}", self.name),
            &self.log(),
            || {
                let s = self.status();
                let is = |r: &str| s["role"] == r;
                let role_ok = match role {
                    "primary" => {
                        (is("master") || is("primary")) && s.get("cluster_unlocked").is_none()
                    }
                    _ => is("replica"),
                };
                (s["state"] == "running" && role_ok).then_some(())
            },
        );
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        // Replicas first: a leader stopping first hands over to one.
        for member in self.members.iter_mut().rev() {
            stop_child(&mut member.patroni, Duration::from_secs(30));
        }
        clean_up(&self.dir);
    }
}
