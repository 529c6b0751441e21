//! Findings and requests in, effects and alerts out: every path of
//! `respond`, `respond_lost` and the control requests, without root.

mod requests;

use super::*;
use crate::{
    alert::AlertKind,
    config::{Config, InWindow, UnexpectedRespawn},
    process::Link,
};

/// A service `db` with the given policies, in units `db*.service`.
pub(super) fn service(on_respawn: InWindow, on_unexpected_respawn: UnexpectedRespawn) -> Service {
    let mut service = Config::parse(
        "[[service]]\nname = \"db\"\nexe = [\"/usr/bin/db\"]\nunit = \"db*.service\"\n",
        "test",
    )
    .unwrap()
    .services
    .remove(0);
    service.on_respawn = on_respawn;
    service.on_unexpected_respawn = on_unexpected_respawn;
    service
}

/// `db` started as pid 42 at boot ns 2, by nothing known.
pub(super) fn started() -> Started {
    Started {
        service: "db".into(),
        pid: 42,
        exe: "/usr/bin/db".into(),
        args: vec!["db".into()],
        chain: Vec::new(),
        supervisor: None,
        unit: None,
        requested: None,
        time_ns: 2,
    }
}

pub(super) fn stop() -> OperatorStop {
    OperatorStop::example("db")
}

pub(super) fn window() -> Window {
    Window {
        id: "w1".into(),
        service: "db".into(),
        reason: "test".into(),
        opened_by_uid: 0,
        opened_by_loginuid: Some(1000),
        opened_at_ns: 0,
        expires_at_ns: None,
        switched_off: Vec::new(),
        cluster: None,
    }
}

fn respawn_of(started: Started, in_window: bool) -> Finding {
    Finding::Respawn {
        started: Box::new(started),
        stopped_by: Box::new(stop()),
        window: in_window.then(window),
    }
}

fn respawn(in_window: bool) -> Finding {
    respawn_of(started(), in_window)
}

const FREEZING: (InWindow, UnexpectedRespawn) = (InWindow::Freeze, UnexpectedRespawn::Freeze);

fn facts(service: &Service, window_open: bool) -> Facts<'_> {
    Facts {
        service: Some(service),
        window_open,
        ..Facts::default()
    }
}

fn freeze(unit: Option<&str>) -> Effect {
    Effect::Freeze {
        service: "db".into(),
        pid: 42,
        unit: unit.map(str::to_string),
    }
}

/// The alert a response plans, built with `done` as what its effects did.
fn built(response: Response, done: Option<&str>) -> Alert {
    let clock = Clock::now();
    response
        .alert
        .expect("an alert is planned")
        .build("host", &clock, 5_000_000_000, done)
}

#[test]
fn a_respawn_in_a_window_is_frozen_saved_then_alerted_with_what_the_freeze_did() {
    let service = service(FREEZING.0, FREEZING.1);
    let finding = respawn(true);
    let response = respond(&finding, &facts(&service, true));
    assert_eq!(response.effects, [freeze(None), Effect::Save]);
    let alert = built(response, Some("frozen (SIGSTOP at exec, cgroup frozen)"));
    assert_eq!(alert.kind, AlertKind::RespawnInWindow);
    assert_eq!(alert.action, "frozen (SIGSTOP at exec, cgroup frozen)");
    assert!(
        alert.summary.contains("window w1 'test'"),
        "{}",
        alert.summary
    );
}

#[test]
fn a_failed_freeze_is_what_the_alert_says() {
    let service = service(FREEZING.0, FREEZING.1);
    let finding = respawn(false);
    let response = respond(&finding, &facts(&service, false));
    assert_eq!(response.effects, [freeze(None), Effect::Save]);
    let alert = built(response, Some("freeze failed: no such process"));
    assert_eq!(alert.kind, AlertKind::RespawnAfterOperatorStop);
    assert_eq!(alert.action, "freeze failed: no such process");
}

#[test]
fn a_respawn_the_policy_kills_is_killed_and_alerted() {
    let service = service(InWindow::Kill, UnexpectedRespawn::Freeze);
    let finding = respawn(true);
    let response = respond(&finding, &facts(&service, true));
    assert_eq!(response.effects, [Effect::Kill { pid: 42 }]);
    assert_eq!(built(response, Some("killed")).action, "killed");
}

#[test]
fn a_respawn_the_policy_only_alerts_on_runs_on_and_says_alerted() {
    let service = service(InWindow::Alert, UnexpectedRespawn::Alert);
    for in_window in [true, false] {
        let finding = respawn(in_window);
        let response = respond(&finding, &facts(&service, in_window));
        assert!(response.effects.is_empty(), "{:?}", response.effects);
        assert_eq!(built(response, None).action, "alerted");
    }
}

#[test]
fn an_ignored_respawn_outside_a_window_does_nothing_and_alerts_nobody() {
    let service = service(InWindow::Freeze, UnexpectedRespawn::Ignore);
    let finding = respawn(false);
    assert_eq!(
        respond(&finding, &facts(&service, false)),
        Response::default()
    );
}

