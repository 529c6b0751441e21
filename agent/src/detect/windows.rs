//! Maintenance windows: declared times a service is meant to stay down,
//! opened and closed by an operator or expiring, numbered w1, w2... across
//! agent restarts; and the detector state saved over those restarts.

use serde::{Deserialize, Serialize};

use super::{Detector, OperatorStop};
use crate::events::ProcessKey;

/// The detector's state kept across agent restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub windows: Vec<Window>,
    pub stops: Vec<OperatorStop>,
    pub next_window: u64,
    /// Each service's main process: one that ends while no agent runs is
    /// known again when its exit record is read.
    #[serde(default)]
    pub mains: Vec<SavedMain>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedMain {
    pub service: String,
    pub key: ProcessKey,
    pub comm: Option<String>,
    pub unit: Option<String>,
}

/// A declared maintenance window: the service is meant to stay down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub id: String,
    pub service: String,
    pub reason: String,
    /// Who opened it: uid and login uid of the control client.
    pub opened_by_uid: u32,
    pub opened_by_loginuid: Option<u32>,
    pub opened_at_ns: u64,
    pub expires_at_ns: Option<u64>,
    /// What `stop --and-pause` switched off for it, undone when it closes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub switched_off: Vec<SwitchedOff>,
    /// The cluster window it applies on this host (fleet mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// A supervisor's off switch run for a window, and its undoing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchedOff {
    pub supervisor: String,
    pub off: Vec<String>,
    pub on: Vec<String>,
    /// The supervisor's credentials, which both switches run with; none
    /// for root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<crate::supervisors::bounded::Credentials>,
}

impl Detector {
    /// Opens a window on `service`: a configured service (all its instances,
    /// for a per-instance one) or one instance (`postgresql@15-main`);
    /// errors name what is wrong.
    pub fn open_window(
        &mut self,
        service: &str,
        reason: &str,
        by: (u32, Option<u32>),
        now_ns: u64,
        duration_ns: Option<u64>,
    ) -> std::result::Result<Window, String> {
        if self.index_for(service).is_none() {
            let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
            return Err(format!(
                "no service `{service}` is watched (watched: {})",
                names.join(", ")
            ));
        }
        self.expire_windows(now_ns);
        if let Some(open) = self.windows.iter().find(|w| w.service == service) {
            return Err(format!("{service} already has window {} open", open.id));
        }
        let window = Window {
            id: format!("w{}", self.next_window),
            service: service.to_string(),
            reason: reason.to_string(),
            opened_by_uid: by.0,
            opened_by_loginuid: by.1,
            opened_at_ns: now_ns,
            expires_at_ns: duration_ns.map(|d| now_ns + d),
            switched_off: Vec::new(),
            cluster: None,
        };
        self.next_window += 1;
        self.windows.push(window.clone());
        Ok(window)
    }

    /// Closes the window with this id, or the one open on this service. The
    /// service's operator stop ends with it: the operator is done.
    pub fn close_window(&mut self, service_or_id: &str) -> Option<Window> {
        let at = self
            .windows
            .iter()
            .position(|w| w.id == service_or_id || w.service == service_or_id)?;
        let window = self.windows.remove(at);
        for index in self.covered(&window.service) {
            self.services[index].stop = None;
        }
        Some(window)
    }

    /// Ends the service's operator stop without closing its window: the
    /// operator thawed what a supervisor started.
    pub fn release(&mut self, service: &str) {
        for index in self.covered(service) {
            self.services[index].stop = None;
        }
    }

    /// Marks window `id` as applying cluster window `cluster`.
    pub fn mark_cluster(&mut self, id: &str, cluster: &str) {
        if let Some(window) = self.windows.iter_mut().find(|w| w.id == id) {
            window.cluster = Some(cluster.to_string());
        }
    }

    /// Records an off switch run for window `id`; false when it is closed.
    pub fn switched_off(&mut self, id: &str, switch: SwitchedOff) -> bool {
        match self.windows.iter_mut().find(|w| w.id == id) {
            Some(window) => {
                window.switched_off.push(switch);
                true
            }
            None => false,
        }
    }

    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// Drops windows whose time is up.
    pub fn expire_windows(&mut self, now_ns: u64) -> Vec<Window> {
        let (expired, open): (Vec<Window>, Vec<Window>) = std::mem::take(&mut self.windows)
            .into_iter()
            .partition(|w| w.expires_at_ns.is_some_and(|e| e <= now_ns));
        self.windows = open;
        // Its end is the end of the maintenance, as a close is: what the
        // supervisors it switched back on start is a start.
        for window in &expired {
            self.release(&window.service);
        }
        expired
    }

