//! How alerts get delivered when receivers misbehave: a dead receiver gets
//! every spooled alert once it is up (even across a kill -9 of the agent),
//! a 429's Retry-After is honoured, repeated respawns become one
//! follow-up, and an alert too old to deliver is marked undeliverable.

use std::time::{Duration, Instant};

use stopguard_tests::{Receiver, Sandbox, respawns, root_test, sinks};

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
