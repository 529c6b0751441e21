//! Fleet mode under Patroni, all real: a three-member Patroni cluster on
//! this host and the agent's fleet records share one etcd 3.4.
//! `stop --and-pause --cluster` opens a cluster window, pauses Patroni once
//! for every member and stops the postgres the agent watches; `window
//! close --cluster` resumes Patroni as its own user, and so does the host
//! that paused it when the window runs out with nobody closing it.

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::Value;
use stopguard_tests::{
    Agent, Etcd, Patroni, PatroniCluster, Sandbox, etcd::Mode, etcd_test, root_test, stopguard_bin,
    within,
};

/// PostgreSQL 15's programs, as Debian installs them.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The agent's host, the Patroni cluster and the etcd they share, and the
/// postgres the agent watches: the leader's (node1's) postmaster.
struct Setup {
    // Dropped in this order: the agent, Patroni, then etcd.
    sandbox: Sandbox,
    cluster: PatroniCluster,
    etcd: Etcd,
    postmaster: u32,
}

impl Setup {
    /// etcd, three Patroni members over it, and the agent in fleet mode on
    /// it watching node1's postgres, as the host of node1 would: the
    /// others, as on their own hosts, are not its service. Its
    /// `stop_command` is pg_ctl's fast stop (a SIGTERM would wait for
    /// Patroni's own connection).
    fn start(name: &str) -> Setup {
        let began = Instant::now();
        let mut sandbox = Sandbox::new(name);
        let etcd = Etcd::start(&sandbox.dir.join("etcd"), Mode::Plain);
        let cluster = PatroniCluster::start(&format!("127.0.0.1:{}", etcd.port), 3);
        eprintln!("{name}: 3 Patroni members up after {:?}", began.elapsed());
        let node1 = &cluster.members()[0];
        let d = sandbox.dir.display();
        let config = format!(
            "[agent]\nhost = \"db-1\"\naudit_log = \"{d}/audit.jsonl\"\nsocket = \"{d}/sock\"\n\
             state_dir = \"{d}/state\"\n\n[[service]]\nname = \"postgres\"\n\
             exe = [\"{}/postgres\"]\non_unexpected_respawn = \"freeze\"\n\
             stop_command = [\"setpriv\", \"--reuid=postgres\", \"--regid=postgres\", \
             \"--init-groups\", \"{PG_BIN}/pg_ctl\", \"-D\", \"{}\", \"stop\", \"-m\", \"fast\"]\n\n\
             [fleet]\netcd = [\"{}\"]\ncluster = \"pg-main\"\nheartbeat = \"1s\"\n\
             unreachable_after = \"3s\"\n",
            node1.bin_dir().display(),
            node1.data_dir().display(),
            etcd.endpoint()
        );
        sandbox.agent = Some(Agent::start(&sandbox.dir.join("stopguard.toml"), &config));
        let postmaster = node1.postmaster_pid().expect("node1 runs no postgres");
        within(10, "the agent knows node1's postgres running", || {
            let status = sandbox.json(&["status"]);
            let service = status["services"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == "postgres")?
                .clone();
            (service["pid"] == postmaster).then_some(())
        });
        within(10, "the agent present in etcd", || {
            let out = sandbox.client(&["fleet", "status", "--json"]);
            let view: Value = serde_json::from_slice(&out.stdout).ok()?;
            (view["hosts"][0]["presence"]["host"] == "db-1").then_some(())
        });
        Setup {
            sandbox,
            cluster,
            etcd,
            postmaster,
        }
    }

    /// `stopguard ARGS` from an operator's shell (loginuid 1000).
    fn operator(&self, args: &str) -> Output {
        Command::new("bash")
            .arg("-c")
            .arg(format!(
                "echo 1000 > /proc/self/loginuid && exec {} --socket {} {args}",
                stopguard_bin().display(),
                self.sandbox.dir.join("sock").display()
            ))
            .output()
            .unwrap()
    }

    fn config(&self) -> String {
        self.cluster.members()[0]
            .config_path()
            .display()
            .to_string()
    }

    /// Whether Patroni's cluster config in etcd says it is paused.
    fn paused_in_etcd(&self) -> bool {
        let key = format!("/service/{}/config", self.cluster.scope());
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.etcd.endpoint(),
                "get",
                "--print-value-only",
            ])
            .arg(&key)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str::<Value>(text.trim()).is_ok_and(|c| c["pause"] == true)
    }

    /// The `supervisor_switched` audit entries with `on`.
    fn switched(&self, on: bool) -> Vec<Value> {
        self.sandbox
            .audit()
            .into_iter()
            .filter(|e| e["event"] == "supervisor_switched" && e["on"] == on)
            .collect()
    }
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn postgres_uid() -> u64 {
    run_ok(Command::new("id").args(["-u", "postgres"]))
        .trim()
        .parse()
        .unwrap()
}

