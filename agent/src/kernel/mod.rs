//! Loading the kernel programs and reading their ring buffer; the pinned
//! generations that outlive the agent are `handover`'s and `pins`'.

pub mod btf;
mod handover;
mod load;
mod lookups;
pub mod pins;
mod tasks;

use load::{attach_program, load_object};
pub use lookups::{Names, comm_key};

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use agent_common::{Header, Offsets, TaskRecord, WakePolicy, kind, names};
use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::links::PinnedLink,
};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    config::RingBytes,
    events::{Event, Lost, PerKind},
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("STOPGUARD_EBPF_OBJECT"));

/// How long records may wait in the ring before the reader looks anyway; the
/// kernel wakes it at once for urgent records (a signal, a watched
/// service's exec, a guarded one) and for a full batch. Each look costs
/// the agent a wake-up whether or not anything waits.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub ring_bytes: RingBytes,
    /// Signal numbers worth a record. SIGCHLD never is.
    pub signals: Vec<u32>,
    /// The image names whose execs matter, each with its `notable` bits
    /// (read its arguments, wake the reader at once); None: every exec's
    /// arguments are read (`trace`).
    pub notable: Option<Vec<(String, u32)>>,
    /// Where to pin the probes so that they outlive this process (see
    /// `pins`); None detaches them when it ends (`trace`).
    pub pin_root: Option<PathBuf>,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            ring_bytes: RingBytes::DEFAULT,
            // Every standard signal but SIGCHLD (17): stops, continues and
            // terminations are all lifecycle.
            signals: (1..32).filter(|&s| s != libc::SIGCHLD as u32).collect(),
            notable: None,
            pin_root: None,
        }
    }
}

/// Whether the probes outlive the agent: what the log and status say.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Pinning {
    /// Not asked for (`trace`).
    Off,
    /// Pinned in `dir` since `since` (unix seconds); `adopted` when an
    /// earlier agent pinned them and this one found them attached.
    Pinned {
        dir: String,
        since: u64,
        adopted: bool,
    },
    /// Asked for and impossible: the probes end with this agent.
    Failed { reason: String },
}

/// What attaching did with earlier agents' probes.
#[derive(Clone, Debug, Default)]
pub struct Handover {
    /// bpffs was not mounted at the pin root's parent, and now is.
    pub mounted_bpffs: bool,
    /// Older generations replaced (their programs detached after this
    /// agent's were attached), by name.
    pub replaced: Vec<String>,
    /// Records an older generation of another layout held: never read.
    pub unreadable: u64,
    /// Generations that could not be taken apart, with why.
    pub failures: Vec<String>,
}

/// The loaded, attached kernel programs and the reader of their records.
pub struct Probes {
    /// The object as loaded, while its programs' links are its own (not
    /// pinned); None once they are pinned or were adopted.
    _ebpf: Option<Ebpf>,
    _links: Vec<PinnedLink>,
    ring: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    names: Names,
    /// The exec program reads every exec's arguments (`notable` None).
    reads_every_exec: bool,
    pinning: Pinning,
    handover: Handover,
    /// Records of replaced generations (and their losses), read before
    /// anything in the own ring.
    backlog: Vec<Event>,
    /// Records both generations wrote while both were attached: the own
    /// ring's copies are dropped.
    overlap: Option<Overlap>,
    /// Every process as the task iterator showed it once the programs were
    /// attached; None when they were adopted or it failed.
    tasks: Option<Vec<TaskRecord>>,
    _logger: Option<tokio::task::JoinHandle<()>>,
}

/// While an old generation and the new one were both attached, each wrote
/// its record of the same event: the old ring's are read first, and the
/// new ring's copies (same bytes but for the header's time) are dropped.
struct Overlap {
    /// When the old programs were detached: later records are the new
    /// ring's alone.
    until_ns: u64,
    seen: std::collections::HashSet<u64>,
}

/// The maps an agent uses, from a fresh load or from pins.
struct Maps {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    interest: Array<MapData, u64>,
    names: Names,
}

