//! What the control socket asks of the agent: windows, thaw, status, stop,
//! a test alert, the audit timeline. One dispatch (`call`); answers that
//! need waiting for run beside the event loop, never in it.

use std::time::Duration;

use super::Agent;
use crate::{
    alert::{self, WindowInfo},
    alerting::sinks,
    audit::{self, AgentEvent},
    control::{
        AlertTested, AuditRead, CloseWindow, GetStatus, ListWindows, OpenWindow, Peer, ReadAudit,
        Request, ServiceState, ServiceStatus, Status, TestAlert, Thaw, Thawed, WindowClosed,
        WindowOpened,
        server::{Answer, Reply, Wire},
    },
    decide::requests,
    detect::Window,
    monitor::Monitor,
    sys::clock::boot_ns,
};

impl Agent {
    /// Answers one request; refused ones (not `permitted`) are audited.
    pub(super) fn call(
        &mut self,
        monitor: &mut Monitor,
        request: Request,
        peer: Peer,
        permitted: bool,
    ) -> Wire {
        if !permitted {
            tracing::warn!(
                uid = peer.uid,
                pid = peer.pid,
                "refused {request:?}: permission denied"
            );
            self.audit
                .write(AgentEvent::PermissionDenied { request, peer });
            return Wire::refuse(
                "permission denied: changing state needs root or the control group",
            );
        }
        if request.changes_state() {
            self.audit.write(AgentEvent::Control {
                request: request.clone(),
                peer,
            });
        }
        match request {
            Request::Stop(stop) => self.stop(monitor, stop, peer).into_wire(),
            Request::Explain(explain) => self.explain(monitor, &explain.service).into_wire(),
            Request::AlertTest(test) => self.alert_test(test).into_wire(),
            Request::Audit(read) => self.audit_read(read).into_wire(),
            Request::WindowOpen(open) => self.open_window_for(monitor, open, peer).into_wire(),
            Request::WindowClose(close) => {
                let local = self
                    .detector
                    .windows()
                    .iter()
                    .find(|w| w.id == close.target || w.service == close.target)
                    .map(|w| w.id.clone());
                let answer = self.close_window(monitor, close);
                if let Some(local) = local {
                    self.dismiss_cluster_window(&local);
                }
                answer.into_wire()
            }
            Request::WindowList(ListWindows {}) => self.window_list().into_wire(),
            Request::ClusterOpen(open) if open.and_pause => {
                self.open_cluster_paused(monitor, open, peer).into_wire()
            }
            Request::ClusterOpen(open) => self.open_cluster_window(open, peer).into_wire(),
            Request::ClusterClose(close) => self.close_cluster(close, peer).into_wire(),
            Request::FleetStatus(get) => self.fleet_status(get).into_wire(),
            Request::Thaw(thaw) => self.thaw(monitor, &thaw.target).into_wire(),
            Request::Status(GetStatus {}) => Answer::Now(Ok(self.status(monitor))).into_wire(),
        }
    }

    fn open_window_for(
        &mut self,
        monitor: &mut Monitor,
        open: OpenWindow,
        peer: Peer,
    ) -> Reply<OpenWindow> {
        Answer::Now(
            self.open_window(monitor, &open, peer)
                .map(|window| WindowOpened {
                    window: WindowInfo::new(&window, &self.clock),
                }),
        )
    }

    pub(super) fn window_infos(&self) -> Vec<WindowInfo> {
        self.detector
            .windows()
            .iter()
            .map(|w| WindowInfo::new(w, &self.clock))
            .collect()
    }

    /// Opens a window for `peer`, arming the guard when the service's
    /// policy freezes.
    pub(super) fn open_window(
        &mut self,
        monitor: &mut Monitor,
        open: &OpenWindow,
        peer: Peer,
    ) -> Result<Window, String> {
        let (window, effects) = requests::open_window(&mut self.detector, open, peer, boot_ns())?;
        self.perform(monitor, effects);
        tracing::info!(
            "window {} opened on {}: {}",
            window.id,
            open.service,
            open.reason
        );
        Ok(window)
    }

    pub(super) fn close_window(
        &mut self,
        monitor: &mut Monitor,
        close: CloseWindow,
    ) -> Reply<CloseWindow> {
        self.record_switches();
        let closed = match requests::close_window(&mut self.detector, &close) {
            Ok(closed) => closed,
            Err(why) => return Answer::refuse(why),
        };
        let released = self.perform(monitor, closed.effects).released;
        let window = closed.window;
        tracing::info!("window {} on {} closed", window.id, window.service);
        let mut reply = WindowClosed {
            window: WindowInfo::new(&window, &self.clock),
            thawed: (!close.kill).then(|| released.clone()),
            killed: close.kill.then_some(released),
            still_frozen: closed
                .covered
                .iter()
                .flat_map(|service| self.custody.held_of(service))
                .collect(),
            resumed: Vec::new(),
        };
        if !closed.resume {
            return Answer::Now(Ok(reply));
        }
        let resume = self.resume_switches(&window);
        Answer::later(async move {
            reply.resumed = resume.await;
            Ok(reply)
        })
    }

