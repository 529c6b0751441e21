//! What a control request decides: windows opened and closed, frozen
//! respawns let go, a stop planned, a service's state and explain's
//! verdict. Each works on the detector (services and windows, a pure state
//! machine) and returns the effects for the shell to carry out; the shell
//! answers with what they did.

use super::{Effect, guards_in_window};
use crate::{
    control::{CloseWindow, OpenWindow, Peer, ServiceState, Stop},
    detect::{ControlCommand, Detector, Intent, OperatorStop, Window},
    supervisors::watch::Watcher,
};

/// `target` and, for a per-instance service's own name, each of its
/// instances: what a window on it or a thaw of it covers.
pub fn covering(detector: &Detector, target: &str) -> Vec<String> {
    std::iter::once(target)
        .chain(detector.instances_of(target))
        .map(str::to_string)
        .collect()
}

/// `window open`: the window, and the guard armed when the service's
/// policy freezes a respawn in it.
pub fn open_window(
    detector: &mut Detector,
    open: &OpenWindow,
    peer: Peer,
    now_ns: u64,
) -> Result<(Window, Vec<Effect>), String> {
    let window = detector.open_window(
        &open.service,
        &open.reason,
        (peer.uid, peer.loginuid),
        now_ns,
        open.for_secs.map(|s| s.saturating_mul(1_000_000_000)),
    )?;
    let mut effects = Vec::new();
    if detector
        .config_of(&open.service)
        .is_some_and(guards_in_window)
    {
        effects.push(Effect::Guard {
            service: open.service.clone(),
            on: true,
        });
    }
    Ok((window, effects))
}

/// A window closed.
#[derive(Debug, PartialEq)]
pub struct Closed {
    pub window: Window,
    /// The services it covered.
    pub covered: Vec<String>,
    /// For each: the guard disarmed and its alerts resolved; with `--thaw`
    /// or `--kill`, what is held frozen let go.
    pub effects: Vec<Effect>,
    /// The off switches `stop --and-pause` ran are to be switched back on.
    pub resume: bool,
}

/// `window close`.
pub fn close_window(detector: &mut Detector, close: &CloseWindow) -> Result<Closed, String> {
    let window = detector
        .close_window(&close.target)
        .ok_or_else(|| format!("no open window on or named `{}`", close.target))?;
    let covered = covering(detector, &window.service);
    let mut effects = Vec::new();
    for service in &covered {
        effects.push(Effect::Guard {
            service: service.clone(),
            on: false,
        });
        effects.push(Effect::ResolveService {
            service: service.clone(),
        });
    }
    if close.thaw || close.kill {
        effects.push(Effect::LetGo {
            target: window.service.clone(),
            kill: close.kill,
        });
    }
    Ok(Closed {
        resume: !window.switched_off.is_empty(),
        window,
        covered,
        effects,
    })
}

/// The windows whose time is up at `now_ns`, closed as `window close`
/// closes one (the operator stops they cover ended, the guard of every
/// service they cover disarmed, `Closed::resume` the same), held processes
/// left held.
pub fn expire_windows(detector: &mut Detector, now_ns: u64) -> Vec<Closed> {
    detector
        .expire_windows(now_ns)
        .into_iter()
        .map(|window| {
            let covered = covering(detector, &window.service);
            Closed {
                effects: covered
                    .iter()
                    .map(|service| Effect::Guard {
                        service: service.clone(),
                        on: false,
                    })
                    .collect(),
                covered,
                resume: !window.switched_off.is_empty(),
                window,
            }
        })
        .collect()
}

/// `thaw TARGET`, where custody holds respawns of `held` (the services,
/// among those `target` covers): they are let go, and the operator's stop
/// of each is over, so what starts it next (a reboot's start, a crash
/// restart) is no respawn of it.
pub fn thaw(detector: &mut Detector, target: &str, held: &[String]) -> Result<Vec<Effect>, String> {
    if held.is_empty() {
        return Err(format!("nothing frozen for `{target}`"));
    }
    let mut effects = vec![Effect::LetGo {
        target: target.to_string(),
        kill: false,
    }];
    for service in held {
        detector.release(service);
        effects.push(Effect::Guard {
            service: service.clone(),
            on: false,
        });
    }
    Ok(effects)
}

