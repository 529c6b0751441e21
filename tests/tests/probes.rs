//! The real kernel programs under a scripted workload: exact records out.

use std::{process::Command, time::Duration};

use serde_json::Value;
use stopguard_tests::{Trace, bash, fixture, root_test, stopguard_bin};

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

/// The one event of `kind` for which `field` equals `value`.
fn one<'a>(events: &'a [Value], kind: &str, field: &str, value: u64) -> &'a Value {
    let found: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == kind && e.pointer(field) == Some(&Value::from(value)))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind} with {field} = {value}, got {found:#?}"
    );
    found[0]
}

#[test]
fn workload_yields_exact_exec_fork_signal_exit_records() {
    let Some(_probes) = root_test("workload_yields_exact_exec_fork_signal_exit_records") else {
        return;
    };
    let trace = Trace::start(&["--json"]);
    let out = bash(&format!("exec {}", fixture("workload.sh").display()));
    let pids: Vec<u64> = out.split_whitespace().map(|p| p.parse().unwrap()).collect();
    let [shell, sleeper, exiter] = pids[..] else {
        panic!("workload printed {out:?}");
    };
    let traced = trace.stop(Vec::new());
    assert!(
        traced.status.success(),
        "trace exited {}: {}",
        traced.status,
        traced.stderr
    );
    let events = traced.events();

    let exec = one(&events, "exec", "/pid", sleeper);
    assert_eq!(exec["filename"], "/usr/bin/sleep", "{exec}");
    assert_eq!(exec["comm"], "sleep", "{exec}");
    assert_eq!(exec["ppid"], shell, "{exec}");
    assert_eq!(exec["loginuid"], 1000, "{exec}");
    assert_eq!(exec["uid"], 0, "{exec}");
    assert_eq!(exec["guard_stopped"], false, "{exec}");
    assert_eq!(
        exec["chain"][0]["pid"], shell,
        "the chain starts at the parent: {exec}"
    );
    assert_eq!(exec["chain"][0]["comm"], "workload.sh", "{exec}");
    // Past the workload the chain runs through processes seeded from /proc:
    // their keys (pid + start time) must agree with the kernel's.
    let chain = exec["chain"].as_array().unwrap();
    assert_eq!(
        chain.last().unwrap()["pid"],
        1,
        "the chain reaches pid 1: {exec}"
    );

    let fork = one(&events, "fork", "/child_pid", sleeper);
    assert_eq!(fork["pid"], shell, "{fork}");
    assert_eq!(fork["loginuid"], 1000, "{fork}");

    let signals = of_kind(&events, "signal");
    let term = one(&events, "signal", "/target/pid", sleeper);
    assert_eq!(term["signal"], 15, "{term}");
    assert_eq!(term["signal_name"], "SIGTERM", "{term}");
    assert_eq!(term["sender"]["pid"], shell, "{term}");
    assert_eq!(term["sender"]["loginuid"], 1000, "{term}");
    assert_eq!(term["sender"]["uid"], 0, "{term}");
    assert_eq!(term["target"]["comm"], "sleep", "{term}");
    assert_eq!(term["result"], "delivered", "{term}");
    assert!(
        !signals.iter().any(|s| s["signal"] == 17),
        "SIGCHLD must be dropped in the kernel"
    );

    let killed = one(&events, "exit", "/pid", sleeper);
    assert_eq!(killed["signal"], 15, "{killed}");
    assert_eq!(killed["exit_code"], Value::Null, "{killed}");
    assert_eq!(killed["ppid"], shell, "{killed}");
    let exited = one(&events, "exit", "/pid", exiter);
    assert_eq!(exited["exit_code"], 3, "{exited}");
    assert_eq!(exited["signal"], Value::Null, "{exited}");
    assert_eq!(exited["comm"], "sh", "{exited}");
    let exiter_exec = one(&events, "exec", "/pid", exiter);
    assert_eq!(exiter_exec["filename"], "/bin/sh", "{exiter_exec}");
    assert_eq!(
        exiter_exec["args"],
        serde_json::json!(["/bin/sh", "-c", "exit 3"])
    );

    // Threads are not processes: the workload starts none, and no exit of a
    // thread may masquerade as a process exit.
    assert!(
        of_kind(&events, "lost").is_empty(),
        "records were lost: {}",
        traced.stderr
    );
    assert!(traced.stderr.contains(", 0 lost"), "{}", traced.stderr);
    // The events come in order: fork, exec, signal, exit of the sleeper.
    let time = |e: &Value| e["time"].as_str().unwrap().to_string();
    assert!(time(fork) <= time(exec) && time(exec) <= time(term) && time(term) <= time(killed));
}

