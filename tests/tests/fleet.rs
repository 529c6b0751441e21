//! Fleet mode against a real etcd 3.4 on loopback: a cluster window opened
//! through the agent reaches every host (the agent and simulated peers
//! running the real fleet code), freezes a respawn and closes everywhere;
//! records from strangers are refused; a host cut off from etcd keeps its
//! window, alerts, and reconciles on heal; a lease's expiry closes the
//! window, a host whose agent died shows down; TLS with etcd's own users.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use stopguard_tests::{
    Etcd, Sandbox, etcd::Mode, etcd_test, operator_kill, partition::Partition, root_test, state_of,
    stopguard_bin, within,
};

const ROOT: &str = "/stopguard/pg-main";

/// The `[fleet]` table for `endpoint`, quick to notice a cut: heartbeat
/// 1 s, unreachable after 3 s. Goes after the sandbox's `[[service]]`.
fn fleet_table(endpoint: &str, extra: &str) -> String {
    format!(
        "\n[fleet]\netcd = [\"{endpoint}\"]\ncluster = \"pg-main\"\nheartbeat = \"1s\"\nunreachable_after = \"3s\"\n{extra}"
    )
}

/// Simulated hosts of the cluster (`stopguard fleet simulate`): the real
/// fleet link without probes, each watching `sgdaemon`.
struct Peers {
    child: Child,
    out: std::path::PathBuf,
}

