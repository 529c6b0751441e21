//! `stopguard stop`: maintenance in one command. A window (the open one or
//! a new one), then the service's stop command, run with the operator's
//! login identity, or SIGTERM to its main process; the answer comes once the
//! main process is gone.

use std::time::{Duration, Instant};

use super::Agent;
use std::sync::{Arc, Mutex};

use super::explain::{MainArgs, Watchers};
use crate::{
    alert::WindowInfo,
    audit::AgentEvent,
    control::{
        Peer, Stop, Stopped, SwitchRun,
        server::{Answer, Reply},
    },
    custody::actions,
    decide::requests,
    detect::{SwitchedOff, Window},
    monitor::Monitor,
    supervisors::{
        bounded::Credentials,
        watch::{Subject, Watcher, shell_words},
    },
    sys::clock::boot_ns,
};

impl Agent {
    pub(super) fn stop(&mut self, monitor: &mut Monitor, stop: Stop, peer: Peer) -> Reply<Stop> {
        let held = self.custody.held_pids();
        let plan = match requests::stop(&mut self.detector, &stop, peer, &held, boot_ns()) {
            Ok(plan) => plan,
            Err(why) => return Answer::refuse(why),
        };
        self.perform(monitor, plan.effects);
        let Stop {
            service,
            wait_secs,
            and_pause,
            ..
        } = stop;
        let command = plan.command;
        let main = plan
            .main
            .and_then(|pid| monitor.table().live(pid))
            .map(|p| (p.pid, p.key.start_ticks));
        let mut answer = Stopped {
            service,
            window: WindowInfo::new(&plan.window, &self.clock),
            pid: None,
            held_frozen: None,
            command: None,
            output: None,
            signal: None,
            seconds: None,
            paused: Vec::new(),
            cluster: plan.window.cluster.clone(),
        };
        if plan.held_frozen {
            answer.held_frozen = plan.main;
            return Answer::Now(Ok(answer));
        }
        let pause = match and_pause {
            false => None,
            true => match self.explanation(monitor, &answer.service) {
                Ok((_, subject, main)) => Some(Pause {
                    subject,
                    main,
                    watchers: self.watchers.clone(),
                    switched: self.switched.clone(),
                }),
                Err(err) => return Answer::refuse(err),
            },
        };
        let wait = Duration::from_secs(wait_secs);
        Answer::later(async move {
            if let Some(pause) = pause {
                answer.paused = pause.run(&answer.window.id, peer.loginuid, wait).await;
            }
            stop_service(answer, command, main, peer.loginuid, wait).await
        })
    }

    /// Records the off switches run for windows since last asked, in their
    /// windows (to undo as each closes) and in the audit log.
    pub(super) fn record_switches(&mut self) {
        let switched = std::mem::take(&mut *self.switched.0.lock().unwrap());
        for (window, service, switch, run) in switched {
            self.audit.write(AgentEvent::SupervisorSwitched {
                service,
                window: window.clone(),
                supervisor: run.supervisor.clone(),
                on: false,
                command: run.command.clone(),
                loginuid: switch.1,
                error: run.error.clone(),
                uid: switch.0.run_as.as_ref().map(|c| c.uid),
                cluster: None,
            });
            if run.error.is_none() && !self.detector.switched_off(&window, switch.0) {
                tracing::warn!(
                    "window {window} closed before `{}` was recorded: switch it back on by hand",
                    run.command
                );
            }
        }
    }

