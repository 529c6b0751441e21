//! SIGHUP, as daemons take it: the audit log opened again under its name
//! (after logrotate moved it away) and the configuration read again. A file
//! with an error is refused as a whole: the running configuration stays.

use std::path::Path;

use super::Agent;
use crate::{
    audit::AgentEvent,
    config::{Config, Settings},
    detect::{self, Detector},
    monitor::Monitor,
};

impl Agent {
    pub(super) fn reload(&mut self, path: Option<&Path>, monitor: &mut Monitor) {
        if let Err(err) = self.audit.reopen() {
            tracing::error!("SIGHUP: {err:#}; entries keep going to the file open before");
        }
        let config = match Config::load(path) {
            Ok(config) => config,
            Err(err) => {
                tracing::error!(
                    "SIGHUP: the configuration has an error, the running one stays: {err:#}"
                );
                self.audit.write(AgentEvent::ConfigRefused {
                    error: format!("{err:#}"),
                });
                return;
            }
        };
        // The windows and operator stops carry over to the services that
        // remain; running main processes are found again in the table.
        let notable = detect::notable_names(&config.services);
        if notable.every_exec && !monitor.probes_ref().reads_every_exec() {
            tracing::warn!(
                "SIGHUP: a watched program's file name is a glob: the kernel reads every \
                 exec's arguments from the next start, until then those of known names"
            );
        }
        if let Err(err) = monitor.read_args_of(&notable.names, detect::arg_units(&config.services))
        {
            tracing::error!("SIGHUP: {err:#}; the kernel reads arguments as it did");
        }
        let mut detector = Detector::new(&config.services);
        detector.set_agent_pid(std::process::id());
        detector.adopt(monitor.table());
        detector.restore(self.detector.snapshot());
        self.detector = detector;
        self.ask_units();
        self.host = config.agent.host.clone();
        self.alerting
            .set_group_interval(config.agent.group_interval);
        let live = Settings {
            host: self.settings.host.clone(),
            group_interval: self.settings.group_interval,
            ..config.agent.clone()
        };
        if live != self.settings {
            tracing::warn!(
                "SIGHUP: [agent] keys other than host and group_interval take effect at the next start"
            );
        }
        if config.sinks != self.sinks {
            tracing::warn!("SIGHUP: changed [[sink]] tables take effect at the next start");
        }
        self.settings.host = config.agent.host;
        self.settings.group_interval = config.agent.group_interval;
        for (service, pids) in self.custody.held_by_service() {
            if self.detector.services().iter().all(|v| v.name != service) {
                tracing::warn!(
                    "SIGHUP: {service} is no longer watched, but pids {pids:?} stay held frozen for it (`stopguard status` lists them; `stopguard thaw PID` lets one run)"
                );
            }
        }
        let services: Vec<String> = config.services.iter().map(|s| s.name.clone()).collect();
        tracing::info!(
            "configuration reloaded from {}: watching {} services ({})",
            config.source,
            services.len(),
            services.join(", ")
        );
        self.audit.write(AgentEvent::ConfigReloaded {
            source: config.source,
            services,
        });
    }
}
