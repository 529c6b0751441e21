//! The operator: a person logged in as uid 1000 who stops services, and
//! how the agent names them.

use std::time::Duration;

use serde_json::Value;

use crate::{Sandbox, bash, stopguard_bin};

/// An operator (loginuid 1000) stops `pid` with /bin/kill.
pub fn operator_kill(pid: u32) {
    operator_signal(pid, "TERM");
}

/// An operator (loginuid 1000) sends `signal` (TERM, INT...) to `pid` with
/// /bin/kill.
pub fn operator_signal(pid: u32, signal: &str) {
    as_person(&format!("/bin/kill -{signal} {pid}"));
}

/// Runs a bash script from an operator's shell (loginuid 1000); returns its
/// stdout.
pub fn as_person(script: &str) -> String {
    bash(&format!("echo 1000 > /proc/self/loginuid && {script}"))
}

/// How the agent names a uid: "name (uid N)", or "uid N" when the host
/// has no such user.
pub fn person(uid: u32) -> String {
    match bash(&format!("getent passwd {uid} | cut -d: -f1 || true")).trim() {
        "" => format!("uid {uid}"),
        name => format!("{name} (uid {uid})"),
    }
}

/// Runs `stopguard ARGS` against `sandbox`'s agent from an operator's shell
/// (loginuid 1000); returns its stdout.
pub fn as_operator(sandbox: &Sandbox, args: &str) -> String {
    bash(&format!(
        "echo 1000 > /proc/self/loginuid && {} --socket {} {args}",
        stopguard_bin().display(),
        sandbox.dir.join("sock").display()
    ))
}

/// `n` operator stops of the runsv-supervised daemon, each answered by a
/// respawn the alert policy lets run; returns the alerts.
pub fn respawns(sandbox: &Sandbox, mut running: u32, n: usize) -> Vec<Value> {
    (0..n)
        .map(|_| {
            operator_kill(running);
            let alert = sandbox
                .next_alert(Duration::from_secs(10))
                .unwrap_or_else(|| panic!("no alert; audit: {:#?}", sandbox.audit()));
            running = sandbox.wait_for_daemon(Some(running));
            alert
        })
        .collect()
}