#[test]
fn a_retry_while_the_first_respawn_is_held_is_ended_without_a_new_alert() {
    let freezing = service(FREEZING.0, FREEZING.1);
    let mut retry = started();
    retry.pid = 43;
    retry.supervisor = Some(Link {
        pid: 9,
        comm: "monit".into(),
    });
    let finding = respawn_of(retry, true);
    let retrying = Facts {
        train: Some(42),
        ..facts(&freezing, true)
    };
    let response = respond(&finding, &retrying);
    assert_eq!(
        response.effects,
        [Effect::EndRetry {
            service: "db".into(),
            pid: 43,
            supervisor: "monit".into()
        }]
    );
    assert_eq!(response.alert, None);
    // A train applies to freezing only: a policy that kills kills each.
    let killing = service(InWindow::Kill, UnexpectedRespawn::Alert);
    let response = respond(
        &finding,
        &Facts {
            train: Some(42),
            ..facts(&killing, true)
        },
    );
    assert_eq!(response.effects, [Effect::Kill { pid: 43 }]);
}

#[test]
fn a_respawn_systemd_started_as_the_services_unit_is_frozen_in_that_unit() {
    let service = service(FREEZING.0, FREEZING.1);
    let systemd = Link {
        pid: 1,
        comm: "systemd".into(),
    };
    let mut by_systemd = started();
    by_systemd.unit = Some("db-main.service".into());
    by_systemd.supervisor = Some(systemd.clone());
    by_systemd.chain = vec![systemd.clone()];
    let finding = respawn_of(by_systemd.clone(), true);
    let response = respond(&finding, &facts(&service, true));
    assert_eq!(response.effects[0], freeze(Some("db-main.service")));
    // A unit that is not the service's, where PID 1 did not start it
    // itself (a script's job ran it): its own cgroup, the job left alone.
    let mut in_a_job = by_systemd;
    in_a_job.unit = Some("cron.service".into());
    in_a_job.chain = vec![
        Link {
            pid: 300,
            comm: "sh".into(),
        },
        systemd,
    ];
    let finding = respawn_of(in_a_job, true);
    let response = respond(&finding, &facts(&service, true));
    assert_eq!(response.effects[0], freeze(None));
    // runsv started it inside some unit: the unit is runsv's.
    let mut by_runsv = started();
    by_runsv.unit = Some("db-main.service".into());
    by_runsv.supervisor = Some(Link {
        pid: 8,
        comm: "runsv".into(),
    });
    let finding = respawn_of(by_runsv, true);
    let response = respond(&finding, &facts(&service, true));
    assert_eq!(response.effects[0], freeze(None));
}

#[test]
fn the_alert_carries_the_units_restart_policy_and_the_notes_the_facts_call_for() {
    let service = service(FREEZING.0, FREEZING.1);
    let mut by_systemd = started();
    by_systemd.unit = Some("db-main.service".into());
    by_systemd.supervisor = Some(Link {
        pid: 1,
        comm: "systemd".into(),
    });
    let finding = respawn_of(by_systemd, true);
    let noted = Facts {
        restart: Some("always".into()),
        down_until_ns: Some(3),
        paused: Some(("patroni".into(), "paused (maintenance mode)".into())),
        ..facts(&service, true)
    };
    let alert = built(respond(&finding, &noted), Some("frozen"));
    assert!(alert.while_agent_down);
    assert!(
        alert.summary.contains("Restart=always"),
        "{}",
        alert.summary
    );
    assert!(
        alert.summary.contains("while the agent was down"),
        "{}",
        alert.summary
    );
    assert!(
        alert
            .summary
            .contains("patroni was paused (maintenance mode) and started it all the same"),
        "{}",
        alert.summary
    );
    let by = alert.respawned_by.unwrap();
    assert_eq!(by.paused.as_deref(), Some("paused (maintenance mode)"));
    // Seen live (after the records of the agent's absence): no note.
    let live = Facts {
        down_until_ns: Some(1),
        ..facts(&service, true)
    };
    let alert = built(respond(&finding, &live), Some("frozen"));
    assert!(!alert.while_agent_down);
    assert!(!alert.summary.contains("agent was down"));
}

#[test]
fn an_operator_stop_arms_the_guard_where_an_unexpected_respawn_freezes() {
    let finding = Finding::OperatorStop(stop());
    let freezing = service(InWindow::Alert, UnexpectedRespawn::Freeze);
    let response = respond(&finding, &facts(&freezing, false));
    assert_eq!(
        response.effects,
        [Effect::Guard {
            service: "db".into(),
            on: true
        }]
    );
    assert_eq!(response.alert, None);
    let alerting = service(InWindow::Freeze, UnexpectedRespawn::Alert);
    assert_eq!(
        respond(&finding, &facts(&alerting, false)),
        Response::default()
    );
}

