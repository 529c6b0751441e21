//! `cargo xtask demo`: the incident, replayed in a sandbox on this machine.
//! The narrative is `xtask/demo/incident.sh`, written as the commands an
//! operator would type; this side builds what it needs and runs it as root.

use std::{
    path::Path,
    process::{Command, ExitStatus},
};

use anyhow::{Context, Result, bail};

use crate::{as_root, build_agent, build_ebpf, is_root, step, toolchain, workspace_root};

pub fn run() -> Result<()> {
    if is_root() {
        toolchain::ensure_test_packages()?;
    } else if let Some(missing) = missing_programs() {
        bail!(
            "{missing} missing: install it as root (sudo apt-get install monit postgresql) or run the demo as root"
        );
    }
    // Built as the invoking user, so target/ stays theirs; only the demo runs as root.
    build_ebpf()?;
    let agent = build_agent()?;
    step("the incident, replayed (sandbox: /tmp/stopguard-demo)");
    let script = workspace_root().join("xtask/demo/incident.sh");
    let mut demo = as_root(Path::new("bash"));
    demo.arg(&script).arg(&agent);
    let status = while_ignoring_ctrl_c(&mut demo)
        .with_context(|| format!("running {}", script.display()))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(130) => bail!("the demo was interrupted (everything it made is removed)"),
        _ => bail!("the demo failed ({status}); the lines above say where"),
    }
}

/// What the demo runs that is not installed, when something is.
fn missing_programs() -> Option<&'static str> {
    let has_monit = ["/usr/bin/monit", "/usr/sbin/monit"]
        .iter()
        .any(|p| Path::new(p).exists());
    let has_postgres = std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|versions| {
        versions
            .flatten()
            .any(|v| v.path().join("bin/postgres").exists())
    });
    match (has_monit, has_postgres) {
        (true, true) => None,
        (false, true) => Some("monit is"),
        (true, false) => Some("PostgreSQL is"),
        (false, false) => Some("monit and PostgreSQL are"),
    }
}

/// Runs `cmd` to the end while Ctrl-C only reaches it: the script then
/// cleans up (its EXIT trap) and we report how it ended, instead of dying
/// first and leaving its output to trail after the shell prompt.
fn while_ignoring_ctrl_c(cmd: &mut Command) -> std::io::Result<ExitStatus> {
    extern "C" fn ignore(_: libc::c_int) {}
    // A handler, not SIG_IGN: exec resets handlers to the default, so the
    // script still gets SIGINT (a signal ignored at exec would stay ignored).
    let previous = unsafe { libc::signal(libc::SIGINT, ignore as *const () as libc::sighandler_t) };
    let status = cmd.status();
    unsafe { libc::signal(libc::SIGINT, previous) };
    status
}