/// Said as the command line says it, with its exit status.
fn said(out: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `stop --and-pause --cluster`, checked: Patroni paused once, for every
/// member, and the watched postgres stopped and not started again.
fn stop_and_pause(setup: &Setup, length: &str) -> String {
    let out = setup.operator(&format!(
        "stop postgres --and-pause --cluster --for {length} --reason 'minor upgrade'"
    ));
    let text = said(&out);
    eprintln!("stopguard stop postgres --and-pause --cluster:\n{text}");
    assert_eq!(out.status.code(), Some(0), "{text}");
    let pause = format!("patronictl -c {} pause --wait", setup.config());
    assert!(
        text.contains(&format!("\npatroni switched off: {pause} for every host\n")),
        "{text}"
    );
    assert!(text.contains("applied on all 1 hosts"), "{text}");
    assert!(
        text.contains(&format!(
            "\nstopped postgres (pid {}, `setpriv ",
            setup.postmaster
        )),
        "{text}"
    );
    assert!(
        text.contains("when done: stopguard window close postgres --cluster\n"),
        "{text}"
    );
    assert_eq!(setup.cluster.paused(), [true, true, true]);
    assert!(
        setup.paused_in_etcd(),
        "etcd's /service/SCOPE/config not paused"
    );
    let member = &setup.cluster.members()[0];
    assert_eq!(
        member.wait_for_postmaster(None, 3 * Patroni::LOOP_WAIT),
        None,
        "postgres started again while Patroni was paused"
    );
    for other in &setup.cluster.members()[1..] {
        assert!(
            other.postmaster_pid().is_some(),
            "{}'s postgres stopped too: the stop is this host's",
            other.name
        );
    }
    let off = setup.switched(false);
    assert_eq!(off.len(), 1, "pause ran once: {off:#?}");
    assert_eq!(off[0]["command"], pause.as_str(), "{off:#?}");
    assert_eq!(off[0]["cluster"], "pg-main", "{off:#?}");
    assert_eq!(off[0]["uid"], postgres_uid(), "{off:#?}");
    assert_eq!(off[0]["loginuid"], 1000, "{off:#?}");
    assert_eq!(off[0]["error"], Value::Null, "{off:#?}");
    text.lines()
        .find_map(|l| l.strip_prefix("cluster window "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no cluster window id in: {text}"))
        .to_string()
}

/// Patroni resumed by the agent, as its user: every member out of
/// maintenance mode, the stopped postgres started again by Patroni.
fn assert_resumed(setup: &Setup, id: &str, loginuid: u64) {
    within(30, "every member out of maintenance mode", || {
        (setup.cluster.paused() == [false, false, false]).then_some(())
    });
    assert!(
        !setup.paused_in_etcd(),
        "etcd's /service/SCOPE/config still paused"
    );
    // Audited once `patronictl resume --wait` is done, after the members.
    let on = within(30, "the resume audited", || {
        let on = setup.switched(true);
        (!on.is_empty()).then_some(on)
    });
    assert_eq!(on.len(), 1, "resume ran once: {on:#?}");
    let resume = format!("patronictl -c {} resume --wait", setup.config());
    assert_eq!(on[0]["command"], resume.as_str(), "{on:#?}");
    assert_eq!(on[0]["window"], id, "{on:#?}");
    assert_eq!(on[0]["uid"], postgres_uid(), "as Patroni's user: {on:#?}");
    assert_eq!(on[0]["loginuid"], loginuid, "{on:#?}");
    assert_eq!(on[0]["error"], Value::Null, "{on:#?}");
    let member = &setup.cluster.members()[0];
    member
        .wait_for_postmaster(Some(setup.postmaster), Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "Patroni did not start postgres after the resume; audit: {:#?}",
                setup.sandbox.audit()
            )
        });
}

#[test]
fn stop_and_pause_pauses_a_patroni_cluster_once_and_the_cluster_close_resumes_it() {
    let test = "stop_and_pause_pauses_a_patroni_cluster_once_and_the_cluster_close_resumes_it";
    let Some(_probes) = root_test(test) else {
        return;
    };
    if !etcd_test(test) {
        return;
    }
    let began = Instant::now();
    let setup = Setup::start("fleet-patroni-close");
    let id = stop_and_pause(&setup, "10m");

    let out = setup.operator("window close postgres --cluster");
    let text = said(&out);
    eprintln!("stopguard window close postgres --cluster:\n{text}");
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "\npatroni switched back on: patronictl -c {} resume --wait\n",
            setup.config()
        )),
        "{text}"
    );
    assert_resumed(&setup, &id, 1000);
    assert_eq!(setup.switched(false).len(), 1, "paused once in all");
    eprintln!("{test}: {:?}", began.elapsed());
}

#[test]
fn a_cluster_window_that_runs_out_is_resumed_by_the_host_that_paused() {
    let test = "a_cluster_window_that_runs_out_is_resumed_by_the_host_that_paused";
    let Some(_probes) = root_test(test) else {
        return;
    };
    if !etcd_test(test) {
        return;
    }
    let began = Instant::now();
    let setup = Setup::start("fleet-patroni-expiry");
    let id = stop_and_pause(&setup, "20s");
    assert!(setup.switched(true).is_empty(), "resumed before its end");
    within(40, "the window gone when its lease ends", || {
        let status = setup.sandbox.json(&["status"]);
        status["windows"].as_array()?.is_empty().then_some(())
    });
    // Nobody closed it: the host that paused Patroni resumes it, as the
    // person who paused it.
    assert_resumed(&setup, &id, 1000);
    eprintln!("{test}: {:?}", began.elapsed());
}
