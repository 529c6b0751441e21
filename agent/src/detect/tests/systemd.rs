//! A host run by systemd: PID 1 sends the signals and starts the
//! processes of its units; `systemctl` (run by a person, or by monit)
//! names the unit and who asked.

use super::*;

const CLUSTER: &str = "postgresql@15-main.service";
const REDIS: &str = "redis-server.service";
const POSTGRES: &str = "/usr/lib/postgresql/15/bin/postgres";

/// PID 1 is systemd; postgres and redis are watched.
fn systemd_host() -> Host {
    Host::with(
        "systemd",
        &[
            service("postgres", "/usr/lib/postgresql/*/bin/postgres"),
            service("redis", "/usr/bin/redis-server"),
        ],
    )
}

/// systemd 252 starting Debian's `postgresql@VERSION-NAME` (pid `base`):
/// its child moves into the unit and runs `pg_ctlcluster
/// --skip-systemctl-redirect`, which starts the postmaster through pg_ctl
/// and exits.
pub(super) fn systemd_starts_cluster(
    host: &mut Host,
    unit: &str,
    base: u32,
) -> (ProcessKey, Vec<Finding>) {
    let child = host.fork(INIT, base);
    let cluster = unit
        .trim_start_matches("postgresql@")
        .trim_end_matches(".service");
    let findings = host.exec_in(
        child,
        Some(unit),
        "/usr/bin/pg_ctlcluster",
        &[
            "/usr/bin/perl",
            "/usr/bin/pg_ctlcluster",
            "--skip-systemctl-redirect",
            cluster,
            "start",
        ],
    );
    assert!(findings.is_empty(), "{findings:#?}");
    let (pg_ctl, _) = host.spawn(
        child,
        base + 1,
        "/usr/lib/postgresql/15/bin/pg_ctl",
        &["pg_ctl", "start"],
    );
    let (postgres, findings) = host.spawn(pg_ctl, base + 2, POSTGRES, &["postgres", "-D", "/srv"]);
    host.exit(pg_ctl, Some(0), None);
    host.exit(child, Some(0), None);
    (postgres, findings)
}

/// systemd 257 starting redis-server.service: its child execs
/// systemd-executor by fd (comm `9`), which execs the service in the same
/// pid.
fn systemd_starts_redis(host: &mut Host, pid: u32) -> (ProcessKey, Vec<Finding>) {
    let child = host.fork(INIT, pid);
    let findings = host.exec_in(
        child,
        Some(REDIS),
        "/proc/self/fd/9",
        &["/usr/lib/systemd/systemd-executor", "--deserialize", "83"],
    );
    assert!(findings.is_empty(), "{findings:#?}");
    let findings = host.exec(
        child,
        "/usr/bin/redis-server",
        &["redis-server", "127.0.0.1:6379"],
    );
    (child, findings)
}

/// PID 1 running Debian's cluster unit's `ExecStop=pg_ctlcluster
/// --skip-systemctl-redirect -m fast VERSION-NAME stop` in `unit`, as pid
/// `pid`.
pub(super) fn cluster_exec_stop(
    host: &mut Host,
    unit: &str,
    pid: u32,
) -> (ProcessKey, Vec<Finding>) {
    let cluster = unit
        .trim_start_matches("postgresql@")
        .trim_end_matches(".service");
    let child = host.fork(INIT, pid);
    let findings = host.exec_in(
        child,
        Some(unit),
        "/usr/bin/pg_ctlcluster",
        &[
            "/usr/bin/perl",
            "/usr/bin/pg_ctlcluster",
            "--skip-systemctl-redirect",
            "-m",
            "fast",
            cluster,
            "stop",
        ],
    );
    (child, findings)
}

/// `argv` run (and exited) from `parent`, as pid `pid`.
pub(super) fn run(host: &mut Host, parent: ProcessKey, pid: u32, exe: &str, argv: &[&str]) {
    let (command, findings) = host.spawn(parent, pid, exe, argv);
    assert!(findings.is_empty(), "{findings:#?}");
    host.exit(command, Some(0), None);
}

/// `systemctl ARGS...` run by `parent` as `pid`, and done.
pub(super) fn systemctl(host: &mut Host, parent: ProcessKey, pid: u32, args: &[&str]) {
    let argv: Vec<&str> = std::iter::once("systemctl")
        .chain(args.iter().copied())
        .collect();
    run(host, parent, pid, "/usr/bin/systemctl", &argv);
}

