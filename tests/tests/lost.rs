//! Lost kernel records hiding a respawn: the agent, blind while its ring
//! overflowed, finds the respawn in /proc afterwards and holds it as it
//! holds any respawn it sees.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use stopguard_tests::{
    Receiver, Sandbox, Stopped, assert_clean, bash, in_frozen_cgroup, operator_kill, root_test,
    sinks, state_of, stopguard_bin,
};

/// The one child of this test process that `is_it` picks, by its comm and
/// its executable.
fn child(what: &str, is_it: impl Fn(&str, &Path) -> bool) -> u32 {
    let out = bash(&format!("pgrep -P {} || true", std::process::id()));
    let pids: Vec<u32> = out
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .filter(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            is_it(comm.trim(), &exe)
        })
        .collect();
    let [pid] = pids[..] else {
        panic!("expected one {what} child, found {pids:?}");
    };
    pid
}

/// Whether `pid` is the daemon (not the shell that looked for it) and is
/// stopped; false once it is gone.
fn stopped_daemon(pid: u32) -> bool {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    comm.trim() == "sgdaemon" && state_of(pid) == 'T'
}

/// Polls `check` every 50 ms for up to 10 s.
fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_respawn_hidden_by_lost_records_is_found_frozen_and_thawed() {
    let Some(_probes) = root_test("a_respawn_hidden_by_lost_records_is_found_frozen_and_thawed")
    else {
        return;
    };
    let mut sandbox = Sandbox::new("lost-respawn");
    let first = sandbox.start_runsv();
    let receiver = Receiver::start();
    fs::write(sandbox.dir.join("pd.key"), "R0UTING").unwrap();
    let pagerduty = format!("secret_file = \"{}/pd.key\"", sandbox.dir.display());
    sandbox.start_agent_with(
        "freeze",
        "ring_bytes = 4096",
        &sinks(&receiver, &[("pagerduty", "/pd", &pagerduty)]),
    );
    let bin = fs::canonicalize(stopguard_bin()).unwrap();
    let agent = child("agent", |_, exe| exe == bin);
    // runsv held back: its respawn must come once the ring is full.
    let runsv = Stopped::new(child("runsv", |comm, _| comm == "runsv"));
    operator_kill(first);
    // Seen and acted on (the guard armed): status is answered between
    // batches, after the stop and the exit.
    wait_until("the agent to see the operator stop", || {
        let status = sandbox.json(&["status"]);
        (status["services"][0]["state"] == "stopped_by_operator").then_some(())
    });

    // The agent blind: a burst fills its 4 KiB ring many times over, so
    // every record after it, runsv's respawn among them, is lost.
    let blind = Stopped::new(agent);
    bash("perl -e 'kill q(CONT), $$ for 1..200000'");
    drop(runsv);
    let respawn = wait_until("runsv's respawn, stopped at exec by the guard", || {
        sandbox
            .daemon_pids()
            .into_iter()
            .find(|&pid| pid != first && stopped_daemon(pid))
    });
    drop(blind);

    let mut skipped: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let alert = loop {
        match sandbox.next_alert(Duration::from_millis(200)) {
            Some(alert) if alert["kind"] == "events_lost" && !alert["process"].is_null() => {
                break alert;
            }
            Some(alert) => skipped.push(alert),
            None => assert!(
                Instant::now() < deadline,
                "no events_lost alert naming a process; alerts: {skipped:#?}"
            ),
        }
    };
    assert!(
        skipped.iter().all(|a| a["kind"] == "events_lost"),
        "{skipped:#?}"
    );
    assert_eq!(alert["severity"], "critical", "{alert:#}");
    assert_eq!(alert["service"], "sgdaemon", "{alert:#}");
    assert_eq!(alert["process"]["pid"], respawn, "{alert:#}");
    let cmdline = alert["process"]["cmdline"].to_string();
    assert!(cmdline.contains("bin/sgdaemon"), "{alert:#}");
    assert_eq!(alert["stopped_by"]["loginuid"], 1000, "{alert:#}");
    let action = alert["action"].as_str().unwrap();
    assert!(
        action.starts_with("frozen") && action.ends_with(&format!("stopguard thaw {respawn}")),
        "{alert:#}"
    );
    let summary = alert["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!(
            "started again as pid {respawn} and nobody saw it start; frozen"
        )),
        "{summary}"
    );
    let audit = sandbox.audit();
    assert!(
        audit
            .iter()
            .any(|a| a["finding"] == "events_lost" && a["at_risk"][0]["started_unseen"] == respawn),
        "{audit:#?}"
    );

    // Held like any frozen respawn: stopped, in its frozen cgroup, listed.
    assert_eq!(state_of(respawn), 'T', "pid {respawn} is not stopped");
    assert!(
        in_frozen_cgroup(respawn),
        "pid {respawn} is not in a frozen cgroup"
    );
    let status = sandbox.json(&["status"]);
    assert_eq!(status["frozen"], serde_json::json!([respawn]), "{status:#}");
    assert_eq!(status["services"][0]["pid"], respawn, "{status:#}");
    assert_eq!(
        status["services"][0]["frozen"],
        serde_json::json!([respawn]),
        "{status:#}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(state_of(respawn), 'T', "let go at the end of the batch");
    assert!(
        !sandbox.data().contains(&format!("start {respawn}")),
        "{}",
        sandbox.data()
    );

    // Thawed, it runs: its start line is its first act.
    assert_eq!(
        sandbox.ok(&["thaw", "sgdaemon"]).trim(),
        format!("thawed [{respawn}]")
    );
    assert_eq!(sandbox.wait_for_daemon(Some(first)), respawn);
    // The alert ends with the hold: a paging service closes it.
    let resolved = wait_until("the events_lost alert resolved at the receiver", || {
        receiver
            .received()
            .into_iter()
            .map(|r| r.json())
            .find(|pd| pd["event_action"] == "resolve")
    });
    assert_eq!(
        resolved["dedup_key"].as_str(),
        Some("test-host/sgdaemon/none"),
        "{resolved:#}"
    );
    let dir = sandbox.dir.clone();
    drop(sandbox);
    assert_clean(&dir, &[respawn]);
}
