//! A sandbox: one watched service (the `sgdaemon` fixture), the supervisor
//! that runs it and the agent that watches it, all in one directory that
//! is removed, with everything started in it, when the sandbox drops.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Agent, Supervisor, bash, fixture, remove_frozen_cgroups, stopguard_bin};

/// A sandbox: a data file, the daemon's copy, a service dir for runsv,
/// s6-supervise and supervise.
pub struct Sandbox {
    pub dir: PathBuf,
    supervisor: Option<Child>,
    pub agent: Option<Agent>,
}

impl Sandbox {
    pub fn new(name: &str) -> Sandbox {
        let dir = std::env::temp_dir().join(format!("sg-e2e-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::create_dir_all(dir.join("sv")).unwrap();
        fs::copy(fixture("sgdaemon"), dir.join("bin/sgdaemon")).unwrap();
        fs::write(
            dir.join("sv/run"),
            format!(
                "#!/bin/sh\nexec {} {}\n",
                dir.join("bin/sgdaemon").display(),
                dir.join("data").display()
            ),
        )
        .unwrap();
        bash(&format!(
            "chmod 0755 {}/sv/run {}/bin/sgdaemon",
            dir.display(),
            dir.display()
        ));
        Sandbox {
            dir,
            supervisor: None,
            agent: None,
        }
    }

    pub fn data(&self) -> String {
        fs::read_to_string(self.dir.join("data")).unwrap_or_default()
    }

    pub fn audit(&self) -> Vec<Value> {
        fs::read_to_string(self.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn start_agent(&mut self, policy: &str) {
        self.start_agent_with(policy, "", "");
    }

    /// The agent on this sandbox's config, with extra lines for its
    /// `[agent]` table and its `[[service]]`.
    pub fn start_agent_with(&mut self, policy: &str, agent: &str, service: &str) {
        let config = self.config(policy, agent, service);
        self.agent = Some(Agent::start(&self.dir.join("stopguard.toml"), &config));
    }

    /// The agent built as `binary` (another version of it).
    pub fn start_agent_binary(&mut self, binary: &Path, policy: &str) {
        let config = self.config(policy, "", "");
        self.agent = Some(Agent::start_binary(
            binary,
            &self.dir.join("stopguard.toml"),
            &config,
            |_| {},
        ));
    }

    /// The agent with `customize` applied to its command (see
    /// `Agent::start_with`).
    pub fn start_agent_customized(&mut self, policy: &str, customize: impl FnOnce(&mut Command)) {
        let config = self.config(policy, "", "");
        self.agent = Some(Agent::start_with(
            &self.dir.join("stopguard.toml"),
            &config,
            customize,
        ));
    }

    /// This sandbox's config, with extra lines for its `[agent]` table and
    /// its `[[service]]`.
    pub fn config(&self, policy: &str, agent: &str, service: &str) -> String {
        format!(
            "[agent]\nhost = \"test-host\"\naudit_log = \"{}\"\nsocket = \"{}\"\nstate_dir = \"{}\"\n{agent}\n\n[[service]]\nname = \"sgdaemon\"\nexe = [\"{}/bin/sgdaemon\"]\non_unexpected_respawn = \"{policy}\"\n{service}\n",
            self.dir.join("audit.jsonl").display(),
            self.dir.join("sock").display(),
            self.dir.join("state").display(),
            self.dir.display()
        )
    }

    /// monit with a 1 s cycle, checking the daemon by its pidfile, as a
    /// pg_ctl-managed database would be.
    pub fn start_monit(&mut self) -> u32 {
        self.start_supervisor(Supervisor::Monit)
    }

    pub fn start_runsv(&mut self) -> u32 {
        self.start_supervisor(Supervisor::Runit)
    }

    pub fn start_supervisor(&mut self, kind: Supervisor) -> u32 {
        self.supervisor = Some(kind.start(&self.dir));
        self.wait_for_daemon(None)
    }

    /// The pid of the supervisor the sandbox started, if any.
    pub fn supervisor_pid(&self) -> Option<u32> {
        self.supervisor.as_ref().map(Child::id)
    }

    /// The daemon's pid once it has written its start line (not `old`).
    pub fn wait_for_daemon(&self, old: Option<u32>) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let pid = self
                .data()
                .lines()
                .filter_map(|l| l.strip_prefix("start "))
                .filter_map(|p| p.parse().ok())
                .next_back();
            if let Some(pid) = pid.filter(|p| Some(*p) != old) {
                return pid;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the daemon did not start; data: {}", self.data());
    }

    pub fn next_alert(&self, timeout: Duration) -> Option<Value> {
        self.agent.as_ref().unwrap().next_alert(timeout)
    }

    /// pids running the daemon's image now.
    pub fn daemon_pids(&self) -> Vec<u32> {
        let exe = self.dir.join("bin/sgdaemon");
        let out = bash(&format!("pgrep -f '{}' || true", exe.display()));
        out.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Runs `stopguard ARGS`, which must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.client(args);
        assert!(
            out.status.success(),
            "stopguard {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `stopguard ARGS --json`, which must succeed; returns the answer.
    pub fn json(&self, args: &[&str]) -> Value {
        let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    /// Runs `stopguard ARGS` against this sandbox's agent.
    pub fn client(&self, args: &[&str]) -> std::process::Output {
        Command::new(stopguard_bin())
            .arg("--socket")
            .arg(self.dir.join("sock"))
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut supervisor) = self.supervisor.take() {
            let _ = supervisor.kill();
            let _ = supervisor.wait();
        }
        for pid in self.daemon_pids() {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        self.agent.take();
        std::thread::sleep(Duration::from_millis(200));
        remove_frozen_cgroups();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Nothing a sandbox started outlives it: no process running from its
/// directory, no cgroup left for the processes it froze.
pub fn assert_clean(dir: &Path, frozen: &[u32]) {
    let left = left_behind(dir, frozen);
    assert!(left.is_empty(), "{left:#?}");
}

/// What a sandbox left behind: processes running from its directory, the
/// frozen cgroups of `frozen`.
pub fn left_behind(dir: &Path, frozen: &[u32]) -> Vec<String> {
    let dir = dir.to_string_lossy();
    let mut left: Vec<String> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter_map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline
                .contains(&*dir)
                .then(|| format!("left running: {pid} {cmdline}"))
        })
        .collect();
    for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup/freezer"] {
        for pid in frozen {
            let cgroup = format!("{root}/stopguard/frozen-{pid}");
            if Path::new(&cgroup).exists() {
                left.push(format!("{cgroup} left"));
            }
        }
    }
    left
}
