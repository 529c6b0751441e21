//! No gap: while the agent is down (killed, stopped, replaced by another
//! version) its pinned probes still stop a guarded respawn at exec and
//! record it, and the next agent alerts it and holds it.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use stopguard_tests::{
    Sandbox, bash, in_frozen_cgroup, operator_kill, root_test, state_of, stopguard_next_bin,
};

/// How the agent goes down.
#[derive(Clone, Copy)]
enum Down {
    /// SIGKILL: a crash, the OOM killer.
    Killed,
    /// SIGTERM: `systemctl stop` or `restart`, a package upgrade.
    Terminated,
}

fn signal(pid: u32, signal: i32) {
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill {pid}");
}

/// Waits up to 10 s for `service`'s status state to be `state`.
fn wait_for_state(sandbox: &Sandbox, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = sandbox.json(&["status"]);
        if status["services"][0]["state"] == state {
            return status;
        }
        assert!(Instant::now() < deadline, "never {state}: {status:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sandbox's daemon processes: named sgdaemon, run from its directory.
fn daemons(sandbox: &Sandbox) -> Vec<u32> {
    let dir = sandbox.dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}"));
            read("comm").is_ok_and(|c| c.trim() == "sgdaemon")
                && read("cmdline").is_ok_and(|c| c.contains(&dir))
        })
        .collect()
}

