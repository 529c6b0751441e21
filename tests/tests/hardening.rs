//! The agent must not die, lie or be steered: a closed stdout, a second
//! agent, absurd window lengths, a crowd of idle clients under a low file
//! descriptor limit, a full state directory. Each test is a defect found by
//! probing the built agent.

use std::{
    io::{BufRead, BufReader, Write},
    os::{fd::FromRawFd, unix::net::UnixStream},
    process::{Command, Stdio},
    time::Duration,
};

use stopguard_tests::{
    Receiver, Sandbox, free_port, in_frozen_cgroup, operator_kill, peak_rss_kib, root_test, sinks,
    stat_fields, state_of, stopguard_bin,
};

/// A pipe whose reading end is already closed: every write to the other
/// end fails with EPIPE, as `stopguard run | head -1` does once head exits.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { libc::close(fds[0]) };
    // SAFETY: fds[1] is a fresh descriptor this function owns.
    Stdio::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[1]) })
}

/// Seconds of CPU (user + system) `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let fields = stat_fields(pid);
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// One raw request line to the agent's socket; its answer.
fn raw_request(sandbox: &Sandbox, line: &str) -> serde_json::Value {
    let mut stream = UnixStream::connect(sandbox.dir.join("sock")).unwrap();
    writeln!(stream, "{line}").unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap()
}

#[test]
fn a_closed_stdout_neither_stops_the_agent_nor_loses_an_alert() {
    let Some(_probes) = root_test("a_closed_stdout_neither_stops_the_agent_nor_loses_an_alert")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("closed-stdout");
    let mut running = sandbox.start_runsv();
    sandbox.start_agent_customized("alert", |command| {
        command.stdout(closed_pipe());
    });
    for _ in 0..2 {
        operator_kill(running);
        running = sandbox.wait_for_daemon(Some(running));
    }
    std::thread::sleep(Duration::from_millis(500));
    let agent = sandbox.agent.as_mut().unwrap();
    assert!(
        agent.is_running(),
        "the agent died writing to a closed stdout:\n{}",
        agent.log()
    );
    let alerts = sandbox
        .audit()
        .iter()
        .filter(|e| e["alert"]["kind"] == "respawn_after_operator_stop")
        .count();
    assert_eq!(alerts, 2, "{:#?}", sandbox.audit());
}

#[test]
fn a_client_whose_reader_went_away_ends_quietly() {
    let Some(_probes) = root_test("a_client_whose_reader_went_away_ends_quietly") else {
        return;
    };
    let mut sandbox = Sandbox::new("client-sigpipe");
    sandbox.start_agent("alert");
    let out = Command::new(stopguard_bin())
        .arg("--socket")
        .arg(sandbox.dir.join("sock"))
        .arg("status")
        .stdout(closed_pipe())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {stderr}",
        out.status
    );
}

#[test]
fn a_second_agent_refuses_to_start_and_names_the_first() {
    let Some(_probes) = root_test("a_second_agent_refuses_to_start_and_names_the_first") else {
        return;
    };
    let mut first = Sandbox::new("first-agent");
    first.start_agent("alert");
    let first_pid = first.agent.as_ref().unwrap().pid();
    // Another config: its own socket and state, the same host.
    let second = Sandbox::new("second-agent");
    let config = second.dir.join("stopguard.toml");
    std::fs::write(&config, second.config("alert", "", "")).unwrap();
    let mut child = Command::new(stopguard_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "a second agent started beside pid {first_pid}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another stopguard agent runs on this host (pid {first_pid}"
        )),
        "{stderr}"
    );
    assert!(!second.dir.join("sock").exists());
    // The first still answers on its own socket.
    first.ok(&["status"]);
}

