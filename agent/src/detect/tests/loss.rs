//! Kernel records lost while a service is at risk: the table resynchronised,
//! the start nobody saw named.

use super::*;

#[test]
fn lost_records_during_a_window_name_the_service_and_an_unseen_start() {
    let (mut host, monit, postgres) = setup();
    let lost = |count| {
        Event::Lost(crate::events::Lost {
            count,
            total: count,
            by_kind: PerKind::from_fn(|k| if k == RecordKind::Exec { count } else { 0 }),
        })
    };
    // No window, no stop: a loss is logged, nothing is at risk.
    assert!(host.feed(lost(5)).is_empty());

    host.detector
        .open_window("postgres", "upgrade", (0, Some(1000)), host.time_ns, None)
        .unwrap();
    let findings = host.feed(lost(7));
    let [Finding::EventsLost { count: 7, at_risk }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(at_risk.len(), 1);
    assert_eq!(at_risk[0].service, "postgres");
    assert_eq!(at_risk[0].started_unseen, None, "the same postmaster runs");

    // The postmaster dies and monit starts another, all in the gap: the
    // table (reseeded from /proc) shows the new one; the detector, blind
    // meanwhile, never saw it start.
    let detector = std::mem::replace(&mut host.detector, Detector::new(&[]));
    host.exit(postgres, Some(0), None);
    let (new, _) = host.monit_starts_postgres(monit, 500);
    host.detector = detector;
    let findings = host.feed(lost(3));
    let [Finding::EventsLost { at_risk, .. }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(at_risk[0].started_unseen, Some(new.pid));
    assert_eq!(host.detector.running(), [("postgres", new.pid)]);
}

/// A loss of `count` exec records.
fn lost(count: u64) -> Event {
    Event::Lost(crate::events::Lost {
        count,
        total: count,
        by_kind: PerKind::from_fn(|k| if k == RecordKind::Exec { count } else { 0 }),
    })
}

/// Runs `gap` with the detector blind, as while the ring overflowed: the
/// table (reseeded from /proc after the loss) has what happened, the
/// detector saw none of it.
fn unseen<T>(host: &mut Host, gap: impl FnOnce(&mut Host) -> T) -> T {
    let detector = std::mem::replace(&mut host.detector, Detector::new(&[]));
    let result = gap(host);
    host.detector = detector;
    result
}

#[test]
fn lost_records_after_an_operator_stop_name_the_respawn_nobody_saw() {
    let (mut host, monit, postgres) = setup();
    let shell = alice_shell(&mut host);
    host.signal(shell, postgres, 15);
    host.exit(postgres, None, Some(15));
    assert!(
        host.detector.running().is_empty(),
        "no main before the loss"
    );
    let (respawn, _) = unseen(&mut host, |host| host.monit_starts_postgres(monit, 500));
    let findings = host.feed(lost(9));
    let [Finding::EventsLost { count: 9, at_risk }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    let [risk] = &at_risk[..] else {
        panic!("{at_risk:#?}");
    };
    assert_eq!(risk.service, "postgres");
    assert_eq!(risk.window, None);
    assert_eq!(risk.stopped_by.as_ref().unwrap().loginuid, Some(1000));
    assert_eq!(risk.started_unseen, Some(respawn.pid));
    assert_eq!(
        risk.started_unseen_loginuid, None,
        "a supervisor started it"
    );
    assert_eq!(host.detector.running(), [("postgres", respawn.pid)]);
    assert!(
        host.detector.stop_of("postgres").is_some(),
        "still stopped as far as the operator is concerned"
    );

    // Another loss: the same process runs, nothing new started unseen.
    let findings = host.feed(lost(2));
    let [Finding::EventsLost { at_risk, .. }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(at_risk[0].started_unseen, None);
}

#[test]
fn the_exec_record_of_a_start_reported_at_a_loss_is_not_a_second_start() {
    let (mut host, monit, postgres) = setup();
    let shell = alice_shell(&mut host);
    host.signal(shell, postgres, 15);
    host.exit(postgres, None, Some(15));
    let (respawn, _) = unseen(&mut host, |host| host.monit_starts_postgres(monit, 500));
    host.feed(lost(4));
    // Written to the ring before the overflow, read after the loss check.
    let findings = host.exec(
        respawn,
        "/usr/lib/postgresql/15/bin/postgres",
        &["postgres", "-D", "/srv/pg"],
    );
    assert!(findings.is_empty(), "{findings:#?}");
    assert_eq!(host.detector.running(), [("postgres", respawn.pid)]);
}

#[test]
fn a_start_nobody_saw_names_the_login_of_the_person_who_ran_it() {
    let (mut host, _monit, postgres) = setup();
    let shell = alice_shell(&mut host);
    host.signal(shell, postgres, 15);
    host.exit(postgres, None, Some(15));
    let (mine, _) = unseen(&mut host, |host| {
        host.spawn(
            shell,
            450,
            "/usr/lib/postgresql/15/bin/postgres",
            &["postgres"],
        )
    });
    let findings = host.feed(lost(3));
    let [Finding::EventsLost { at_risk, .. }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(at_risk[0].started_unseen, Some(mine.pid));
    assert_eq!(at_risk[0].started_unseen_loginuid, Some(1000));
}
