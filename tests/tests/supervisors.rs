//! Respawns by each real supervisor: runit's runsv, s6-supervise,
//! daemontools' supervise, supervisord and monit. An operator stops the
//! daemon, the supervisor starts it again, the agent names the supervisor
//! and freezes the respawn (or alerts, by policy); a crash restart is only
//! audited; the cgroup v1 freezer holds a respawn as the v2 one does.

use std::{
    fs,
    time::{Duration, Instant},
};

use serde_json::Value;
use stopguard_tests::{
    Sandbox, Supervisor, assert_clean, bash, in_frozen_cgroup, in_frozen_v1_cgroup, operator_kill,
    root_test, state_of,
};

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
