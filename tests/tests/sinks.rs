//! What each sink receives: the webhook, Slack, Teams and PagerDuty shapes
//! and signatures (and no secret anywhere else), Alertmanager's view of a
//! frozen respawn, and `stopguard alert test`.

use std::{
    fs,
    time::{Duration, Instant},
};

use serde_json::Value;
use stopguard_tests::{
    Alertmanager, Receiver, Sandbox, free_port, operator_kill, respawns, root_test, sinks,
    webhook_signature_valid,
};

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
    let metrics_port = free_port();
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
