//! The HA tools that restart a database on their own: first each fixture
//! on its own (no agent), what it does when an operator stops the database
//! behind its back; then the agent watching it: `explain` naming the tool
//! and its off switch, the tool's restart frozen, a paused Patroni leaving
//! the stop alone, `stop --and-pause` and the window's close switching it
//! back on; and `explain` for monit and runit, before and after each is
//! switched off.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use stopguard_tests::{
    Agent, Mariadb, Patroni, Sandbox, as_operator, as_person, assert_clean, bash, in_frozen_cgroup,
    operator_signal, person, poll, root_test, state_of,
};

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
    assert_eq!(comm(patroni.patroni_pid()), "patroni");
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

/// PostgreSQL 15's programs, as Debian installs them.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The agent watching `service` (`exe`) with the freeze policy, plus
/// `extra` lines for the service, its files in a sandbox dir of its own:
/// an HA fixture kills whatever runs from its dir when it drops.
fn watching(name: &str, service: &str, exe: &str, extra: &str) -> Sandbox {
    let mut sandbox = Sandbox::new(name);
    let d = sandbox.dir.display();
    let config = format!(
        "[agent]\nhost = \"db-test\"\naudit_log = \"{d}/audit.jsonl\"\nsocket = \"{d}/sock\"\n\
         state_dir = \"{d}/state\"\n\n[[service]]\nname = \"{service}\"\nexe = [\"{exe}\"]\n\
         on_unexpected_respawn = \"freeze\"\n{extra}"
    );
    sandbox.agent = Some(Agent::start(&sandbox.dir.join("stopguard.toml"), &config));
    sandbox
}

/// `stopguard explain SERVICE`: its exit status and its words.
fn explain(sandbox: &Sandbox, service: &str) -> (i32, String) {
    let out = sandbox.client(&["explain", service]);
    let code = out.status.code().unwrap_or(-1);
    assert_ne!(
        code,
        1,
        "explain {service} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code, String::from_utf8(out.stdout).unwrap())
}

/// `stopguard explain SERVICE --json`: its exit status and its answer.
fn explain_json(sandbox: &Sandbox, service: &str) -> (i32, Value) {
    let out = sandbox.client(&["explain", service, "--json"]);
    let code = out.status.code().unwrap_or(-1);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "explain {service} --json ({code}) gave no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(answer["ok"], true, "{answer:#}");
    (code, answer)
}

/// The supervisor named `name` among those an explanation (or a service
/// in `status`) lists.
fn watcher<'a>(explained: &'a Value, name: &str) -> &'a Value {
    explained["supervisors"]
        .as_array()
        .and_then(|all| all.iter().find(|w| w["supervisor"] == name))
        .unwrap_or_else(|| panic!("no {name} among the supervisors: {explained:#}"))
}

/// Words as a JSON array of strings, as an argv is in the answers.
fn argv(words: &[&str]) -> Value {
    Value::from(words.iter().map(|w| w.to_string()).collect::<Vec<_>>())
}

/// `patronictl -c CONFIG ARGS` from an operator's shell (loginuid 1000),
/// with a plain environment.
fn patronictl_as_person(patroni: &Patroni, args: &str) -> String {
    as_person(&format!(
        "env -i PATH=/usr/bin:/bin LANG=C.UTF-8 /usr/bin/python3 /usr/bin/patronictl -c {} {args}",
        patroni.config_path().display()
    ))
}

/// Whether `select 1` answers on the postgres Patroni runs, reached on its
/// socket dir (the fixture's dir) and `port`.
fn psql_answers(patroni: &Patroni, port: &str) -> bool {
    std::process::Command::new("timeout")
        .args(["3", "setpriv", "--reuid=postgres", "--regid=postgres"])
        .args(["--init-groups", &format!("{PG_BIN}/psql"), "-h"])
        .arg(patroni.dir())
        .args(["-p", port, "-d", "postgres", "-tAc", "select 1"])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "1")
}

/// The port in postmaster.pid (its fourth line).
fn postmaster_port(data_dir: &Path) -> String {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).unwrap();
    text.lines().nth(3).unwrap().trim().to_string()
}

/// How many audit entries `matches`.
fn audited(sandbox: &Sandbox, matches: impl Fn(&Value) -> bool) -> usize {
    sandbox.audit().iter().filter(|a| matches(a)).count()
}