    /// The window open on entry `index`: on it, or on the per-instance
    /// service it is an instance of.
    pub(super) fn window_on(&self, index: usize) -> Option<&Window> {
        let service = &self.services[index];
        let config = &self.specs[service.spec].name;
        self.windows
            .iter()
            .find(|w| w.service == service.name || w.service == *config)
    }

    /// The window open on `service` or on what it is an instance of.
    pub fn window_of(&self, service: &str) -> Option<&Window> {
        match self.index_of(service) {
            Some(index) => self.window_on(index),
            None => self.windows.iter().find(|w| w.service == service),
        }
    }

    /// What must survive a restart of the agent: windows and stops.
    pub fn snapshot(&self) -> Saved {
        Saved {
            windows: self.windows.clone(),
            stops: self
                .services
                .iter()
                .filter_map(|s| s.stop.clone())
                .collect(),
            next_window: self.next_window,
            mains: self
                .services
                .iter()
                .filter_map(|s| {
                    Some(SavedMain {
                        service: s.name.clone(),
                        key: s.main?,
                        comm: s.comm.clone(),
                        unit: s.main_unit.clone(),
                    })
                })
                .collect(),
        }
    }

    /// Takes back what `snapshot` saved, for the services still watched.
    pub fn restore(&mut self, saved: Saved) {
        self.windows = saved
            .windows
            .into_iter()
            .filter(|w| self.index_for(&w.service).is_some())
            .collect();
        for stop in saved.stops {
            if let Some(index) = self.index_for(&stop.service) {
                self.services[index].stop = Some(stop);
            }
        }
        self.next_window = self.next_window.max(saved.next_window);
        for main in saved.mains {
            if !self.gap_ended.contains(&main.key) {
                continue;
            }
            let Some(index) = self.index_for(&main.service) else {
                continue;
            };
            let service = &mut self.services[index];
            if service.main.is_none() {
                service.main = Some(main.key);
                service.comm = main.comm;
                service.main_unit = main.unit;
                self.mains.insert(main.key, index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::detect::{Finding, tests::setup};

    #[test]
    fn inside_a_window_any_stop_is_the_operators_and_the_respawn_names_it() {
        let (mut host, monit, postgres) = setup();
        let window = host
            .detector
            .open_window(
                "postgres",
                "schema change",
                (0, Some(1000)),
                host.time_ns,
                None,
            )
            .unwrap();
        assert_eq!(window.id, "w1");
        assert!(
            host.detector
                .open_window("postgres", "again", (0, None), host.time_ns, None)
                .is_err()
        );
        assert!(
            host.detector
                .open_window("nosuch", "x", (0, None), host.time_ns, None)
                .is_err()
        );
        // A stop from a process with no login: inside the window, it counts.
        let findings = host.signal(monit, postgres, 15);
        let [Finding::OperatorStop(stop)] = &findings[..] else {
            panic!("{findings:#?}");
        };
        assert_eq!(stop.loginuid, Some(1000), "the window's opener");
        host.exit(postgres, Some(0), None);
        let (_, findings) = host.monit_starts_postgres(monit, 500);
        let [Finding::Respawn { window, .. }] = &findings[..] else {
            panic!("{findings:#?}");
        };
        assert_eq!(window.as_ref().unwrap().reason, "schema change");
        // Closing ends the operator's stop: the next start is ordinary.
        assert_eq!(
            host.detector.close_window("w1").unwrap().service,
            "postgres"
        );
        assert!(host.detector.stop_of("postgres").is_none());
        assert!(host.detector.windows().is_empty());
    }

    #[test]
    fn windows_expire() {
        let (mut host, _, _) = setup();
        let now = host.time_ns;
        host.detector
            .open_window("postgres", "short", (0, None), now, Some(1_000))
            .unwrap();
        assert!(host.detector.expire_windows(now + 999).is_empty());
        assert_eq!(host.detector.expire_windows(now + 1_000).len(), 1);
        assert!(host.detector.windows().is_empty());
    }
}
