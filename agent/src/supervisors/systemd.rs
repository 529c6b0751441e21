//! systemd: PID 1 restarts units with `Restart=`; `systemctl stop UNIT`,
//! and the sysvinit `service NAME stop` that ends up there. Both are
//! requests to PID 1 about named units: PID 1 sends the signals and starts
//! the processes, so the request is what names who asked.

use super::{Control, Intent, Subject, Supervisor, Watcher, bounded, watch};

pub const SYSTEMD: Supervisor = Supervisor {
    name: "systemd",
    comms: &["systemd"],
    control: &[
        Control {
            comm: "systemctl",
            intent: systemctl_intent,
            units: Some(systemctl_units),
        },
        Control {
            comm: "service",
            intent: service_intent,
            units: Some(service_units),
        },
    ],
    watching: Some(watching),
};

/// The unit suffixes systemd knows; a name without one means `.service`.
const UNIT_SUFFIXES: [&str; 11] = [
    ".service",
    ".socket",
    ".target",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".timer",
    ".path",
    ".slice",
    ".scope",
];

/// systemctl's options that take the next argument as their value when
/// not given with `=` (`-s KILL`, `--signal KILL`).
const SYSTEMCTL_VALUE_OPTIONS: [&str; 26] = [
    "-t",
    "--type",
    "-s",
    "--signal",
    "-p",
    "--property",
    "-P",
    "-n",
    "--lines",
    "-o",
    "--output",
    "--root",
    "--image",
    "--image-policy",
    "--job-mode",
    "--kill-whom",
    "--kill-value",
    "--what",
    "--state",
    "--timestamp",
    "--message",
    "--reboot-argument",
    "--preset-mode",
    "--drop-in",
    "--when",
    "--check-inhibitors",
];

/// Options that send the request somewhere other than this host's PID 1:
/// the user's own manager, another host, a container.
const SYSTEMCTL_ELSEWHERE: [&str; 5] = ["--user", "-H", "--host", "-M", "--machine"];

/// A unit name as systemctl reads it: one without a unit suffix is a
/// service (`postgresql@15-main` is `postgresql@15-main.service`).
pub(super) fn unit_name(name: &str) -> String {
    if UNIT_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        name.to_string()
    } else {
        format!("{name}.service")
    }
}

/// What a systemctl command line says: its verb, the words after it, and
/// whether `--now` was given. None when it is not for this host's PID 1.
fn systemctl(args: &[String]) -> Option<(&str, Vec<&str>, bool)> {
    let mut words = Vec::new();
    let mut now = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let option = arg.split_once('=').map_or(arg.as_str(), |(o, _)| o);
        match arg.as_str() {
            _ if SYSTEMCTL_ELSEWHERE.contains(&option) => return None,
            "--now" => now = true,
            value_option if SYSTEMCTL_VALUE_OPTIONS.contains(&value_option) => {
                args.next();
            }
            option if option.starts_with('-') => {}
            word => words.push(word),
        }
    }
    let (&verb, units) = words.split_first()?;
    Some((verb, units.to_vec(), now))
}

fn systemctl_intent(args: &[String]) -> Intent {
    let Some((verb, _, now)) = systemctl(args) else {
        return Intent::Other;
    };
    match verb {
        "stop" | "kill" => Intent::Stop,
        "disable" | "mask" if now => Intent::Stop,
        "start" => Intent::Start,
        "enable" if now => Intent::Start,
        "restart"
        | "try-restart"
        | "condrestart"
        | "reload-or-restart"
        | "try-reload-or-restart"
        | "force-reload" => Intent::Restart,
        _ => Intent::Other,
    }
}

/// The units a systemctl command line stops, starts or restarts.
fn systemctl_units(args: &[String]) -> Vec<String> {
    match (systemctl_intent(args), systemctl(args)) {
        (Intent::Other, _) | (_, None) => Vec::new(),
        (_, Some((_, units, _))) => units.into_iter().map(unit_name).collect(),
    }
}