#[test]
fn window_lengths_are_bounded_in_the_client_and_the_agent() {
    let Some(_probes) = root_test("window_lengths_are_bounded_in_the_client_and_the_agent") else {
        return;
    };
    let mut sandbox = Sandbox::new("window-bounds");
    sandbox.start_agent("freeze");
    let out = sandbox.client(&["window", "open", "sgdaemon", "--for", "1000y"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("at most 30 days"), "{stderr}");
    // 18446744074 s × 10⁹ overflows u64 ns: it used to wrap and expire at once.
    let answer = raw_request(
        &sandbox,
        r#"{"command":"window_open","service":"sgdaemon","reason":"x","for_secs":18446744074}"#,
    );
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("at most 30 days"),
        "{answer}"
    );
    let windows = sandbox.json(&["window", "list"]);
    assert_eq!(windows["windows"].as_array().unwrap().len(), 0, "{windows}");
    // A month is fine.
    sandbox.ok(&["window", "open", "sgdaemon", "--for", "30days"]);
}

#[test]
fn idle_clients_under_a_low_fd_limit_neither_spin_the_agent_nor_stop_a_freeze() {
    let Some(_probes) =
        root_test("idle_clients_under_a_low_fd_limit_neither_spin_the_agent_nor_stop_a_freeze")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("fd-limit");
    let first = sandbox.start_runsv();
    sandbox.start_agent_customized("freeze", |command| {
        // SAFETY: setrlimit between fork and exec is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(command, || {
                let limit = libc::rlimit {
                    rlim_cur: 64,
                    rlim_max: 64,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                Ok(())
            });
        }
    });
    let pid = sandbox.agent.as_ref().unwrap().pid();
    // Far more idle clients than the agent may hold descriptors for; they
    // send nothing, so each holds its connection until the agent's 5 s
    // request timeout.
    let idle: Vec<UnixStream> = (0..100)
        .filter_map(|_| UnixStream::connect(sandbox.dir.join("sock")).ok())
        .collect();
    assert!(idle.len() >= 50, "only {} clients connected", idle.len());
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_millis(1000));
    let spent = cpu_seconds(pid) - before;
    assert!(
        spent < 0.3,
        "the agent spent {spent} s of CPU in 1 s with idle clients"
    );
    operator_kill(first);
    let alert = sandbox
        .next_alert(Duration::from_secs(4))
        .unwrap_or_else(|| {
            panic!(
                "no alert; audit: {:#?}\nlog:\n{}",
                sandbox.audit(),
                sandbox.agent.as_ref().unwrap().log()
            )
        });
    let respawned = alert["process"]["pid"].as_u64().unwrap() as u32;
    assert_eq!(state_of(respawned), 'T');
    assert!(
        in_frozen_cgroup(respawned),
        "pid {respawned} is not in a frozen cgroup: {alert:#}\n{}",
        sandbox.agent.as_ref().unwrap().log()
    );
    drop(idle);
}

