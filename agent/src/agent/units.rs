//! What systemd says about the units services run in: each unit's
//! `Restart=`, asked with `systemctl show` off the event loop whenever a
//! service starts in it, so an alert about systemd restarting it by itself
//! can name the policy that did.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

#[derive(Clone, Default)]
pub struct RestartPolicies(Arc<Mutex<HashMap<String, String>>>);

impl RestartPolicies {
    /// Asks systemd for `unit`'s `Restart=` in the background; the answer
    /// is there for the next alert. Without systemd nothing is known.
    pub fn refresh(&self, unit: &str) {
        let unit = unit.to_string();
        let known = self.0.clone();
        tokio::spawn(async move {
            let output = tokio::process::Command::new("systemctl")
                .args(["show", "--property=Restart", "--value", "--", &unit])
                .kill_on_drop(true)
                .output()
                .await;
            match output {
                Ok(out) if out.status.success() => {
                    let policy = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    if !policy.is_empty() {
                        known.lock().unwrap().insert(unit, policy);
                    }
                }
                Ok(out) => tracing::debug!(
                    "systemctl show {unit}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(err) => tracing::debug!("systemctl show {unit}: {err}"),
            }
        });
    }

    /// `unit`'s `Restart=` as systemd last said (`always`, `on-failure`).
    pub fn of(&self, unit: &str) -> Option<String> {
        self.0.lock().unwrap().get(unit).cloned()
    }
}

/// Whether systemd is taking the host down (`systemctl is-system-running`
/// says `stopping`); false without systemd, or when it does not answer
/// within 2 s.
pub fn system_stopping() -> bool {
    if !std::path::Path::new("/run/systemd/system").exists() {
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
