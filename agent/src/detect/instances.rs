//! Services by systemd unit: which configured service (or which instance
//! of a per-instance one) a process belongs to, the instances met so far,
//! and what status shows of them.

use std::collections::HashSet;

use super::{Detector, OperatorStop, Started, Watched};
use crate::{
    config,
    events::ProcessKey,
    process::{Process, ProcessTable},
    supervisors,
};

/// Where a process belongs: a service watched already, or a new instance
/// (named after `unit`) of a per-instance service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Slot {
    Known(usize),
    New { spec: usize, unit: String },
}

/// One service as status shows it.
#[derive(Debug, PartialEq, Eq)]
pub struct ServiceView<'a> {
    pub name: &'a str,
    /// The unit it is, for an instance.
    pub unit: Option<&'a str>,
    /// The configured service it is, or is an instance of.
    pub config: &'a str,
    pub pid: Option<u32>,
    pub stop: Option<&'a OperatorStop>,
    /// How its main process was seen to start; none for one found running.
    pub start: Option<&'a Started>,
}

impl Detector {
    /// The entry for `service`: a watched one, or a new instance when a
    /// per-instance service's units match the name (`postgresql@16-main`
    /// for `postgresql@*.service`), so a window can be opened on a cluster
    /// not started yet.
    pub(super) fn index_for(&mut self, service: &str) -> Option<usize> {
        if let Some(index) = self.index_of(service) {
            return Some(index);
        }
        let unit = if service.contains('.') {
            service.to_string()
        } else {
            format!("{service}.service")
        };
        let spec = self
            .specs
            .iter()
            .position(|s| s.per_instance() && s.in_unit(&unit))?;
        Some(self.resolve(Slot::New { spec, unit }))
    }

    /// The entries a name covers: the service itself and, for a
    /// per-instance service's own name, every instance of it.
    pub(super) fn covered(&self, service: &str) -> Vec<usize> {
        let spec = self.specs.iter().position(|s| s.name == service);
        self.services
            .iter()
            .enumerate()
            .filter(|(_, s)| s.name == service || Some(s.spec) == spec)
            .map(|(index, _)| index)
            .collect()
    }

    pub(super) fn resolve(&mut self, slot: Slot) -> usize {
        match slot {
            Slot::Known(index) => index,
            Slot::New { spec, unit } => {
                let name = unit.strip_suffix(".service").unwrap_or(&unit).to_string();
                self.services.push(Watched::new(name, spec, Some(unit)));
                self.services.len() - 1
            }
        }
    }

    /// The configuration of `service` (of the service it is an instance of).
    pub fn config_of(&self, service: &str) -> Option<&config::Service> {
        self.index_of(service)
            .map(|index| &self.specs[self.services[index].spec])
            .or_else(|| self.specs.iter().find(|s| s.name == service))
    }