#[test]
fn reading_a_long_audit_log_keeps_the_agents_memory_bounded() {
    let Some(_probes) = root_test("reading_a_long_audit_log_keeps_the_agents_memory_bounded")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("audit-memory");
    sandbox.start_agent("alert");
    // 30 MB of old entries, as months of a busy host would leave.
    let line = format!(
        "{{\"at\":\"2026-01-01T00:00:00.000Z\",\"event\":\"guard_released\",\"pid\":1,\"note\":\"{}\"}}\n",
        "x".repeat(200)
    );
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(sandbox.dir.join("audit.jsonl"))
        .unwrap();
    let block = line.repeat(1000);
    for _ in 0..120 {
        log.write_all(block.as_bytes()).unwrap();
    }
    drop(log);
    let pid = sandbox.agent.as_ref().unwrap().pid();
    let before = peak_rss_kib(pid);
    let out = sandbox.client(&["audit", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("older entries left out"));
    let grown = peak_rss_kib(pid) - before;
    assert!(
        grown < 20 * 1024,
        "the agent grew by {grown} KiB reading a 30 MB audit log"
    );
}

#[test]
fn sighup_reopens_the_audit_log_and_reloads_only_a_valid_configuration() {
    let Some(_probes) =
        root_test("sighup_reopens_the_audit_log_and_reloads_only_a_valid_configuration")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("sighup");
    let mut running = sandbox.start_runsv();
    sandbox.start_agent("alert");
    let pid = sandbox.agent.as_ref().unwrap().pid();
    let log = sandbox.dir.join("audit.jsonl");
    let hup = || {
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
        std::thread::sleep(Duration::from_millis(500));
    };

    // logrotate moves the log away, then signals.
    std::fs::rename(&log, sandbox.dir.join("audit.jsonl.1")).unwrap();
    hup();
    assert!(
        sandbox.agent.as_mut().unwrap().is_running(),
        "SIGHUP killed the agent"
    );
    operator_kill(running);
    running = sandbox.wait_for_daemon(Some(running));
    sandbox
        .next_alert(Duration::from_secs(10))
        .expect("no alert after SIGHUP");
    std::thread::sleep(Duration::from_millis(300));
    let audit = sandbox.audit();
    assert!(
        audit.iter().any(|e| e["event"] == "config_reloaded"),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|e| e["alert"]["kind"] == "respawn_after_operator_stop"),
        "the alert went to the rotated file: {audit:#?}"
    );

    // A file with an error is refused; the running configuration stays.
    let config = sandbox.dir.join("stopguard.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, good.replace("[[service]]", "[[servise]]")).unwrap();
    hup();
    let agent = sandbox.agent.as_mut().unwrap();
    assert!(agent.is_running(), "a bad file on SIGHUP killed the agent");
    assert!(
        agent.log().contains("the running one stays"),
        "{}",
        agent.log()
    );
    operator_kill(running);
    sandbox.wait_for_daemon(Some(running));
    let alert = sandbox
        .next_alert(Duration::from_secs(10))
        .expect("the service is no longer watched after a refused reload");
    assert_eq!(alert["service"], "sgdaemon");
    assert!(
        sandbox
            .audit()
            .iter()
            .any(|e| e["event"] == "config_refused"),
        "{:#?}",
        sandbox.audit()
    );
}

#[test]
fn a_corrupt_saved_state_is_kept_aside_and_the_agent_starts_and_alerts() {
    let Some(_probes) =
        root_test("a_corrupt_saved_state_is_kept_aside_and_the_agent_starts_and_alerts")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("corrupt-state");
    let state = sandbox.dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("state.json"), "{\"detector\": {\"windows\": [").unwrap();
    sandbox.start_agent("freeze");
    let alert = sandbox
        .next_alert(Duration::from_secs(5))
        .expect("no alert that the saved state was lost");
    assert_eq!(alert["kind"], "state_lost", "{alert:#}");
    assert_eq!(alert["severity"], "critical", "{alert:#}");
    let kept: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        alert["summary"].as_str().unwrap().contains(&kept[0]),
        "{alert:#}"
    );
    // And it works: the agent answers and watches.
    sandbox.ok(&["status"]);
}

