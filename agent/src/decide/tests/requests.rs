//! Each control request that decides something, as a sequence on a real
//! detector: the request in, the detector's new state, the effects out.

use crate::{
    config::Config,
    control::{CloseWindow, OpenWindow, Peer, ServiceState, Stop},
    decide::{Effect, requests::*},
    detect::{Detector, SwitchedOff},
    events::ProcessKey,
    process::{Process, ProcessTable},
    supervisors::watch::Watcher,
};

/// `db` (freezes a respawn in a window, so a window arms the guard) and
/// `cache` (only alerts; stops with `cache-stop {instance}`).
fn detector() -> Detector {
    let config = Config::parse(
        r#"
[[service]]
name = "db"
exe = ["/usr/bin/db"]

[[service]]
name = "cache"
exe = ["/usr/bin/cache"]
on_respawn = "alert"
stop_command = ["cache-stop", "{instance}"]
"#,
        "test",
    )
    .unwrap();
    Detector::new(&config.services)
}

/// A person (login uid 1000) at the control socket, as root.
const PERSON: Peer = Peer {
    pid: 77,
    uid: 0,
    gid: 0,
    loginuid: Some(1000),
};

fn open(service: &str) -> OpenWindow {
    OpenWindow {
        service: service.into(),
        reason: "upgrade".into(),
        for_secs: Some(3600),
    }
}

fn guard(service: &str, on: bool) -> Effect {
    Effect::Guard {
        service: service.into(),
        on,
    }
}

fn close(target: &str, thaw: bool, kill: bool) -> CloseWindow {
    CloseWindow {
        target: target.into(),
        thaw,
        kill,
    }
}

/// `stopguard stop SERVICE --reason REASON`.
fn stop_of(service: &str, reason: &str) -> Stop {
    Stop {
        service: service.into(),
        reason: reason.into(),
        for_secs: None,
        wait_secs: 60,
        and_pause: false,
    }
}

/// `db`'s main process, pid 42, running.
fn running_db(detector: &mut Detector) {
    let mut table = ProcessTable::default();
    table.seed([Process {
        key: ProcessKey {
            pid: 42,
            start_ticks: 5,
        },
        pid: 42,
        parent: None,
        uid: 0,
        loginuid: None,
        comm: "db".into(),
        exe: Some("/usr/bin/db".into()),
        cmdline: vec!["db".to_string()].into(),
        unit: None,
        exited: None,
    }]);
    detector.adopt(&table);
}

#[test]
fn a_window_arms_the_guard_only_where_a_respawn_in_it_is_frozen() {
    let mut detector = detector();
    let (window, effects) = open_window(&mut detector, &open("db"), PERSON, 10).unwrap();
    assert_eq!((window.id.as_str(), window.service.as_str()), ("w1", "db"));
    assert_eq!(window.opened_by_loginuid, Some(1000));
    assert_eq!(window.expires_at_ns, Some(10 + 3600 * 1_000_000_000));
    assert_eq!(effects, [guard("db", true)]);
    let (_, effects) = open_window(&mut detector, &open("cache"), PERSON, 10).unwrap();
    assert!(effects.is_empty(), "{effects:?}");
    assert_eq!(detector.windows().len(), 2);
}

#[test]
fn a_second_window_or_an_unknown_service_is_refused_and_changes_nothing() {
    let mut detector = detector();
    open_window(&mut detector, &open("db"), PERSON, 10).unwrap();
    let again = open_window(&mut detector, &open("db"), PERSON, 11).unwrap_err();
    assert!(again.contains("already has window w1 open"), "{again}");
    let unknown = open_window(&mut detector, &open("dbx"), PERSON, 11).unwrap_err();
    assert!(unknown.contains("no service `dbx` is watched"), "{unknown}");
    assert_eq!(detector.windows().len(), 1);
}

#[test]
fn closing_a_window_disarms_the_guard_and_resolves_its_alerts() {
    let mut detector = detector();
    open_window(&mut detector, &open("db"), PERSON, 10).unwrap();
    let closed = close_window(&mut detector, &close("w1", false, false)).unwrap();
    assert_eq!(closed.covered, ["db"]);
    assert_eq!(
        closed.effects,
        [
            guard("db", false),
            Effect::ResolveService {
                service: "db".into()
            }
        ]
    );
    assert!(!closed.resume);
    assert!(detector.windows().is_empty());
    let none = close_window(&mut detector, &close("db", false, false)).unwrap_err();
    assert_eq!(none, "no open window on or named `db`");
}

#[test]
fn closing_with_thaw_or_kill_lets_go_of_what_is_held() {
    for (thaw, kill) in [(true, false), (false, true)] {
        let mut detector = detector();
        open_window(&mut detector, &open("db"), PERSON, 10).unwrap();
        let closed = close_window(&mut detector, &close("db", thaw, kill)).unwrap();
        assert_eq!(
            closed.effects.last(),
            Some(&Effect::LetGo {
                target: "db".into(),
                kill
            })
        );
    }
}

