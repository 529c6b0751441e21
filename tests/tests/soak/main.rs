//! The randomized soak: `cargo xtask soak --trials N [--seed S]`.
//!
//! Each trial draws, from its own seed, a supervisor, a scenario (an
//! operator stop the supervisor answers with a respawn, the operator's own
//! restart, a crash restart), the agent's policy, random delays and
//! injected faults (a kill -9 of the agent before the stop, after it or
//! after the respawn; a ring overflow hiding the respawn; the receiver down
//! until the alerts are out), runs it in a fresh sandbox and sorts what
//! went wrong into missed (a respawn after an operator stop without its
//! alert or its action), false (an alert or a freeze for the operator's
//! own restart or a crash restart) and lost (an alert the agent raised that
//! never reached the receiver). The one test is ignored, so `cargo xtask
//! test` leaves it out; STOPGUARD_SOAK_TRIALS and STOPGUARD_SOAK_SEED say
//! how many trials and from which seed. Trial i of seed S runs on seed
//! S + i, so `--seed S+i --trials 1` replays it alone.

use std::{
    collections::BTreeSet,
    fmt, fs,
    time::{Duration, Instant},
};

mod plan;

use serde_json::Value;

use self::plan::*;
use stopguard_tests::{
    Receiver, Sandbox, Stopped, Verb, as_operator, as_person, bash, in_frozen_cgroup, left_behind,
    operator_signal, root_test, sinks,
};

/// What went wrong in one trial, by kind.
#[derive(Default)]
struct Outcome {
    missed: Vec<String>,
    false_alarm: Vec<String>,
    lost: Vec<String>,
    /// The trial could not run as planned (a harness or set-up problem).
    error: Vec<String>,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.missed.is_empty()
            && self.false_alarm.is_empty()
            && self.lost.is_empty()
            && self.error.is_empty()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ok() {
            return write!(f, "ok");
        }
        let mut parts = Vec::new();
        for (what, list) in [
            ("missed", &self.missed),
            ("false", &self.false_alarm),
            ("lost", &self.lost),
            ("error", &self.error),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what}: {}", list.join("; ")));
            }
        }
        write!(f, "{}", parts.join(" | "))
    }
}

/// One trial's world: the sandbox, the receiver, every alert any of its
/// agents printed.
struct Trial<'a> {
    plan: &'a Plan,
    sandbox: Sandbox,
    receiver: Receiver,
    hook: String,
    agent_extra: String,
    printed: Vec<Value>,
    out: Outcome,
}

