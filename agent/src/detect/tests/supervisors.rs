//! A host with an ordinary supervisor (monit) as in the incident: operator
//! stops, respawns, the operator's own starts, crashes, adoption.

use super::*;

#[test]
fn the_incident_pg_ctl_stop_then_monit_respawn() {
    let (mut host, _monit, postgres) = setup();
    let shell = alice_shell(&mut host);
    let (pg_ctl, _) = host.spawn(
        shell,
        400,
        "/usr/lib/postgresql/15/bin/pg_ctl",
        &["pg_ctl", "stop", "-D", "/srv/pg"],
    );
    let findings = host.signal(pg_ctl, postgres, 2);
    let [Finding::OperatorStop(stop)] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(stop.loginuid, Some(1000));
    assert_eq!(stop.sender.comm, "pg_ctl");
    assert_eq!(stop.signal_name, "SIGINT");
    assert_eq!(stop.via, None, "the sender itself has the login");
    let findings = host.exit(postgres, Some(0), None);
    assert!(
        matches!(
            &findings[..],
            [Finding::Exited {
                operator_stop: true,
                ..
            }]
        ),
        "{findings:#?}"
    );
    host.exit(pg_ctl, Some(0), None);

    let monit = ProcessKey {
        pid: 100,
        ..host.table.live(100).unwrap().key
    };
    let (_, findings) = host.monit_starts_postgres(monit, 500);
    let [
        Finding::Respawn {
            started,
            stopped_by,
            window: None,
        },
    ] = &findings[..]
    else {
        panic!("{findings:#?}");
    };
    assert_eq!(started.supervisor.as_ref().unwrap().comm, "monit");
    let chain: Vec<&str> = started.chain.iter().map(|l| l.comm.as_str()).collect();
    assert_eq!(chain, ["pg_ctl", "sh", "monit", "init"]);
    assert_eq!(stopped_by.sender.comm, "pg_ctl");
    assert_eq!(stopped_by.loginuid, Some(1000));

    // The train: monit tries again after killing nothing; still a respawn.
    let (_, findings) = host.monit_starts_postgres(monit, 600);
    assert!(
        matches!(&findings[..], [Finding::Respawn { .. }]),
        "{findings:#?}"
    );
}

