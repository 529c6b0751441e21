//! What systemd said last of the units services run in: each unit's
//! `Restart=`, asked (`supervisors::systemd::show`) off the event loop
//! whenever a service starts in it, so an alert about systemd restarting it
//! by itself can name the policy that did.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::supervisors::systemd;

#[derive(Clone, Default)]
pub struct RestartPolicies(Arc<Mutex<HashMap<String, String>>>);

impl RestartPolicies {
    /// Asks systemd for `unit`'s `Restart=` in the background; the answer
    /// is there for the next alert. Without systemd nothing is known.
    pub fn refresh(&self, unit: &str) {
        if !systemd::is_running() {
            return;
        }
        let unit = unit.to_string();
        let known = self.0.clone();
        tokio::task::spawn_blocking(move || match systemd::show(&unit) {
            Ok(shown) => {
                if let Some(policy) = shown.restart {
                    known.lock().unwrap().insert(unit, policy);
                }
            }
            Err(err) => tracing::debug!("systemctl show {unit}: {err}"),
        });
    }

    /// `unit`'s `Restart=` as systemd last said (`always`, `on-failure`).
    pub fn of(&self, unit: &str) -> Option<String> {
        self.0.lock().unwrap().get(unit).cloned()
    }
}
