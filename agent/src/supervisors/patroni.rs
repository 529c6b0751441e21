//! Patroni: the HA manager of a PostgreSQL cluster. Its HA loop (every
//! `loop_wait`, 10 s by default) starts a postgres it finds stopped, through
//! a multiprocessing "spawn" child (a fresh `python3` that calls `setsid()`,
//! starts the postmaster and exits), so the postmaster's creator chain is
//! `python3 <- patroni`. Its off switch is maintenance mode:
//! `patronictl pause --wait`; `patronictl resume` ends it.

use super::{Control, Intent, Subject, Supervisor, Watcher, bounded, verb, watch};

pub const PATRONI: Supervisor = Supervisor {
    name: "patroni",
    comms: &["patroni"],
    control: &[Control {
        comm: "patronictl",
        intent: patronictl,
        units: None,
    }],
    watching: Some(watching),
};

/// `patronictl restart|reinit|switchover|failover`: Patroni stops the
/// postmaster and starts it again (a reinit from a fresh copy, a
/// switchover as a replica). `pause` and `resume` start or stop nothing.
fn patronictl(args: &[String]) -> Intent {
    let first = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .find(|a| VERBS.contains(&a.as_str()));
    match first.map(String::as_str) {
        Some("reinit" | "switchover" | "failover") => Intent::Restart,
        Some(word) => verb(std::slice::from_ref(&word.to_string())),
        None => Intent::Other,
    }
}

/// patronictl's subcommands that act on a member's postgres, or on
/// whether Patroni acts on it.
const VERBS: [&str; 6] = [
    "restart",
    "reinit",
    "switchover",
    "failover",
    "pause",
    "resume",
];

/// Whether `args` (patronictl's argv) turn maintenance mode on or off.
pub fn toggles_pause(args: &[String]) -> bool {
    args.iter().any(|a| a == "pause" || a == "resume")
}

/// Each running Patroni whose cluster the service is, and whether it is
/// paused, asked of its REST API (`GET /patroni`, whose `pause` is true in
/// maintenance mode). The service is its cluster when Patroni started it
/// (the chain recorded at its exec), or when the postmaster runs in the
/// `postgresql.data_dir` of Patroni's config.
fn watching(subject: &Subject) -> Vec<Watcher> {
    subject
        .named("patroni")
        .filter_map(|patroni| {
            let config = config_file(&patroni.cmdline);
            let yaml = config
                .as_ref()
                .and_then(|c| bounded::read_config(std::path::Path::new(c), patroni.uid).ok())
                .map(|text| flat_yaml(&text))
                .unwrap_or_default();
            let value = |key: &str| yaml.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
            let environ = environ(patroni.pid);
            let from_env = |name: &str| environ.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            let data_dir = from_env("PATRONI_POSTGRESQL_DATA_DIR").or(value("postgresql.data_dir"));
            let runs_in = |dir: &str| {
                subject.main.as_ref().or(subject.was.as_ref()).is_some_and(|m| {
                    let canonical = |p: &std::path::Path| std::fs::canonicalize(p).ok();
                    m.cwd.as_deref().and_then(canonical)
                        == canonical(std::path::Path::new(dir))
                        || m.cmdline.iter().any(|a| a == dir)
                })
            };
            let ours = subject.started_by(patroni.pid)
                || data_dir.as_deref().is_some_and(runs_in);
            if !ours {
                return None;
            }
            let address = from_env("PATRONI_RESTAPI_CONNECT_ADDRESS")
                .or(value("restapi.connect_address"))
                .or(from_env("PATRONI_RESTAPI_LISTEN"))
                .or(value("restapi.listen"))
                .map(|a| local_address(&a));
            let (state, would_restart) = match &address {
                None => ("unknown: no REST API address in its config".to_string(), true),
                Some(address) => match bounded::http_get(address, "/patroni")
                    .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).map_err(|e| e.to_string()))
                {
                    Ok(answer) if answer["pause"].as_bool() == Some(true) => {
                        ("paused (maintenance mode)".to_string(), false)
                    }
                    Ok(answer) => (
                        format!(
                            "active, {} {}",
                            answer["role"].as_str().unwrap_or("member"),
                            answer["state"].as_str().unwrap_or("")
                        )
                        .trim_end()
                        .to_string(),
                        true,
                    ),
                    Err(err) => (format!("unknown: {err}"), true),
                },
            };
            let mut ctl = watch::words(&["patronictl"]);
            if let Some(config) = &config {
                ctl.extend(watch::words(&["-c", config]));
            }
            let verb = |v: &str| {
                let mut argv = ctl.clone();
                argv.extend(watch::words(&[v, "--wait"]));
                argv
            };
            Some(Watcher {
                supervisor: PATRONI.name.into(),
                pid: Some(patroni.pid),
                name: from_env("PATRONI_SCOPE")
                    .or(value("scope"))
                    .unwrap_or_else(|| "CLUSTER".into()),
                would_restart,
                state,
                how: "Patroni starts it again at its next HA loop (every loop_wait, 10 s by default) unless paused".into(),
                off: Some(verb("pause")),
                on: Some(verb("resume")),
                off_stops: false,
                uid: Some(patroni.uid),
                trusted: true,
            })
        })
        .collect()
}