impl Trial<'_> {
    fn start_agent(&mut self) {
        self.sandbox
            .start_agent_with(self.plan.policy, &self.agent_extra, &self.hook);
    }

    /// Alerts printed within `timeout`, kept in `printed`.
    fn alerts_within(&mut self, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while let Some(alert) = self
            .sandbox
            .next_alert(deadline.saturating_duration_since(Instant::now()))
        {
            self.printed.push(alert.clone());
            got.push(alert);
        }
        got
    }

    /// The first alert naming a process started after `first`, within
    /// `timeout`; alerts before it (a loss with nothing started) are kept.
    fn alert_naming_a_start(&mut self, first: u32, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let alert = self.sandbox.next_alert(left)?;
            self.printed.push(alert.clone());
            if alert["process"]["pid"]
                .as_u64()
                .is_some_and(|p| p != first as u64)
            {
                return Some(alert);
            }
        }
    }

    /// kill -9 of the agent and a new one on the same config and state.
    fn restart_agent(&mut self) {
        self.alerts_within(Duration::from_millis(100));
        self.sandbox.agent.as_mut().unwrap().kill9();
        self.alerts_within(Duration::from_millis(200));
        self.start_agent();
    }

    fn agent_pid(&self) -> u32 {
        self.sandbox.agent.as_ref().unwrap().pid()
    }

    /// Waits until the agent's status says `state` for the service.
    fn wait_for_state(&mut self, state: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let status = self.sandbox.json(&["status"]);
            if status["services"][0]["state"] == state {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.out.error.push(format!(
            "the agent's status never said {state}: {}",
            self.sandbox.json(&["status"])
        ));
        false
    }

    /// The daemon processes (by comm: not the shells that start them).
    fn daemons(&self) -> Vec<u32> {
        self.sandbox
            .daemon_pids()
            .into_iter()
            .filter(|p| {
                fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sgdaemon")
            })
            .collect()
    }

    /// Waits until a daemon other than `first` has exec'd.
    fn wait_for_new_daemon(&self, first: u32) -> Option<u32> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(pid) = self.daemons().into_iter().find(|&p| p != first) {
                return Some(pid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits until `pid` has written its start line: it runs.
    fn runs(&self, pid: u32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.sandbox.data().contains(&format!("start {pid}\n")) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A start after `first` that nothing should have held: it runs, is
    /// not stopped or frozen, and no alert says it was a respawn.
    fn expect_not_alerted(&mut self, first: u32, what: &str) -> Option<u32> {
        let Some(pid) = self.wait_for_new_daemon(first) else {
            self.out
                .error
                .push(format!("the supervisor did not start it again ({what})"));
            return None;
        };
        if !self.runs(pid, Duration::from_secs(5)) {
            self.out.false_alarm.push(format!(
                "{what}: pid {pid} held (state {:?}, frozen cgroup {})",
                state(pid),
                in_frozen_cgroup(pid)
            ));
        }
        for alert in self.alerts_within(Duration::from_secs(2)) {
            self.out.false_alarm.push(format!(
                "{what}: alert {} {}",
                alert["kind"], alert["summary"]
            ));
        }
        if state(pid) == Some('T') || in_frozen_cgroup(pid) {
            self.out
                .false_alarm
                .push(format!("{what}: pid {pid} stopped or frozen"));
        }
        Some(pid)
    }

    /// The stop: waits until the main process `first` has exited (a zombie
    /// counts: its supervisor may be held).
    fn wait_exited(&mut self, first: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(state(first), None | Some('Z')) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.out
            .error
            .push(format!("pid {first} did not exit after the stop"));
        false
    }
}

/// The state letter of /proc/PID/stat, None once it is gone.
fn state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim().chars().next()
}

fn run_trial(plan: &Plan, name: &str) -> Outcome {
    let mut receiver = Receiver::start();
    if plan.receiver_down {
        receiver.down();
    }
    let hook = sinks(&receiver, &[("webhook", "/hook", "")]);
    let mut agent_extra = "group_interval = \"0s\"\n".to_string();
    if plan.overflow {
        agent_extra.push_str("ring_bytes = 4096\n");
    }
    let mut sandbox = Sandbox::new(name);
    let first = sandbox.start_supervisor(plan.supervisor);
    let mut t = Trial {
        plan,
        sandbox,
        receiver,
        hook,
        agent_extra,
        printed: Vec::new(),
        out: Outcome::default(),
    };
    t.start_agent();
    std::thread::sleep(plan.delays[0]);
    if plan.kill9 == Some(Kill9::BeforeStop) {
        t.restart_agent();
    }
    scenario(&mut t, first);
    deliveries(&mut t);
    let dir = t.sandbox.dir.clone();
    let frozen: Vec<u32> = t
        .printed
        .iter()
        .filter_map(|a| a["process"]["pid"].as_u64())
        .map(|p| p as u32)
        .collect();
    let mut out = std::mem::take(&mut t.out);
    drop(t);
    out.error.extend(left_behind(&dir, &frozen));
    out
}

/// Plays the scenario from the stop to the checks of what the agent did.
fn scenario(t: &mut Trial, first: u32) {
    let plan = t.plan;
    let dir = t.sandbox.dir.clone();
    let control = |verb| plan.supervisor.control(&dir, verb).unwrap();
    // Held while the restart must wait: for the agent's restart, or until
    // the agent is blind.
    let hold =
        (plan.kill9 == Some(Kill9::AfterStop) || plan.overflow) && plan.supervisor_restarts();
    let held = hold.then(|| Stopped::new(t.sandbox.supervisor_pid().unwrap()));

    if let Scenario::OperatorRestart { window: true, .. } = plan.scenario {
        as_operator(&t.sandbox, "window open sgdaemon --reason soak");
    }
    match plan.scenario {
        Scenario::Respawn(StopPath::Kill(signal)) => operator_signal(first, signal),
        Scenario::Respawn(StopPath::StopguardStop) => {
            as_operator(&t.sandbox, "stop sgdaemon --reason soak --wait 15s");
        }
        Scenario::Respawn(StopPath::SupervisorStop)
        | Scenario::OperatorRestart {
            restart: Restart::StopThenStart,
            ..
        } => {
            as_person(&control(Verb::Stop));
        }
        Scenario::OperatorRestart {
            restart: Restart::RestartCommand,
            ..
        } => {
            as_person(&control(Verb::Restart));
        }
        Scenario::Crash(Crash::Kill(signal)) => {
            bash(&format!("/bin/kill -{signal} {first}"));
        }
        Scenario::Crash(Crash::Exit) => {
            fs::write(dir.join("data.exit"), "").unwrap();
        }
    }
    let restart_command = matches!(
        plan.scenario,
        Scenario::OperatorRestart {
            restart: Restart::RestartCommand,
            ..
        }
    );
    if !restart_command {
        if !t.wait_exited(first) {
            return;
        }
        let seen = match plan.scenario {
            Scenario::Crash(_) => "not_running",
            _ => "stopped_by_operator",
        };
        // Only a held or a manual restart leaves the state to be seen.
        if (hold || !plan.supervisor_restarts()) && !t.wait_for_state(seen) {
            return;
        }
    }
    if plan.kill9 == Some(Kill9::AfterStop) {
        t.restart_agent();
    }
    // Blind: the burst fills the 4 KiB ring many times over, so every
    // record after it, the restart's among them, is lost.
    let blind = plan.overflow.then(|| {
        let blind = Stopped::new(t.agent_pid());
        bash("perl -e 'kill q(CONT), $$ for 1..200000'");
        blind
    });
    std::thread::sleep(plan.delays[1]);
    match plan.scenario {
        Scenario::Respawn(StopPath::SupervisorStop) => {
            bash(&control(Verb::Start));
        }
        Scenario::OperatorRestart {
            restart: Restart::StopThenStart,
            ..
        } => {
            as_person(&control(Verb::Start));
        }
        _ => {}
    }
    drop(held);
    if blind.is_some() {
        // The restart's exec happens while the agent cannot read.
        if t.wait_for_new_daemon(first).is_none() {
            t.out
                .error
                .push("no restart while the agent was blind".into());
        }
        drop(blind);
    }

    match plan.scenario {
        Scenario::Respawn(path) => respawn_caught(t, first, path),
        Scenario::OperatorRestart { .. } => {
            if let Some(pid) = t.expect_not_alerted(first, "operator restart") {
                after_respawn_kill9(t, pid, false);
            }
        }
        Scenario::Crash(_) => {
            if let Some(pid) = t.expect_not_alerted(first, "crash restart") {
                after_respawn_kill9(t, pid, false);
            }
        }
    }
}

/// A respawn after an operator stop: an alert names it and the configured
/// action was taken.
fn respawn_caught(t: &mut Trial, first: u32, path: StopPath) {
    let plan = t.plan;
    let Some(alert) = t.alert_naming_a_start(first, Duration::from_secs(20)) else {
        t.out.missed.push(format!(
            "no alert naming a respawn (daemons now {:?})",
            t.daemons()
        ));
        return;
    };
    let pid = alert["process"]["pid"].as_u64().unwrap() as u32;
    let window = matches!(path, StopPath::StopguardStop);
    let kinds: &[&str] = match (plan.overflow, window) {
        (true, _) => &[
            "events_lost",
            "respawn_in_window",
            "respawn_after_operator_stop",
        ],
        (false, true) => &["respawn_in_window"],
        (false, false) => &["respawn_after_operator_stop"],
    };
    if !kinds.iter().any(|k| alert["kind"] == *k) {
        t.out.missed.push(format!(
            "alert of kind {} for pid {pid}: {}",
            alert["kind"], alert["summary"]
        ));
    }
    // Inside a window a respawn follows on_respawn (freeze by default).
    let freezes = window || plan.policy == "freeze";
    let action = alert["action"].as_str().unwrap_or_default();
    if freezes {
        if !action.starts_with("frozen") {
            t.out
                .missed
                .push(format!("pid {pid} not frozen: action {action:?}"));
        }
        std::thread::sleep(Duration::from_millis(500));
        if state(pid) != Some('T') || !in_frozen_cgroup(pid) {
            t.out.missed.push(format!(
                "pid {pid} state {:?}, in a frozen cgroup: {}",
                state(pid),
                in_frozen_cgroup(pid)
            ));
        }
        if t.sandbox.data().contains(&format!("start {pid}\n")) {
            t.out
                .missed
                .push(format!("pid {pid} ran before the freeze"));
        }
    } else if !t.runs(pid, Duration::from_secs(5)) {
        t.out.false_alarm.push(format!(
            "policy alert, yet pid {pid} was held (state {:?}); action {action:?}",
            state(pid)
        ));
    }
    after_respawn_kill9(t, pid, freezes);
}

/// kill -9 of the agent after the respawn: what it froze stays frozen and
/// the next agent lists it.
fn after_respawn_kill9(t: &mut Trial, pid: u32, frozen: bool) {
    if t.plan.kill9 != Some(Kill9::AfterRespawn) {
        return;
    }
    t.restart_agent();
    let status = t.sandbox.json(&["status"]);
    if frozen {
        if state(pid) != Some('T') || !in_frozen_cgroup(pid) {
            t.out.missed.push(format!(
                "after the agent's kill -9, pid {pid} is no longer held (state {:?})",
                state(pid)
            ));
        }
        if !status["frozen"]
            .as_array()
            .is_some_and(|f| f.iter().any(|p| p == pid))
        {
            t.out.missed.push(format!(
                "the restarted agent does not list pid {pid} as frozen: {status}"
            ));
        }
    } else {
        for alert in t.alerts_within(Duration::from_secs(1)) {
            t.out.false_alarm.push(format!(
                "after a restart of the agent: alert {} {}",
                alert["kind"], alert["summary"]
            ));
        }
    }
}

/// Every alert raised reached the receiver (once it was up), by id.
fn deliveries(t: &mut Trial) {
    t.alerts_within(Duration::from_millis(300));
    let printed: BTreeSet<String> = t
        .printed
        .iter()
        .filter_map(|a| a["id"].as_str().map(String::from))
        .collect();
    let audited: BTreeSet<String> = t
        .sandbox
        .audit()
        .iter()
        .filter_map(|a| a["alert"]["id"].as_str().map(String::from))
        .collect();
    for id in printed.difference(&audited) {
        t.out
            .lost
            .push(format!("alert {id} printed but not in the audit log"));
    }
    let raised: BTreeSet<String> = printed.union(&audited).cloned().collect();
    if t.plan.receiver_down {
        std::thread::sleep(t.plan.delays[2]);
        t.receiver.up();
    }
    // Retries back off from 1 s, doubling: 30 s covers a receiver down for
    // up to about 15 s.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let received: BTreeSet<String> = t
            .receiver
            .received()
            .iter()
            .filter_map(|r| r.headers.get("webhook-id").cloned())
            .collect();
        let missing: Vec<&String> = raised.difference(&received).collect();
        if missing.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            t.out.lost.push(format!(
                "never received: {missing:?} (status {})",
                t.sandbox.json(&["status"])
            ));
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "the randomized soak: cargo xtask soak --trials N"]
fn soak() {
    let Some(_probes) = root_test("soak") else {
        return;
    };
    let env = |name: &str| {
        std::env::var(name).ok().map(|v| {
            v.parse::<u64>()
                .unwrap_or_else(|e| panic!("{name}={v}: {e}"))
        })
    };
    let trials = env("STOPGUARD_SOAK_TRIALS").unwrap_or(10);
    let seed = env("STOPGUARD_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    });
    println!("soak: {trials} trials from seed {seed}");
    // A trial's panic is its outcome, told in one line with the trial.
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let (mut missed, mut false_alarm, mut lost) = (0, 0, 0);
    let mut failed = Vec::new();
    for i in 0..trials {
        let plan = Plan::new(seed.wrapping_add(i));
        println!("trial {}/{trials} seed {}: {plan}", i + 1, plan.seed);
        let at = Instant::now();
        let out = std::panic::catch_unwind(|| run_trial(&plan, &format!("soak{i}")))
            .unwrap_or_else(|panic| Outcome {
                error: vec![
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panicked".into())
                        .replace('\n', " "),
                ],
                ..Outcome::default()
            });
        println!("  {out} ({:.1} s)", at.elapsed().as_secs_f64());
        missed += usize::from(!out.missed.is_empty());
        false_alarm += usize::from(!out.false_alarm.is_empty());
        lost += usize::from(!out.lost.is_empty());
        if !out.ok() {
            failed.push((plan.seed, out.to_string()));
        }
    }
    println!(
        "soak: {trials} trials, {missed} missed, {false_alarm} false, {lost} lost (seed {seed})"
    );
    println!(
        "soak: {:.0} s; {} trials failed",
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    for (seed, what) in &failed {
        println!("  failed: cargo xtask soak --seed {seed} --trials 1   # {what}");
    }
    assert!(
        failed.is_empty(),
        "{} of {trials} trials failed",
        failed.len()
    );
}