/// `service NAME ACTION` (or `service NAME --full-restart`): the name and
/// the action.
fn service(args: &[String]) -> Option<(&str, &str)> {
    match args {
        [name, action, ..] if !name.starts_with('-') => Some((name.as_str(), action.as_str())),
        _ => None,
    }
}

fn service_intent(args: &[String]) -> Intent {
    match service(args).map(|(_, action)| action) {
        Some("stop") => Intent::Stop,
        Some("start") => Intent::Start,
        Some("restart" | "try-restart" | "condrestart" | "force-reload" | "--full-restart") => {
            Intent::Restart
        }
        _ => Intent::Other,
    }
}

fn service_units(args: &[String]) -> Vec<String> {
    match (service_intent(args), service(args)) {
        (Intent::Other, _) | (_, None) => Vec::new(),
        (_, Some((name, _))) => vec![unit_name(name)],
    }
}

/// The service's unit and its `Restart=`, as `systemctl show` tells it:
/// systemd starts a unit again by itself when its main process exits in a
/// way its policy names, unless the unit is masked. A stop asked through
/// systemctl is never restarted.
fn watching(subject: &Subject) -> Vec<Watcher> {
    let Some(unit) = subject.unit.as_deref().filter(|u| u.ends_with(".service")) else {
        return Vec::new();
    };
    if !is_running() {
        return Vec::new();
    }
    let shown = show(unit);
    let restart = shown.as_ref().ok().and_then(|s| s.restart.clone());
    let (state, would_restart) = match &shown {
        Err(err) => (format!("unknown: {err}"), true),
        Ok(UnitShown {
            restart: Some(policy),
            masked: true,
        }) => (format!("masked (Restart={policy})"), false),
        Ok(UnitShown {
            restart: Some(policy),
            ..
        }) => (format!("Restart={policy}"), policy != "no"),
        Ok(UnitShown { restart: None, .. }) => ("Restart= unknown".into(), true),
    };
    vec![Watcher {
        supervisor: SYSTEMD.name.into(),
        pid: Some(1),
        name: unit.to_string(),
        would_restart,
        state,
        how: restart_policy(restart.as_deref().unwrap_or("")).into(),
        off: Some(watch::words(&["systemctl", "mask", "--runtime", unit])),
        on: Some(watch::words(&["systemctl", "unmask", "--runtime", unit])),
        off_stops: false,
        uid: Some(0),
        trusted: true,
    }]
}

/// Whether systemd runs this host (is PID 1).
pub fn is_running() -> bool {
    std::path::Path::new("/run/systemd/system").exists()
}

/// What systemd says of a unit: its `Restart=` policy and whether it is
/// masked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitShown {
    pub restart: Option<String>,
    pub masked: bool,
}

/// Asks systemd (`systemctl show`, with a deadline) about `unit`.
pub fn show(unit: &str) -> Result<UnitShown, String> {
    let shown = bounded::run(&[
        "systemctl",
        "show",
        "--property=Restart,LoadState",
        "--",
        unit,
    ])?;
    let property = |name: &str| {
        shown
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .filter(|value| !value.is_empty())
            .map(str::to_string)
    };
    Ok(UnitShown {
        restart: property("Restart"),
        masked: property("LoadState").is_some_and(|s| s == "masked"),
    })
}