    /// Switches back on what `stop --and-pause` switched off for `window`,
    /// as the person who switched it off; each run is audited.
    pub(super) fn resume_switches(
        &self,
        window: &Window,
    ) -> impl std::future::Future<Output = Vec<SwitchRun>> + Send + use<> {
        let switches = window.switched_off.clone();
        let loginuid = window.opened_by_loginuid;
        let (id, service) = (window.id.clone(), window.service.clone());
        let audit = self.audit.clone();
        async move {
            let mut runs = Vec::new();
            // Undone in the reverse order they were switched off.
            for switch in switches.iter().rev() {
                let run = run_switch(
                    &switch.supervisor,
                    &switch.on,
                    loginuid,
                    switch.run_as.as_ref(),
                )
                .await;
                tracing::info!(
                    "window {id}: {} switched back on: `{}`{}",
                    run.supervisor,
                    run.command,
                    run.error
                        .as_ref()
                        .map(|e| format!(" FAILED: {e}"))
                        .unwrap_or_default()
                );
                audit.write(AgentEvent::SupervisorSwitched {
                    service: service.clone(),
                    window: id.clone(),
                    supervisor: run.supervisor.clone(),
                    on: true,
                    command: run.command.clone(),
                    loginuid,
                    error: run.error.clone(),
                    uid: switch.run_as.as_ref().map(|c| c.uid),
                    cluster: None,
                });
                runs.push(run);
            }
            runs
        }
    }
}

/// The off switches run by `stop --and-pause`, waiting to be recorded in
/// their windows: (window, service, (switch, login uid), how it went).
#[derive(Clone, Default)]
pub struct Switched(
    #[allow(clippy::type_complexity)]
    Arc<Mutex<Vec<(String, String, (SwitchedOff, Option<u32>), SwitchRun)>>>,
);

/// What `stop --and-pause` switches off before the stop.
struct Pause {
    subject: Subject,
    main: MainArgs,
    watchers: Watchers,
    switched: Switched,
}

impl Pause {
    /// Looks at what watches the service and runs each off switch of what
    /// would start it again, as the operator (`loginuid`).
    async fn run(self, window: &str, loginuid: Option<u32>, wait: Duration) -> Vec<SwitchRun> {
        let Pause {
            subject,
            main,
            watchers,
            switched,
        } = self;
        let service = subject.service.clone();
        let found = tokio::task::spawn_blocking(move || {
            let mut subject = subject;
            watchers.look(&mut subject, main)
        })
        .await
        .unwrap_or_default();
        let mut runs = Vec::new();
        for watcher in found.into_iter().filter(|w| w.would_restart) {
            let (Some(off), Some(on)) = (watcher.off.clone(), watcher.on.clone()) else {
                continue;
            };
            if !watcher.trusted {
                continue;
            }
            // Its switches run as its own user, never as root for it.
            let run_as = match credentials_of(&watcher) {
                Ok(credentials) => credentials,
                Err(error) => {
                    runs.push(SwitchRun {
                        supervisor: watcher.supervisor.clone(),
                        command: shell_words(&off),
                        error: Some(error),
                    });
                    continue;
                }
            };
            let run = tokio::time::timeout(
                wait,
                run_switch(&watcher.supervisor, &off, loginuid, run_as.as_ref()),
            )
            .await
            .unwrap_or_else(|_| SwitchRun {
                supervisor: watcher.supervisor.clone(),
                command: shell_words(&off),
                error: Some(format!("did not finish within {} s", wait.as_secs())),
            });
            let switch = SwitchedOff {
                supervisor: watcher.supervisor.clone(),
                off,
                on,
                run_as,
            };
            switched.0.lock().unwrap().push((
                window.to_string(),
                service.clone(),
                (switch, loginuid),
                run.clone(),
            ));
            runs.push(run);
        }
        runs
    }
}

/// The credentials a watcher's switches run with: its process's, none for
/// root; an error when its process is gone or is now another user's.
pub(super) fn credentials_of(watcher: &Watcher) -> Result<Option<Credentials>, String> {
    let Some(pid) = watcher.pid else {
        return Ok(None);
    };
    match Credentials::of(pid) {
        Some(c) if Some(c.uid) == watcher.uid || watcher.uid.is_none() => {
            Ok(Some(c).filter(|c| !c.is_root()))
        }
        Some(c) => Err(format!(
            "its process (pid {pid}) now runs as uid {}, not uid {}: not run",
            c.uid,
            watcher.uid.unwrap_or(0)
        )),
        None => Err(format!("its process (pid {pid}) is gone: not run")),
    }
}

