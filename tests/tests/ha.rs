//! The HA fixtures, on their own (no agent): what each tool does when an
//! operator stops the database behind its back, which is what the agent's
//! HA tests rely on.

use std::{
    fs,
    time::{Duration, Instant},
};

use stopguard_tests::{Mariadb, Patroni, as_person, assert_clean, bash, root_test};

fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn ppid(pid: u32) -> u32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let (_, rest) = stat.rsplit_once(')').unwrap_or_default();
    rest.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// Asserts that `pid` (a daemon a fixture started) has no login identity,
/// as daemons on a host have not: the agent would name that person.
fn assert_no_login(pid: u32) {
    let loginuid = fs::read_to_string(format!("/proc/{pid}/loginuid")).unwrap_or_default();
    assert_eq!(
        loginuid.trim(),
        "4294967295",
        "{} ({pid}) runs with loginuid {loginuid}: run the tests outside a login session",
        comm(pid)
    );
}

/// Patroni starts a postgres stopped with `pg_ctl stop` again within a
/// couple of loops; paused, it leaves it stopped; resumed, it starts it.
#[test]
fn patroni_restarts_a_stopped_postgres_unless_paused() {
    let Some(_probes) = root_test("patroni_restarts_a_stopped_postgres_unless_paused") else {
        return;
    };
    let began = Instant::now();
    let patroni = Patroni::start();
    eprintln!("patroni: primary up after {:?}", began.elapsed());
    let dir = patroni.dir().to_path_buf();
    let first = patroni.postmaster_pid().expect("no postmaster after start");
    assert!(!patroni.is_paused(), "{}", patroni.status());
    assert_eq!(comm(patroni.patroni_pid()), "python3");
    assert_no_login(patroni.patroni_pid());
    assert_no_login(first);

    let stopped = Instant::now();
    as_person(&patroni.operator_stop_command());
    let second = patroni
        .wait_for_postmaster(Some(first), 5 * Patroni::LOOP_WAIT)
        .unwrap_or_else(|| panic!("patroni did not start postgres again; {}", patroni.status()));
    eprintln!(
        "patroni: postmaster {second} started {:?} after the stop (loop_wait {:?}); {}",
        stopped.elapsed(),
        Patroni::LOOP_WAIT,
        bash(&format!("ps -o pid,ppid,comm -p {second},{}", ppid(second)))
    );
    assert_eq!(comm(second), "postgres");

    patroni.patronictl(&["pause", "--wait"]);
    assert!(patroni.is_paused(), "{}", patroni.status());
    let paused = patroni.postmaster_pid().expect("paused with postgres down");
    as_person(&patroni.operator_stop_command());
    assert_eq!(
        patroni.wait_for_postmaster(None, 3 * Patroni::LOOP_WAIT),
        None,
        "patroni started postgres while paused"
    );
    let status = patroni.status();
    assert_eq!(status["state"], "stopped", "{status}");
    assert_eq!(status["pause"], true, "{status}");

    patroni.patronictl(&["resume", "--wait"]);
    let resumed = patroni
        .wait_for_postmaster(Some(paused), 5 * Patroni::LOOP_WAIT)
        .unwrap_or_else(|| panic!("patroni did not start postgres on resume"));
    assert!(!patroni.is_paused(), "{}", patroni.status());
    eprintln!("patroni: postmaster {resumed} started after resume");

    drop(patroni);
    assert_clean(&dir, &[]);
    assert!(!dir.exists(), "{} left", dir.display());
}

/// mysqld_safe starts a killed server again at once; after `mysqladmin
/// shutdown` it exits instead.
#[test]
fn mysqld_safe_restarts_a_killed_server_not_a_shut_down_one() {
    let Some(_probes) = root_test("mysqld_safe_restarts_a_killed_server_not_a_shut_down_one")
    else {
        return;
    };
    let began = Instant::now();
    let mut mariadb = Mariadb::start();
    eprintln!("mariadb: server up after {:?}", began.elapsed());
    let dir = mariadb.dir().to_path_buf();
    let safe = mariadb.mysqld_safe_pid();
    let first = mariadb.server_pid().expect("no server after start");
    assert_eq!(comm(safe), "mysqld_safe");
    assert_eq!(comm(first), "mariadbd");
    assert_eq!(ppid(first), safe);
    assert_no_login(safe);
    assert_no_login(first);

    let killed = Instant::now();
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    let second = mariadb.wait_for_server(Some(first), Duration::from_secs(20));
    eprintln!(
        "mariadb: server {second} answering {:?} after kill -9",
        killed.elapsed()
    );
    assert_eq!(comm(second), "mariadbd");
    assert_eq!(ppid(second), safe);
    assert!(mariadb.admin(&["ping"]).contains("is alive"));

    as_person(&mariadb.operator_stop_command());
    let status = mariadb
        .mysqld_safe_exit(Duration::from_secs(30))
        .expect("mysqld_safe still runs after mysqladmin shutdown");
    eprintln!("mariadb: mysqld_safe exited ({status}) after the shutdown");
    assert_eq!(mariadb.server_pid(), None);

    drop(mariadb);
    assert_clean(&dir, &[]);
    assert!(!dir.exists(), "{} left", dir.display());
}
