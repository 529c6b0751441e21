//! `stopguard explain`: what runs as a service, how it started, and every
//! supervisor that would start it again if it stopped now. The supervisors
//! are looked at off the event loop (their probes run commands and ask
//! REST APIs); what they said last is kept for `status` and for alerts
//! (Patroni restarting what it was told to leave alone while paused).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::Semaphore;

use super::Agent;
use crate::{
    control::{
        Explain, Explanation, MainProcess,
        server::{Answer, Reply},
    },
    decide::requests,
    detect::Finding,
    monitor::Monitor,
    supervisors::{
        self,
        watch::{self, Main, Subject, Watcher},
    },
    sys::identity::person,
};

/// A main process to look at: its pid and command line.
pub type MainArgs = Option<(u32, Vec<String>)>;

/// What the supervisors said last of each service, and each service's last
/// main process (to tell, once it is stopped, which cluster was its own).
#[derive(Clone)]
pub struct Watchers {
    said: Arc<Mutex<HashMap<String, Vec<Watcher>>>>,
    last_main: Arc<Mutex<HashMap<String, Main>>>,
    looking: Arc<AtomicBool>,
    /// The threads `explain` may hold asking supervisors at once.
    pool: Arc<Semaphore>,
}

impl Default for Watchers {
    fn default() -> Watchers {
        Watchers {
            said: Arc::default(),
            last_main: Arc::default(),
            looking: Arc::default(),
            pool: Arc::new(Semaphore::new(LOOKS)),
        }
    }
}

/// Looks for `explain` under way at once; more wait for one to end.
const LOOKS: usize = 2;

/// How long `explain` waits for the supervisors in all.
pub const EXPLAIN_DEADLINE: Duration = Duration::from_secs(10);

impl Watchers {
    /// What watches `service`, as last looked at.
    pub fn of(&self, service: &str) -> Vec<Watcher> {
        self.said
            .lock()
            .unwrap()
            .get(service)
            .cloned()
            .unwrap_or_default()
    }

    /// The supervisor `pid` watching `service`, when it was paused as last
    /// looked at: paused, not stopped by its own off switch (`sv down`).
    pub fn paused(&self, service: &str, pid: u32) -> Option<Watcher> {
        self.of(service)
            .into_iter()
            .find(|w| w.pid == Some(pid) && w.paused() && !w.off_stops)
    }

    /// Looks at what watches each of `subjects` in the background, unless a
    /// look is still under way.
    pub fn refresh(&self, subjects: Vec<(Subject, MainArgs)>) {
        if self.looking.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            // One read of /proc for all of them.
            let processes = watch::running();
            for (mut subject, main) in subjects {
                subject.processes = processes.clone();
                this.look(&mut subject, main);
            }
            this.looking.store(false, Ordering::Release);
        });
    }

    /// Looks at what watches `subject` now (blocking), remembering it.
    pub(super) fn look(&self, subject: &mut Subject, main: MainArgs) -> Vec<Watcher> {
        subject.read_proc(main);
        let service = subject.service.clone();
        match &subject.main {
            Some(main) => {
                self.last_main
                    .lock()
                    .unwrap()
                    .insert(service.clone(), main.clone());
            }
            None => subject.was = self.last_main.lock().unwrap().get(&service).cloned(),
        }
        let watchers = supervisors::watching(subject);
        self.said.lock().unwrap().insert(service, watchers.clone());
        watchers
    }
}

