//! Records the pinned probes wrote while no agent ran, read by the next
//! agent: what started meanwhile is not taken for a main process found
//! running, and a main process that ended meanwhile is known again, so
//! that the operator stop and the respawn in the records are read as such.

use std::collections::HashSet;

use super::*;

/// Runs `gap` with no agent: the table (what /proc and the records say)
/// has what happened; the events are returned for the next agent to read.
fn while_no_agent_runs(host: &mut Host, gap: impl FnOnce(&mut Host)) -> Vec<Event> {
    host.recording = Some(Vec::new());
    gap(host);
    host.recording.take().unwrap()
}

/// What the next agent does before it serves: a detector of its own,
/// adopting from the table around what the records show, the saved state
/// restored, then the records read in order. Returns their findings.
fn next_agent_reads(host: &mut Host, saved: Saved, records: &[Event]) -> Vec<Finding> {
    let started: HashSet<ProcessKey> = records
        .iter()
        .filter_map(|e| match e {
            Event::Fork(fork) => Some(fork.child),
            Event::Exec(exec) => Some(exec.process.key),
            _ => None,
        })
        .collect();
    let ended: HashSet<ProcessKey> = records
        .iter()
        .filter_map(|e| match e {
            Event::Exit(exit) => Some(exit.key),
            _ => None,
        })
        .collect();
    let first = records.iter().filter_map(Event::time_ns).min();
    host.detector = Detector::new(&host.detector.specs.clone());
    host.detector
        .adopt_after_gap(&host.table, &started, &ended, first);
    host.detector.restore(saved);
    records
        .iter()
        .flat_map(|event| host.detector.observe(event, &host.table))
        .collect()
}

#[test]
fn a_stop_and_a_respawn_while_no_agent_ran_are_read_from_the_records() {
    let (mut host, monit, postgres) = setup();
    let alice = alice_shell(&mut host);
    let saved = host.detector.snapshot();
    let mut respawn = None;
    let records = while_no_agent_runs(&mut host, |host| {
        let target = postgres.pid.to_string();
        let (kill, _) = host.spawn(alice, 400, "/bin/kill", &["kill", "-TERM", &target]);
        host.signal(kill, postgres, libc::SIGTERM as u32);
        host.exit(kill, Some(0), None);
        host.exit(postgres, None, Some(libc::SIGTERM as u8));
        respawn = Some(host.monit_starts_postgres(monit, 500).0);
    });
    let respawn = respawn.unwrap();

    let findings = next_agent_reads(&mut host, saved, &records);
    let stop = findings
        .iter()
        .find_map(|f| match f {
            Finding::OperatorStop(stop) => Some(stop),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the stop was not read: {findings:#?}"));
    assert_eq!(stop.service, "postgres");
    assert_eq!(stop.loginuid, Some(1000));
    assert!(
        findings.iter().any(|f| matches!(
            f,
            Finding::Exited {
                pid,
                operator_stop: true,
                ..
            } if *pid == postgres.pid
        )),
        "{findings:#?}"
    );
    let Some(Finding::Respawn {
        started,
        stopped_by,
        ..
    }) = findings
        .iter()
        .find(|f| matches!(f, Finding::Respawn { .. }))
    else {
        panic!("the respawn was not read as one: {findings:#?}");
    };
    assert_eq!(started.pid, respawn.pid);
    assert_eq!(started.supervisor.as_ref().unwrap().comm, "monit");
    assert_eq!(stopped_by.loginuid, Some(1000));
    assert_eq!(host.detector.running(), [("postgres", respawn.pid)]);
}

#[test]
fn without_records_of_it_a_process_running_is_adopted_as_before() {
    let (mut host, _monit, postgres) = setup();
    let saved = host.detector.snapshot();
    let findings = next_agent_reads(&mut host, saved, &[]);
    assert!(findings.is_empty(), "{findings:#?}");
    assert_eq!(host.detector.running(), [("postgres", postgres.pid)]);
}