/// Runs one supervisor switch as `loginuid`, with `run_as` (the
/// supervisor's credentials; root when none).
pub(super) async fn run_switch(
    supervisor: &str,
    argv: &[String],
    loginuid: Option<u32>,
    run_as: Option<&Credentials>,
) -> SwitchRun {
    let result = run_as_operator(argv, loginuid, run_as, Duration::from_secs(120)).await;
    SwitchRun {
        supervisor: supervisor.to_string(),
        command: shell_words(argv),
        error: result.err(),
    }
}

/// Stops a service: runs `command` (with the operator's login uid, so what
/// it does is theirs in the audit trail) or sends SIGTERM to `main`, then
/// waits up to `wait` for `main` to exit.
async fn stop_service(
    mut answer: Stopped,
    command: Option<Vec<String>>,
    main: Option<(u32, u64)>,
    loginuid: Option<u32>,
    wait: Duration,
) -> Result<Stopped, String> {
    let started = Instant::now();
    let service = answer.service.clone();
    let stays = format!("window {} stays open", answer.window.id);
    answer.pid = main.map(|m| m.0);
    // An off switch that stops the service (`sv down`) has done the stop.
    let already_gone = main.is_some_and(|(pid, ticks)| !actions::still_runs(pid, ticks));
    if already_gone {
    } else if let Some(argv) = command {
        let shown = argv.join(" ");
        match run_as_operator(&argv, loginuid, None, wait).await {
            Ok(tail) => {
                answer.command = Some(shown);
                answer.output = Some(tail);
            }
            Err(err) => return Err(format!("{err}; {stays}")),
        }
    } else if let Some((pid, _)) = main {
        match nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        ) {
            Ok(()) => answer.signal = Some("SIGTERM".into()),
            // Gone between the look and the signal (an off switch that
            // stops it, `sv down`, takes a moment).
            Err(nix::errno::Errno::ESRCH) => {}
            Err(err) => return Err(format!("sending SIGTERM to pid {pid}: {err}; {stays}")),
        }
    }
    if let Some((pid, ticks)) = main {
        while actions::still_runs(pid, ticks) {
            if started.elapsed() > wait {
                return Err(format!(
                    "{service} (pid {pid}) still runs {} s later; {stays}",
                    wait.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    answer.seconds = Some((started.elapsed().as_secs_f64() * 100.0).round() / 100.0);
    Ok(answer)
}

/// Runs `argv` with `loginuid` as its login identity, and `run_as`'s
/// credentials when given; returns the last lines of its output, or what
/// went wrong.
async fn run_as_operator(
    argv: &[String],
    loginuid: Option<u32>,
    run_as: Option<&Credentials>,
    wait: Duration,
) -> Result<String, String> {
    let shown = argv.join(" ");
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for name in crate::sys::notify::ENV_VARS {
        cmd.env_remove(name);
    }
    if let Some(uid) = loginuid {
        let digits = uid.to_string().into_bytes();
        // SAFETY: between fork and exec only async-signal-safe calls:
        // open, write, close on a path and buffer made beforehand.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(c"/proc/self/loginuid".as_ptr(), libc::O_WRONLY);
                if fd >= 0 {
                    libc::write(fd, digits.as_ptr().cast(), digits.len());
                    libc::close(fd);
                }
                Ok(())
            });
        }
    }
    // After the login uid: writing it needs root.
    if let Some(credentials) = run_as {
        credentials.apply(cmd.as_std_mut());
    }
    let output = match tokio::time::timeout(wait, cmd.output()).await {
        Err(_) => {
            return Err(format!(
                "`{shown}` did not finish within {} s",
                wait.as_secs()
            ));
        }
        Ok(Err(err)) => return Err(format!("running `{shown}`: {err}")),
        Ok(Ok(output)) => output,
    };
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(5)..];
    if !output.status.success() {
        return Err(format!(
            "`{shown}` failed ({}): {}",
            output.status,
            tail.join(" / ")
        ));
    }
    Ok(tail.join("\n"))
}