impl Agent {
    /// `explain SERVICE`: answered once the supervisors have been asked.
    pub(super) fn explain(&self, monitor: &Monitor, service: &str) -> Reply<Explain> {
        let (explanation, subject, main) = match self.explanation(monitor, service) {
            Ok(found) => found,
            Err(err) => return Answer::refuse(err),
        };
        let watchers = self.watchers.clone();
        Answer::later(async move {
            // A probe stuck on a slow endpoint keeps its thread until its
            // own deadline; the answer does not wait that long.
            let look = async move {
                let permit = watchers.pool.clone().acquire_owned().await;
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let mut subject = subject;
                    watchers.look(&mut subject, main)
                })
                .await
            };
            match tokio::time::timeout(EXPLAIN_DEADLINE, look).await {
                Ok(Ok(supervisors)) => Ok(Explanation {
                    would_restart: requests::would_restart(&supervisors),
                    supervisors,
                    ..explanation
                }),
                Ok(Err(err)) => Err(format!("looking at the supervisors: {err}")),
                Err(_) => Err(format!(
                    "the supervisors did not all answer within {} s (a probe is slow or stuck; the agent's log names it)",
                    EXPLAIN_DEADLINE.as_secs()
                )),
            }
        })
    }

    /// What the agent knows of `service` (a watched service, or the one
    /// instance of a per-instance one), and the subject its supervisors are
    /// looked for with.
    pub(super) fn explanation(
        &self,
        monitor: &Monitor,
        service: &str,
    ) -> Result<(Explanation, Subject, MainArgs), String> {
        let views = self.detector.services();
        let view = match views.iter().find(|v| v.name == service) {
            Some(view) => view,
            None => {
                let instances: Vec<_> = views.iter().filter(|v| v.config == service).collect();
                match instances[..] {
                    [one] => one,
                    [] => {
                        let names: Vec<&str> = views.iter().map(|v| v.name).collect();
                        return Err(format!(
                            "no service `{service}` is watched (watched: {})",
                            names.join(", ")
                        ));
                    }
                    _ => {
                        let names: Vec<&str> = instances.iter().map(|v| v.name).collect();
                        return Err(format!(
                            "`{service}` runs as {} units ({}): explain one of them, such as `stopguard explain {}`",
                            names.len(),
                            names.join(", "),
                            names[0]
                        ));
                    }
                }
            }
        };
        let process = view.pid.and_then(|pid| monitor.table().live(pid));
        let main = process.map(|p| {
            let start = view.start;
            let mut chain = match start {
                Some(start) => start.chain.clone(),
                None => monitor.table().chain(&p.key),
            };
            if start.is_none() && !chain.is_empty() {
                chain.remove(0);
            }
            MainProcess {
                pid: p.pid,
                exe: p.exe.clone(),
                cmdline: p.cmdline.to_vec(),
                seen_starting: start.is_some(),
                started_at: start.map(|s| {
                    humantime::format_rfc3339_seconds(self.clock.wall(s.time_ns)).to_string()
                }),
                started_by: match start {
                    Some(s) => s.supervisor.as_ref().map(|l| l.comm.clone()),
                    None => monitor
                        .table()
                        .nearest_supervisor(&p.key)
                        .map(|s| s.comm.clone()),
                },
                started_by_person: p.loginuid.map(|uid| person(Some(uid))),
                chain,
            }
        });
        let unit = view
            .unit
            .map(str::to_string)
            .or_else(|| process.and_then(|p| p.unit.clone()));
        let subject = Subject {
            service: view.name.to_string(),
            unit: unit.clone(),
            chain: view
                .start
                .map(|s| s.chain.iter().map(|l| l.pid).collect())
                .unwrap_or_default(),
            ..Subject::default()
        };
        let explanation = Explanation {
            service: view.name.to_string(),
            unit,
            state: requests::state(view.pid, view.stop),
            stopped_by: view.stop.cloned(),
            supervisors: Vec::new(),
            would_restart: false,
            main: main.clone(),
        };
        Ok((explanation, subject, main.map(|m| (m.pid, m.cmdline))))
    }

    /// Looks again, in the background, at what watches every service.
    pub(super) fn refresh_watchers(&self, monitor: &Monitor) {
        let subjects = self
            .detector
            .services()
            .iter()
            .filter_map(|view| self.explanation(monitor, view.name).ok())
            .map(|(_, subject, main)| (subject, main))
            .collect();
        self.watchers.refresh(subjects);
    }
}

/// Whether `finding` (a start or a stop) may change what watches its
/// service, so that it is looked at again.
pub(super) fn changes_watchers(finding: &Finding) -> bool {
    matches!(
        finding,
        Finding::OperatorStop(_) | Finding::Start { .. } | Finding::OperatorStart { .. }
    )
}