    fn thaw(&mut self, monitor: &mut Monitor, target: &str) -> Reply<Thaw> {
        let held: Vec<String> = requests::covering(&self.detector, target)
            .iter()
            .flat_map(|t| self.custody.services_held_for(t))
            .collect();
        match requests::thaw(&mut self.detector, target, &held) {
            Ok(effects) => Answer::Now(Ok(Thawed {
                thawed: self.perform(monitor, effects).released,
            })),
            Err(why) => Answer::refuse(why),
        }
    }

    pub(super) fn status(&self, monitor: &Monitor) -> Status {
        let services = self
            .detector
            .services()
            .into_iter()
            .map(|view| {
                let (name, stop, pid) = (view.name, view.stop, view.pid);
                ServiceStatus {
                    name: name.to_string(),
                    unit: view.unit.map(str::to_string),
                    pid,
                    state: requests::state(pid, stop),
                    stopped_by: stop.cloned(),
                    frozen: self.custody.held_of(name),
                    supervisors: self.watchers.of(name),
                    watched: true,
                }
            })
            .collect::<Vec<_>>();
        // A reload may have taken out a service whose respawn is held.
        let unwatched: Vec<ServiceStatus> = self
            .custody
            .held_by_service()
            .into_iter()
            .filter(|(name, _)| !services.iter().any(|s| &s.name == name))
            .map(|(name, frozen)| ServiceStatus {
                name,
                unit: None,
                pid: None,
                state: ServiceState::NotRunning,
                stopped_by: None,
                frozen,
                supervisors: Vec::new(),
                watched: false,
            })
            .collect();
        let services = services.into_iter().chain(unwatched).collect();
        let spool_failure = self.alerting.delivery().spool_failure();
        Status {
            host: self.host.clone(),
            services,
            windows: self.window_infos(),
            frozen: self.custody.held_pids(),
            events: monitor.counts(),
            lost: self.lost,
            spool_depth: self.alerting.delivery().spool_depth(),
            spool_unsynced: spool_failure.as_ref().map_or(0, |(n, _)| *n),
            spool_error: spool_failure.map(|(_, f)| f),
            state_error: self.state_failure.clone(),
            sinks: self.alerting.delivery().status(),
            pinning: Some(monitor.probes_ref().pinning().clone()),
            fleet: self.fleet_link_status(),
        }
    }

    /// `stopguard alert test`: a test alert straight to each sink (or the
    /// one named), outside the spool; the answer lists each result.
    fn alert_test(&self, TestAlert { sink }: TestAlert) -> Reply<TestAlert> {
        let delivery = self.alerting.delivery();
        let chosen: Vec<sinks::Sink> = delivery
            .sinks()
            .filter(|s| sink.as_ref().is_none_or(|n| *n == s.name))
            .cloned()
            .collect();
        if chosen.is_empty() {
            let names: Vec<String> = delivery.sinks().map(|s| s.name.clone()).collect();
            return Answer::refuse(match sink {
                Some(name) => format!("no sink `{name}` (sinks: {})", names.join(", ")),
                None => "no [[sink]] is configured".to_string(),
            });
        }
        let alert = alert::test(&self.host, &self.clock, boot_ns());
        Answer::later(async move {
            let mut results = Vec::new();
            for sink in chosen {
                results.push(sinks::test(sink, alert.clone()).await);
            }
            Ok(AlertTested { results })
        })
    }

    /// `stopguard audit`: the log read off the loop.
    fn audit_read(&self, read: ReadAudit) -> Reply<ReadAudit> {
        let ReadAudit {
            since_secs,
            service,
        } = read;
        let path = self.audit_path.clone();
        Answer::later(async move {
            let since = since_secs.map(Duration::from_secs);
            let read =
                tokio::task::spawn_blocking(move || audit::read(&path, since, service.as_deref()))
                    .await;
            match read {
                Ok(Ok(timeline)) => Ok(AuditRead { timeline }),
                Ok(Err(err)) => Err(format!("{err:#}")),
                Err(err) => Err(format!("reading the audit log: {err}")),
            }
        })
    }
}