impl Maps {
    fn from_pins(generation: &pins::Generation) -> Result<Maps> {
        let open = |name: &str| -> Result<Map> {
            let path = generation.map(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening the pinned map {}", path.display()))?;
            Ok(Map::from_map_data(data)?)
        };
        Ok(Maps {
            ring: RingBuf::try_from(open(names::EVENTS)?)?,
            lost: PerCpuArray::try_from(open(names::LOST)?)?,
            interest: Array::try_from(open(names::SIGNAL_INTEREST)?)?,
            names: Names {
                notable: HashMap::try_from(open(names::NOTABLE)?)?,
                guard: HashMap::try_from(open(names::GUARD)?)?,
                // Older generations have none.
                filter: open(names::NAME_FILTER)
                    .ok()
                    .map(Array::try_from)
                    .transpose()?,
            },
        })
    }

    /// The maps of a fresh load, each pinned in `pin_dir` when given.
    fn take(ebpf: &mut Ebpf, pin_dir: Option<&Path>) -> Result<Maps> {
        let mut take = |name: &str| -> Result<Map> {
            let map = ebpf
                .take_map(name)
                .with_context(|| format!("map {name} missing from the object"))?;
            if let Some(dir) = pin_dir {
                map.pin(dir.join(name))
                    .with_context(|| format!("pinning map {name} in {}", dir.display()))?;
            }
            Ok(map)
        };
        Ok(Maps {
            ring: RingBuf::try_from(take(names::EVENTS)?)?,
            lost: PerCpuArray::try_from(take(names::LOST)?)?,
            interest: Array::try_from(take(names::SIGNAL_INTEREST)?)?,
            names: Names {
                notable: HashMap::try_from(take(names::NOTABLE)?)?,
                guard: HashMap::try_from(take(names::GUARD)?)?,
                filter: Some(Array::try_from(take(names::NAME_FILTER)?)?),
            },
        })
    }
}

/// One line saying why the probes cannot load here and what to do, before
/// any attempt that would fail with a less helpful error.
pub fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root to load its eBPF programs (try sudo)");
    }
    let btf = Path::new(btf::VMLINUX_BTF);
    if !btf.exists() {
        bail!(
            "{} is missing: stopguard needs a kernel built with BTF (CONFIG_DEBUG_INFO_BTF=y)",
            btf.display()
        );
    }
    Ok(())
}

impl Probes {
    /// Loads and attaches the programs, or, when `options.pin_root` holds
    /// the same programs pinned by an earlier agent, takes those over with
    /// what their ring holds. Must run inside a tokio runtime.
    pub fn attach(options: &ProbeOptions) -> Result<Probes> {
        preflight()?;
        let offsets = btf::offsets(Path::new(btf::VMLINUX_BTF))?;
        // Wake the reader once a quarter of the ring waits, or it polls first.
        let wake = WakePolicy {
            batch_bytes: u64::from(options.ring_bytes.get() / 4),
        };
        let mut probes = match &options.pin_root {
            None => Probes::load(options, &offsets, &wake, Pinning::Off)?,
            Some(root) => Probes::attach_pinned(options, &offsets, &wake, root)?,
        };
        probes.reads_every_exec = options.notable.is_none();
        Ok(probes)
    }

    /// Loads the object; its programs stay attached while the result lives.
    fn load(
        options: &ProbeOptions,
        offsets: &Offsets,
        wake: &WakePolicy,
        pinning: Pinning,
    ) -> Result<Probes> {
        let (mut ebpf, btf) = load_object(options, offsets, wake)?;
        let logger = start_kernel_log(&mut ebpf);
        let mut maps = Maps::take(&mut ebpf, None)?;
        set_interest(&mut maps.interest, &options.signals)?;
        maps.names
            .set_notable(options.notable.as_deref().unwrap_or_default())?;
        for (program, tracepoint) in names::PROGRAMS {
            attach_program(&mut ebpf, &btf, program, tracepoint)?;
        }
        let tasks = tasks::snapshot(&mut ebpf, &btf);
        Probes::new(Some(ebpf), Vec::new(), maps, pinning, logger, tasks)
    }

    fn new(
        ebpf: Option<Ebpf>,
        links: Vec<PinnedLink>,
        maps: Maps,
        pinning: Pinning,
        logger: Option<tokio::task::JoinHandle<()>>,
        tasks: Option<Vec<TaskRecord>>,
    ) -> Result<Probes> {
        // SAFETY: the ring's fd is owned by `ring`, which the AsyncFd owns
        // until it is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(maps.ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("registering the ring buffer with tokio")?;
        Ok(Probes {
            _ebpf: ebpf,
            _links: links,
            ring,
            lost: maps.lost,
            names: maps.names,
            reads_every_exec: true,
            pinning,
            handover: Handover::default(),
            backlog: Vec::new(),
            overlap: None,
            tasks,
            _logger: logger,
        })
    }

    /// Every process as the kernel showed it right after the programs were
    /// attached, once; None when it could not be read that way.
    pub fn take_tasks(&mut self) -> Option<Vec<TaskRecord>> {
        self.tasks.take()
    }

    /// Whether the probes outlive this process.
    pub fn pinning(&self) -> &Pinning {
        &self.pinning
    }

    /// What attaching did with earlier agents' probes.
    pub fn handover(&self) -> &Handover {
        &self.handover
    }