/// Whether systemd is taking the host down (`systemctl is-system-running`
/// says `stopping`); false without systemd, or when it does not answer
/// within 2 s.
pub fn system_stopping() -> bool {
    if !is_running() {
        return false;
    }
    let Ok(mut child) = std::process::Command::new("systemctl")
        .arg("is-system-running")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) => {
                let mut out = String::new();
                if let Some(mut stdout) = child.stdout.take() {
                    let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
                }
                return out.trim() == "stopping";
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// When systemd starts a unit again under `Restart=policy`.
fn restart_policy(policy: &str) -> &'static str {
    match policy {
        "no" => "systemd does not start it again by itself; `systemctl start` does",
        "always" => {
            "systemd starts it again after any exit, unless it was stopped through systemctl"
        }
        "on-success" => "systemd starts it again after a clean exit (code 0 or SIGTERM)",
        "on-failure" => {
            "systemd starts it again after a non-zero exit, a kill -9 or a crash, unless stopped through systemctl"
        }
        "on-abnormal" => {
            "systemd starts it again after a kill or a crash, unless stopped through systemctl"
        }
        "on-abort" => "systemd starts it again after a crash or a kill by an unclean signal",
        "on-watchdog" => "systemd starts it again when its watchdog times out",
        _ => "systemd starts it again as its unit's Restart= says",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisors::args;

    #[test]
    fn systemctl_and_service_verbs() {
        let [systemctl, service] = SYSTEMD.control else {
            panic!("systemctl and service");
        };
        let of = |c: &Control, a: &[&str]| (c.intent)(&args(a));
        assert_eq!(of(systemctl, &["stop", "postgresql"]), Intent::Stop);
        assert_eq!(of(systemctl, &["--no-block", "start", "pg"]), Intent::Start);
        assert_eq!(of(systemctl, &["try-restart", "pg"]), Intent::Restart);
        assert_eq!(of(systemctl, &["status", "pg"]), Intent::Other);
        assert_eq!(of(systemctl, &["-s", "KILL", "kill", "pg"]), Intent::Stop);
        assert_eq!(of(systemctl, &["disable", "--now", "pg"]), Intent::Stop);
        assert_eq!(of(systemctl, &["disable", "pg"]), Intent::Other);
        assert_eq!(of(systemctl, &["--user", "stop", "pg"]), Intent::Other);
        assert_eq!(of(service, &["postgresql", "stop"]), Intent::Stop);
        assert_eq!(of(service, &["postgresql", "restart"]), Intent::Restart);
        assert_eq!(of(service, &["--status-all"]), Intent::Other);
    }

    #[test]
    fn systemctl_names_units_a_bare_name_being_a_service() {
        let units = |a: &[&str]| systemctl_units(&args(a));
        assert_eq!(
            units(&["stop", "postgresql@15-main"]),
            ["postgresql@15-main.service"]
        );
        assert_eq!(
            units(&[
                "-q",
                "--no-block",
                "restart",
                "redis-server.service",
                "nginx"
            ]),
            ["redis-server.service", "nginx.service"]
        );
        // An option's value is not a unit, given apart or with `=`.
        assert_eq!(
            units(&["kill", "-s", "SIGKILL", "redis-server"]),
            ["redis-server.service"]
        );
        assert_eq!(
            units(&[
                "kill",
                "--signal=KILL",
                "--kill-whom",
                "main",
                "redis-server"
            ]),
            ["redis-server.service"]
        );
        assert_eq!(units(&["start", "pg.socket"]), ["pg.socket"]);
        assert_eq!(units(&["enable", "--now", "pg"]), ["pg.service"]);
        assert!(units(&["status", "pg"]).is_empty());
        assert!(units(&["enable", "pg"]).is_empty());
        assert!(units(&["--user", "stop", "pg"]).is_empty());
        assert!(units(&["-H", "db2", "stop", "pg"]).is_empty());
        assert!(units(&["--machine=c1", "stop", "pg"]).is_empty());
        assert!(units(&[]).is_empty());
    }

    #[test]
    fn service_names_its_unit() {
        let units = |a: &[&str]| service_units(&args(a));
        assert_eq!(units(&["postgresql", "stop"]), ["postgresql.service"]);
        assert_eq!(
            units(&["redis-server", "--full-restart"]),
            ["redis-server.service"]
        );
        assert!(units(&["postgresql", "status"]).is_empty());
        assert!(units(&["--status-all"]).is_empty());
    }
}
