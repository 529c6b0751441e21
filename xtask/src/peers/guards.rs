//! What the bench starts, mounts or switches on, undone when dropped.

use super::*;

/// A tracer's process: stopped by `signal`, then SIGKILL if it lingers;
/// also when the bench unwinds.
pub(super) struct Tracee {
    pub(super) name: &'static str,
    pub(super) child: Child,
    pub(super) signal: i32,
    pub(super) status: Option<ExitStatus>,
}

impl Tracee {
    pub(super) fn new(name: &'static str, child: Child, signal: i32) -> Tracee {
        Tracee {
            name,
            child,
            signal,
            status: None,
        }
    }

    pub(super) fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        if self.child.try_wait()?.is_none() {
            // SAFETY: our own child, not yet reaped, so the pid is still its.
            unsafe { libc::kill(self.child.id() as i32, self.signal) };
        }
        // bpftrace drains what its buffers hold before it exits, which
        // takes a moment; one that sits on its signal (started where SIGINT
        // is ignored) is asked again with SIGTERM, then killed.
        let started = Instant::now();
        let mut asked_again = false;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            let waited = started.elapsed();
            if waited > STOP_GRACE && !asked_again {
                asked_again = true;
                // SAFETY: our own child, not yet reaped.
                unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            }
            if waited > STOP_GRACE * 2 {
                eprintln!(
                    "    {} did not stop within {} s of its signal and SIGTERM: killing it",
                    self.name,
                    (STOP_GRACE * 2).as_secs()
                );
                self.child.kill()?;
                break self.child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.status = Some(status);
        Ok(status)
    }
}

/// How long a tracer gets to stop after each ask.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Makes a tracer's child start with the default action for SIGINT and
/// SIGTERM, whatever the bench inherited (a background job of a
/// non-interactive shell ignores SIGINT), so that the signal that stops
/// it works.
pub(super) fn default_signals(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: signal() is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        })
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: stopping {}: {e:#}", self.name);
        }
    }
}

/// Runs `stopguard unpin` when dropped, after the agent stopped, so that its
/// programs do not run on through the measurements that follow.
pub(super) struct Unpin(pub(super) PathBuf);

impl Drop for Unpin {
    fn drop(&mut self) {
        if let Err(e) = unpin(&self.0) {
            eprintln!("warning: {e:#}; run `stopguard unpin` by hand");
        }
    }
}

/// The bench's execve rule, deleted when dropped.
pub(super) struct AuditRule;

impl AuditRule {
    pub(super) fn delete(self) -> Result<()> {
        std::mem::forget(self);
        auditctl(&[&["-d"], AUDIT_RULE].concat())
    }
}

impl Drop for AuditRule {
    fn drop(&mut self) {
        if let Err(e) = auditctl(&[&["-d"], AUDIT_RULE].concat()) {
            eprintln!(
                "warning: {e:#}; delete the rule with `auditctl -d {}`",
                AUDIT_RULE.join(" ")
            );
        }
    }
}

/// The kernel's audit settings from `auditctl -s`.
#[derive(Clone, Copy)]
pub(super) struct AuditStatus {
    pub(super) enabled: u64,
    pub(super) pid: u32,
    pub(super) backlog_limit: u64,
    pub(super) lost: u64,
}

impl AuditStatus {
    pub(super) fn read() -> Result<AuditStatus> {
        let text = toolchain::output(Command::new("auditctl").arg("-s"))?;
        let field = |name: &str| -> Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {name} in `auditctl -s`: {text}"))
        };
        Ok(AuditStatus {
            enabled: field("enabled")?,
            pid: field("pid")? as u32,
            backlog_limit: field("backlog_limit")?,
            lost: field("lost")?,
        })
    }
}

/// Audit's enabled flag and backlog limit as they were before auditd
/// started, put back when dropped (auditd leaves auditing enabled).
pub(super) struct AuditState(pub(super) AuditStatus);

impl Drop for AuditState {
    fn drop(&mut self) {
        let restore = || -> Result<()> {
            auditctl(&["-e", &self.0.enabled.to_string()])?;
            auditctl(&["-b", &self.0.backlog_limit.to_string()])
        };
        if let Err(e) = restore() {
            eprintln!(
                "warning: restoring audit settings: {e:#}; run `auditctl -e {} -b {}` by hand",
                self.0.enabled, self.0.backlog_limit
            );
        }
    }
}

pub(super) fn auditctl(args: &[&str]) -> Result<()> {
    toolchain::output(Command::new("auditctl").args(args))
        .with_context(|| format!("auditctl {}", args.join(" ")))?;
    Ok(())
}

/// tracefs mounted at /sys/kernel/tracing for the peers (they read
/// tracepoint ids there); unmounted when dropped, if it was mounted here.
pub(super) struct Tracefs {
    pub(super) mounted: bool,
}

pub(super) const TRACEFS: &str = "/sys/kernel/tracing";

impl Tracefs {
    pub(super) fn mount() -> Result<Tracefs> {
        if Path::new(TRACEFS).join("events").exists() {
            return Ok(Tracefs { mounted: false });
        }
        step(&format!(
            "mounting tracefs on {TRACEFS} (unmounted at the end)"
        ));
        let status = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", TRACEFS])
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!("mounting tracefs on {TRACEFS} failed ({status})");
        }
        Ok(Tracefs { mounted: true })
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(TRACEFS)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("warning: unmounting {TRACEFS} failed; unmount it by hand");
            }
        }
    }
}

/// A directory under the temp dir, removed with what is in it when dropped.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(name: &str) -> Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(super) fn file(dir: &Path, name: &str) -> Result<fs::File> {
    let path = dir.join(name);
    fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
}

/// The last lines of a log, for an error message.
pub(super) fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}
