//! State that survives the agent: a kill -9 mid-window loses neither the
//! window nor the process it froze. (Alerts spooled across a kill -9 are
//! in delivery.rs.)

use std::time::Duration;

use stopguard_tests::{Sandbox, in_frozen_cgroup, operator_kill, root_test};

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