/// Under Patroni: `explain` names Patroni and `patronictl pause` as its off
/// switch; Patroni's restart of a postgres an operator stopped is frozen
/// before it serves; paused, Patroni restarts nothing, and `explain` and
/// `status` say it is paused.
#[test]
fn under_patroni_explain_names_it_its_restart_is_frozen_and_paused_it_restarts_nothing() {
    let Some(_probes) = root_test(
        "under_patroni_explain_names_it_its_restart_is_frozen_and_paused_it_restarts_nothing",
    ) else {
        return;
    };
    let patroni = Patroni::start();
    let config = patroni.config_path().display().to_string();
    let scope = patroni
        .dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let first = patroni.postmaster_pid().expect("no postmaster after start");
    let port = postmaster_port(&patroni.data_dir());
    let sandbox = watching("ha-patroni", "postgres", &format!("{PG_BIN}/postgres"), "");

    // Something would start it again: Patroni, switched off by a pause.
    let (code, explained) = explain_json(&sandbox, "postgres");
    assert_eq!(code, 3, "{explained:#}");
    assert_eq!(explained["state"], "running", "{explained:#}");
    assert_eq!(explained["main"]["pid"], first, "{explained:#}");
    assert_eq!(explained["would_restart"], true, "{explained:#}");
    let by = watcher(&explained, "patroni");
    assert_eq!(by["pid"], patroni.patroni_pid(), "{by:#}");
    assert_eq!(by["name"], scope.as_str(), "{by:#}");
    assert_eq!(by["would_restart"], true, "{by:#}");
    assert!(
        by["state"].as_str().unwrap().starts_with("active"),
        "{by:#}"
    );
    assert_eq!(
        by["off"],
        argv(&["patronictl", "-c", &config, "pause", "--wait"]),
        "{by:#}"
    );
    assert_eq!(
        by["on"],
        argv(&["patronictl", "-c", &config, "resume", "--wait"]),
        "{by:#}"
    );
    assert_eq!(by["off_stops"], false, "{by:#}");
    let (code, text) = explain(&sandbox, "postgres");
    eprintln!("stopguard explain postgres:\n{text}");
    assert_eq!(code, 3, "{text}");
    assert!(
        text.starts_with(&format!("postgres: running, pid {first}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "\n  patroni (pid {}, {scope}, runs as {}): active",
            patroni.patroni_pid(),
            person(bash("id -u postgres").trim().parse().unwrap())
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "switch it off:  patronictl -c {config} pause --wait"
        )),
        "{text}"
    );

    // The operator stops it; Patroni starts it again; the agent holds that.
    as_person(&patroni.operator_stop_command());
    let alert = sandbox
        .next_alert(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no alert; audit: {:#?}", sandbox.audit()));
    assert_eq!(alert["kind"], "respawn_after_operator_stop", "{alert:#}");
    assert_eq!(alert["service"], "postgres", "{alert:#}");
    assert_eq!(alert["respawned_by"]["supervisor"], "patroni", "{alert:#}");
    assert_eq!(
        alert["respawned_by"]["supervisor_pid"],
        patroni.patroni_pid(),
        "{alert:#}"
    );
    assert_eq!(alert["stopped_by"]["loginuid"], 1000, "{alert:#}");
    assert_eq!(alert["stopped_by"]["comm"], "pg_ctl", "{alert:#}");
    let summary = alert["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("postgres respawned by patroni "),
        "{summary}"
    );
    assert!(!summary.contains("paused"), "{summary}");
    let respawned = alert["process"]["pid"].as_u64().unwrap() as u32;
    assert_ne!(respawned, first);
    assert_eq!(comm(respawned), "postgres");
    assert_eq!(
        state_of(respawned),
        'T',
        "the new postmaster is not stopped"
    );
    assert!(
        in_frozen_cgroup(respawned),
        "the new postmaster is not in a frozen cgroup"
    );
    // Held before its first instruction: no postmaster.pid, no connection.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        patroni.postmaster_pid(),
        None,
        "the held postmaster wrote its pid file"
    );
    assert!(
        !psql_answers(&patroni, &port),
        "a frozen postgres must not serve"
    );
    assert_eq!(state_of(respawned), 'T');

    // Thawed, it is the postmaster Patroni wanted.
    assert_eq!(
        sandbox.ok(&["thaw", "postgres"]).trim(),
        format!("thawed [{respawned}]")
    );
    assert_eq!(
        patroni.wait_for_postmaster(None, Duration::from_secs(30)),
        Some(respawned),
        "{}",
        bash(&format!("ps -ef | grep {} | grep -v grep || true", scope))
    );
    poll(Duration::from_secs(30), || {
        psql_answers(&patroni, &port).then_some(())
    })
    .expect("the thawed postgres does not serve");
    if let Some(alert) = sandbox.next_alert(Duration::from_millis(500)) {
        panic!("an alert after the thaw: {alert:#}");
    }

    // Paused, Patroni leaves a stopped postgres stopped.
    patronictl_as_person(&patroni, "pause --wait");
    assert!(patroni.is_paused(), "{}", patroni.status());
    let respawns = |a: &Value| a["finding"] == "respawn";
    let before = audited(&sandbox, respawns);
    as_person(&patroni.operator_stop_command());
    assert_eq!(
        patroni.wait_for_postmaster(None, 3 * Patroni::LOOP_WAIT),
        None,
        "paused patroni started postgres"
    );
    assert!(
        sandbox.next_alert(Duration::from_millis(100)).is_none(),
        "an alert while Patroni is paused"
    );
    assert_eq!(
        audited(&sandbox, respawns),
        before,
        "{:#?}",
        sandbox.audit()
    );
    let (code, explained) = explain_json(&sandbox, "postgres");
    assert_eq!(code, 0, "{explained:#}");
    assert_eq!(explained["state"], "stopped_by_operator", "{explained:#}");
    assert_eq!(explained["would_restart"], false, "{explained:#}");
    let by = watcher(&explained, "patroni");
    assert_eq!(by["would_restart"], false, "{by:#}");
    assert_eq!(by["state"], "paused (maintenance mode)", "{by:#}");
    let (code, text) = explain(&sandbox, "postgres");
    eprintln!("stopguard explain postgres (paused):\n{text}");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("Nothing would start it again now."), "{text}");
    assert!(text.contains("paused (maintenance mode)"), "{text}");
    let status = poll(Duration::from_secs(20), || {
        let status = sandbox.json(&["status"]);
        let service = status["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "postgres")?
            .clone();
        let by = watcher(&service, "patroni");
        (by["would_restart"] == false && by["state"] == "paused (maintenance mode)")
            .then_some(service)
    })
    .unwrap_or_else(|| {
        panic!(
            "status does not show patroni paused: {:#}",
            sandbox.json(&["status"])
        )
    });
    assert_eq!(status["state"], "stopped_by_operator", "{status:#}");
}

/// `stop --and-pause` pauses Patroni as the operator before the stop, so
/// that nothing starts postgres again; the window's close resumes Patroni,
/// which starts postgres, left running. Both switches are audited.
#[test]
fn stop_and_pause_pauses_patroni_and_the_windows_close_resumes_it() {
    let Some(_probes) = root_test("stop_and_pause_pauses_patroni_and_the_windows_close_resumes_it")
    else {
        return;
    };
    let patroni = Patroni::start();
    let config = patroni.config_path().display().to_string();
    let data = patroni.data_dir().display().to_string();
    // pg_ctl's fast stop: a SIGTERM (smart) would wait for Patroni's own
    // connection to end.
    let sandbox = watching(
        "ha-pause",
        "postgres",
        &format!("{PG_BIN}/postgres"),
        &format!(
            "stop_command = [\"setpriv\", \"--reuid=postgres\", \"--regid=postgres\", \"--init-groups\", \
             \"{PG_BIN}/pg_ctl\", \"-D\", \"{data}\", \"stop\", \"-m\", \"fast\"]\n"
        ),
    );
    let pause = format!("patronictl -c {config} pause --wait");
    let resume = format!("patronictl -c {config} resume --wait");

    let mut running = patroni.postmaster_pid().expect("no postmaster after start");
    for (round, window) in [(1, "w1"), (2, "w2")] {
        let out = as_operator(
            &sandbox,
            "stop postgres --and-pause --reason 'minor upgrade'",
        );
        eprintln!("stopguard stop postgres --and-pause:\n{out}");
        assert!(
            out.starts_with(&format!("postgres: running, pid {running}\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "\nwindow {window} open on postgres ('minor upgrade')\n"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!("\npatroni switched off: {pause}\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("\nstopped postgres (pid {running}, `setpriv ")),
            "{out}"
        );
        assert!(patroni.is_paused(), "{}", patroni.status());
        assert_eq!(
            patroni.wait_for_postmaster(None, 3 * Patroni::LOOP_WAIT),
            None,
            "postgres started again while Patroni was paused"
        );
        assert!(
            sandbox.next_alert(Duration::from_millis(100)).is_none(),
            "an alert while Patroni was paused"
        );
        let switched = sandbox
            .audit()
            .into_iter()
            .find(|a| a["event"] == "supervisor_switched" && a["window"] == window)
            .unwrap_or_else(|| panic!("no supervisor_switched: {:#?}", sandbox.audit()));
        assert_eq!(switched["on"], false, "{switched:#}");
        assert_eq!(switched["supervisor"], "patroni", "{switched:#}");
        assert_eq!(switched["service"], "postgres", "{switched:#}");
        assert_eq!(switched["command"], pause.as_str(), "{switched:#}");
        assert_eq!(switched["loginuid"], 1000, "{switched:#}");
        assert_eq!(switched["error"], Value::Null, "{switched:#}");

        // Closing the window resumes Patroni, which starts postgres.
        let resumed = if round == 1 {
            let out = as_operator(&sandbox, "window close postgres");
            eprintln!("stopguard window close postgres:\n{out}");
            assert_eq!(
                out,
                format!("window {window} on postgres closed\npatroni switched back on: {resume}\n")
            );
            Value::Null
        } else {
            // The answer as it crosses the socket.
            let answer: Value = serde_json::from_str(&as_person(&format!(
                "echo '{{\"command\":\"window_close\",\"target\":\"postgres\",\"thaw\":false,\"kill\":false}}' \
                 | socat -t 120 - UNIX-CONNECT:{}",
                sandbox.dir.join("sock").display()
            )))
            .unwrap();
            assert_eq!(answer["ok"], true, "{answer:#}");
            assert_eq!(answer["window"]["id"], window, "{answer:#}");
            answer["resumed"].clone()
        };
        if round == 2 {
            assert_eq!(
                resumed,
                serde_json::json!([{"supervisor": "patroni", "command": resume}]),
            );
        }
        assert!(!patroni.is_paused(), "{}", patroni.status());
        let restarted = patroni
            .wait_for_postmaster(Some(running), 5 * Patroni::LOOP_WAIT)
            .unwrap_or_else(|| panic!("patroni did not start postgres after the resume"));
        assert_ne!(state_of(restarted), 'T');
        assert!(!in_frozen_cgroup(restarted));
        assert!(
            sandbox.next_alert(Duration::from_millis(500)).is_none(),
            "an alert for the start after the window closed"
        );
        let back_on = sandbox
            .audit()
            .into_iter()
            .find(|a| {
                a["event"] == "supervisor_switched" && a["window"] == window && a["on"] == true
            })
            .unwrap_or_else(|| panic!("no supervisor_switched on: {:#?}", sandbox.audit()));
        assert_eq!(back_on["command"], resume.as_str(), "{back_on:#}");
        assert_eq!(back_on["loginuid"], 1000, "{back_on:#}");
        assert_eq!(back_on["error"], Value::Null, "{back_on:#}");
        running = restarted;
    }
}

/// Under mysqld_safe: `explain` names it and its shutdown flag file as the
/// off switch; its restart after an operator's kill -9 is frozen before the
/// server runs; `mysqladmin shutdown` is an operator stop that nothing
/// restarts.
#[test]
fn under_mysqld_safe_a_killed_servers_restart_is_frozen_and_mysqladmin_shutdown_is_a_stop() {
    let Some(_probes) = root_test(
        "under_mysqld_safe_a_killed_servers_restart_is_frozen_and_mysqladmin_shutdown_is_a_stop",
    ) else {
        return;
    };
    let mut mariadb = Mariadb::start();
    let safe = mariadb.mysqld_safe_pid();
    let first = mariadb.server_pid().expect("no server after start");
    let flag = format!("{}/mysqld.pid.shutdown", mariadb.dir().display());
    let sandbox = watching("ha-mariadb", "mariadb", "/usr/sbin/mariadbd", "");

    let (code, explained) = explain_json(&sandbox, "mariadb");
    assert_eq!(code, 3, "{explained:#}");
    assert_eq!(explained["main"]["pid"], first, "{explained:#}");
    let by = watcher(&explained, "mysqld_safe");
    assert_eq!(by["pid"], safe, "{by:#}");
    assert_eq!(by["would_restart"], true, "{by:#}");
    assert_eq!(by["off"], argv(&["touch", &flag]), "{by:#}");
    assert_eq!(by["on"], argv(&["rm", "-f", &flag]), "{by:#}");
    let (code, text) = explain(&sandbox, "mariadb");
    eprintln!("stopguard explain mariadb:\n{text}");
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains(&format!("\n  mysqld_safe (pid {safe}, ")),
        "{text}"
    );
    assert!(
        text.contains(&format!("switch it off:  touch {flag}")),
        "{text}"
    );

    // kill -9 by a person: mysqld_safe starts the server again, held.
    operator_signal(first, "KILL");
    let alert = sandbox
        .next_alert(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no alert; audit: {:#?}", sandbox.audit()));
    assert_eq!(alert["kind"], "respawn_after_operator_stop", "{alert:#}");
    assert_eq!(alert["service"], "mariadb", "{alert:#}");
    assert_eq!(
        alert["respawned_by"]["supervisor"], "mysqld_safe",
        "{alert:#}"
    );
    assert_eq!(alert["respawned_by"]["supervisor_pid"], safe, "{alert:#}");
    assert_eq!(alert["stopped_by"]["loginuid"], 1000, "{alert:#}");
    assert_eq!(alert["stopped_by"]["signal"], "SIGKILL", "{alert:#}");
    // The server itself, not the `nohup` mysqld_safe runs it with.
    assert_eq!(alert["process"]["exe"], "/usr/sbin/mariadbd", "{alert:#}");
    let respawned = alert["process"]["pid"].as_u64().unwrap() as u32;
    assert_ne!(respawned, first);
    assert_eq!(
        comm(respawned),
        "mariadbd",
        "{alert:#}\naudit: {:#?}\n{}",
        sandbox.audit(),
        bash(&format!(
            "cat {0}/mysqld_safe.log {0}/error.log; ps -ef | grep {0} | grep -v grep || true",
            mariadb.dir().display()
        ))
    );
    assert_eq!(
        ppid(respawned),
        safe,
        "{}",
        fs::read_to_string(format!("/proc/{respawned}/stat")).unwrap_or_default()
    );
    assert_eq!(state_of(respawned), 'T', "the new server is not stopped");
    assert!(in_frozen_cgroup(respawned), "the new server is not frozen");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        mariadb.server_pid(),
        None,
        "the held server wrote its pid file"
    );
    assert!(
        !mariadb.socket().exists()
            || std::process::Command::new("mariadb-admin")
                .arg("--no-defaults")
                .arg(format!("--socket={}", mariadb.socket().display()))
                .args(["--user=root", "--connect-timeout=2", "ping"])
                .output()
                .is_ok_and(|o| !o.status.success()),
        "a frozen server must not answer"
    );

    // Thawed, it serves; then the operator shuts it down for good.
    assert_eq!(
        sandbox.ok(&["thaw", "mariadb"]).trim(),
        format!("thawed [{respawned}]")
    );
    assert_eq!(
        mariadb.wait_for_server(Some(first), Duration::from_secs(30)),
        respawned
    );
    assert!(sandbox.next_alert(Duration::from_millis(500)).is_none());
    as_person(&mariadb.operator_stop_command());
    mariadb
        .mysqld_safe_exit(Duration::from_secs(30))
        .expect("mysqld_safe still runs after mysqladmin shutdown");
    assert!(
        sandbox.next_alert(Duration::from_secs(2)).is_none(),
        "an alert after mysqladmin shutdown"
    );
    let audit = sandbox.audit();
    let stop = audit
        .iter()
        .find(|a| a["finding"] == "operator_stop" && a["pid"] == respawned)
        .unwrap_or_else(|| panic!("no operator_stop of {respawned}: {audit:#?}"));
    eprintln!("the operator stop by mysqladmin: {stop:#}");
    assert_eq!(stop["service"], "mariadb", "{stop:#}");
    // The server asked to shut down signals itself (SIGTERM to its signal
    // thread); the person behind it is the one who ran mysqladmin.
    assert_eq!(stop["signal_name"], "SIGTERM", "{stop:#}");
    assert_eq!(stop["sender"]["pid"], respawned, "{stop:#}");
    assert_eq!(stop["loginuid"], 1000, "{stop:#}");
    assert_eq!(stop["via"]["comm"], "mysqladmin", "{stop:#}");
    assert_eq!(stop["via"]["intent"], "stop", "{stop:#}");
    assert_eq!(
        audited(&sandbox, |a| a["finding"] == "respawn"),
        1,
        "{audit:#?}"
    );
}

/// `explain` under monit names its check and `monit unmonitor` as the off
/// switch; once unmonitored, nothing would restart the service.
#[test]
fn explain_names_monit_until_it_is_unmonitored() {
    let Some(_probes) = root_test("explain_names_monit_until_it_is_unmonitored") else {
        return;
    };
    let mut sandbox = Sandbox::new("explain-monit");
    sandbox.start_monit();
    sandbox.start_agent("freeze");
    let rc = sandbox.dir.join("monitrc").display().to_string();
    let (code, explained) = explain_json(&sandbox, "sgdaemon");
    assert_eq!(code, 3, "{explained:#}");
    let by = watcher(&explained, "monit");
    assert_eq!(by["pid"], sandbox.supervisor_pid().unwrap(), "{by:#}");
    assert_eq!(by["name"], "sgdaemon", "{by:#}");
    assert_eq!(by["would_restart"], true, "{by:#}");
    assert_eq!(
        by["off"],
        argv(&["monit", "-c", &rc, "unmonitor", "sgdaemon"]),
        "{by:#}"
    );
    assert_eq!(
        by["on"],
        argv(&["monit", "-c", &rc, "monitor", "sgdaemon"]),
        "{by:#}"
    );
    let (code, text) = explain(&sandbox, "sgdaemon");
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains(&format!("switch it off:  monit -c {rc} unmonitor sgdaemon")),
        "{text}"
    );

    bash(&format!("monit -c {rc} unmonitor sgdaemon"));
    let (code, explained) = poll(Duration::from_secs(10), || {
        Some(explain_json(&sandbox, "sgdaemon")).filter(|(code, _)| *code == 0)
    })
    .unwrap_or_else(|| {
        panic!(
            "explain still exits 3: {:#}",
            explain_json(&sandbox, "sgdaemon").1
        )
    });
    assert_eq!(code, 0);
    let by = watcher(&explained, "monit");
    assert_eq!(by["would_restart"], false, "{by:#}");
    assert_eq!(by["state"], "Not monitored", "{by:#}");
    let (code, text) = explain(&sandbox, "sgdaemon");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("Nothing would start it again if it stopped now."),
        "{text}"
    );
}