#[test]
fn the_operator_starting_it_again_is_not_a_respawn() {
    let (mut host, _monit, postgres) = setup();
    let shell = alice_shell(&mut host);
    host.signal(shell, postgres, 15);
    host.exit(postgres, None, Some(15));
    let (_, findings) = host.spawn(
        shell,
        450,
        "/usr/lib/postgresql/15/bin/postgres",
        &["postgres"],
    );
    let [Finding::OperatorStart { loginuid, started }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(*loginuid, 1000);
    assert_eq!(started.supervisor, None);
}

#[test]
fn a_stop_the_agent_sends_for_an_operator_is_theirs() {
    let (mut host, monit, postgres) = setup();
    // The agent was started from root's login; the request came from alice.
    let (agent, _) = host.spawn(INIT, 50, "/usr/bin/stopguard", &["stopguard", "run"]);
    host.loginuids.insert(agent, Some(0));
    host.detector.set_agent_pid(agent.pid);
    host.detector.control_command(ControlCommand {
        pid: 450,
        comm: "stopguard".into(),
        args: vec!["stopguard".into(), "stop".into(), "postgres".into()],
        intent: Intent::Stop,
        loginuid: 1000,
        time_ns: host.time_ns,
    });
    let findings = host.signal(agent, postgres, 15);
    let [Finding::OperatorStop(stop)] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(stop.loginuid, Some(1000));
    assert_eq!(stop.sender.comm, "stopguard");
    assert_eq!(
        stop.via.as_ref().map(|c| c.args.join(" ")),
        Some("stopguard stop postgres".into())
    );
    host.exit(postgres, Some(0), None);
    let (_, findings) = host.monit_starts_postgres(monit, 500);
    assert!(
        matches!(&findings[..], [Finding::Respawn { .. }]),
        "{findings:#?}"
    );
}

#[test]
fn a_crash_restart_raises_no_alarm() {
    let (mut host, monit, postgres) = setup();
    // The OOM killer, or any process without a login: not an operator.
    let (killer, _) = host.spawn(INIT, 700, "/usr/bin/kill", &["kill", "-9", "201"]);
    assert!(host.signal(killer, postgres, 9).is_empty());
    let findings = host.exit(postgres, None, Some(9));
    assert!(
        matches!(
            &findings[..],
            [Finding::Exited {
                operator_stop: false,
                signal: Some(9),
                ..
            }]
        ),
        "{findings:#?}"
    );
    let (_, findings) = host.monit_starts_postgres(monit, 800);
    assert!(
        matches!(&findings[..], [Finding::CrashRestart { .. }]),
        "{findings:#?}"
    );
}

#[test]
fn monit_stop_by_an_operator_names_the_command_and_a_monit_start_is_theirs() {
    let (mut host, monit, postgres) = setup();
    let shell = alice_shell(&mut host);
    let (cmd, _) = host.spawn(shell, 410, "/usr/bin/monit", &["monit", "stop", "postgres"]);
    host.exit(cmd, Some(0), None);
    // monit itself (no login) delivers the signal.
    let findings = host.signal(monit, postgres, 15);
    let [Finding::OperatorStop(stop)] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(stop.sender.comm, "monit");
    assert_eq!(stop.loginuid, Some(1000));
    let via = stop.via.as_ref().unwrap();
    assert_eq!(
        (via.intent, via.args.join(" ")),
        (Intent::Stop, "monit stop postgres".into())
    );
    host.exit(postgres, Some(0), None);

    let (cmd, _) = host.spawn(
        shell,
        420,
        "/usr/bin/monit",
        &["monit", "start", "postgres"],
    );
    host.exit(cmd, Some(0), None);
    let (_, findings) = host.monit_starts_postgres(monit, 900);
    assert!(
        matches!(
            &findings[..],
            [Finding::OperatorStart { loginuid: 1000, .. }]
        ),
        "{findings:#?}"
    );
}

#[test]
fn backends_reload_signals_and_other_processes_are_not_the_service() {
    let (mut host, _monit, postgres) = setup();
    let shell = alice_shell(&mut host);
    // A backend: a fork of the postmaster; its exit is not the service's.
    let backend = host.fork(postgres, 210);
    assert!(host.exit(backend, Some(0), None).is_empty());
    // A child that execs the same binary under the postmaster: not main.
    let (child, findings) = host.spawn(
        postgres,
        211,
        "/usr/lib/postgresql/15/bin/postgres",
        &["postgres", "--single"],
    );
    assert!(findings.is_empty(), "{findings:#?}");
    assert!(
        host.signal(shell, child, 15).is_empty(),
        "not the main process"
    );
    // SIGHUP is a reload.
    assert!(host.signal(shell, postgres, 1).is_empty());
    let (other, _) = host.spawn(shell, 460, "/usr/bin/sleep", &["sleep", "9"]);
    assert!(host.signal(shell, other, 15).is_empty());
    assert_eq!(host.detector.running(), [("postgres", 202)]);
}

#[test]
fn running_services_are_adopted_from_the_table() {
    let (host, _, _) = setup();
    let services = [service("postgres", "/usr/lib/postgresql/*/bin/postgres")];
    let mut fresh = Detector::new(&services);
    fresh.adopt(&host.table);
    assert_eq!(fresh.running(), [("postgres", 202)]);
}

#[test]
fn a_wrapper_is_not_the_service_it_runs_but_an_interpreter_is() {
    let mut host = Host::with("init", &[service("mariadb", "/usr/sbin/mariadbd")]);
    let (safe, _) = host.spawn(
        INIT,
        300,
        "/usr/bin/mysqld_safe",
        &["/bin/sh", "/usr/bin/mysqld_safe"],
    );
    // mysqld_safe runs `nohup /usr/sbin/mariadbd`: nohup is not the server
    // (it would be held before it execs the server, as nohup)...
    let (wrapper, findings) = host.spawn(
        safe,
        301,
        "/usr/bin/nohup",
        &["nohup", "/usr/sbin/mariadbd", "--datadir=/srv/db"],
    );
    assert!(findings.is_empty(), "{findings:#?}");
    assert_eq!(host.detector.running(), []);
    // ...its exec of the server is.
    let findings = host.exec(
        wrapper,
        "/usr/sbin/mariadbd",
        &["/usr/sbin/mariadbd", "--datadir=/srv/db"],
    );
    assert!(
        matches!(&findings[..], [Finding::Start { started }] if started.pid == 301),
        "{findings:#?}"
    );
    // A daemon run by an interpreter is its script.
    let mut host = Host::with("init", &[service("sgdaemon", "/opt/bin/sgdaemon")]);
    let (_, findings) = host.spawn(INIT, 400, "/bin/sh", &["sh", "/opt/bin/sgdaemon"]);
    assert!(
        matches!(&findings[..], [Finding::Start { started }] if started.pid == 400),
        "{findings:#?}"
    );
}