/// A small tmpfs mounted on `dir` for the test's length.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: std::path::PathBuf) -> SmallDisk {
        std::fs::create_dir_all(&dir).unwrap();
        stopguard_tests::bash(&format!(
            "mount -t tmpfs -o size=1m,mode=0755 stopguard-full {}",
            dir.display()
        ));
        SmallDisk(dir)
    }

    /// Takes every free byte: the next write fails with ENOSPC.
    fn fill(&self) {
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=4k"])
            .arg(format!("of={}", self.0.join("filler").display()))
            .stderr(Stdio::null())
            .status();
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The first audit entry `matches` accepts, waited for up to 3 s; fails
/// the test naming `what` and showing the log when none comes.
fn audited(
    sandbox: &Sandbox,
    what: &str,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(entry) = sandbox.audit().into_iter().find(|e| matches(e)) {
            return entry;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} in the audit log: {:#?}",
            sandbox.audit()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_full_state_dir_loses_neither_the_alert_nor_the_frozen_process() {
    let test = "a_full_state_dir_loses_neither_the_alert_nor_the_frozen_process";
    let Some(_probes) = root_test(test) else {
        return;
    };
    let mut receiver = Receiver::start();
    receiver.down();
    let mut sandbox = Sandbox::new("full-disk");
    let disk = SmallDisk::mount(sandbox.dir.join("state"));
    let first = sandbox.start_runsv();
    let metrics_port = free_port();
    let agent_lines = format!("metrics_listen = \"127.0.0.1:{metrics_port}\"");
    let hook = sinks(&receiver, &[("webhook", "/hook", "")]);
    sandbox.start_agent_with("freeze", &agent_lines, &hook);
    disk.fill();

    operator_kill(first);
    let alert = sandbox
        .next_alert(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no alert; audit: {:#?}", sandbox.audit()));
    let id = alert["id"].as_str().unwrap().to_string();
    let respawned = alert["process"]["pid"].as_u64().unwrap() as u32;
    assert!(in_frozen_cgroup(respawned), "{alert:#}");

    // The refusal is audited, shown in status and in the metrics.
    let failed = audited(&sandbox, "spool_failed", |e| {
        e["event"] == "spool_failed" && e["id"] == id.as_str()
    });
    assert!(
        failed["error"].as_str().unwrap().contains("No space left"),
        "{failed:#}"
    );
    audited(&sandbox, "state_save_failed", |e| {
        e["event"] == "state_save_failed"
    });
    let status = sandbox.json(&["status"]);
    assert_eq!(status["spool_depth"], 1, "{status:#}");
    assert_eq!(status["spool_unsynced"], 1, "{status:#}");
    assert!(status["spool_error"]["error"].is_string(), "{status:#}");
    assert!(status["state_error"]["error"].is_string(), "{status:#}");
    let text = sandbox.ok(&["status"]);
    assert!(
        text.contains("SPOOL FAILING: 1 alerts held in memory only"),
        "{text}"
    );
    assert!(text.contains("STATE NOT SAVED"), "{text}");
    let metrics = ureq::get(&format!("http://127.0.0.1:{metrics_port}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(metrics.contains("stopguard_spool_unsynced 1"), "{metrics}");
    assert!(
        metrics.contains("stopguard_spool_write_errors_total 1\n"),
        "{metrics}"
    );

    // Retried from memory: the receiver gets it once it is up.
    receiver.up();
    let got = receiver.wait_for(1, Duration::from_secs(10));
    assert_eq!(got[0].headers["webhook-id"], id);

    // The agent dies before state.json could name the frozen process; the
    // next one finds it in its frozen cgroup, holds it and can thaw it.
    sandbox.agent.as_mut().unwrap().kill9();
    sandbox.start_agent_with("freeze", &agent_lines, &hook);
    let adopted = audited(&sandbox, "frozen_adopted", |e| {
        e["event"] == "frozen_adopted" && e["pid"] == respawned
    });
    assert_eq!(adopted["service"], "sgdaemon");
    let status = sandbox.json(&["status"]);
    assert_eq!(
        status["frozen"],
        serde_json::json!([respawned]),
        "{status:#}"
    );
    assert_eq!(state_of(respawned), 'T');
    sandbox.ok(&["thaw", &respawned.to_string()]);
    std::thread::sleep(Duration::from_millis(300));
    assert_ne!(state_of(respawned), 'T', "pid {respawned} still stopped");
    assert!(!in_frozen_cgroup(respawned));

    // Space again: the state is saved and status says all is well.
    disk.free();
    audited(&sandbox, "state_saved", |e| e["event"] == "state_saved");
    let status = sandbox.json(&["status"]);
    assert!(status["state_error"].is_null(), "{status:#}");
    assert!(status["spool_error"].is_null(), "{status:#}");
}