#[test]
fn closing_a_window_whose_stop_paused_supervisors_switches_them_back_on() {
    let mut detector = detector();
    let (window, _) = open_window(&mut detector, &open("db"), PERSON, 10).unwrap();
    let switch = SwitchedOff {
        supervisor: "monit".into(),
        off: vec!["monit".into(), "unmonitor".into(), "db".into()],
        on: vec!["monit".into(), "monitor".into(), "db".into()],
        run_as: None,
    };
    assert!(detector.switched_off(&window.id, switch));
    let closed = close_window(&mut detector, &close("db", false, false)).unwrap();
    assert!(closed.resume);
    assert_eq!(closed.window.switched_off.len(), 1);
}

#[test]
fn thawing_lets_go_and_ends_the_operators_stop() {
    let mut detector = detector();
    open_window(&mut detector, &open("db"), PERSON, 10).unwrap();
    let nothing = thaw(&mut detector, "db", &[]).unwrap_err();
    assert_eq!(nothing, "nothing frozen for `db`");
    let effects = thaw(&mut detector, "4121", &["db".to_string()]).unwrap();
    assert_eq!(
        effects,
        [
            Effect::LetGo {
                target: "4121".into(),
                kill: false
            },
            guard("db", false)
        ]
    );
    assert!(detector.stop_of("db").is_none());
}

#[test]
fn stopping_opens_a_window_unless_one_is_open_and_saves_before_the_stop() {
    let mut detector = detector();
    let asked = stop_of("db", "minor upgrade");
    let plan = stop(&mut detector, &asked, PERSON, &[], 10).unwrap();
    assert_eq!(plan.window.reason, "minor upgrade");
    assert_eq!(plan.effects, [guard("db", true), Effect::Save]);
    assert_eq!(
        (plan.main, plan.command, plan.held_frozen),
        (None, None, false)
    );
    // The window is open now: the next stop uses it.
    let plan = stop(&mut detector, &asked, PERSON, &[], 20).unwrap();
    assert_eq!(plan.window.id, "w1");
    assert_eq!(plan.effects, [Effect::Save]);
}

#[test]
fn stopping_a_respawn_held_frozen_signals_nothing() {
    let mut detector = detector();
    running_db(&mut detector);
    let asked = stop_of("db", "x");
    let plan = stop(&mut detector, &asked, PERSON, &[42], 10).unwrap();
    assert_eq!((plan.main, plan.held_frozen), (Some(42), true));
    let plan = stop(&mut detector, &asked, PERSON, &[7], 11).unwrap();
    assert_eq!((plan.main, plan.held_frozen), (Some(42), false));
}

#[test]
fn a_stop_command_naming_a_unit_is_refused_for_a_service_in_none() {
    let mut detector = detector();
    let asked = stop_of("cache", "x");
    let err = stop(&mut detector, &asked, PERSON, &[], 10).unwrap_err();
    assert!(err.contains("runs in no systemd unit"), "{err}");
    assert!(
        detector.windows().is_empty(),
        "a refused stop opens no window"
    );
}

#[test]
fn status_and_explain_say_a_services_state_and_whether_it_would_come_back() {
    let stopped = crate::detect::OperatorStop::example("db");
    assert_eq!(state(Some(42), Some(&stopped)), ServiceState::Running);
    assert_eq!(state(None, Some(&stopped)), ServiceState::StoppedByOperator);
    assert_eq!(state(None, None), ServiceState::NotRunning);
    let watcher = |would_restart| Watcher {
        supervisor: "monit".into(),
        pid: Some(9),
        name: "db".into(),
        would_restart,
        state: String::new(),
        how: String::new(),
        off: None,
        on: None,
        off_stops: false,
        uid: Some(0),
        trusted: true,
    };
    assert!(!would_restart(&[]));
    assert!(!would_restart(&[watcher(false)]));
    assert!(would_restart(&[watcher(false), watcher(true)]));
}

#[test]
fn a_window_covers_a_service_and_nothing_else_here() {
    let detector = detector();
    assert_eq!(covering(&detector, "db"), ["db"]);
    assert_eq!(covering(&detector, "4121"), ["4121"]);
}

#[test]
fn a_window_whose_time_is_up_closes_and_disarms_the_guard() {
    let mut detector = detector();
    open_window(&mut detector, &open("db"), PERSON, 10).unwrap();
    let endless = OpenWindow {
        for_secs: None,
        ..open("cache")
    };
    open_window(&mut detector, &endless, PERSON, 10).unwrap();
    assert!(expire_windows(&mut detector, 11).is_empty());
    let expired = expire_windows(&mut detector, 10 + 3600 * 1_000_000_000);
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].window.service, "db");
    assert_eq!(expired[0].effects, [guard("db", false)]);
    assert!(!expired[0].resume);
    assert_eq!(detector.windows().len(), 1, "the window with no end stays");
}