/// The config file Patroni runs on: its first argument after the script
/// that is not an option (`patroni /etc/patroni/config.yml`).
fn config_file(cmdline: &[String]) -> Option<String> {
    let script = cmdline
        .iter()
        .position(|a| a.rsplit('/').next() == Some("patroni"))?;
    cmdline[script + 1..]
        .iter()
        .find(|a| !a.starts_with('-'))
        .cloned()
}

fn environ(pid: u32) -> Vec<(String, String)> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/environ"))
        .and_then(|f| f.take(bounded::READ_CAP).read_to_end(&mut bytes))
        .map(|_| {
            bytes
                .split(|&b| b == 0)
                .filter_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An address to reach a REST API listening on `address` from this host:
/// a wildcard host (`0.0.0.0:8008`, `:8008`, `[::]:8008`) is 127.0.0.1.
fn local_address(address: &str) -> String {
    let address = address.trim();
    match address.rsplit_once(':') {
        Some(("" | "0.0.0.0" | "::" | "[::]" | "*", port)) => {
            format!("127.0.0.1:{port}")
        }
        _ => address.to_string(),
    }
}

/// The scalar values of a YAML document, each under its dotted path
/// (`restapi.listen`): enough of YAML for Patroni's config, whose keys are
/// plain and whose values stopguard reads are scalars.
pub fn flat_yaml(text: &str) -> Vec<(String, String)> {
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut values = Vec::new();
    for line in text.lines() {
        let content = line.split(" #").next().unwrap_or("");
        if content.trim().is_empty() || content.trim_start().starts_with(['#', '-']) {
            continue;
        }
        let indent = content.len() - content.trim_start().len();
        let Some((key, value)) = content.trim().split_once(':') else {
            continue;
        };
        while path.last().is_some_and(|(i, _)| *i >= indent) {
            path.pop();
        }
        let key = key.trim().trim_matches(['"', '\'']).to_string();
        let value = value.trim().trim_matches(['"', '\'']);
        if value.is_empty() {
            path.push((indent, key));
        } else {
            let mut full: Vec<&str> = path.iter().map(|(_, k)| k.as_str()).collect();
            full.push(&key);
            values.push((full.join("."), value.to_string()));
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisors::args;

    #[test]
    fn patronictl_subcommands() {
        let ctl = |a: &[&str]| patronictl(&args(a));
        assert_eq!(
            ctl(&["-c", "/etc/patroni.yml", "restart", "demo", "--force"]),
            Intent::Restart
        );
        assert_eq!(ctl(&["reinit", "demo", "pg1"]), Intent::Restart);
        assert_eq!(ctl(&["switchover", "--force"]), Intent::Restart);
        assert_eq!(ctl(&["pause", "--wait"]), Intent::Other);
        assert_eq!(ctl(&["resume"]), Intent::Other);
        assert_eq!(ctl(&["list"]), Intent::Other);
        // A cluster named after a verb is not the verb.
        assert_eq!(ctl(&["-c", "x.yml", "list", "stop"]), Intent::Other);
        assert!(toggles_pause(&args(&["-c", "x.yml", "pause", "--wait"])));
        assert!(!toggles_pause(&args(&["list"])));
    }

    #[test]
    fn config_values_by_path() {
        let yaml = "scope: demo  # the cluster\nrestapi:\n  listen: 0.0.0.0:8008\n  connect_address: '10.0.0.5:8008'\netcd:\n  host: 127.0.0.1:2379\npostgresql:\n  data_dir: /srv/pg/data\n  parameters:\n    port: 5433\n  pg_hba:\n  - host all all 0.0.0.0/0 md5\n";
        let values = flat_yaml(yaml);
        let get = |k: &str| {
            values
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("scope"), Some("demo"));
        assert_eq!(get("restapi.listen"), Some("0.0.0.0:8008"));
        assert_eq!(get("restapi.connect_address"), Some("10.0.0.5:8008"));
        assert_eq!(get("postgresql.data_dir"), Some("/srv/pg/data"));
        assert_eq!(get("postgresql.parameters.port"), Some("5433"));
        assert_eq!(local_address("0.0.0.0:8008"), "127.0.0.1:8008");
        assert_eq!(local_address("10.0.0.5:8008"), "10.0.0.5:8008");
        assert_eq!(
            config_file(&args(&[
                "/usr/bin/python3",
                "/usr/bin/patroni",
                "/etc/patroni/config.yml"
            ])),
            Some("/etc/patroni/config.yml".into())
        );
    }
}