    /// Waits until records are ready (or the poll interval passes), then
    /// appends every waiting record to `out`. Undecodable records are logged
    /// and counted, never dropped silently.
    pub async fn read(&mut self, out: &mut Vec<Event>) -> Result<()> {
        if let Ok(guard) = tokio::time::timeout(POLL_INTERVAL, self.ring.readable_mut()).await {
            guard?.clear_ready();
        }
        self.drain(out);
        Ok(())
    }

    /// Appends every record waiting in the ring to `out`, without waiting:
    /// first what replaced generations left, then the own ring's.
    pub fn drain(&mut self, out: &mut Vec<Event>) {
        out.append(&mut self.backlog);
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            if let Some(overlap) = &mut self.overlap {
                if record_time(&item) > overlap.until_ns {
                    self.overlap = None;
                } else if overlap.seen.remove(&record_body_hash(&item)) {
                    continue;
                }
            }
            match Event::decode(&item) {
                Ok(event) => out.push(event),
                Err(err) => tracing::error!("dropping an undecodable kernel record: {err}"),
            }
        }
    }

    /// Records lost and not yet reported (by this agent or, with pinned
    /// probes, an earlier one), or None when nothing new was lost.
    pub fn check_lost(&mut self) -> Result<Option<Lost>> {
        unreported_losses(&mut self.lost)
    }

    /// Sets the image names whose execs matter (see `ProbeOptions`), as
    /// after a configuration reload.
    pub fn set_notable(&mut self, names: &[(String, u32)]) -> Result<()> {
        self.names.set_notable(names)
    }

    /// Whether every exec's arguments are read, whatever its name: chosen
    /// at load, for the programs' lifetime.
    pub fn reads_every_exec(&self) -> bool {
        self.reads_every_exec
    }

    /// The guard and notable maps: exec of a process whose name is in the
    /// guard map is stopped by the kernel before its first instruction.
    pub fn names(&mut self) -> &mut Names {
        &mut self.names
    }
}

fn set_interest(interest: &mut Array<MapData, u64>, signals: &[u32]) -> Result<()> {
    let mask = signals
        .iter()
        .filter(|&&s| s > 0 && s < 64 && s != libc::SIGCHLD as u32)
        .fold(0u64, |m, &s| m | (1 << s));
    interest
        .set(0, mask, 0)
        .context("filling the signal interest map")
}

/// What the counters say was lost and no agent has reported yet; marks it
/// reported.
fn unreported_losses(lost: &mut PerCpuArray<MapData, u64>) -> Result<Option<Lost>> {
    let count = kind::COUNT as usize;
    let mut now = vec![0u64; count];
    let mut reported = vec![0u64; count];
    for k in 0..count {
        let read = |slot: usize| {
            lost.get(&(slot as u32), 0)
                .context("reading the lost-record counters")
        };
        now[k] = read(k)?.iter().sum();
        reported[k] = read(count + k)?.first().copied().unwrap_or(0);
    }
    let new: u64 = now
        .iter()
        .zip(&reported)
        .map(|(n, r)| n.saturating_sub(*r))
        .sum();
    if new == 0 {
        return Ok(None);
    }
    let cpus = aya::util::nr_cpus().map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))?;
    for (k, total) in now.iter().enumerate() {
        let mut values = vec![0u64; cpus];
        values[0] = *total;
        lost.set((count + k) as u32, PerCpuValues::try_from(values)?, 0)
            .context("marking lost records reported")?;
    }
    Ok(Some(Lost {
        count: new,
        total: now.iter().sum(),
        by_kind: PerKind::from_fn(|k| now[k.wire() as usize]),
    }))
}

/// The kernel time in a record's header.
fn record_time(item: &[u8]) -> u64 {
    item.get(8..16)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// A record's bytes after the header: the same in two generations' copies.
fn record_body_hash(item: &[u8]) -> u64 {
    pins::fnv1a(
        pins::FNV_OFFSET,
        item.get(size_of::<Header>()..).unwrap_or(&[]),
    )
}

/// Forwards aya-log lines from the kernel programs to `log`, and so to
/// tracing. The programs log only on rare failures.
fn start_kernel_log(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => forward_kernel_log(logger),
        Err(err) => {
            tracing::warn!("kernel log lines will not be shown: {err}");
            None
        }
    }
}

fn forward_kernel_log(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
) -> Option<tokio::task::JoinHandle<()>> {
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd lives.
    let mut logger = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(err) => {
            tracing::warn!("kernel log lines will not be shown: {}", err.into_parts().1);
            return None;
        }
    };
    Some(tokio::spawn(async move {
        while let Ok(mut guard) = logger.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

/// Like `start_kernel_log`, for programs an earlier agent loaded.
fn start_kernel_log_of(program_id: u32) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init_from_id(program_id) {
        Ok(logger) => logger,
        Err(err) => {
            tracing::warn!("kernel log lines will not be shown: {err}");
            return None;
        }
    };
    forward_kernel_log(logger)
}
