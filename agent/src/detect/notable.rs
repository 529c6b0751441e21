//! The image names whose execs matter to detection, told to the kernel
//! programs so that they read arguments only where arguments are used,
//! and wake the reader at once for a watched service's start.

use agent_common::notable;

use crate::{config::Service, process::comm_of, supervisors};

/// Programs through which a person stops, starts or runs something as
/// someone else: what a stop's command line and a control command's
/// wrapper are read from.
const OPERATOR_TOOLS: &[&str] = &[
    "kill",
    "pkill",
    "killall",
    "skill",
    "sudo",
    "su",
    "runuser",
    "doas",
    "pkexec",
    "setpriv",
    "nohup",
    "env",
    "timeout",
    "setsid",
    "nice",
    "flock",
    "xargs",
    "start-stop-daemon",
    "chpst",
    "invoke-rc.d",
    "initctl",
    "rc-service",
    "stopguard",
];

/// What the kernel should read at exec for a configuration.
#[derive(Debug, PartialEq, Eq)]
pub struct Notable {
    /// Each notable name with its `notable` bits.
    pub names: Vec<(String, u32)>,
    /// A watched program's file name is itself a glob (`postgres*`): its
    /// comm cannot be told in advance, and every exec's arguments must be
    /// read.
    pub every_exec: bool,
}

impl Notable {
    /// The names as the probes take them: None to read every exec's
    /// arguments.
    pub fn for_probes(&self) -> Option<Vec<(String, u32)>> {
        (!self.every_exec).then(|| self.names.clone())
    }
}

/// The names whose execs matter to `services`, with their `notable` bits.
pub fn notable_names(services: &[Service]) -> Notable {
    let mut every_exec = false;
    let mut names: std::collections::BTreeMap<String, u32> = supervisors::notable_names()
        .chain(interpreters())
        .chain(OPERATOR_TOOLS.iter().map(|t| t.to_string()))
        .map(|name| (name, notable::ARGS))
        .collect();
    for service in services {
        for exe in &service.exe {
            let file = exe.as_str().rsplit('/').next().unwrap_or_default();
            if file.is_empty() || file.contains(['*', '?', '[']) {
                every_exec = true;
                continue;
            }
            *names.entry(comm_of(file).to_string()).or_default() |= notable::ARGS | notable::WAKE;
        }
        let command = service.stop_command.iter().flatten().next();
        if let Some(file) = command.and_then(|c| c.rsplit('/').next()) {
            *names.entry(comm_of(file).to_string()).or_default() |= notable::ARGS;
        }
    }
    Notable {
        names: names.into_iter().collect(),
        every_exec,
    }
}

/// The units of services that name no program and so may run any: the
/// arguments of execs in them are needed whatever their names.
pub fn arg_units(services: &[Service]) -> Vec<glob::Pattern> {
    services
        .iter()
        .filter(|s| s.exe.is_empty())
        .flat_map(|s| s.unit.iter().cloned())
        .collect()
}

/// The comms of the interpreters `supervisors::is_interpreter` knows,
/// spelled out: the kernel matches whole names.
fn interpreters() -> impl Iterator<Item = String> {
    let pythons =
        (0..=20).flat_map(|minor| [format!("python3.{minor}"), format!("python2.{minor}")]);
    [
        "sh", "bash", "dash", "perl", "ruby", "python", "python2", "python3",
    ]
    .into_iter()
    .map(String::from)
    .chain(pythons)
    .inspect(|name| debug_assert!(supervisors::is_interpreter(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn bits(names: &[(String, u32)], name: &str) -> Option<u32> {
        names.iter().find(|(n, _)| n == name).map(|(_, b)| *b)
    }

    #[test]
    fn the_default_services_wake_and_commands_are_read() {
        let config = Config::load(None).unwrap();
        let notable = notable_names(&config.services);
        assert!(!notable.every_exec, "no globbed file names");
        let names = notable.names;
        assert_eq!(
            bits(&names, "postgres"),
            Some(notable::ARGS | notable::WAKE)
        );
        assert_eq!(
            bits(&names, "redis-server"),
            Some(notable::ARGS | notable::WAKE)
        );
        for read in [
            "systemctl",
            "pg_ctl",
            "monit",
            "patronictl",
            "kill",
            "sudo",
            "python3.11",
        ] {
            assert_eq!(bits(&names, read), Some(notable::ARGS), "{read}");
        }
        // A 16-byte file name runs under its first 15 bytes.
        assert_eq!(
            bits(&names, "clickhouse-serv"),
            Some(notable::ARGS | notable::WAKE)
        );
        assert_eq!(bits(&names, "true"), None);
        assert!(names.len() < 1024, "more than the kernel map holds");
    }

    #[test]
    fn a_globbed_file_name_reads_every_exec() {
        let config = Config::parse(
            "[[service]]\nname = \"pg\"\nexe = [\"/usr/lib/postgresql/*/bin/postgres*\"]\n",
            "test",
        )
        .unwrap();
        let notable = notable_names(&config.services);
        assert!(notable.every_exec);
        assert_eq!(notable.for_probes(), None);
        // What a reload can do without the next start: the known names.
        assert_eq!(bits(&notable.names, "pg_ctl"), Some(notable::ARGS));
    }
}