#[test]
fn the_operators_own_start_disarms_the_guard_unless_a_window_is_open() {
    let service = service(FREEZING.0, FREEZING.1);
    let mut theirs = started();
    theirs.unit = Some("db-main.service".into());
    let finding = Finding::OperatorStart {
        started: theirs,
        loginuid: 1000,
    };
    let ask = Effect::AskRestartPolicy {
        unit: "db-main.service".into(),
    };
    let response = respond(&finding, &facts(&service, false));
    assert_eq!(
        response.effects,
        [
            ask.clone(),
            Effect::Guard {
                service: "db".into(),
                on: false
            }
        ]
    );
    let response = respond(&finding, &facts(&service, true));
    assert_eq!(response.effects, [ask]);
}

#[test]
fn starts_and_crash_restarts_in_a_unit_only_ask_its_restart_policy() {
    let service = service(FREEZING.0, FREEZING.1);
    let mut in_unit = started();
    in_unit.unit = Some("db-main.service".into());
    for finding in [
        Finding::Start {
            started: in_unit.clone(),
        },
        Finding::CrashRestart {
            started: in_unit.clone(),
        },
    ] {
        let response = respond(&finding, &facts(&service, false));
        assert_eq!(
            response.effects,
            [Effect::AskRestartPolicy {
                unit: "db-main.service".into()
            }]
        );
        assert_eq!(response.alert, None);
    }
    let bare = Finding::Start { started: started() };
    assert_eq!(respond(&bare, &facts(&service, false)), Response::default());
}

#[test]
fn an_exit_of_a_held_process_lets_custody_go_of_it() {
    let exited = Finding::Exited {
        service: "db".into(),
        pid: 42,
        exit_code: None,
        signal: Some(9),
        operator_stop: false,
    };
    let held = Facts {
        held: true,
        ..Facts::default()
    };
    assert_eq!(
        respond(&exited, &held).effects,
        [Effect::ForgetEnded { pid: 42 }]
    );
    assert_eq!(respond(&exited, &Facts::default()), Response::default());
}

#[test]
fn a_finding_about_a_service_no_longer_configured_does_nothing() {
    let finding = respawn(true);
    assert_eq!(respond(&finding, &Facts::default()), Response::default());
}

/// `db` at risk at a loss of 7 records, pid 42 found started unseen.
fn at_risk(in_window: bool, stopped: bool, unseen: bool) -> AtRisk {
    AtRisk {
        service: "db".into(),
        window: in_window.then(window),
        stopped_by: stopped.then(stop),
        started_unseen: unseen.then_some(42),
        started_unseen_loginuid: None,
    }
}

fn unseen() -> Option<ProcessInfo> {
    Some(ProcessInfo {
        pid: 42,
        exe: "/usr/bin/db".into(),
        cmdline: vec!["db".into()],
    })
}

#[test]
fn a_start_nobody_saw_in_a_freezing_window_is_held_and_alerted() {
    let service = service(FREEZING.0, FREEZING.1);
    let risk = at_risk(true, true, true);
    let facts = LostFacts {
        service: Some(&service),
        guarded: true,
        unseen: unseen(),
        held: Vec::new(),
    };
    let response = respond_lost(7, &risk, facts);
    assert_eq!(response.effects, [freeze(None), Effect::Save]);
    let alert = built(response, Some("frozen (SIGSTOP at exec)"));
    assert_eq!(alert.kind, AlertKind::EventsLost);
    assert_eq!(alert.action, "frozen (SIGSTOP at exec)");
    assert!(
        alert.summary.contains("7 kernel records lost"),
        "{}",
        alert.summary
    );
    assert!(alert.resolves_later());
}

#[test]
fn a_start_nobody_saw_where_the_policy_alerts_is_let_go_if_the_guard_stopped_it() {
    let service = service(InWindow::Alert, UnexpectedRespawn::Alert);
    let risk = at_risk(true, true, true);
    let facts = |guarded| LostFacts {
        service: Some(&service),
        guarded,
        unseen: unseen(),
        held: Vec::new(),
    };
    let response = respond_lost(7, &risk, facts(true));
    assert_eq!(response.effects, [Effect::Resume { pid: 42 }]);
    let alert = built(response, None);
    assert_eq!(alert.action, "none");
    assert!(alert.summary.contains("check it"), "{}", alert.summary);
    assert!(respond_lost(7, &risk, facts(false)).effects.is_empty());
}

#[test]
fn a_loss_with_nothing_started_unseen_only_alerts() {
    let service = service(FREEZING.0, FREEZING.1);
    let risk = at_risk(true, false, false);
    // With nothing held its state is unknown; with its respawn held, so
    // the alert says.
    for (held, says) in [
        (vec![], "state unknown"),
        (vec![4121], "its respawn (pid 4121) is held frozen"),
    ] {
        let facts = LostFacts {
            service: Some(&service),
            guarded: true,
            unseen: None,
            held,
        };
        let response = respond_lost(7, &risk, facts);
        assert!(response.effects.is_empty());
        let alert = built(response, None);
        assert!(alert.summary.contains(says), "{}", alert.summary);
        assert!(!alert.resolves_later());
    }
}
