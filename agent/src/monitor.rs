//! The event loop shared by `trace` and `run`: kernel records in, the
//! process table kept current, loss noticed and repaired.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    events::{Event, PerKind, ProcessKey},
    kernel::{ProbeOptions, Probes},
    process::{
        ProcessTable, Units,
        procfs::{self, Notables},
    },
};

/// How often the kernel's lost-record counters are read: a system call
/// per CPU, for what is rare and repaired from /proc when it happens.
const LOSS_CHECK: Duration = Duration::from_secs(1);

/// What the monitor has seen: records by kind, and records lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    #[serde(flatten)]
    pub by_kind: PerKind<u64>,
    pub lost: u64,
}

impl Counts {
    pub fn events(&self) -> u64 {
        self.by_kind.total()
    }

    fn add(&mut self, event: &Event) {
        if let Some(kind) = event.kind() {
            self.by_kind[kind] += 1;
        } else if let Event::Lost(lost) = event {
            self.lost += lost.count;
        }
    }
}

/// "84 events (exec 27, exit 23, fork 23, signal 11), 0 lost"
impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} events ({}), {} lost",
            self.events(),
            self.by_kind,
            self.lost
        )
    }
}

/// What the ring held when the agent started: with pinned probes, what
/// happened while no agent ran.
#[derive(Debug, Default)]
pub struct Backlog {
    pub records: usize,
    /// Processes whose fork or exec is in it: they started meanwhile, and
    /// their records, not /proc, say what they are.
    pub started: HashSet<ProcessKey>,
    /// Processes whose exit is in it.
    pub ended: HashSet<ProcessKey>,
    /// When it was read (boot ns): records before are from the gap.
    pub read_ns: u64,
    /// The earliest record's time, if any.
    pub first_ns: Option<u64>,
    /// Records were lost, or could not be read, meanwhile.
    pub lost: bool,
}

pub struct Monitor {
    probes: Probes,
    table: ProcessTable,
    counts: Counts,
    last_loss_check: Instant,
    batch: Vec<Event>,
    units: Units,
    /// Whose arguments are read from /proc: by a scan, and for execs in
    /// units of services known by unit alone, which may run any program,
    /// when the kernel did not read them.
    notables: Notables,
}

impl Monitor {
    /// Attaches the probes, then seeds the table with every process (from
    /// the kernel's task iterator, else /proc), in that order so that
    /// nothing starting in between is missed. Arguments of execs in
    /// `arg_units` are read whatever their name.
    pub fn start(options: &ProbeOptions, arg_units: Vec<glob::Pattern>) -> Result<Monitor> {
        let began = Instant::now();
        let mut probes = Probes::attach(options)?;
        let attached = began.elapsed();
        let notables = Notables::new(options.notable.as_deref(), arg_units);
        let mut table = ProcessTable::default();
        let (processes, source) = match probes.take_tasks() {
            Some(tasks) => (procfs::complete(&tasks, &notables), "the task iterator"),
            None => (procfs::scan(&notables), "/proc"),
        };
        table.seed(processes);
        tracing::debug!(
            "probes attached in {} ms; processes read from {source} in {} ms",
            attached.as_millis(),
            (began.elapsed() - attached).as_millis()
        );
        Ok(Monitor {
            probes,
            table,
            counts: Counts::default(),
            last_loss_check: Instant::now(),
            batch: Vec::new(),
            units: Units::default(),
            notables,
        })
    }

    /// Makes the kernel read the arguments of execs of `names` (as
    /// [`detect::notable_names`] gives them), unless it reads every exec's,
    /// and /proc be read for those in `arg_units`.
    pub fn read_args_of(
        &mut self,
        names: &[(String, u32)],
        arg_units: Vec<glob::Pattern>,
    ) -> Result<()> {
        let set = self.probes.set_notable(names);
        let names = (!self.probes.reads_every_exec()).then_some(names);
        self.notables = Notables::new(names, arg_units);
        set
    }

