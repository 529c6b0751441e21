//! Per-instance services: `unit = "postgresql@*.service"` tracks each
//! cluster as a service of its own, named after its unit.

use super::{
    systemd::{cluster_exec_stop, monit_runs_systemctl_start, systemctl, systemd_starts_cluster},
    *,
};

const MAIN15: &str = "postgresql@15-main.service";
const MAIN16: &str = "postgresql@16-main.service";
const POSTGRES: &str = "/usr/lib/postgresql/15/bin/postgres";

/// A service from config text, as a user writes it.
fn configured(text: &str) -> Vec<config::Service> {
    config::Config::parse(text, "test.toml").unwrap().services
}

/// systemd as PID 1; postgres watched by exe, per cluster unit.
fn clusters_host() -> Host {
    Host::with(
        "systemd",
        &configured(
            "[[service]]\nname = \"postgres\"\nexe = [\"/usr/lib/postgresql/*/bin/postgres\"]\nunit = \"postgresql@*\"\n",
        ),
    )
}

fn names(host: &Host) -> Vec<(String, Option<u32>)> {
    host.detector
        .services()
        .iter()
        .map(|s| (s.name.to_string(), s.pid))
        .collect()
}

/// A person's `systemctl stop UNIT` and PID 1's SIGTERM to the postmaster.
fn person_stops(host: &mut Host, shell: ProcessKey, pid: u32, unit: &str, postgres: ProcessKey) {
    systemctl(host, shell, pid, &["stop", unit]);
    let findings = host.signal(INIT, postgres, 15);
    let [Finding::OperatorStop(stop)] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(stop.service, unit.trim_end_matches(".service"));
    host.exit(postgres, Some(0), None);
}