    /// Every service as status shows it: the configured ones, and each
    /// instance met of a per-instance one (whose own name is shown only
    /// while no instance is known or while it has something of its own).
    pub fn services(&self) -> Vec<ServiceView<'_>> {
        self.services
            .iter()
            .enumerate()
            .filter(|(index, s)| {
                let own_of_instances = *index < self.specs.len()
                    && self.specs[*index].per_instance()
                    && self
                        .services
                        .iter()
                        .any(|i| i.spec == *index && i.unit.is_some());
                !own_of_instances || s.main.is_some() || s.stop.is_some()
            })
            .map(|(_, s)| ServiceView {
                name: &s.name,
                unit: s.unit.as_deref(),
                config: &self.specs[s.spec].name,
                pid: s.main.map(|k| k.pid),
                stop: s.stop.as_ref(),
                start: s
                    .start
                    .as_deref()
                    .filter(|st| Some(st.pid) == s.main.map(|k| k.pid)),
            })
            .collect()
    }

    /// The instances met of per-instance service `service`, by name.
    pub fn instances_of(&self, service: &str) -> Vec<&str> {
        self.covered(service)
            .into_iter()
            .filter(|&index| {
                self.services[index].unit.is_some() && self.services[index].name != service
            })
            .map(|index| self.services[index].name.as_str())
            .collect()
    }

    /// The unit `service` is, for an instance; else the unit its main
    /// process runs in, if any.
    pub fn unit_of(&self, service: &str) -> Option<&str> {
        let watched = &self.services[self.index_of(service)?];
        watched.unit.as_deref().or(watched.main_unit.as_deref())
    }

    /// The name of `service`'s latest main process (of any instance, for a
    /// per-instance service's own name): what its next start will be
    /// called, for the kernel guard of a service with no exe globs.
    pub fn comm_of(&self, service: &str) -> Option<&str> {
        self.covered(service)
            .into_iter()
            .rev()
            .find_map(|index| self.services[index].comm.as_deref())
    }

    /// The service a process runs: its executable matches a service's exe
    /// globs, or for an interpreted daemon (`/bin/sh /path/daemon`, where
    /// /proc's exe is the interpreter) its first arguments do; or it runs
    /// in a unit of a service with no exe globs. In a unit of a
    /// per-instance service, it is that unit's instance. A wrapper's
    /// arguments (`nohup /usr/sbin/mariadbd`) are not what it runs: the
    /// daemon is met at the wrapper's exec of it.
    pub(super) fn slot_of(&self, process: &Process) -> Option<Slot> {
        let interpreted = supervisors::is_interpreter(&process.comm)
            || process
                .exe
                .as_deref()
                .and_then(|exe| exe.rsplit('/').next())
                .is_some_and(supervisors::is_interpreter);
        let may_run = |path: &&String| match &self.exe_files {
            Some(files) => files.contains(path.rsplit('/').next().unwrap_or_default()),
            None => true,
        };
        let by_exe = process
            .exe
            .iter()
            .chain(process.cmdline.iter().take(if interpreted { 2 } else { 1 }))
            .filter(may_run)
            .find_map(|path| {
                self.specs
                    .iter()
                    .position(|s| !s.exe.is_empty() && s.runs(&[path]))
            });
        let unit = process.unit.as_deref();
        let spec = by_exe.or_else(|| {
            let unit = unit?;
            self.specs
                .iter()
                .position(|s| s.exe.is_empty() && s.in_unit(unit))
        })?;
        match unit.filter(|u| self.specs[spec].per_instance() && self.specs[spec].in_unit(u)) {
            Some(unit) => Some(
                self.services
                    .iter()
                    .position(|s| s.spec == spec && s.unit.as_deref() == Some(unit))
                    .map_or_else(
                        || Slot::New {
                            spec,
                            unit: unit.to_string(),
                        },
                        Slot::Known,
                    ),
            ),
            None => Some(Slot::Known(spec)),
        }
    }

    /// The service whose program `process` runs (an instance is met here
    /// if it was not before).
    pub fn service_name_of(&mut self, process: &Process) -> Option<String> {
        let slot = self.slot_of(process)?;
        let index = self.resolve(slot);
        Some(self.services[index].name.clone())
    }

    /// Whether the slot's service has no exe globs (runs what its unit runs).
    pub(super) fn unit_only(&self, slot: &Slot) -> bool {
        let spec = match slot {
            Slot::Known(index) => self.services[*index].spec,
            Slot::New { spec, .. } => *spec,
        };
        self.specs[spec].exe.is_empty()
    }

    /// A per-instance service's program started outside all of its units
    /// (monit's `pg_ctl start`, past systemd) starts the instance an
    /// operator stopped and that is not running, the latest stopped if
    /// several are: the same daemon, started again another way.
    pub(super) fn stand_in(&self, index: usize) -> usize {
        let own = &self.services[index];
        if own.unit.is_some() || !self.specs[own.spec].per_instance() || own.stop.is_some() {
            return index;
        }
        self.services
            .iter()
            .enumerate()
            .filter(|(_, s)| s.spec == own.spec && s.unit.is_some() && s.main.is_none())
            .filter_map(|(i, s)| Some((i, s.stop.as_ref()?.time_ns)))
            .max_by_key(|(_, time_ns)| *time_ns)
            .map_or(index, |(i, _)| i)
    }

    /// Who takes over when the main process of a service with no exe globs
    /// exits while its unit still runs what its start left behind (Debian's
    /// pg_ctlcluster exits once the postmaster it started through pg_ctl
    /// serves): the oldest live process of the unit orphaned by the exit of
    /// another of the unit's. What PID 1 runs there next (ExecStop=) is not.
    pub(super) fn heir<'t>(
        &self,
        index: usize,
        gone: ProcessKey,
        table: &'t ProcessTable,
    ) -> Option<&'t Process> {
        if !self.unit_only(&Slot::Known(index)) {
            return None;
        }
        let ours = |p: &Process| self.slot_of(p) == Some(Slot::Known(index));
        table
            .live_processes()
            .filter(|p| p.exited.is_none() && p.key != gone && ours(p))
            .filter(|p| {
                p.parent.and_then(|k| table.get(&k)).is_some_and(|parent| {
                    (parent.exited.is_some() || parent.key == gone) && ours(parent)
                })
            })
            .min_by_key(|p| (p.key.start_ticks, p.pid))
    }
}

/// The file names `services`' exe globs can match; None when one of them
/// is a glob itself (`postgres*`), and every path must be matched.
pub(super) fn exe_files(services: &[config::Service]) -> Option<HashSet<String>> {
    let mut files = HashSet::new();
    for glob in services.iter().flat_map(|s| &s.exe) {
        let file = glob.as_str().rsplit('/').next().unwrap_or_default();
        if file.contains(['*', '?', '[', ']']) {
            return None;
        }
        files.insert(file.to_string());
    }
    Some(files)
}