/// The daemon processes other than `known`, once there is one.
fn wait_for_new_daemon(sandbox: &Sandbox, known: &[u32]) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = daemons(sandbox).into_iter().find(|p| !known.contains(p)) {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "the supervisor never respawned it"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A sandbox whose daemon runsv runs and the operator stopped, the agent
/// (on `agent_extra` lines) having seen it, with runsv held: it restarts
/// the daemon only when SIGCONT comes. Returns the sandbox, the stopped
/// daemon's pid and runsv's.
fn stopped_with_runsv_held(name: &str, agent_extra: &str) -> (Sandbox, u32, u32) {
    let mut sandbox = Sandbox::new(name);
    let first = sandbox.start_runsv();
    let runsv = sandbox.supervisor_pid().unwrap();
    sandbox.start_agent_with("freeze", agent_extra, "");
    signal(runsv, libc::SIGSTOP);
    operator_kill(first);
    wait_for_state(&sandbox, "stopped_by_operator");
    (sandbox, first, runsv)
}

/// The operator stops the daemon; the agent goes down `how`; runsv,
/// held until then, respawns it while no agent runs. The kernel stops the
/// respawn at exec; the next agent alerts it as having happened while it
/// was down, holds it frozen, and thaw lets it run.
fn a_respawn_while_the_agent_is_down_is_stopped_and_alerted(name: &str, how: Down) {
    let Some(_probes) = root_test(name) else {
        return;
    };
    let (mut sandbox, first, runsv) = stopped_with_runsv_held(name, "");
    assert_eq!(
        sandbox.json(&["status"])["pinning"]["state"],
        "pinned",
        "the probes are not pinned: {}",
        sandbox.agent.as_ref().unwrap().log()
    );
    let agent = sandbox.agent.as_mut().unwrap();
    match how {
        Down::Killed => agent.kill9(),
        Down::Terminated => agent.terminate(),
    }
    let down_at = Instant::now();
    signal(runsv, libc::SIGCONT);
    let respawned = wait_for_new_daemon(&sandbox, &[first]);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        state_of(respawned),
        'T',
        "the respawn runs while the agent is down"
    );
    assert!(
        !sandbox.data().contains(&format!("start {respawned}")),
        "the respawn ran an instruction of its own while the agent was down"
    );

    sandbox.start_agent("freeze");
    let alert = sandbox
        .next_alert(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no alert after the restart; audit: {:#?}", sandbox.audit()));
    let waited_ms = down_at.elapsed().as_secs_f64() * 1e3;
    assert_eq!(alert["kind"], "respawn_after_operator_stop", "{alert:#}");
    assert_eq!(alert["process"]["pid"], respawned, "{alert:#}");
    assert_eq!(alert["while_agent_down"], true, "{alert:#}");
    assert!(
        alert["summary"]
            .as_str()
            .unwrap()
            .contains("while the agent was down"),
        "{alert:#}"
    );
    // Honest: from the respawn's exec, which came after the agent went
    // down, to the alert, which came after the next one started.
    let detected = alert["detected_after_ms"].as_f64().unwrap();
    assert!(
        (1000.0..=waited_ms).contains(&detected),
        "detected_after_ms {detected}, the agent was down {waited_ms:.0} ms: {alert:#}"
    );
    assert!(
        in_frozen_cgroup(respawned),
        "the respawn is not held frozen"
    );
    let status = sandbox.json(&["status"]);
    assert_eq!(
        status["frozen"],
        serde_json::json!([respawned]),
        "{status:#}"
    );
    assert_eq!(status["pinning"]["adopted"], true, "{status:#}");

    sandbox.ok(&["thaw", &respawned.to_string()]);
    assert_eq!(sandbox.wait_for_daemon(Some(first)), respawned);
}

#[test]
fn a_respawn_while_the_agent_is_killed_is_stopped_then_alerted() {
    a_respawn_while_the_agent_is_down_is_stopped_and_alerted("gap-kill9", Down::Killed);
}

#[test]
fn a_respawn_while_the_agent_is_stopped_is_stopped_then_alerted() {
    a_respawn_while_the_agent_is_down_is_stopped_and_alerted("gap-sigterm", Down::Terminated);
}

/// More happens while the agent is down than its ring holds: the next
/// agent reports the loss as `events_lost` for the stopped service and
/// holds what started unseen.
#[test]
fn an_overflow_while_the_agent_is_down_is_events_lost() {
    let Some(_probes) = root_test("an_overflow_while_the_agent_is_down_is_events_lost") else {
        return;
    };
    // One page: a few records fill it.
    let (mut sandbox, first, runsv) = stopped_with_runsv_held("gap-overflow", "ring_bytes = 4096");
    sandbox.agent.as_mut().unwrap().kill9();
    // The ring fills while no agent reads it; the respawn's record is lost.
    bash("for i in $(seq 200); do /bin/true; done");
    signal(runsv, libc::SIGCONT);
    let respawned = wait_for_new_daemon(&sandbox, &[first]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state_of(respawned), 'T', "the guard did not stop it");

    sandbox.start_agent_with("freeze", "ring_bytes = 4096", "");
    let alert = sandbox
        .next_alert(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no alert after the restart; audit: {:#?}", sandbox.audit()));
    assert_eq!(alert["kind"], "events_lost", "{alert:#}");
    assert_eq!(alert["service"], "sgdaemon", "{alert:#}");
    assert_eq!(alert["process"]["pid"], respawned, "{alert:#}");
    assert!(
        sandbox
            .audit()
            .iter()
            .any(|e| e["event"] == "events_lost" && e["count"].as_u64() > Some(0)),
        "no events_lost in the audit: {:#?}",
        sandbox.audit()
    );
    let status = sandbox.json(&["status"]);
    assert!(status["lost"].as_u64() > Some(0), "{status:#}");
    assert_eq!(
        status["frozen"],
        serde_json::json!([respawned]),
        "{status:#}"
    );
    assert!(!sandbox.data().contains(&format!("start {respawned}")));
}

/// One version of the agent replaced by the next, whose kernel object
/// differs, while the guarded name is exec'd every 20 ms: the new programs
/// attach before the old ones go, so every exec is stopped, and each is
/// seen by one agent or the other.
#[test]
fn an_upgrade_to_a_new_kernel_object_misses_no_respawn() {
    let Some(_probes) = root_test("an_upgrade_to_a_new_kernel_object_misses_no_respawn") else {
        return;
    };
    let Some(next) = stopguard_next_bin() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but the next agent is not built (cargo xtask build-next)"
        );
        eprintln!("skipped: the next agent is not built (cargo xtask build-next)");
        return;
    };
    let (mut sandbox, _, _) = stopped_with_runsv_held("gap-upgrade", "");
    let before = pinned_generations();

    // Respawns, one every 20 ms for 4 s, through the swap.
    let daemon = sandbox.dir.join("bin/sgdaemon");
    let data = sandbox.dir.join("data");
    let pids = sandbox.dir.join("storm-pids");
    let mut storm = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 200); do {} {} & echo $! >> {}; sleep 0.02; done",
            daemon.display(),
            data.display(),
            pids.display()
        ))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    sandbox.agent.as_mut().unwrap().terminate();
    sandbox.start_agent_binary(Path::new(&next), "freeze");
    storm.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1500));

    let after = pinned_generations();
    assert_eq!(after.len(), 1, "generations pinned after: {after:?}");
    assert!(
        !before.contains(&after[0]),
        "the next agent adopted {after:?} instead of loading its own object"
    );
    let respawns: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(respawns.len(), 200);
    let ran: Vec<&u32> = respawns
        .iter()
        .filter(|p| sandbox.data().contains(&format!("start {p}")))
        .collect();
    assert!(ran.is_empty(), "respawns that ran: {ran:?}");
    // The first is held; the others, retries of a held respawn, are
    // killed before they run.
    let running: Vec<&u32> = respawns
        .iter()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists() && state_of(**p) != 'T')
        .collect();
    assert!(running.is_empty(), "respawns not stopped: {running:?}");
    // Each seen by one agent or the other, once.
    let audit = sandbox.audit();
    let seen = |pid: u32| {
        audit
            .iter()
            .filter(|e| e["finding"] == "respawn" && e["started"]["pid"] == pid)
            .count()
    };
    let missed: Vec<&u32> = respawns.iter().filter(|p| seen(**p) == 0).collect();
    assert!(missed.is_empty(), "respawns no agent saw: {missed:?}");
    let twice: Vec<&u32> = respawns.iter().filter(|p| seen(**p) > 1).collect();
    assert!(twice.is_empty(), "respawns seen twice: {twice:?}");
}