#[test]
fn a_multithreaded_exit_is_one_record_named_after_the_process() {
    let Some(_probes) = root_test("a_multithreaded_exit_is_one_record") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("stopguard-threads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("threaded");
    bash(&format!(
        "cc -O1 -pthread -o {} {}",
        binary.display(),
        fixture("threaded.c").display()
    ));
    let trace = Trace::start(&["--json", "--comm", "threaded", "--comm", "worker"]);
    let status = Command::new(&binary).status().unwrap();
    let traced = trace.stop(Vec::new());
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(status.code(), Some(7));
    let events = traced.events();
    let exits: Vec<&Value> = events.iter().filter(|e| e["kind"] == "exit").collect();
    assert_eq!(exits.len(), 1, "one process, one exit: {exits:#?}");
    assert_eq!(exits[0]["comm"], "threaded", "{}", exits[0]);
    assert_eq!(exits[0]["exit_code"], 7, "{}", exits[0]);
    assert!(
        events.iter().all(|e| e["kind"] != "fork"),
        "threads are not forks: {events:#?}"
    );
}

#[test]
fn a_full_ring_reports_lost_records() {
    let Some(_probes) = root_test("a_full_ring_reports_lost_records") else {
        return;
    };
    let trace = Trace::start(&["--json", "--ring-bytes", "4096"]);
    // A burst far faster than any reader: 200,000 harmless signals.
    bash("perl -e 'kill q(CONT), $$ for 1..200000'");
    let traced = trace.stop(Vec::new());
    assert!(traced.status.success(), "{}", traced.stderr);
    let lost: u64 = traced
        .events()
        .iter()
        .filter(|e| e["kind"] == "lost")
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    assert!(lost > 0, "no loss reported; stderr: {}", traced.stderr);
    assert!(
        traced.stderr.contains(&format!(", {lost} lost")),
        "the summary must agree with the lost lines ({lost}): {}",
        traced.stderr
    );
}

#[test]
fn comm_filter_keeps_only_that_process_and_human_lines_show_the_chain() {
    let Some(_probes) = root_test("comm_filter_keeps_only_that_process") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("stopguard-comm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("sgmarker");
    std::fs::copy("/usr/bin/true", &marker).unwrap();
    let trace = Trace::start(&["--comm", "sgmarker"]);
    bash(&format!("{} ; /usr/bin/true", marker.display()));
    let traced = trace.stop(Vec::new());
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(traced.status.success(), "{}", traced.stderr);
    assert!(
        !traced.lines.is_empty(),
        "nothing traced: {}",
        traced.stderr
    );
    for line in &traced.lines {
        assert!(line.contains("sgmarker"), "filter let through: {line}");
    }
    let exec = traced
        .lines
        .iter()
        .find(|l| l.contains(" EXEC "))
        .unwrap_or_else(|| panic!("no EXEC line in {:#?}", traced.lines));
    assert!(exec.contains(&marker.display().to_string()), "{exec}");
    assert!(
        exec.contains("<- bash("),
        "the chain names the parent: {exec}"
    );
    assert!(
        traced
            .lines
            .iter()
            .any(|l| l.contains(" EXIT ") && l.contains("exit 0"))
    );
}

#[test]
fn non_root_gets_one_clear_line() {
    if root_test("non_root_gets_one_clear_line").is_none() {
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(stopguard_bin())
        .arg("trace")
        .output()
        .expect("running setpriv");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "stopguard: must run as root to load its eBPF programs (try sudo)"
    );
}

#[test]
fn run_starts_on_the_embedded_config_and_stops_cleanly() {
    let Some(_probes) = root_test("run_starts_on_the_embedded_config") else {
        return;
    };
    let child = Command::new(stopguard_bin())
        .arg("run")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    bash("/usr/bin/true");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("watching 6 services (postgres, mysql, mongodb, redis, etcd, clickhouse)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("config=the embedded default config"),
        "{stderr}"
    );
    assert!(stderr.contains("stopguard stopped"), "{stderr}");
    let summary = stderr
        .lines()
        .rev()
        .find(|l| l.contains(" events (exec "))
        .unwrap_or_else(|| panic!("no summary: {stderr}"));
    assert!(!summary.contains(" 0 events"), "it saw nothing: {summary}");
}