/// How `stop` goes about it.
#[derive(Debug, PartialEq)]
pub struct StopPlan {
    /// The window it stops the service in: the one open, or a new one.
    pub window: Window,
    /// The service's main process.
    pub main: Option<u32>,
    /// Its `stop_command` filled in, when it has one; else SIGTERM.
    pub command: Option<Vec<String>>,
    /// The main process is a respawn held frozen: nothing is signalled.
    pub held_frozen: bool,
    pub effects: Vec<Effect>,
}

/// `stop SERVICE`, for `peer`, while custody holds `held` frozen.
pub fn stop(
    detector: &mut Detector,
    stop: &Stop,
    peer: Peer,
    held: &[u32],
    now_ns: u64,
) -> Result<StopPlan, String> {
    let service = &stop.service;
    let main = main_pid(detector, service);
    let instances = detector.instances_of(service);
    if !instances.is_empty() && main.is_none() {
        return Err(format!(
            "`{service}` runs as {} units ({}): stop one of them, such as `stopguard stop {}`",
            instances.len(),
            instances.join(", "),
            instances[0]
        ));
    }
    let command = stop_command(detector, service)?;
    let open = detector
        .windows()
        .iter()
        .find(|w| w.service == *service)
        .cloned();
    let (window, mut effects) = match open {
        Some(window) => (window, Vec::new()),
        None => open_window(
            detector,
            &OpenWindow {
                service: service.clone(),
                reason: stop.reason.clone(),
                for_secs: stop.for_secs,
            },
            peer,
            now_ns,
        )?,
    };
    effects.push(Effect::Save);
    // The agent's signal is sent for the person who asked.
    detector.control_command(ControlCommand {
        pid: peer.pid,
        comm: "stopguard".into(),
        args: vec!["stopguard".into(), "stop".into(), service.clone()],
        intent: Intent::Stop,
        loginuid: peer.loginuid.unwrap_or(peer.uid),
        time_ns: now_ns,
    });
    Ok(StopPlan {
        window,
        main,
        command,
        held_frozen: main.is_some_and(|pid| held.contains(&pid)),
        effects,
    })
}

/// The main process of `service` as detection knows it.
pub fn main_pid(detector: &Detector, service: &str) -> Option<u32> {
    detector
        .running()
        .into_iter()
        .find(|(name, _)| *name == service)
        .map(|(_, pid)| pid)
}

/// The service's `stop_command` with `{unit}` and `{instance}` filled in
/// from the unit it runs in; None when it has none.
pub fn stop_command(detector: &Detector, service: &str) -> Result<Option<Vec<String>>, String> {
    let Some(argv) = detector
        .config_of(service)
        .and_then(|s| s.stop_command.clone())
    else {
        return Ok(None);
    };
    let unit = detector.unit_of(service);
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

/// `arg` with `{unit}` and `{instance}` (what follows the `@`) of `unit`.
fn fill(arg: &str, unit: &str) -> String {
    let stem = unit.strip_suffix(".service").unwrap_or(unit);
    let instance = stem.split_once('@').map_or(stem, |(_, i)| i);
    arg.replace("{unit}", unit).replace("{instance}", instance)
}

/// A service's state in `status` and `explain`.
pub fn state(main: Option<u32>, stop: Option<&OperatorStop>) -> ServiceState {
    match (main, stop) {
        (Some(_), _) => ServiceState::Running,
        (None, Some(_)) => ServiceState::StoppedByOperator,
        (None, None) => ServiceState::NotRunning,
    }
}

/// explain's verdict: whether anything would start the service again,
/// from what each supervisor watching it said.
pub fn would_restart(supervisors: &[Watcher]) -> bool {
    supervisors.iter().any(|w| w.would_restart)
}
