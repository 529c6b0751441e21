//! Respawn detection against a real supervisor (runit's runsv): an operator
//! stop, the supervisor's restart, the agent's alert and freeze.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use stopguard_tests::{
    Agent, Alertmanager, Receiver, bash, fixture, in_frozen_cgroup, in_frozen_v1_cgroup,
    remove_frozen_cgroups, root_test, start_monit, state_of, stopguard_bin,
    webhook_signature_valid,
};

/// The supervisors the respawn tests run, each as its own service runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Supervisor {
    /// runit's runsv on a service dir.
    Runit,
    /// s6-supervise on the same kind of dir.
    S6,
    /// daemontools' supervise on the same kind of dir.
    Daemontools,
    /// supervisord with one [program].
    Supervisord,
}

/// A sandbox: a data file, the daemon's copy, a service dir for runsv,
/// s6-supervise and supervise.
struct Sandbox {
    dir: PathBuf,
    supervisor: Option<Child>,
    agent: Option<Agent>,
}

impl Sandbox {
    fn new(name: &str) -> Sandbox {
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

    fn data(&self) -> String {
        fs::read_to_string(self.dir.join("data")).unwrap_or_default()
    }

    fn audit(&self) -> Vec<Value> {
        fs::read_to_string(self.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn start_agent(&mut self, policy: &str) {
        self.start_agent_with(policy, "", "");
    }

    /// The agent on this sandbox's config, with extra lines for its
    /// `[agent]` table and its `[[service]]`.
    fn start_agent_with(&mut self, policy: &str, agent: &str, service: &str) {
        let config = format!(
            "[agent]\nhost = \"test-host\"\naudit_log = \"{}\"\nsocket = \"{}\"\nstate_dir = \"{}\"\n{agent}\n\n[[service]]\nname = \"sgdaemon\"\nexe = [\"{}/bin/sgdaemon\"]\non_unexpected_respawn = \"{policy}\"\n{service}\n",
            self.dir.join("audit.jsonl").display(),
            self.dir.join("sock").display(),
            self.dir.join("state").display(),
            self.dir.display()
        );
        self.agent = Some(Agent::start(&self.dir.join("stopguard.toml"), &config));
    }

    /// monit with a 1 s cycle, checking the daemon by its pidfile, as a
    /// pg_ctl-managed database would be.
    fn start_monit(&mut self) -> u32 {
        let d = self.dir.display();
        self.supervisor = Some(start_monit(
            &self.dir,
            &format!(
                "check process sgdaemon with pidfile {d}/daemon.pid\n  \
                 start program = \"/bin/sh -c '{d}/bin/sgdaemon {d}/data {d}/daemon.pid &'\" with timeout 2 seconds"
            ),
        ));
        self.wait_for_daemon(None)
    }

    fn start_runsv(&mut self) -> u32 {
        self.start_supervisor(Supervisor::Runit)
    }

    fn start_supervisor(&mut self, kind: Supervisor) -> u32 {
        let sv = self.dir.join("sv");
        let mut command = match kind {
            Supervisor::Runit => Command::new("runsv"),
            Supervisor::S6 => Command::new("s6-supervise"),
            Supervisor::Daemontools => Command::new("supervise"),
            Supervisor::Supervisord => {
                let d = self.dir.display();
                let conf = self.dir.join("supervisord.conf");
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
        if kind != Supervisor::Supervisord {
            command.arg(&sv);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {kind:?}: {e}"));
        self.supervisor = Some(child);
        self.wait_for_daemon(None)
    }

    /// The daemon's pid once it has written its start line (not `old`).
    fn wait_for_daemon(&self, old: Option<u32>) -> u32 {
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

    fn next_alert(&self, timeout: Duration) -> Option<Value> {
        self.agent.as_ref().unwrap().next_alert(timeout)
    }

    /// pids running the daemon's image now.
    fn daemon_pids(&self) -> Vec<u32> {
        let exe = self.dir.join("bin/sgdaemon");
        let out = bash(&format!("pgrep -f '{}' || true", exe.display()));
        out.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
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

impl Sandbox {
    /// Runs `stopguard ARGS`, which must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.client(args);
        assert!(
            out.status.success(),
            "stopguard {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `stopguard ARGS --json`, which must succeed; returns the answer.
    fn json(&self, args: &[&str]) -> Value {
        let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    /// Runs `stopguard ARGS` against this sandbox's agent.
    fn client(&self, args: &[&str]) -> std::process::Output {
        Command::new(stopguard_bin())
            .arg("--socket")
            .arg(self.dir.join("sock"))
            .args(args)
            .output()
            .unwrap()
    }
}

/// An operator (loginuid 1000) stops `pid` with /bin/kill.
fn operator_kill(pid: u32) {
    bash(&format!(
        "echo 1000 > /proc/self/loginuid && /bin/kill -TERM {pid}"
    ));
}

/// An operator stops the daemon; `kind` restarts it; the agent names
/// `kind` (by the comm it runs as) and freezes the respawn before its first
/// instruction.
fn respawn_is_frozen_and_named(test: &str, kind: Supervisor, comm: &str) {
    let Some(_probes) = root_test(test) else {
        return;
    };
    let mut sandbox = Sandbox::new(test);
    let first = sandbox.start_supervisor(kind);
    sandbox.start_agent("freeze");
    operator_kill(first);
    let alert = sandbox
        .next_alert(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no alert; audit: {:#?}", sandbox.audit()));
    assert_eq!(alert["kind"], "respawn_after_operator_stop", "{alert:#}");
    assert_eq!(alert["host"], "test-host");
    assert_eq!(alert["service"], "sgdaemon");
    assert_eq!(alert["respawned_by"]["supervisor"], comm, "{alert:#}");
    assert_eq!(alert["stopped_by"]["loginuid"], 1000, "{alert:#}");
    assert_eq!(alert["stopped_by"]["comm"], "kill", "{alert:#}");
    let by = &alert["respawned_by"];
    assert_eq!(by["pid"], by["chain"][0]["pid"], "{alert:#}");
    assert_eq!(by["comm"], by["chain"][0]["comm"], "{alert:#}");
    let supervisor_pid = by["supervisor_pid"].as_u64().unwrap();
    assert!(
        by["chain"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["pid"] == supervisor_pid && l["comm"] == comm),
        "{alert:#}"
    );
    assert_eq!(alert["stopped_by"]["signal"], "SIGTERM", "{alert:#}");
    assert_eq!(alert["window"], Value::Null);
    let summary = alert["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!("sgdaemon respawned by {comm} ")),
        "{summary}"
    );
    assert!(summary.contains("uid 1000"), "{summary}");
    let respawned = alert["process"]["pid"].as_u64().unwrap() as u32;
    assert_ne!(respawned, first);
    assert!(
        alert["action"].as_str().unwrap().starts_with("frozen"),
        "{alert:#}"
    );

    // Stopped and frozen; not one instruction of its own: no start line.
    assert_eq!(state_of(respawned), 'T', "pid {respawned} is not stopped");
    assert!(
        in_frozen_cgroup(respawned),
        "pid {respawned} is not in a frozen cgroup"
    );
    let before = sandbox.data();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sandbox.data(), before, "the data file changed while frozen");
    assert!(!before.contains(&format!("start {respawned}")), "{before}");

    let audit = sandbox.audit();
    assert!(
        audit.iter().any(|a| a["finding"] == "operator_stop"),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|a| a["alert"]["process"]["pid"] == respawned),
        "{audit:#?}"
    );
    let dir = sandbox.dir.clone();
    drop(sandbox);
    assert_clean(&dir, &[respawned]);
}

/// Nothing a sandbox started outlives it: no process running from its
/// directory, no cgroup left for the processes it froze.
fn assert_clean(dir: &std::path::Path, frozen: &[u32]) {
    let dir = dir.to_string_lossy();
    let left: Vec<String> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter_map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&*dir).then(|| format!("{pid} {cmdline}"))
        })
        .collect();
    assert!(left.is_empty(), "left running: {left:#?}");
    for pid in frozen {
        for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup/freezer"] {
            let cgroup = format!("{root}/stopguard/frozen-{pid}");
            assert!(!std::path::Path::new(&cgroup).exists(), "{cgroup} left");
        }
    }
}

#[test]
fn runsv_respawn_after_an_operator_stop_is_frozen_and_named() {
    respawn_is_frozen_and_named("runsv", Supervisor::Runit, "runsv");
}

#[test]
fn s6_supervise_respawn_after_an_operator_stop_is_frozen_and_named() {
    respawn_is_frozen_and_named("s6", Supervisor::S6, "s6-supervise");
}

#[test]
fn daemontools_supervise_respawn_after_an_operator_stop_is_frozen_and_named() {
    respawn_is_frozen_and_named("daemontools", Supervisor::Daemontools, "supervise");
}

#[test]
fn supervisord_respawn_after_an_operator_stop_is_frozen_and_named() {
    respawn_is_frozen_and_named("supervisord", Supervisor::Supervisord, "supervisord");
}

#[test]
fn a_crash_restart_raises_no_alert_and_is_audited() {
    let Some(_probes) = root_test("a_crash_restart_raises_no_alert_and_is_audited") else {
        return;
    };
    let mut sandbox = Sandbox::new("crash");
    let first = sandbox.start_runsv();
    sandbox.start_agent("freeze");
    // SIGKILL from a process without a login identity: a crash, not a stop.
    bash(&format!("/bin/kill -KILL {first}"));
    let second = sandbox.wait_for_daemon(Some(first));
    assert!(sandbox.next_alert(Duration::from_secs(2)).is_none());
    assert_ne!(state_of(second), 'T');
    let audit = sandbox.audit();
    let restart = audit
        .iter()
        .find(|a| a["finding"] == "crash_restart")
        .unwrap_or_else(|| panic!("no crash_restart in {audit:#?}"));
    assert_eq!(restart["started"]["pid"], second);
    assert_eq!(restart["started"]["supervisor"]["comm"], "runsv");
}

#[test]
fn with_the_alert_policy_the_respawn_runs_and_is_reported() {
    let Some(_probes) = root_test("with_the_alert_policy_the_respawn_runs_and_is_reported") else {
        return;
    };
    let mut sandbox = Sandbox::new("alert");
    let first = sandbox.start_runsv();
    sandbox.start_agent("alert");
    let started = Instant::now();
    operator_kill(first);
    let alert = sandbox
        .next_alert(Duration::from_secs(10))
        .expect("no alert");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(alert["action"], "alerted");
    let respawned = alert["process"]["pid"].as_u64().unwrap() as u32;
    assert_eq!(sandbox.wait_for_daemon(Some(first)), respawned);
}

#[test]
fn monit_respawn_train_keeps_one_frozen_and_one_alert() {
    let Some(_probes) = root_test("monit_respawn_train_keeps_one_frozen_and_one_alert") else {
        return;
    };
    let mut sandbox = Sandbox::new("monit");
    let first = sandbox.start_monit();
    sandbox.start_agent("freeze");
    operator_kill(first);
    let alert = sandbox
        .next_alert(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no alert; audit: {:#?}", sandbox.audit()));
    assert_eq!(alert["respawned_by"]["supervisor"], "monit", "{alert:#}");
    assert_eq!(alert["stopped_by"]["loginuid"], 1000, "{alert:#}");
    let frozen = alert["process"]["pid"].as_u64().unwrap() as u32;
    assert!(in_frozen_cgroup(frozen), "pid {frozen} is not frozen");
    // monit finds no fresh pidfile and tries again every cycle.
    let deadline = Instant::now() + Duration::from_secs(15);
    let retries = loop {
        let n = sandbox
            .audit()
            .iter()
            .filter(|a| a["event"] == "respawn_retry_killed")
            .count();
        if n >= 2 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(retries >= 2, "monit did not retry: {:#?}", sandbox.audit());
    assert!(
        sandbox.next_alert(Duration::from_millis(100)).is_none(),
        "one incident, one alert"
    );
    assert!(in_frozen_cgroup(frozen), "the first respawn stays frozen");
    // A retry lives for the few ms between its exec and the agent's kill.
    let daemons = || {
        sandbox
            .daemon_pids()
            .into_iter()
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sgdaemon")
            })
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while daemons() != [frozen] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(daemons(), [frozen], "retries must not pile up");
    assert!(!sandbox.data().contains(&format!("start {frozen}")));
}

#[test]
fn a_respawn_inside_a_window_is_frozen_and_thawed_when_it_closes() {
    let Some(_probes) = root_test("a_respawn_inside_a_window_is_frozen_and_thawed_when_it_closes")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("window");
    let first = sandbox.start_runsv();
    // Outside a window the policy would only alert: the window's freezes.
    sandbox.start_agent("alert");
    let id = sandbox.ok(&[
        "window",
        "open",
        "sgdaemon",
        "--reason",
        "schema change",
        "--for",
        "10m",
    ]);
    assert_eq!(id.trim(), "w1");
    let list = sandbox.ok(&["window", "list"]);
    assert!(list.contains("w1  sgdaemon  'schema change'"), "{list}");

    // Inside the window any stop is the operator's, login or not.
    bash(&format!("/bin/kill -TERM {first}"));
    let alert = sandbox
        .next_alert(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no alert; audit: {:#?}", sandbox.audit()));
    assert_eq!(alert["kind"], "respawn_in_window", "{alert:#}");
    assert_eq!(alert["window"]["id"], "w1", "{alert:#}");
    assert_eq!(alert["window"]["reason"], "schema change", "{alert:#}");
    assert!(alert["window"]["expires_at"].is_string(), "{alert:#}");
    assert!(
        alert["summary"]
            .as_str()
            .unwrap()
            .ends_with("window w1 'schema change'")
    );
    let respawned = alert["process"]["pid"].as_u64().unwrap() as u32;
    assert!(in_frozen_cgroup(respawned));

    let status = sandbox.json(&["status"]);
    assert_eq!(
        status["frozen"],
        serde_json::json!([respawned]),
        "{status:#}"
    );
    assert_eq!(status["windows"][0]["id"], "w1");

    sandbox.ok(&["window", "close", "sgdaemon", "--thaw"]);
    assert_eq!(
        sandbox.wait_for_daemon(Some(first)),
        respawned,
        "the thawed respawn runs"
    );
    assert_ne!(state_of(respawned), 'T');
    let status = sandbox.json(&["window", "list"]);
    assert_eq!(status["windows"], serde_json::json!([]));
}

#[test]
fn the_control_socket_refuses_strangers_and_survives_garbage() {
    let Some(_probes) = root_test("the_control_socket_refuses_strangers_and_survives_garbage")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("control");
    sandbox.start_agent("alert");
    let socket = sandbox.dir.join("sock");
    let mode = bash(&format!("stat -c %a {}", socket.display()));
    assert_eq!(mode.trim(), "660");
    // An unprivileged user cannot change state.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(stopguard_bin())
        .arg("--socket")
        .arg(&socket)
        .args(["window", "open", "sgdaemon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.to_lowercase().contains("permission denied"),
        "{stderr}"
    );
    // Garbage and oversized requests get an error; the agent stays up.
    for garbage in [
        "garbage\n".to_string(),
        format!("{}\n", "x".repeat(100_000)),
    ] {
        use std::io::{BufRead, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let _ = stream.write_all(garbage.as_bytes());
        let mut answer = String::new();
        std::io::BufReader::new(stream)
            .read_line(&mut answer)
            .unwrap();
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["ok"], false, "{answer}");
    }
    sandbox.json(&["status"]);
    let out = sandbox.client(&["window", "open", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "stopguard: no service `nosuch` is watched (watched: sgdaemon)"
    );
}

#[test]
fn a_kill_9_of_the_agent_loses_no_window_and_no_frozen_process() {
    let Some(_probes) = root_test("a_kill_9_of_the_agent_loses_no_window_and_no_frozen_process")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("restart");
    let first = sandbox.start_runsv();
    sandbox.start_agent("alert");
    sandbox.ok(&["window", "open", "sgdaemon", "--reason", "upgrade"]);

    // kill -9 mid-window; the restarted agent still guards and catches.
    sandbox.agent.as_mut().unwrap().kill9();
    sandbox.start_agent("alert");
    operator_kill(first);
    let alert = sandbox
        .next_alert(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no alert after restart; audit: {:#?}", sandbox.audit()));
    assert_eq!(alert["kind"], "respawn_in_window", "{alert:#}");
    assert_eq!(alert["window"]["reason"], "upgrade");
    let respawned = alert["process"]["pid"].as_u64().unwrap() as u32;
    assert!(
        !sandbox.data().contains(&format!("start {respawned}")),
        "it ran before the freeze"
    );

    // And again: the frozen process stays frozen while the agent is down,
    // and the next agent knows it.
    sandbox.agent.as_mut().unwrap().kill9();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        in_frozen_cgroup(respawned),
        "thawed while the agent was down"
    );
    sandbox.start_agent("alert");
    let status = sandbox.json(&["status"]);
    assert_eq!(
        status["frozen"],
        serde_json::json!([respawned]),
        "{status:#}"
    );
    assert_eq!(status["windows"][0]["reason"], "upgrade", "{status:#}");
    sandbox.ok(&["window", "close", "sgdaemon", "--thaw"]);
    assert_eq!(sandbox.wait_for_daemon(Some(first)), respawned);
}

/// How the agent names a uid: "name (uid N)", or "uid N" when the host
/// has no such user.
fn person(uid: u32) -> String {
    match bash(&format!("getent passwd {uid} | cut -d: -f1 || true")).trim() {
        "" => format!("uid {uid}"),
        name => format!("{name} (uid {uid})"),
    }
}

/// Runs `stopguard ARGS` against `sandbox`'s agent from an operator's shell
/// (loginuid 1000); returns its stdout.
fn as_operator(sandbox: &Sandbox, args: &str) -> String {
    bash(&format!(
        "echo 1000 > /proc/self/loginuid && {} --socket {} {args}",
        stopguard_bin().display(),
        sandbox.dir.join("sock").display()
    ))
}

#[test]
fn stopguard_stop_opens_a_window_stops_the_service_and_the_respawn_is_frozen() {
    let test = "stopguard_stop_opens_a_window_stops_the_service_and_the_respawn_is_frozen";
    let Some(_probes) = root_test(test) else {
        return;
    };
    let mut sandbox = Sandbox::new("stop");
    let first = sandbox.start_runsv();
    // Outside a window the policy would only alert: `stop` opens one.
    sandbox.start_agent("alert");
    let out = as_operator(&sandbox, "stop sgdaemon --reason 'disk swap'");
    assert!(
        out.starts_with("window w1 open on sgdaemon ('disk swap')\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!("stopped sgdaemon (pid {first}, SIGTERM) in ")),
        "{out}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{first}")).exists(),
        "`stop` returned before pid {first} exited"
    );

    let alert = sandbox
        .next_alert(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no alert; audit: {:#?}", sandbox.audit()));
    assert_eq!(alert["kind"], "respawn_in_window", "{alert:#}");
    assert_eq!(alert["window"]["reason"], "disk swap", "{alert:#}");
    assert_eq!(alert["window"]["opened_by"], person(1000), "{alert:#}");
    assert_eq!(alert["stopped_by"]["comm"], "stopguard", "{alert:#}");
    assert_eq!(alert["stopped_by"]["loginuid"], 1000, "{alert:#}");
    assert_eq!(
        alert["stopped_by"]["via"], "stopguard stop sgdaemon",
        "{alert:#}"
    );
    let respawned = alert["process"]["pid"].as_u64().unwrap() as u32;
    assert!(in_frozen_cgroup(respawned));

    // The timeline, for a person and for a script.
    let timeline = sandbox.ok(&["audit", "--service", "sgdaemon", "--since", "10m"]);
    assert!(
        timeline.contains(&format!(
            "stopped by {} (SIGTERM from stopguard pid {}, via `stopguard stop sgdaemon`)",
            person(1000),
            alert["stopped_by"]["pid"]
        )),
        "{timeline}"
    );
    assert!(
        timeline.contains("sgdaemon     ALERT respawn_in_window: sgdaemon respawned by runsv"),
        "{timeline}"
    );
    let entries: Vec<Value> = sandbox
        .ok(&["audit", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries, sandbox.audit());

    let out = sandbox.ok(&["window", "close", "sgdaemon", "--thaw"]);
    assert_eq!(
        out,
        format!("window w1 on sgdaemon closed\nthawed: {respawned}\n")
    );
    assert_eq!(sandbox.wait_for_daemon(Some(first)), respawned);
    let dir = sandbox.dir.clone();
    drop(sandbox);
    assert_clean(&dir, &[respawned]);
}

#[test]
fn a_configured_stop_command_runs_with_the_operators_login() {
    let Some(_probes) = root_test("a_configured_stop_command_runs_with_the_operators_login") else {
        return;
    };
    let mut sandbox = Sandbox::new("stopcmd");
    let first = sandbox.start_runsv();
    let exe = sandbox.dir.join("bin/sgdaemon");
    sandbox.start_agent_with(
        "alert",
        "",
        &format!(
            "stop_command = [\"pkill\", \"-TERM\", \"-f\", \"{}\"]",
            exe.display()
        ),
    );
    let out = as_operator(&sandbox, "stop sgdaemon --for 10m");
    assert!(
        out.contains(&format!(
            "stopped sgdaemon (pid {first}, `pkill -TERM -f {}`) in ",
            exe.display()
        )),
        "{out}"
    );
    let alert = sandbox
        .next_alert(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no alert; audit: {:#?}", sandbox.audit()));
    assert_eq!(alert["kind"], "respawn_in_window", "{alert:#}");
    assert_eq!(alert["stopped_by"]["comm"], "pkill", "{alert:#}");
    assert_eq!(alert["stopped_by"]["loginuid"], 1000, "{alert:#}");
    assert!(alert["window"]["expires_at"].is_string(), "{alert:#}");

    // Stopping again: the same window; the respawn is held, not signalled.
    let respawned = alert["process"]["pid"].as_u64().unwrap();
    let out = sandbox.ok(&["stop", "sgdaemon"]);
    assert!(out.starts_with("window w1 open on sgdaemon"), "{out}");
    assert!(
        out.contains(&format!(
            "sgdaemon is not running: pid {respawned} is held frozen"
        )),
        "{out}"
    );
}

#[test]
fn the_operators_own_restart_inside_a_window_is_not_frozen() {
    let Some(_probes) = root_test("the_operators_own_restart_inside_a_window_is_not_frozen") else {
        return;
    };
    let mut sandbox = Sandbox::new("own");
    let start = format!(
        "echo 1000 > /proc/self/loginuid && setsid -f {d}/bin/sgdaemon {d}/data </dev/null >/dev/null 2>&1",
        d = sandbox.dir.display()
    );
    bash(&start);
    let first = sandbox.wait_for_daemon(None);
    sandbox.start_agent("freeze");
    sandbox.ok(&["window", "open", "sgdaemon", "--reason", "config change"]);
    operator_kill(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{first}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }

    // The guard stops it at exec; the agent sees the operator and lets go.
    bash(&start);
    let second = sandbox.wait_for_daemon(Some(first));
    assert_ne!(state_of(second), 'T');
    assert!(sandbox.next_alert(Duration::from_secs(1)).is_none());
    let audit = sandbox.audit();
    let start = audit
        .iter()
        .find(|a| a["finding"] == "operator_start")
        .unwrap_or_else(|| panic!("no operator_start in {audit:#?}"));
    assert_eq!(start["started"]["pid"], second);
    assert_eq!(start["loginuid"], 1000);
    assert!(
        audit
            .iter()
            .any(|a| a["event"] == "guard_released" && a["pid"] == second),
        "{audit:#?}"
    );
}

#[test]
fn lost_records_inside_a_window_raise_an_events_lost_alert() {
    let Some(_probes) = root_test("lost_records_inside_a_window_raise_an_events_lost_alert") else {
        return;
    };
    let mut sandbox = Sandbox::new("lost");
    let running = sandbox.start_runsv();
    sandbox.start_agent_with("alert", "ring_bytes = 4096", "");
    sandbox.ok(&["window", "open", "sgdaemon", "--reason", "reindex"]);
    // A burst far faster than the agent reads a 4 KiB ring.
    bash("perl -e 'kill q(CONT), $$ for 1..200000'");
    let alert = sandbox
        .next_alert(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no alert; audit: {:#?}", sandbox.audit()));
    assert_eq!(alert["kind"], "events_lost", "{alert:#}");
    assert_eq!(alert["severity"], "warning", "{alert:#}");
    assert_eq!(alert["service"], "sgdaemon", "{alert:#}");
    assert_eq!(alert["window"]["id"], "w1", "{alert:#}");
    assert_eq!(
        alert["process"],
        Value::Null,
        "the same daemon runs: {alert:#}"
    );
    let summary = alert["summary"].as_str().unwrap();
    assert!(
        summary.contains("kernel records lost while sgdaemon was in window w1 'reindex'"),
        "{summary}"
    );
    let status = sandbox.json(&["status"]);
    assert!(status["lost"].as_u64().unwrap() > 0, "{status:#}");
    assert_eq!(status["services"][0]["pid"], running, "{status:#}");
}

#[test]
fn the_cgroup_v1_freezer_holds_the_respawn_when_configured() {
    let Some(_probes) = root_test("the_cgroup_v1_freezer_holds_the_respawn_when_configured") else {
        return;
    };
    if !std::path::Path::new("/sys/fs/cgroup/freezer/cgroup.procs").exists() {
        eprintln!("skipped: no cgroup v1 freezer hierarchy at /sys/fs/cgroup/freezer");
        return;
    }
    let mut sandbox = Sandbox::new("freezer-v1");
    let first = sandbox.start_runsv();
    sandbox.start_agent_with("freeze", "freezer = \"cgroup1\"", "");
    operator_kill(first);
    let alert = sandbox
        .next_alert(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no alert; audit: {:#?}", sandbox.audit()));
    let respawned = alert["process"]["pid"].as_u64().unwrap() as u32;
    assert!(in_frozen_v1_cgroup(respawned), "{alert:#}");
    assert!(!in_frozen_cgroup(respawned));
    let before = sandbox.data();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(sandbox.data(), before, "the data file changed while frozen");

    assert_eq!(
        sandbox.ok(&["thaw", "sgdaemon"]).trim(),
        format!("thawed [{respawned}]")
    );
    assert_eq!(sandbox.wait_for_daemon(Some(first)), respawned);
    let cgroup = fs::read_to_string(format!("/proc/{respawned}/cgroup")).unwrap();
    assert!(
        cgroup.lines().any(|l| l.ends_with(":freezer:/")),
        "{cgroup}"
    );
    let dir = sandbox.dir.clone();
    drop(sandbox);
    assert_clean(&dir, &[respawned]);
}

/// `[[sink]]` tables for `receiver`, each `(kind, path, extra lines)`.
fn sinks(receiver: &Receiver, sinks: &[(&str, &str, &str)]) -> String {
    sinks
        .iter()
        .map(|(kind, path, extra)| {
            format!(
                "\n[[sink]]\nkind = \"{kind}\"\nurl = \"{}\"\n{extra}\n",
                receiver.url(path)
            )
        })
        .collect()
}

/// `n` operator stops of the runsv-supervised daemon, each answered by a
/// respawn the alert policy lets run; returns the alerts.
fn respawns(sandbox: &Sandbox, mut running: u32, n: usize) -> Vec<Value> {
    (0..n)
        .map(|_| {
            operator_kill(running);
            let alert = sandbox
                .next_alert(Duration::from_secs(10))
                .unwrap_or_else(|| panic!("no alert; audit: {:#?}", sandbox.audit()));
            running = sandbox.wait_for_daemon(Some(running));
            alert
        })
        .collect()
}

#[test]
fn sinks_receive_the_alert_signed_and_shaped_and_no_secret_leaks() {
    let test = "sinks_receive_the_alert_signed_and_shaped_and_no_secret_leaks";
    let Some(_probes) = root_test(test) else {
        return;
    };
    let receiver = Receiver::start();
    let mut sandbox = Sandbox::new("sinks");
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let routing = "R0UTINGKEY1234567890abcdef";
    fs::write(sandbox.dir.join("webhook.secret"), format!("{secret}\n")).unwrap();
    fs::write(sandbox.dir.join("pd.key"), routing).unwrap();
    let d = sandbox.dir.display().to_string();
    let first = sandbox.start_runsv();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    sandbox.start_agent_with(
        "alert",
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
        &sinks(
            &receiver,
            &[
                (
                    "webhook",
                    "/hook",
                    &format!("secret_file = \"{d}/webhook.secret\""),
                ),
                ("slack", "/slack", ""),
                ("teams", "/teams", ""),
                ("pagerduty", "/pd", &format!("secret_file = \"{d}/pd.key\"")),
            ],
        ),
    );
    let alert = &respawns(&sandbox, first, 1)[0];
    let got = receiver.wait_for(4, Duration::from_secs(10));
    let by_path = |path: &str| got.iter().find(|r| r.path == path).unwrap().clone();

    let hook = by_path("/hook");
    assert_eq!(hook.json(), *alert, "the webhook body is the alert record");
    assert_eq!(hook.headers["webhook-id"], alert["id"].as_str().unwrap());
    assert!(webhook_signature_valid(secret, &hook), "{:?}", hook.headers);
    let mut tampered = hook.clone();
    tampered.body = String::from_utf8(hook.body.clone())
        .unwrap()
        .replace("sgdaemon", "sgdaem0n")
        .into_bytes();
    assert!(!webhook_signature_valid(secret, &tampered));

    let slack = by_path("/slack").json();
    let text = slack["text"].as_str().unwrap();
    assert!(
        text.starts_with(alert["summary"].as_str().unwrap()),
        "{text}"
    );
    assert!(text.contains("Restarted by: runsv"), "{text}");
    assert!(slack["blocks"].as_array().unwrap().len() >= 3, "{slack:#}");
    let teams = by_path("/teams").json();
    assert_eq!(
        teams["attachments"][0]["content"]["type"], "AdaptiveCard",
        "{teams:#}"
    );
    let pd = by_path("/pd").json();
    assert_eq!(pd["routing_key"], routing);
    assert_eq!(pd["event_action"], "trigger");
    assert_eq!(pd["dedup_key"], "test-host/sgdaemon/none");

    // Secrets stay out of the audit log, the status and the spool.
    let status = sandbox.ok(&["status", "--json"]);
    let audit = fs::read_to_string(sandbox.dir.join("audit.jsonl")).unwrap();
    let log = sandbox.agent.as_ref().unwrap().log();
    for secret in [secret, routing] {
        assert!(!audit.contains(secret), "secret in the audit log");
        assert!(!status.contains(secret), "secret in the status");
        assert!(!log.contains(secret), "secret in the agent's log");
    }
    assert!(log.contains("delivered to webhook"), "{log}");
    assert!(audit.contains("\"alert_delivered\""), "{audit}");
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["spool_depth"], 0, "{status:#}");
    assert_eq!(status["sinks"].as_array().unwrap().len(), 4, "{status:#}");
    assert_eq!(status["sinks"][0]["health"]["delivered"], 1, "{status:#}");

    // What Prometheus scrapes.
    let mut response = ureq::get(&format!("http://127.0.0.1:{metrics_port}/metrics"))
        .call()
        .unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    for line in [
        "stopguard_alerts_total{kind=\"respawn_after_operator_stop\"} 1",
        "stopguard_deliveries_total{sink=\"webhook\",outcome=\"delivered\"} 1",
        "stopguard_deliveries_total{sink=\"pagerduty\",outcome=\"delivered\"} 1",
        "stopguard_delivery_latency_seconds_count{sink=\"slack\"} 1",
        "stopguard_spool_depth 0",
        "stopguard_windows_open 0",
        "stopguard_lost_records_total 0",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    let execs: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("stopguard_events_total{kind=\"exec\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exec count:\n{text}"));
    assert!(execs >= 1, "{text}");
}

#[test]
fn a_dead_receiver_gets_every_alert_once_it_is_up_even_across_a_kill_9() {
    let test = "a_dead_receiver_gets_every_alert_once_it_is_up_even_across_a_kill_9";
    let Some(_probes) = root_test(test) else {
        return;
    };
    let mut receiver = Receiver::start();
    receiver.down();
    let down_at = Instant::now();
    let mut sandbox = Sandbox::new("spool");
    let first = sandbox.start_runsv();
    let hook = sinks(&receiver, &[("webhook", "/hook", "")]);
    sandbox.start_agent_with("alert", "group_interval = \"0s\"", &hook);
    let alerts = respawns(&sandbox, first, 3);
    let status = sandbox.json(&["status"]);
    assert_eq!(status["spool_depth"], 3, "{status:#}");

    // The agent dies with three alerts pending; the next one delivers them.
    sandbox.agent.as_mut().unwrap().kill9();
    std::thread::sleep(Duration::from_secs(10));
    sandbox.start_agent_with("alert", "group_interval = \"0s\"", &hook);
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down_at.elapsed()));
    receiver.up();
    let got = receiver.wait_for(3, Duration::from_secs(30));
    let mut ids: Vec<&str> = got
        .iter()
        .map(|r| r.headers["webhook-id"].as_str())
        .collect();
    ids.sort();
    ids.dedup();
    let mut want: Vec<&str> = alerts.iter().map(|a| a["id"].as_str().unwrap()).collect();
    want.sort();
    assert_eq!(ids, want, "every alert, each once");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sandbox.json(&["status"])["spool_depth"], 0);
}

#[test]
fn a_429_with_retry_after_is_honoured() {
    let Some(_probes) = root_test("a_429_with_retry_after_is_honoured") else {
        return;
    };
    let receiver = Receiver::start();
    receiver.answer(&[(429, Some(3))]);
    let mut sandbox = Sandbox::new("retry-after");
    let first = sandbox.start_runsv();
    sandbox.start_agent_with("alert", "", &sinks(&receiver, &[("webhook", "/hook", "")]));
    let alert = &respawns(&sandbox, first, 1)[0];
    let got = receiver.wait_for(2, Duration::from_secs(15));
    let waited = got[1].at - got[0].at;
    assert!(
        waited >= Duration::from_millis(2900),
        "retried after {waited:?}"
    );
    for request in &got {
        assert_eq!(request.headers["webhook-id"], alert["id"].as_str().unwrap());
    }
}

#[test]
fn alertmanager_shows_the_respawn_until_it_is_thawed() {
    let Some(_probes) = root_test("alertmanager_shows_the_respawn_until_it_is_thawed") else {
        return;
    };
    let mut sandbox = Sandbox::new("alertmanager");
    let am = Alertmanager::start(&sandbox.dir);
    let first = sandbox.start_runsv();
    sandbox.start_agent_with(
        "freeze",
        "",
        &format!(
            "\n[[sink]]\nkind = \"alertmanager\"\nurl = \"{}\"\n",
            am.url("/api/v2/alerts")
        ),
    );
    operator_kill(first);
    let alert = sandbox
        .next_alert(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no alert; audit: {:#?}", sandbox.audit()));
    let deadline = Instant::now() + Duration::from_secs(10);
    let active = loop {
        let active = am.alerts();
        if !active.is_empty() || Instant::now() > deadline {
            break active;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(active.len(), 1, "{active:#?}");
    let labels = &active[0]["labels"];
    assert_eq!(labels["alertname"], "StopguardRespawn");
    assert_eq!(labels["service"], "sgdaemon");
    assert_eq!(labels["host"], "test-host");
    assert_eq!(labels["severity"], "critical");
    assert_eq!(labels["kind"], "respawn_after_operator_stop");
    assert_eq!(labels["alert_id"], alert["id"]);
    assert_eq!(active[0]["annotations"]["summary"], alert["summary"]);

    // Thawing ends it: the alert resolves in Alertmanager.
    sandbox.ok(&["thaw", "sgdaemon"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !am.alerts().is_empty() {
        assert!(
            Instant::now() < deadline,
            "still active after the thaw: {:#?}",
            am.alerts()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn repeated_respawns_become_one_follow_up() {
    let Some(_probes) = root_test("repeated_respawns_become_one_follow_up") else {
        return;
    };
    let receiver = Receiver::start();
    let mut sandbox = Sandbox::new("grouping");
    let first = sandbox.start_runsv();
    sandbox.start_agent_with(
        "alert",
        "group_interval = \"8s\"",
        &sinks(&receiver, &[("webhook", "/hook", "")]),
    );
    let started = Instant::now();
    let alerts = respawns(&sandbox, first, 3);
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    let got = receiver.wait_for(2, Duration::from_secs(15));
    assert_eq!(got[0].json(), alerts[0]);
    let follow_up = got[1].json();
    let summary = follow_up["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("sgdaemon respawned 2 more times within 8s of alert "),
        "{summary}"
    );
    assert_eq!(
        follow_up["grouped"],
        serde_json::json!([alerts[1]["id"], alerts[2]["id"]])
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(receiver.received().len(), 2, "one alert and one follow-up");
    // Everything still reaches the audit log.
    let audit = sandbox.audit();
    assert_eq!(audit.iter().filter(|a| a["alert"].is_object()).count(), 3);
}

#[test]
fn alert_test_reports_each_sink_and_fails_when_one_does() {
    let Some(_probes) = root_test("alert_test_reports_each_sink_and_fails_when_one_does") else {
        return;
    };
    let receiver = Receiver::start();
    let mut dead = Receiver::start();
    dead.down();
    let mut sandbox = Sandbox::new("alert-test");
    let config = sinks(&receiver, &[("webhook", "/hook", "")])
        + &sinks(&dead, &[("slack", "/services/T000/B000/XXXX", "")]);
    sandbox.start_agent_with("alert", "", &config);

    let out = sandbox.client(&["alert", "test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("webhook          ok      HTTP 200"),
        "{stdout}"
    );
    assert!(stdout.contains("slack            FAILED  "), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 of 2 sinks failed"),
        "{out:?}"
    );
    let got = receiver.wait_for(1, Duration::from_secs(5));
    assert_eq!(got[0].json()["kind"], "test");

    let ok = sandbox.ok(&["alert", "test", "--sink", "webhook"]);
    assert!(ok.starts_with("webhook          ok"), "{ok}");
    let out = sandbox.client(&["alert", "test", "--sink", "pager"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "stopguard: no sink `pager` (sinks: webhook, slack)"
    );
    // Chat webhook URLs carry a token in their path: status shows the host.
    let status = sandbox.json(&["status"]);
    assert_eq!(
        status["sinks"][1]["url"],
        format!("http://127.0.0.1:{}/…", dead.port)
    );
    assert!(!status.to_string().contains("XXXX"), "{status:#}");
}

#[test]
fn an_alert_too_old_to_deliver_is_marked_undeliverable_and_audited() {
    let test = "an_alert_too_old_to_deliver_is_marked_undeliverable_and_audited";
    let Some(_probes) = root_test(test) else {
        return;
    };
    let mut receiver = Receiver::start();
    receiver.down();
    let alive = Receiver::start();
    let mut sandbox = Sandbox::new("undeliverable");
    let first = sandbox.start_runsv();
    sandbox.start_agent_with(
        "alert",
        "",
        &(sinks(&receiver, &[("webhook", "/hook", "max_age = \"3s\"")])
            + &sinks(&alive, &[("webhook", "/alive", "name = \"alive\"")])),
    );
    let alert = &respawns(&sandbox, first, 1)[0];
    // The dead sink holds up only itself.
    let got = alive.wait_for(1, Duration::from_secs(1));
    assert_eq!(got[0].json()["id"], alert["id"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let entry = loop {
        let found = sandbox
            .audit()
            .into_iter()
            .find(|a| a["event"] == "alert_undeliverable");
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "{:#?}", sandbox.audit());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(entry["id"], alert["id"]);
    assert_eq!(entry["sink"], "webhook");
    assert!(entry["attempts"].as_u64().unwrap() >= 2, "{entry}");
    let status = sandbox.json(&["status"]);
    assert_eq!(status["spool_depth"], 0, "{status:#}");
    assert_eq!(
        status["sinks"][0]["health"]["undeliverable"], 1,
        "{status:#}"
    );
    assert!(
        status["sinks"][0]["health"]["last_error"].is_string(),
        "{status:#}"
    );
}