impl Peers {
    fn start(dir: &Path, endpoint: &str, hosts: &[&str]) -> Peers {
        let config = dir.join("peers.toml");
        std::fs::write(
            &config,
            format!("[agent]\nhost = \"peers\"\n{}", fleet_table(endpoint, "")),
        )
        .unwrap();
        let out = dir.join("peers.out");
        let mut command = Command::new(stopguard_bin());
        command
            .args(["fleet", "simulate", "--config"])
            .arg(&config)
            .args(["--service", "sgdaemon"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null());
        for host in hosts {
            command.args(["--host", host]);
        }
        Peers {
            child: command.spawn().expect("starting stopguard fleet simulate"),
            out,
        }
    }

    /// What the peers printed: one JSON line per window applied or closed.
    fn said(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The hosts with a live presence record.
fn live(etcd: &Etcd) -> Vec<String> {
    etcd.keys(&format!("{ROOT}/hosts/"))
        .iter()
        .map(|k| k.rsplit('/').next().unwrap().to_string())
        .collect()
}

fn audit_of(sandbox: &Sandbox, event: &str) -> Vec<Value> {
    sandbox
        .audit()
        .into_iter()
        .filter(|e| e["event"] == event)
        .collect()
}

/// A window record as another host would write it.
fn record(id: &str, host: &str, service: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({
        "id": id, "service": service, "hosts": "*", "reason": "kernel update",
        "by": {"uid": 0, "loginuid": 1000, "user": "bob", "host": host},
        "opened_at": now, "expires_at": now + 600,
    })
    .to_string()
}

/// Makes `host` a member of the cluster, as its agent would.
fn member(etcd: &Etcd, host: &str) {
    etcd.put(
        &format!("{ROOT}/members/{host}"),
        &json!({"host": host, "version": "0.1.0", "last_seen": 1, "pinned": false}).to_string(),
    );
}

fn delete(etcd: &Etcd, key: &str) {
    use base64::{Engine, engine::general_purpose::STANDARD as B64};
    etcd.post_json("/v3/kv/deleterange", &json!({"key": B64.encode(key)}), None);
}

/// The agent's local windows: (id, reason).
fn local_windows(sandbox: &Sandbox) -> Vec<(String, String)> {
    sandbox.json(&["status"])["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["id"].as_str().unwrap().to_string(),
                w["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_cluster_window_reaches_every_host_freezes_a_respawn_and_closes_everywhere() {
    let test = "a_cluster_window_reaches_every_host_freezes_a_respawn_and_closes_everywhere";
    let Some(_probes) = root_test(test) else {
        return;
    };
    if !etcd_test(test) {
        return;
    }
    let mut sandbox = Sandbox::new("fleet-window");
    let etcd = Etcd::start(&sandbox.dir.join("etcd"), Mode::Plain);
    let first = sandbox.start_runsv();
    sandbox.start_agent_with("alert", "", &fleet_table(&etcd.endpoint(), ""));
    let peers = Peers::start(&sandbox.dir, &etcd.endpoint(), &["db-2", "db-3"]);
    within(15, "three hosts present", || {
        (live(&etcd).len() == 3).then_some(())
    });

    let out = sandbox.client(&[
        "window",
        "open",
        "sgdaemon",
        "--cluster",
        "--for",
        "10m",
        "--reason",
        "minor upgrade",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for host in ["test-host", "db-2", "db-3"] {
        assert!(
            text.contains(&format!("  {host:<16} applied as w1")),
            "{text}"
        );
    }
    assert!(text.contains("applied on all 3 hosts"), "{text}");
    let id = text
        .strip_prefix("cluster window ")
        .and_then(|t| t.split_whitespace().next())
        .unwrap()
        .to_string();
    let windows = local_windows(&sandbox);
    assert_eq!(windows.len(), 1, "{windows:?}");
    assert!(windows[0].1.contains(&id), "{windows:?}");
    let applied = audit_of(&sandbox, "cluster_window_applied");
    assert_eq!(applied[0]["id"], id.as_str(), "{applied:?}");
    assert_eq!(applied[0]["window"], "w1", "{applied:?}");
    assert_eq!(applied[0]["by"]["host"], "test-host", "{applied:?}");

    // The operator's stop and the supervisor's respawn, frozen as in any
    // window, alerted with the cluster.
    operator_kill(first);
    let alert = sandbox
        .next_alert(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no alert; audit: {:#?}", sandbox.audit()));
    assert_eq!(alert["kind"], "respawn_in_window", "{alert:#}");
    assert_eq!(alert["cluster"], "pg-main", "{alert:#}");
    assert_eq!(alert["window"]["id"], "w1", "{alert:#}");
    let respawned = alert["process"]["pid"].as_u64().unwrap() as u32;

    // One view of the cluster: this host holds the respawn.
    let view = within(10, "fleet status shows the held pid", || {
        let view = sandbox.json(&["fleet", "status"]);
        let me = view["hosts"]
            .as_array()?
            .iter()
            .find(|h| h["host"] == "test-host")?
            .clone();
        (me["presence"]["held"] == json!([respawned])).then_some(view)
    });
    assert_eq!(view["hosts"].as_array().unwrap().len(), 3, "{view:#}");
    let text = sandbox.ok(&["fleet", "status"]);
    assert!(
        text.starts_with("cluster pg-main: 3 hosts, 3 up\n"),
        "{text}"
    );
    assert!(text.contains(&format!("(HELD {respawned})")), "{text}");
    let list = sandbox.ok(&["window", "list"]);
    assert!(
        list.contains(&format!("{id}  sgdaemon  hosts `*`  'minor upgrade'")),
        "{list}"
    );
    assert_eq!(list.matches("applied as w1").count(), 3, "{list}");

    // Closed for the cluster with --thaw: every host's window ends, the
    // respawn held here runs.
    let status = sandbox.ok(&["status"]);
    assert!(
        status.contains(&format!(
            "\nfleet: cluster pg-main, etcd answers; cluster windows here: {id} as w1"
        )),
        "{status}"
    );
    let out = sandbox.ok(&["window", "close", "sgdaemon", "--cluster", "--thaw"]);
    assert_eq!(
        out,
        format!(
            "cluster window {id} on sgdaemon closed for every host; it was applied on: db-2 (w1), db-3 (w1), test-host (w1)\n"
        )
    );
    within(10, "the local window closed", || {
        local_windows(&sandbox).is_empty().then_some(())
    });
    within(10, "the respawn thawed", || {
        (state_of(respawned) != 'T').then_some(())
    });
    let closed = audit_of(&sandbox, "cluster_window_closed");
    assert_eq!(closed[0]["id"], id.as_str(), "{closed:?}");
    assert_eq!(closed[0]["by"]["host"], "test-host", "{closed:?}");
    within(10, "both peers closed it", || {
        let said = peers.said();
        let closed = |host: &str| {
            said.iter()
                .any(|s| s["host"] == host && s["event"] == "closed")
        };
        (closed("db-2") && closed("db-3")).then_some(())
    });
    within(10, "its record and acks gone from etcd", || {
        (etcd.keys(&format!("{ROOT}/windows/")).is_empty()
            && etcd.keys(&format!("{ROOT}/acks/{id}/")).is_empty())
        .then_some(())
    });
}

#[test]
fn records_from_a_stranger_or_malformed_are_refused_and_a_members_is_applied() {
    let test = "records_from_a_stranger_or_malformed_are_refused_and_a_members_is_applied";
    let Some(_probes) = root_test(test) else {
        return;
    };
    if !etcd_test(test) {
        return;
    }
    let mut sandbox = Sandbox::new("fleet-records");
    let etcd = Etcd::start(&sandbox.dir.join("etcd"), Mode::Plain);
    sandbox.start_runsv();
    sandbox.start_agent_with("alert", "", &fleet_table(&etcd.endpoint(), ""));
    within(10, "the agent present", || {
        (live(&etcd) == ["test-host"]).then_some(())
    });

    etcd.put(
        &format!("{ROOT}/windows/c2-evil"),
        &record("c2-evil", "evil", "sgdaemon"),
    );
    etcd.put(&format!("{ROOT}/windows/c3-db-2"), "{not json");
    member(&etcd, "db-2");
    etcd.put(
        &format!("{ROOT}/windows/c4-db-2"),
        &record("c9-db-2", "db-2", "sgdaemon"),
    );
    let refused = within(10, "three records refused", || {
        let refused = audit_of(&sandbox, "cluster_window_refused");
        (refused.len() == 3).then_some(refused)
    });
    let why = |id: &str| {
        refused
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["why"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{id} not refused: {refused:?}"))
    };
    assert!(why("c2-evil").contains("not a member"), "{refused:?}");
    assert!(
        why("c3-db-2").contains("not a window record"),
        "{refused:?}"
    );
    assert!(why("c4-db-2").contains("not its key's"), "{refused:?}");
    assert!(local_windows(&sandbox).is_empty());

    // A member's well-formed record is applied and acknowledged.
    etcd.put(
        &format!("{ROOT}/windows/c1-db-2"),
        &record("c1-db-2", "db-2", "sgdaemon"),
    );
    let ack = within(10, "the agent's ack", || {
        etcd.get(&format!("{ROOT}/acks/c1-db-2/test-host"))
    });
    let ack: Value = serde_json::from_str(&ack).unwrap();
    assert_eq!(ack["window"], "w1", "{ack}");
    let windows = local_windows(&sandbox);
    assert_eq!(
        windows[0].1,
        "kernel update (cluster pg-main window c1-db-2, by bob on db-2)"
    );
    let applied = audit_of(&sandbox, "cluster_window_applied");
    assert_eq!(applied[0]["by"]["user"], "bob", "{applied:?}");
    assert_eq!(applied[0]["by"]["host"], "db-2", "{applied:?}");

    // The agent restarted: its lease (and the ack under it) went with the
    // last one; the window it keeps is acknowledged again.
    sandbox.agent.take().unwrap().terminate();
    within(10, "the ack gone with the lease", || {
        etcd.get(&format!("{ROOT}/acks/c1-db-2/test-host"))
            .is_none()
            .then_some(())
    });
    sandbox.start_agent_with("alert", "", &fleet_table(&etcd.endpoint(), ""));
    within(10, "acknowledged again", || {
        etcd.get(&format!("{ROOT}/acks/c1-db-2/test-host"))
    });
    assert_eq!(local_windows(&sandbox).len(), 1);

    // Its record gone (its lease ended): the window ends here too.
    delete(&etcd, &format!("{ROOT}/windows/c1-db-2"));
    within(10, "the local window closed", || {
        local_windows(&sandbox).is_empty().then_some(())
    });
    let closed = audit_of(&sandbox, "cluster_window_closed");
    assert!(
        closed[0]["why"].as_str().unwrap().contains("lease ended"),
        "{closed:?}"
    );
}

#[test]
fn cut_off_from_etcd_the_agent_keeps_its_window_alerts_and_reconciles_on_heal() {
    let test = "cut_off_from_etcd_the_agent_keeps_its_window_alerts_and_reconciles_on_heal";
    let Some(_probes) = root_test(test) else {
        return;
    };
    if !etcd_test(test) {
        return;
    }
    let mut sandbox = Sandbox::new("fleet-cut");
    let mut etcd = Etcd::start(&sandbox.dir.join("etcd"), Mode::Plain);
    let relay = Partition::start(etcd.port);
    sandbox.start_runsv();
    sandbox.start_agent_with("alert", "", &fleet_table(&relay.endpoint(), ""));
    let _peers = Peers::start(&sandbox.dir, &etcd.endpoint(), &["db-2"]);
    within(15, "two hosts present", || {
        (live(&etcd).len() == 2).then_some(())
    });
    let out = sandbox.ok(&["window", "open", "sgdaemon", "--cluster", "--for", "10m"]);
    assert!(out.contains("applied on all 2 hosts"), "{out}");
    let first_id = out.split_whitespace().nth(2).unwrap().to_string();

    relay.cut();
    let alert = sandbox
        .next_alert(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no fleet_unreachable alert; audit: {:#?}", sandbox.audit()));
    assert_eq!(alert["kind"], "fleet_unreachable", "{alert:#}");
    assert_eq!(alert["cluster"], "pg-main", "{alert:#}");
    let status = sandbox.json(&["status"]);
    assert_eq!(status["fleet"]["reachable"], false, "{status:#}");
    let text = sandbox.ok(&["status"]);
    assert!(
        text.contains("\n  FLEET: etcd of cluster pg-main NOT ANSWERING since "),
        "{text}"
    );
    // Cut off, it keeps enforcing the window it has.
    assert_eq!(local_windows(&sandbox).len(), 1);

    // Meanwhile the cluster window is closed elsewhere and another opened.
    delete(&etcd, &format!("{ROOT}/windows/{first_id}"));
    etcd.put(
        &format!("{ROOT}/windows/c5-db-2"),
        &record("c5-db-2", "db-2", "sgdaemon"),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(local_windows(&sandbox)[0].1.contains(&first_id));

    relay.heal();
    let windows = within(15, "the new cluster window applied on heal", || {
        let windows = local_windows(&sandbox);
        (windows.len() == 1 && windows[0].1.contains("c5-db-2")).then_some(windows)
    });
    assert_eq!(windows[0].0, "w2", "{windows:?}");
    let closed = audit_of(&sandbox, "cluster_window_closed");
    assert_eq!(closed[0]["id"], first_id.as_str(), "{closed:?}");
    assert!(
        closed[0]["why"]
            .as_str()
            .unwrap()
            .contains("gone from etcd"),
        "{closed:?}"
    );
    within(10, "the agent linked again", || {
        (sandbox.json(&["status"])["fleet"]["reachable"] == true).then_some(())
    });
    assert!(
        etcd.get(&format!("{ROOT}/acks/c5-db-2/test-host"))
            .is_some()
    );

    // etcd itself restarted: the agent's presence comes back.
    etcd.stop();
    within(15, "the agent notices etcd gone", || {
        (sandbox.json(&["status"])["fleet"]["reachable"] == false).then_some(())
    });
    etcd.start_again();
    within(20, "the agent present again", || {
        live(&etcd).contains(&"test-host".to_string()).then_some(())
    });
    assert_eq!(
        local_windows(&sandbox).len(),
        1,
        "nothing lost over the restart"
    );
}

#[test]
fn a_lease_expiry_closes_the_window_and_a_dead_host_shows_down() {
    let test = "a_lease_expiry_closes_the_window_and_a_dead_host_shows_down";
    let Some(_probes) = root_test(test) else {
        return;
    };
    if !etcd_test(test) {
        return;
    }
    let mut sandbox = Sandbox::new("fleet-expiry");
    let etcd = Etcd::start(&sandbox.dir.join("etcd"), Mode::Plain);
    sandbox.start_runsv();
    sandbox.start_agent_with("alert", "", &fleet_table(&etcd.endpoint(), ""));
    let mut peers = Peers::start(&sandbox.dir, &etcd.endpoint(), &["db-2"]);
    within(15, "two hosts present", || {
        (live(&etcd).len() == 2).then_some(())
    });
    let out = sandbox.ok(&["window", "open", "sgdaemon", "--cluster", "--for", "3s"]);
    assert!(out.contains("applied on all 2 hosts"), "{out}");
    within(10, "the window gone when its lease ends", || {
        local_windows(&sandbox).is_empty().then_some(())
    });
    within(10, "its record gone from etcd", || {
        etcd.keys(&format!("{ROOT}/windows/"))
            .is_empty()
            .then_some(())
    });

    // A host whose agent died: its lease ends, it shows down.
    peers.kill9();
    let out = within(15, "db-2 down", || {
        let out = sandbox.client(&["fleet", "status"]);
        (out.status.code() == Some(4)).then_some(out)
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("cluster pg-main: 2 hosts, 1 up\n"),
        "{text}"
    );
    assert!(text.contains("db-2             DOWN since "), "{text}");

    // A window opened meanwhile names it, and says it was not applied there.
    let out = sandbox.client(&["window", "open", "sgdaemon", "--cluster", "--for", "1m"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(
        text.contains("  db-2             DOWN since ")
            && text.contains(": not applied; it applies the window when it is back\n")
            && text.ends_with("NOT applied on: db-2\n"),
        "{text}"
    );
}

#[test]
fn tls_and_etcd_users_carry_a_cluster_window() {
    let test = "tls_and_etcd_users_carry_a_cluster_window";
    let Some(_probes) = root_test(test) else {
        return;
    };
    if !etcd_test(test) {
        return;
    }
    let mut sandbox = Sandbox::new("fleet-tls");
    let etcd = Etcd::start(&sandbox.dir.join("etcd"), Mode::TlsAuth);
    let path = |p: Option<std::path::PathBuf>| p.unwrap().display().to_string();
    let tls = format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nuser = \"stopguard\"\npassword_file = \"{}\"\n",
        path(etcd.ca_file()),
        path(etcd.cert_file()),
        path(etcd.key_file()),
        path(etcd.password_file()),
    );
    sandbox.start_runsv();
    sandbox.start_agent_with("alert", "", &fleet_table(&etcd.endpoint(), &tls));
    within(10, "the agent present", || {
        let out = sandbox.client(&["fleet", "status", "--json"]);
        let view: Value = serde_json::from_slice(&out.stdout).ok()?;
        (view["hosts"][0]["presence"]["host"] == "test-host").then_some(())
    });
    let config = sandbox.dir.join("stopguard.toml");
    let out = sandbox.ok(&["check-config", config.to_str().unwrap(), "--reach"]);
    assert!(
        out.contains("etcd answers: cluster pg-main has 1 member\n"),
        "{out}"
    );
    let out = sandbox.ok(&["window", "open", "sgdaemon", "--cluster", "--for", "10m"]);
    assert!(out.contains("  test-host        applied as w1"), "{out}");

    // A wrong password is said as etcd says it.
    let wrong = sandbox.dir.join("wrong.password");
    std::fs::write(&wrong, "not-it\n").unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&path(etcd.password_file()), wrong.to_str().unwrap());
    let bad = sandbox.dir.join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let out = sandbox.client(&["check-config", bad.to_str().unwrap(), "--reach"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authentication failed"), "{err}");
}