    pub fn table(&self) -> &ProcessTable {
        &self.table
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn probes(&mut self) -> &mut Probes {
        &mut self.probes
    }

    pub fn probes_ref(&self) -> &Probes {
        &self.probes
    }

    /// Reads what the ring holds now, to be handed out by the next `flush`
    /// first, and says which processes it shows starting and ending.
    pub fn take_backlog(&mut self) -> Result<Backlog> {
        self.probes.drain(&mut self.batch);
        if let Some(lost) = self.probes.check_lost()? {
            self.batch.push(Event::Lost(lost));
        }
        let mut backlog = Backlog {
            records: self.batch.len(),
            read_ns: agent_common::boot_ns(),
            ..Backlog::default()
        };
        for event in &self.batch {
            match event {
                Event::Fork(fork) => {
                    backlog.started.insert(fork.child);
                }
                Event::Exec(exec) => {
                    backlog.started.insert(exec.process.key);
                }
                Event::Exit(exit) => {
                    backlog.ended.insert(exit.key);
                }
                Event::Lost(_) => backlog.lost = true,
                Event::Signal(_) => {}
            }
            if let Some(time) = event.time_ns() {
                backlog.first_ns = Some(backlog.first_ns.map_or(time, |t: u64| t.min(time)));
            }
        }
        Ok(backlog)
    }

    /// Waits for the next records and hands each to `on_event` with the
    /// table as it stands right after that event.
    pub async fn next(&mut self, on_event: impl FnMut(&Event, &ProcessTable)) -> Result<()> {
        self.probes.read(&mut self.batch).await?;
        self.dispatch(on_event)
    }

    /// Like `next`, without waiting: what is in the ring now, and any loss.
    pub fn flush(&mut self, on_event: impl FnMut(&Event, &ProcessTable)) -> Result<()> {
        self.probes.drain(&mut self.batch);
        self.last_loss_check = Instant::now() - LOSS_CHECK;
        self.dispatch(on_event)
    }

    fn dispatch(&mut self, mut on_event: impl FnMut(&Event, &ProcessTable)) -> Result<()> {
        if self.last_loss_check.elapsed() >= LOSS_CHECK {
            self.last_loss_check = Instant::now();
            if let Some(lost) = self.probes.check_lost()? {
                self.batch.push(Event::Lost(lost));
            }
        }
        let mut batch = std::mem::take(&mut self.batch);
        for mut event in batch.drain(..) {
            // Threads of one process exiting at once can each see the last
            // live count in the kernel: one exit per process reaches users.
            if let Event::Exit(exit) = &event
                && self
                    .table
                    .get(&exit.key)
                    .is_some_and(|p| p.exited.is_some())
            {
                continue;
            }
            if let Event::Exec(exec) = &mut event {
                // Alive at its exec record (a guarded one is stopped), so
                // its cgroup still says which unit it is in.
                exec.unit = self.units.of(exec);
                if exec.args_unread && self.notables.in_unit(exec.unit.as_deref()) {
                    exec.args = procfs::cmdline(exec.process.key).unwrap_or_default().into();
                }
            }
            self.counts.add(&event);
            self.table.apply(&event);
            if let Event::Lost(_) = event {
                // What changed while records were lost is unknown: start
                // again from what /proc says now.
                self.table.seed(procfs::scan(&self.notables));
            }
            on_event(&event, &self.table);
        }
        self.batch = batch;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Lost, RecordKind};

    #[test]
    fn counts_keep_their_fields_and_summary() {
        let mut counts = Counts::default();
        for (kind, n) in [
            (RecordKind::Exec, 27),
            (RecordKind::Exit, 23),
            (RecordKind::Fork, 22),
            (RecordKind::Signal, 11),
        ] {
            counts.by_kind[kind] = n;
        }
        counts.add(&Event::Lost(Lost {
            count: 5,
            total: 5,
            by_kind: PerKind::default(),
        }));
        assert_eq!(
            serde_json::to_string(&counts).unwrap(),
            r#"{"exec":27,"exit":23,"fork":22,"signal":11,"lost":5}"#
        );
        assert_eq!(
            counts.to_string(),
            "83 events (exec 27, exit 23, fork 22, signal 11), 5 lost"
        );
        // `stopguard status` reads them back on the client's side.
        let text = serde_json::to_string(&counts).unwrap();
        assert_eq!(serde_json::from_str::<Counts>(&text).unwrap(), counts);
    }
}
