//! Maintenance windows and the control socket: a window opened, a respawn
//! inside it frozen and thawed when it closes; `stopguard stop` (SIGTERM or
//! the configured stop_command); the operator's own restart let through;
//! lost kernel records inside a window; the socket refusing strangers and
//! surviving garbage.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use stopguard_tests::{
    Sandbox, Stopped, as_operator, assert_clean, bash, in_frozen_cgroup, operator_kill, person,
    root_test, state_of, stopguard_bin,
};

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
    // What would restart it first, then the stop.
    assert!(
        out.starts_with("sgdaemon: running, pid ")
            && out.contains("runit (pid ")
            && out.contains("\n\nwindow w1 open on sgdaemon ('disk swap')\n"),
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
fn stopguard_stop_returns_once_the_main_process_exited_even_before_it_is_reaped() {
    let test = "stopguard_stop_returns_once_the_main_process_exited_even_before_it_is_reaped";
    let Some(_probes) = root_test(test) else {
        return;
    };
    let mut sandbox = Sandbox::new("stop-unreaped");
    let first = sandbox.start_runsv();
    sandbox.start_agent("alert");
    // runsv held: the daemon, once it exits, stays a zombie until runsv
    // reaps it, as under a busy supervisor or PID 1 for a reparented one.
    let runsv = Stopped::new(sandbox.supervisor_pid().unwrap());
    let started = Instant::now();
    let out = as_operator(&sandbox, "stop sgdaemon --wait 5s");
    assert!(
        out.contains(&format!("stopped sgdaemon (pid {first}, SIGTERM) in ")),
        "{out}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(state_of(first), 'Z', "not reaped yet");
    drop(runsv);
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
    assert!(out.contains("\nwindow w1 open on sgdaemon"), "{out}");
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
