//! What a command line asks for: a control command's stop, start or
//! restart (read by its supervisor's parser, see `supervisors`), or a
//! question put to a daemon binary rather than a start of it.

use super::{ControlCommand, UnitRequest};
pub use crate::supervisors::Intent;
use crate::{
    events::Exec,
    process::{Link, ProcessTable},
    supervisors,
};

/// Arguments with which a daemon binary answers a question and exits
/// (`postgres -V`, `-C data_directory`, `mysqld --version`) instead of
/// running the service.
const QUERY_FLAGS: [&str; 5] = ["-V", "--version", "--help", "--describe-config", "-C"];

/// Whether `cmdline` runs a daemon binary only to ask it something.
pub(super) fn is_query(cmdline: &[String]) -> bool {
    cmdline
        .iter()
        .skip(1)
        .any(|a| QUERY_FLAGS.contains(&a.as_str()))
}

/// The control command `exec` runs, when someone with a login runs one.
/// What it asks is carried out by a process without a login identity
/// (PID 1, the supervisor), so the command itself names the person.
pub(super) fn control_command(exec: &Exec) -> Option<ControlCommand> {
    let loginuid = exec.process.loginuid?;
    let control = supervisors::control(&exec.process.comm)?;
    Some(ControlCommand {
        pid: exec.process.pid,
        comm: exec.process.comm.clone(),
        args: exec.args.to_vec(),
        intent: control.intent_of(&exec.args),
        loginuid,
        time_ns: exec.time_ns,
    })
}

/// The request to systemd `exec` runs, by anyone (`systemctl start X` run
/// by monit matters as much as one run by a person), with what ran it as
/// the table shows it at the exec.
pub(super) fn unit_request(exec: &Exec, table: &ProcessTable) -> Option<UnitRequest> {
    let (intent, units) = supervisors::unit_request(&exec.process.comm, &exec.args)?;
    let ancestors = table.ancestry(&exec.process.key);
    let link = |p: &crate::process::Process| Link {
        pid: p.pid,
        comm: p.comm.clone(),
    };
    let name = |p: &crate::process::Process| supervisors::name_of(&p.comm, &p.cmdline).to_string();
    let chain: Vec<Link> = ancestors.iter().skip(1).map(|&p| link(p)).collect();
    // systemd is an ancestor of everything on its host, and carries the
    // request out: the supervisor behind it is another one (monit), else
    // whatever ran it (cron, a script).
    let supervisor = ancestors
        .iter()
        .skip(1)
        .find(|p| {
            let name = name(p);
            supervisors::is_supervisor(&name) && !supervisors::is_systemd(&name)
        })
        .map(|&p| Link {
            pid: p.pid,
            comm: name(p),
        })
        .or_else(|| chain.first().cloned());
    Some(UnitRequest {
        pid: exec.process.pid,
        comm: exec.process.comm.clone(),
        args: exec.args.to_vec(),
        intent,
        units,
        loginuid: exec.process.loginuid,
        chain,
        supervisor,
        time_ns: exec.time_ns,
    })
}