/// The generations pinned now, by name.
fn pinned_generations() -> Vec<String> {
    std::fs::read_dir("/sys/fs/bpf/stopguard")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Probes pinned by an agent whose records have another layout: the next
/// agent never reads their ring as its own; it counts what it holds as lost
/// and loads its own probes.
#[test]
fn probes_of_another_record_layout_are_counted_as_lost_never_read() {
    let Some(_probes) = root_test("probes_of_another_record_layout_are_counted_as_lost_never_read")
    else {
        return;
    };
    let (mut sandbox, first, runsv) = stopped_with_runsv_held("gap-layout", "");
    sandbox.agent.as_mut().unwrap().terminate();
    // What an older agent with layout 0 would have left.
    let [generation] = pinned_generations().try_into().unwrap();
    let (_, id) = generation.split_once('-').unwrap();
    let old = format!("v0-{id}");
    std::fs::rename(
        Path::new("/sys/fs/bpf/stopguard").join(&generation),
        Path::new("/sys/fs/bpf/stopguard").join(&old),
    )
    .unwrap();
    signal(runsv, libc::SIGCONT);
    let respawned = wait_for_new_daemon(&sandbox, &[first]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state_of(respawned), 'T', "the old probes did not stop it");

    sandbox.start_agent("freeze");
    let log = sandbox.agent.as_ref().unwrap().log();
    assert!(
        log.contains("in a layout this agent does not read: counted as lost"),
        "{log}"
    );
    assert_eq!(pinned_generations(), vec![generation], "{log}");
    let alert = sandbox
        .next_alert(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no alert; audit: {:#?}", sandbox.audit()));
    assert_eq!(alert["kind"], "events_lost", "{alert:#}");
    assert_eq!(alert["process"]["pid"], respawned, "{alert:#}");
    assert!(!sandbox.data().contains(&format!("start {respawned}")));
}
