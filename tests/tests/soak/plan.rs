//! One trial's plan, all drawn from its seed: the supervisor, the
//! scenario, the agent's policy, the faults and the delays.

use std::{fmt, path::Path, time::Duration};

use stopguard_tests::{Supervisor, Verb};

/// splitmix64: a seed in, a stream of well-mixed numbers out.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// True with probability `percent` %.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Scenario {
    /// An operator stops the service; the supervisor brings it back.
    Respawn(StopPath),
    /// A person stops and starts it again through the supervisor (inside a
    /// window they opened, or not).
    OperatorRestart { restart: Restart, window: bool },
    /// It dies with nobody's stop, and the supervisor restarts it.
    Crash(Crash),
}

#[derive(Clone, Copy, Debug)]
pub enum StopPath {
    /// kill -SIGNAL from a login shell.
    Kill(&'static str),
    /// `stopguard stop` (a window, then SIGTERM from the agent).
    StopguardStop,
    /// The supervisor's own stop command run by a person; later a script
    /// (config management, a cron job) runs its start command.
    SupervisorStop,
}

#[derive(Clone, Copy, Debug)]
pub enum Restart {
    /// The supervisor's stop command, then its start command.
    StopThenStart,
    /// The supervisor's restart command.
    RestartCommand,
}

#[derive(Clone, Copy, Debug)]
pub enum Crash {
    /// kill -SIGNAL from a process with no login identity.
    Kill(&'static str),
    /// The service exits by itself.
    Exit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kill9 {
    BeforeStop,
    /// After the agent saw the stop, before the supervisor acts on it.
    AfterStop,
    /// After the respawn (or the restart) was reported.
    AfterRespawn,
}

/// One trial, all drawn from its seed.
pub struct Plan {
    pub seed: u64,
    pub supervisor: Supervisor,
    pub scenario: Scenario,
    /// on_unexpected_respawn: "freeze" or "alert".
    pub policy: &'static str,
    pub kill9: Option<Kill9>,
    pub overflow: bool,
    pub receiver_down: bool,
    /// Before the stop, between the stop and the start, before the
    /// receiver comes back.
    pub delays: [Duration; 3],
}

impl Plan {
    pub fn new(seed: u64) -> Plan {
        let mut rng = Rng(seed);
        let supervisor = rng.pick(&Supervisor::ALL);
        // A daemon that monit starts in the background of a shell ignores
        // SIGINT and SIGQUIT, as any `cmd &` of a non-interactive shell does.
        let signals: &[&str] = match supervisor {
            Supervisor::Monit => &["TERM", "KILL"],
            _ => &["TERM", "INT", "QUIT", "KILL"],
        };
        let scenario = match rng.below(10) {
            0..=5 => Scenario::Respawn(match rng.below(4) {
                0 | 1 => StopPath::Kill(rng.pick(signals)),
                2 => StopPath::StopguardStop,
                _ => StopPath::SupervisorStop,
            }),
            6 | 7 => Scenario::OperatorRestart {
                restart: if supervisor.control(Path::new("/"), Verb::Restart).is_some()
                    && rng.chance(50)
                {
                    Restart::RestartCommand
                } else {
                    Restart::StopThenStart
                },
                window: rng.chance(30),
            },
            _ => Scenario::Crash(if rng.chance(30) {
                Crash::Exit
            } else {
                Crash::Kill(rng.pick(signals))
            }),
        };
        let policy = if rng.chance(75) { "freeze" } else { "alert" };
        let mut kill9 = match rng.below(10) {
            0 => Some(Kill9::BeforeStop),
            1 => Some(Kill9::AfterStop),
            2 => Some(Kill9::AfterRespawn),
            _ => None,
        };
        // The operator's own start must be seen to be told from a respawn:
        // records lost over it leave the agent nothing to tell them apart.
        let overflow = !matches!(scenario, Scenario::OperatorRestart { .. }) && rng.chance(25);
        if overflow && kill9 == Some(Kill9::AfterStop) {
            kill9 = None;
        }
        if matches!(
            scenario,
            Scenario::OperatorRestart {
                restart: Restart::RestartCommand,
                ..
            }
        ) && kill9 == Some(Kill9::AfterStop)
        {
            kill9 = Some(Kill9::AfterRespawn);
        }
        let receiver_down = rng.chance(25);
        let delays = [rng.millis(1500), rng.millis(3000), rng.millis(3000)];
        Plan {
            seed,
            supervisor,
            scenario,
            policy,
            kill9,
            overflow,
            receiver_down,
            delays,
        }
    }

    /// Whether the supervisor restarts the service on its own after the
    /// stop (it is then held with SIGSTOP when the restart must wait).
    pub fn supervisor_restarts(&self) -> bool {
        matches!(
            self.scenario,
            Scenario::Respawn(StopPath::Kill(_) | StopPath::StopguardStop) | Scenario::Crash(_)
        )
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scenario = match self.scenario {
            Scenario::Respawn(StopPath::Kill(s)) => format!("respawn after kill -{s} by a person"),
            Scenario::Respawn(StopPath::StopguardStop) => "respawn after `stopguard stop`".into(),
            Scenario::Respawn(StopPath::SupervisorStop) => {
                "respawn after the supervisor's stop by a person, start by a script".into()
            }
            Scenario::OperatorRestart { restart, window } => format!(
                "operator restart ({}){}",
                match restart {
                    Restart::StopThenStart => "stop, then start",
                    Restart::RestartCommand => "restart command",
                },
                if window { " in a window" } else { "" }
            ),
            Scenario::Crash(Crash::Kill(s)) => format!("crash restart after kill -{s} by a script"),
            Scenario::Crash(Crash::Exit) => "crash restart after an exit".into(),
        };
        let mut faults = Vec::new();
        if let Some(k) = self.kill9 {
            faults.push(format!("agent kill -9 {k:?}"));
        }
        if self.overflow {
            faults.push("ring overflow".into());
        }
        if self.receiver_down {
            faults.push("receiver down".into());
        }
        if faults.is_empty() {
            faults.push("none".into());
        }
        write!(
            f,
            "{:?}, {scenario}, policy {}, faults: {}, delays {:?}",
            self.supervisor,
            self.policy,
            faults.join(" + "),
            self.delays.map(|d| d.as_millis())
        )
    }
}