#[test]
fn each_cluster_is_a_service_of_its_own_and_only_the_stopped_one_alerts() {
    let mut host = clusters_host();
    let (monit, _) = host.spawn(INIT, 100, "/usr/bin/monit", &["monit", "-I"]);
    let (pg15, findings) = systemd_starts_cluster(&mut host, MAIN15, 200);
    let [Finding::Start { started }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(started.service, "postgresql@15-main");
    let (pg16, findings) = systemd_starts_cluster(&mut host, MAIN16, 300);
    let [Finding::Start { started }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(started.service, "postgresql@16-main");
    assert_eq!(
        names(&host),
        [
            ("postgresql@15-main".to_string(), Some(pg15.pid)),
            ("postgresql@16-main".to_string(), Some(pg16.pid))
        ],
        "the instances, not the configured name with no process of its own"
    );
    let shell = alice_shell(&mut host);
    person_stops(&mut host, shell, 400, "postgresql@15-main", pg15);
    assert!(host.detector.stop_of("postgresql@16-main").is_none());
    monit_runs_systemctl_start(&mut host, monit, 500, "postgresql@15-main");
    let (_, findings) = systemd_starts_cluster(&mut host, MAIN15, 510);
    let [Finding::Respawn { started, .. }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(started.service, "postgresql@15-main");
    // The other cluster's stop by PID 1 (a crash restart, a dependency)
    // with nobody asking is nobody's.
    assert!(host.signal(INIT, pg16, 15).is_empty());
}

#[test]
fn an_upgrade_stopping_one_cluster_and_starting_another_raises_nothing() {
    let mut host = clusters_host();
    let (pg15, _) = systemd_starts_cluster(&mut host, MAIN15, 200);
    let shell = alice_shell(&mut host);
    person_stops(&mut host, shell, 400, "postgresql@15-main", pg15);
    systemctl(&mut host, shell, 410, &["start", "postgresql@16-main"]);
    let (_, findings) = systemd_starts_cluster(&mut host, MAIN16, 420);
    let [Finding::OperatorStart { started, loginuid }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(
        (started.service.as_str(), *loginuid),
        ("postgresql@16-main", 1000)
    );
    assert!(host.detector.stop_of("postgresql@15-main").is_some());
}

#[test]
fn a_window_on_the_configured_name_covers_every_instance_one_on_an_instance_only_it() {
    let mut host = clusters_host();
    let (monit, _) = host.spawn(INIT, 100, "/usr/bin/monit", &["monit", "-I"]);
    let (pg15, _) = systemd_starts_cluster(&mut host, MAIN15, 200);
    let (pg16, _) = systemd_starts_cluster(&mut host, MAIN16, 300);
    let now = host.time_ns;
    host.detector
        .open_window(
            "postgresql@16-main",
            "vacuum full",
            (0, Some(1000)),
            now,
            None,
        )
        .unwrap();
    // Inside its window any stop is the operator's; the other cluster has none.
    assert!(host.signal(INIT, pg15, 15).is_empty());
    assert_eq!(host.signal(INIT, pg16, 15).len(), 1);
    host.detector.close_window("postgresql@16-main").unwrap();
    host.detector
        .open_window("postgres", "os upgrade", (0, Some(1000)), now, None)
        .unwrap();
    assert_eq!(host.signal(INIT, pg15, 15).len(), 1);
    host.exit(pg15, Some(0), None);
    monit_runs_systemctl_start(&mut host, monit, 500, "postgresql@15-main");
    let (_, findings) = systemd_starts_cluster(&mut host, MAIN15, 510);
    let [Finding::Respawn { window, .. }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(window.as_ref().unwrap().reason, "os upgrade");
    // Closing it ends the stops of all of them.
    host.detector.close_window("postgres").unwrap();
    assert!(host.detector.stop_of("postgresql@15-main").is_none());
    // A window on a cluster not met yet is one of the instance's.
    host.detector
        .open_window("postgresql@17-main", "new cluster", (0, None), now, None)
        .unwrap();
    assert!(
        host.detector
            .open_window("mysql@1", "x", (0, None), now, None)
            .is_err()
    );
}

#[test]
fn a_service_known_by_its_unit_alone_follows_the_daemon_its_start_script_leaves() {
    let mut host = Host::with(
        "systemd",
        &configured("[[service]]\nname = \"pg\"\nunit = \"postgresql@*.service\"\n"),
    );
    // What systemd starts in the unit (pg_ctlcluster) is the main process
    // while it runs, then the postmaster it left behind; no exit between.
    let child = host.fork(INIT, 200);
    let findings = host.exec_in(
        child,
        Some(MAIN15),
        "/usr/bin/pg_ctlcluster",
        &[
            "/usr/bin/perl",
            "/usr/bin/pg_ctlcluster",
            "--skip-systemctl-redirect",
            "15-main",
            "start",
        ],
    );
    let [Finding::Start { started }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(
        (started.service.as_str(), started.pid),
        ("postgresql@15-main", 200)
    );
    let pg_ctl = host.fork(child, 201);
    let mut after = host.exec(
        pg_ctl,
        "/usr/lib/postgresql/15/bin/pg_ctl",
        &["pg_ctl", "start"],
    );
    let (postgres, findings) = host.spawn(pg_ctl, 202, POSTGRES, &["postgres", "-D", "/srv"]);
    after.extend(findings);
    after.extend(host.exit(pg_ctl, Some(0), None));
    after.extend(host.exit(child, Some(0), None));
    assert!(
        after.is_empty(),
        "pg_ctl, the postmaster, their exits: {after:#?}"
    );
    assert_eq!(
        names(&host),
        [("postgresql@15-main".to_string(), Some(postgres.pid))]
    );
    // The unit's ExecStop= is no new start; the stop is the person's.
    let shell = alice_shell(&mut host);
    systemctl(&mut host, shell, 400, &["stop", "postgresql@15-main"]);
    let (_, findings) = cluster_exec_stop(&mut host, MAIN15, 410);
    assert!(findings.is_empty(), "{findings:#?}");
    let findings = host.signal(INIT, postgres, 15);
    let [Finding::OperatorStop(stop)] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(stop.loginuid, Some(1000));
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
}

#[test]
fn a_stopped_cluster_started_again_outside_its_unit_is_a_respawn_of_it() {
    let mut host = clusters_host();
    let (monit, _) = host.spawn(INIT, 100, "/usr/bin/monit", &["monit", "-I"]);
    let (pg15, _) = systemd_starts_cluster(&mut host, MAIN15, 200);
    let (_pg16, _) = systemd_starts_cluster(&mut host, MAIN16, 300);
    let shell = alice_shell(&mut host);
    person_stops(&mut host, shell, 400, "postgresql@15-main", pg15);
    // monit's start program is pg_ctl itself: the postmaster runs in no unit.
    let (sh, _) = host.spawn(monit, 500, "/bin/sh", &["sh", "-c", "pg_ctl start"]);
    let (pg_ctl, _) = host.spawn(
        sh,
        501,
        "/usr/lib/postgresql/15/bin/pg_ctl",
        &["pg_ctl", "start"],
    );
    let (postgres, findings) = host.spawn(pg_ctl, 502, POSTGRES, &["postgres", "-D", "/srv"]);
    assert_eq!(host.table.get(&postgres).unwrap().unit, None);
    let [
        Finding::Respawn {
            started,
            stopped_by,
            ..
        },
    ] = &findings[..]
    else {
        panic!("{findings:#?}");
    };
    assert_eq!(started.service, "postgresql@15-main");
    assert_eq!(stopped_by.loginuid, Some(1000));
    assert_eq!(
        started.supervisor.as_ref().map(|s| s.comm.as_str()),
        Some("monit")
    );
}
