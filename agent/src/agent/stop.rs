//! `stopguard stop`: maintenance in one command. A window (the open one or
//! a new one), then the service's stop command, run with the operator's
//! login identity, or SIGTERM to its main process; the answer comes once the
//! main process is gone.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::Agent;
use crate::{
    actions,
    alert::WindowInfo,
    clock::boot_ns,
    control::{
        Peer, Stopped,
        server::{Answer, error, ok},
    },
    detect::{ControlCommand, Intent},
    monitor::Monitor,
};

impl Agent {
    pub(super) fn stop(
        &mut self,
        monitor: &mut Monitor,
        service: String,
        reason: String,
        for_secs: Option<u64>,
        wait_secs: u64,
        peer: Peer,
    ) -> Answer {
        let instances = self.detector.instances_of(&service);
        if !instances.is_empty() && self.main_pid(&service).is_none() {
            return Answer::Now(error(format!(
                "`{service}` runs as {} units ({}): stop one of them, such as `stopguard stop {}`",
                instances.len(),
                instances.join(", "),
                instances[0]
            )));
        }
        let command = match self.stop_command(&service) {
            Ok(command) => command,
            Err(err) => return Answer::Now(error(err)),
        };
        let open = self
            .detector
            .windows()
            .iter()
            .find(|w| w.service == service)
            .cloned();
        let window = match open {
            Some(window) => window,
            None => match self.open_window(monitor, &service, &reason, for_secs, peer) {
                Ok(window) => window,
                Err(err) => return Answer::Now(error(err)),
            },
        };
        self.save();
        // The agent's signal is sent for the person who asked.
        self.detector.control_command(ControlCommand {
            pid: peer.pid,
            comm: "stopguard".into(),
            args: vec!["stopguard".into(), "stop".into(), service.clone()],
            intent: Intent::Stop,
            loginuid: peer.loginuid.unwrap_or(peer.uid),
            time_ns: boot_ns(),
        });
        let main = self
            .main_pid(&service)
            .and_then(|pid| monitor.table().live(pid))
            .map(|p| (p.pid, p.key.start_ticks));
        let mut answer = Stopped {
            service,
            window: WindowInfo::new(&window, &self.clock),
            pid: None,
            held_frozen: None,
            command: None,
            output: None,
            signal: None,
            seconds: None,
        };
        if let Some((pid, _)) = main.filter(|(pid, _)| self.custody.is_held(*pid)) {
            answer.held_frozen = Some(pid);
            return Answer::Now(ok(answer));
        }
        Answer::Later(Box::pin(stop_service(
            answer,
            command,
            main,
            peer.loginuid,
            Duration::from_secs(wait_secs),
        )))
    }
}

impl Agent {
    /// The service's `stop_command`, its `{unit}` and `{instance}` filled in
    /// for an instance (`postgresql@15-main.service`, `15-main`).
    fn stop_command(&self, service: &str) -> Result<Option<Vec<String>>, String> {
        let Some(argv) = self
            .detector
            .config_of(service)
            .and_then(|s| s.stop_command.clone())
        else {
            return Ok(None);
        };
        let unit = self.detector.unit_of(service);
        argv.into_iter()
            .map(|arg| match unit {
                Some(unit) => Ok(fill(&arg, unit)),
                None if arg.contains("{unit}") || arg.contains("{instance}") => Err(format!(
                    "`{service}` runs in no systemd unit, so stop_command's `{arg}` has nothing to name"
                )),
                None => Ok(arg),
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }
}

/// `arg` with `{unit}` and `{instance}` (what follows the `@`) of `unit`.
fn fill(arg: &str, unit: &str) -> String {
    let stem = unit.strip_suffix(".service").unwrap_or(unit);
    let instance = stem.split_once('@').map_or(stem, |(_, i)| i);
    arg.replace("{unit}", unit).replace("{instance}", instance)
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
) -> Value {
    let started = Instant::now();
    let service = answer.service.clone();
    let stays = format!("window {} stays open", answer.window.id);
    answer.pid = main.map(|m| m.0);
    if let Some(argv) = command {
        let shown = argv.join(" ");
        match run_as_operator(&argv, loginuid, wait).await {
            Ok(tail) => {
                answer.command = Some(shown);
                answer.output = Some(tail);
            }
            Err(err) => return error(format!("{err}; {stays}")),
        }
    } else if let Some((pid, _)) = main {
        if let Err(err) = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        ) {
            return error(format!("sending SIGTERM to pid {pid}: {err}; {stays}"));
        }
        answer.signal = Some("SIGTERM".into());
    }
    if let Some((pid, ticks)) = main {
        while actions::still_runs(pid, ticks) {
            if started.elapsed() > wait {
                return error(format!(
                    "{service} (pid {pid}) still runs {} s later; {stays}",
                    wait.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    answer.seconds = Some((started.elapsed().as_secs_f64() * 100.0).round() / 100.0);
    ok(answer)
}

/// Runs `argv` with `loginuid` as its login identity; returns the last
/// lines of its output, or what went wrong.
async fn run_as_operator(
    argv: &[String],
    loginuid: Option<u32>,
    wait: Duration,
) -> Result<String, String> {
    let shown = argv.join(" ");
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for name in crate::notify::ENV_VARS {
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