/// monit (no login) running `systemctl start UNIT` as its start program.
pub(super) fn monit_runs_systemctl_start(host: &mut Host, monit: ProcessKey, pid: u32, unit: &str) {
    run(
        host,
        monit,
        pid,
        "/usr/bin/systemctl",
        &["/usr/bin/systemctl", "start", unit],
    );
}

fn started_cluster(host: &mut Host) -> ProcessKey {
    let (postgres, findings) = systemd_starts_cluster(host, CLUSTER, 200);
    let [Finding::Start { started }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(started.unit.as_deref(), Some(CLUSTER));
    postgres
}

#[test]
fn pg_ctlcluster_stop_by_a_person_then_monit_systemctl_start_is_a_respawn_by_monit() {
    let mut host = systemd_host();
    let (monit, _) = host.spawn(INIT, 100, "/usr/bin/monit", &["monit", "-I"]);
    let postgres = started_cluster(&mut host);
    let shell = alice_shell(&mut host);
    // pg_ctlcluster redirects to systemctl; PID 1 sends the signal.
    let (pg_ctlcluster, _) = host.spawn(
        shell,
        400,
        "/usr/bin/pg_ctlcluster",
        &[
            "/usr/bin/perl",
            "/usr/bin/pg_ctlcluster",
            "15",
            "main",
            "stop",
        ],
    );
    systemctl(
        &mut host,
        pg_ctlcluster,
        401,
        &["stop", "postgresql@15-main"],
    );
    let findings = host.signal(INIT, postgres, 15);
    let [Finding::OperatorStop(stop)] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(stop.loginuid, Some(1000));
    assert_eq!(stop.sender.comm, "systemd");
    assert_eq!(
        stop.via.as_ref().map(|c| c.args.join(" ")),
        Some("systemctl stop postgresql@15-main".into())
    );
    host.exit(postgres, Some(0), None);
    host.exit(pg_ctlcluster, Some(0), None);

    monit_runs_systemctl_start(&mut host, monit, 500, "postgresql@15-main");
    let (_, findings) = systemd_starts_cluster(&mut host, CLUSTER, 510);
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
    assert_eq!(stopped_by.loginuid, Some(1000));
    assert_eq!(started.unit.as_deref(), Some(CLUSTER));
    assert_eq!(
        started
            .supervisor
            .as_ref()
            .map(|s| (s.pid, s.comm.as_str())),
        Some((100, "monit")),
        "the supervisor behind the systemctl, not systemd"
    );
    let request = started.requested.as_ref().unwrap();
    assert_eq!((request.pid, request.loginuid), (500, None));
    assert_eq!(
        request.args.join(" "),
        "/usr/bin/systemctl start postgresql@15-main"
    );
    let chain: Vec<&str> = request.chain.iter().map(|l| l.comm.as_str()).collect();
    assert_eq!(chain, ["monit", "systemd"]);
    // The process's own chain is systemd's.
    let chain: Vec<&str> = started.chain.iter().map(|l| l.comm.as_str()).collect();
    assert_eq!(chain, ["pg_ctl", "pg_ctlcluster", "systemd"]);
    assert_eq!(
        started.systemd_unit(),
        Some(CLUSTER),
        "PID 1 started it as its unit's service, on monit's request"
    );
}

#[test]
fn the_units_own_exec_stop_signalling_after_a_persons_systemctl_stop_is_theirs() {
    let mut host = systemd_host();
    let postgres = started_cluster(&mut host);
    let shell = alice_shell(&mut host);
    systemctl(&mut host, shell, 400, &["stop", "postgresql@15-main"]);
    let (child, _) = cluster_exec_stop(&mut host, CLUSTER, 410);
    let (pg_ctl, _) = host.spawn(
        child,
        411,
        "/usr/lib/postgresql/15/bin/pg_ctl",
        &["pg_ctl", "stop", "-m", "fast"],
    );
    let findings = host.signal(pg_ctl, postgres, 2);
    let [Finding::OperatorStop(stop)] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(stop.loginuid, Some(1000));
    assert_eq!(stop.sender.comm, "pg_ctl");
    assert_eq!(stop.via.as_ref().unwrap().comm, "systemctl");
}

#[test]
fn a_persons_systemctl_for_one_unit_does_not_explain_a_stop_of_another() {
    let mut host = systemd_host();
    let postgres = started_cluster(&mut host);
    let shell = alice_shell(&mut host);
    // Another cluster: its name contains the service's, the unit differs.
    systemctl(&mut host, shell, 400, &["stop", "postgresql@16-main"]);
    let findings = host.signal(INIT, postgres, 15);
    assert!(findings.is_empty(), "{findings:#?}");
    host.exit(postgres, Some(0), None);
    // Nor does its start make this cluster's start theirs.
    systemctl(&mut host, shell, 420, &["start", "postgresql@16-main"]);
    let (_, findings) = systemd_starts_cluster(&mut host, CLUSTER, 500);
    assert!(
        matches!(&findings[..], [Finding::CrashRestart { .. }]),
        "{findings:#?}"
    );
}

#[test]
fn a_stop_or_start_asked_by_monit_is_not_a_person() {
    let mut host = systemd_host();
    let (monit, _) = host.spawn(INIT, 100, "/usr/bin/monit", &["monit", "-I"]);
    let postgres = started_cluster(&mut host);
    systemctl(&mut host, monit, 300, &["restart", "postgresql@15-main"]);
    assert!(host.signal(INIT, postgres, 15).is_empty());
    host.exit(postgres, Some(0), None);
    let (_, findings) = systemd_starts_cluster(&mut host, CLUSTER, 500);
    let [Finding::CrashRestart { started }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(started.supervisor.as_ref().unwrap().comm, "monit");
}

#[test]
fn a_persons_systemctl_start_is_theirs() {
    let mut host = systemd_host();
    let postgres = started_cluster(&mut host);
    let shell = alice_shell(&mut host);
    systemctl(&mut host, shell, 400, &["stop", "postgresql@15-main"]);
    host.signal(INIT, postgres, 15);
    host.exit(postgres, Some(0), None);
    run(
        &mut host,
        shell,
        420,
        "/usr/bin/systemctl",
        &[
            "systemctl",
            "--no-block",
            "start",
            "postgresql@15-main.service",
        ],
    );
    let (_, findings) = systemd_starts_cluster(&mut host, CLUSTER, 500);
    let [Finding::OperatorStart { loginuid, started }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(*loginuid, 1000);
    assert_eq!(started.requested, None);
}

#[test]
fn a_persons_systemctl_restart_is_their_stop_and_their_start() {
    let mut host = systemd_host();
    let postgres = started_cluster(&mut host);
    let shell = alice_shell(&mut host);
    systemctl(&mut host, shell, 400, &["restart", "postgresql@15-main"]);
    let findings = host.signal(INIT, postgres, 15);
    assert!(
        matches!(&findings[..], [Finding::OperatorStop(s)] if s.loginuid == Some(1000)),
        "{findings:#?}"
    );
    host.exit(postgres, Some(0), None);
    let (_, findings) = systemd_starts_cluster(&mut host, CLUSTER, 500);
    assert!(
        matches!(
            &findings[..],
            [Finding::OperatorStart { loginuid: 1000, .. }]
        ),
        "{findings:#?}"
    );
}

#[test]
fn restart_policy_after_a_persons_systemctl_kill_is_a_respawn_by_systemd() {
    let mut host = systemd_host();
    let (redis, findings) = systemd_starts_redis(&mut host, 200);
    assert!(
        matches!(&findings[..], [Finding::Start { .. }]),
        "{findings:#?}"
    );
    let shell = alice_shell(&mut host);
    systemctl(
        &mut host,
        shell,
        400,
        &["kill", "-s", "TERM", "redis-server"],
    );
    let findings = host.signal(INIT, redis, 15);
    let [Finding::OperatorStop(stop)] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(
        stop.via.as_ref().map(|c| c.args.join(" ")),
        Some("systemctl kill -s TERM redis-server".into())
    );
    host.exit(redis, None, Some(15));
    // Restart=always: PID 1 starts it again, nobody asked.
    let (_, findings) = systemd_starts_redis(&mut host, 300);
    let [Finding::Respawn { started, .. }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(started.unit.as_deref(), Some(REDIS));
    assert_eq!(started.requested, None);
    assert_eq!(
        started
            .supervisor
            .as_ref()
            .map(|s| (s.pid, s.comm.as_str())),
        Some((1, "systemd"))
    );
    let chain: Vec<&str> = started.chain.iter().map(|l| l.comm.as_str()).collect();
    assert_eq!(chain, ["systemd"], "the executor became the service");
    assert_eq!(
        started.systemd_unit(),
        Some(REDIS),
        "PID 1 started it as its unit's service, by itself"
    );
}

#[test]
fn what_a_supervisor_inside_a_unit_starts_is_not_that_units_service() {
    let mut host = systemd_host();
    // runsv, run by a unit (a test runner, a container's init).
    let runner = host.fork(INIT, 100);
    host.exec_in(
        runner,
        Some("lab-runner.service"),
        "/usr/bin/runsv",
        &["runsv", "/etc/sv/redis"],
    );
    let (_, findings) = host.spawn(runner, 110, "/usr/bin/redis-server", &["redis-server"]);
    let [Finding::Start { started }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(started.unit.as_deref(), Some("lab-runner.service"));
    assert_eq!(started.supervisor.as_ref().unwrap().comm, "runsv");
    assert_eq!(
        started.systemd_unit(),
        None,
        "freezing the unit would freeze runsv and whatever else runs there"
    );
}

#[test]
fn a_crash_under_restart_policy_raises_no_alarm() {
    let mut host = systemd_host();
    let (redis, _) = systemd_starts_redis(&mut host, 200);
    let (killer, _) = host.spawn(INIT, 300, "/usr/bin/kill", &["kill", "-9", "200"]);
    assert!(host.signal(killer, redis, 9).is_empty());
    host.exit(redis, None, Some(9));
    let (_, findings) = systemd_starts_redis(&mut host, 310);
    let [Finding::CrashRestart { started }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(started.supervisor.as_ref().unwrap().comm, "systemd");
}

#[test]
fn a_persons_monit_stop_through_systemctl_is_theirs() {
    let mut host = systemd_host();
    let (monit, _) = host.spawn(INIT, 100, "/usr/bin/monit", &["monit", "-I"]);
    let postgres = started_cluster(&mut host);
    let shell = alice_shell(&mut host);
    run(
        &mut host,
        shell,
        400,
        "/usr/bin/monit",
        &["monit", "stop", "postgres"],
    );
    // monit's stop program.
    run(
        &mut host,
        monit,
        410,
        "/usr/bin/systemctl",
        &["/usr/bin/systemctl", "stop", "postgresql@15-main"],
    );
    let findings = host.signal(INIT, postgres, 15);
    let [Finding::OperatorStop(stop)] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(stop.loginuid, Some(1000));
    assert_eq!(
        stop.via.as_ref().unwrap().args.join(" "),
        "monit stop postgres"
    );
}

#[test]
fn a_request_served_by_one_start_does_not_explain_the_next() {
    let mut host = systemd_host();
    let (monit, _) = host.spawn(INIT, 100, "/usr/bin/monit", &["monit", "-I"]);
    // monit starts redis through systemctl: its request is served then.
    monit_runs_systemctl_start(&mut host, monit, 150, "redis-server");
    let (redis, findings) = systemd_starts_redis(&mut host, 200);
    let [Finding::Start { started }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(started.supervisor.as_ref().unwrap().comm, "monit");
    let shell = alice_shell(&mut host);
    systemctl(&mut host, shell, 400, &["kill", "redis-server"]);
    assert!(matches!(
        &host.signal(INIT, redis, 15)[..],
        [Finding::OperatorStop(_)]
    ));
    host.exit(redis, None, Some(15));
    // Restart=always, seconds later: systemd's own, not monit's again.
    let (redis, findings) = systemd_starts_redis(&mut host, 300);
    let [Finding::Respawn { started, .. }] = &findings[..] else {
        panic!("{findings:#?}");
    };
    assert_eq!(started.requested, None);
    assert_eq!(started.supervisor.as_ref().unwrap().comm, "systemd");
    // Nor is the person's kill, asked of the process before, about this
    // one: a crash now is no operator stop.
    let (killer, _) = host.spawn(INIT, 500, "/usr/bin/kill", &["kill", "-9", "300"]);
    assert!(host.signal(killer, redis, 9).is_empty());
}

#[test]
fn a_thawed_respawn_ends_the_operator_stop_so_the_next_boot_start_is_no_respawn() {
    let mut host = systemd_host();
    let (redis, _) = systemd_starts_redis(&mut host, 200);
    let shell = alice_shell(&mut host);
    systemctl(&mut host, shell, 400, &["kill", "redis-server"]);
    host.signal(INIT, redis, 15);
    host.exit(redis, None, Some(15));
    let (respawn, findings) = systemd_starts_redis(&mut host, 300);
    assert!(
        matches!(&findings[..], [Finding::Respawn { .. }]),
        "{findings:#?}"
    );
    // The operator thaws it: it runs, and their stop is over.
    host.detector.release("redis");
    assert!(host.detector.stop_of("redis").is_none());
    // Shut down by PID 1 and started again at the next boot, nobody asking.
    host.signal(INIT, respawn, 15);
    host.exit(respawn, Some(0), None);
    let (_, findings) = systemd_starts_redis(&mut host, 500);
    assert!(
        !findings
            .iter()
            .any(|f| matches!(f, Finding::Respawn { .. })),
        "{findings:#?}"
    );
}