/// `explain` under runit names the service dir and `sv down` (which stops
/// it too) as the off switch; once down, nothing would restart it.
#[test]
fn explain_names_runsv_until_the_service_is_down() {
    let Some(_probes) = root_test("explain_names_runsv_until_the_service_is_down") else {
        return;
    };
    let mut sandbox = Sandbox::new("explain-runsv");
    let daemon = sandbox.start_runsv();
    sandbox.start_agent("freeze");
    let sv = sandbox.dir.join("sv").display().to_string();
    let (code, explained) = explain_json(&sandbox, "sgdaemon");
    assert_eq!(code, 3, "{explained:#}");
    assert_eq!(explained["main"]["pid"], daemon, "{explained:#}");
    let by = watcher(&explained, "runit");
    assert_eq!(by["pid"], sandbox.supervisor_pid().unwrap(), "{by:#}");
    assert_eq!(by["name"], sv.as_str(), "{by:#}");
    assert_eq!(by["would_restart"], true, "{by:#}");
    assert_eq!(by["off"], argv(&["sv", "down", &sv]), "{by:#}");
    assert_eq!(by["on"], argv(&["sv", "up", &sv]), "{by:#}");
    assert_eq!(by["off_stops"], true, "{by:#}");
    let (code, text) = explain(&sandbox, "sgdaemon");
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains(&format!("switch it off:  sv down {sv} (this stops it too)")),
        "{text}"
    );

    // Polled until the agent has seen the daemon exit: just before, it
    // names a main process /proc no longer shows, with no runsv above it.
    bash(&format!("sv down {sv}"));
    let (code, explained) = poll(Duration::from_secs(10), || {
        Some(explain_json(&sandbox, "sgdaemon"))
            .filter(|(code, e)| *code == 0 && e["main"].is_null())
    })
    .unwrap_or_else(|| {
        panic!(
            "explain does not say it is down with nothing to restart it: {:#}",
            explain_json(&sandbox, "sgdaemon").1
        )
    });
    assert_eq!(code, 0);
    assert_eq!(explained["main"], Value::Null, "{explained:#}");
    let by = watcher(&explained, "runit");
    assert_eq!(by["would_restart"], false, "{by:#}");
    assert!(by["state"].as_str().unwrap().contains("down"), "{by:#}");
}
