//! Loading the kernel programs and reading their ring buffer.

pub mod btf;

use std::{path::Path, time::Duration};

use agent_common::{COMM_LEN, WakePolicy, kind, names};
use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::RawTracePoint,
};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    config::RingBytes,
    events::{Event, Lost, PerKind},
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("STOPGUARD_EBPF_OBJECT"));

/// How long records may wait in the ring before the reader looks anyway; the
/// kernel wakes it earlier for urgent records and full batches.
pub const POLL_INTERVAL: Duration = Duration::from_millis(4);

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub ring_bytes: RingBytes,
    /// Signal numbers worth a record. SIGCHLD never is.
    pub signals: Vec<u32>,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            ring_bytes: RingBytes::DEFAULT,
            // Every standard signal but SIGCHLD (17): stops, continues and
            // terminations are all lifecycle.
            signals: (1..32).filter(|&s| s != libc::SIGCHLD as u32).collect(),
        }
    }
}

/// The loaded, attached kernel programs and the reader of their records.
pub struct Probes {
    ebpf: Ebpf,
    ring: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    lost_seen: [u64; kind::COUNT as usize],
    _logger: Option<tokio::task::JoinHandle<()>>,
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
    /// Loads and attaches the programs. Must run inside a tokio runtime.
    pub fn attach(options: &ProbeOptions) -> Result<Probes> {
        preflight()?;
        let offsets = btf::offsets(Path::new(btf::VMLINUX_BTF))?;
        // Wake the reader once a quarter of the ring waits, or it polls first.
        let wake = WakePolicy {
            batch_bytes: u64::from(options.ring_bytes.get() / 4),
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(names::OFFSETS, &offsets, true)
            .override_global(names::WAKE, &wake, true)
            .map_max_entries(names::EVENTS, options.ring_bytes.get())
            .load(OBJECT)
            .context(
                "loading the eBPF programs (the kernel refused them: is BPF disabled or \
                 restricted by a security module?)",
            )?;
        let logger = start_kernel_log(&mut ebpf);

        let mut interest: Array<_, u64> = Array::try_from(
            ebpf.map_mut(names::SIGNAL_INTEREST)
                .context("map SIGNAL_INTEREST missing")?,
        )?;
        let mask = options
            .signals
            .iter()
            .filter(|&&s| s > 0 && s < 64 && s != libc::SIGCHLD as u32)
            .fold(0u64, |m, &s| m | (1 << s));
        interest
            .set(0, mask, 0)
            .context("filling the signal interest map")?;

        for (program, tracepoint) in names::PROGRAMS {
            let prog: &mut RawTracePoint = ebpf
                .program_mut(program)
                .with_context(|| format!("program {program} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading program {program} (verifier log above)"))?;
            prog.attach(tracepoint)
                .with_context(|| format!("attaching {program} to raw tracepoint {tracepoint}"))?;
        }

        let ring = RingBuf::try_from(ebpf.take_map(names::EVENTS).context("map EVENTS missing")?)?;
        // SAFETY: the ring's fd is owned by `ring`, which the AsyncFd owns
        // until it is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("registering the ring buffer with tokio")?;
        let lost = PerCpuArray::try_from(ebpf.take_map(names::LOST).context("map LOST missing")?)?;
        Ok(Probes {
            ebpf,
            ring,
            lost,
            lost_seen: [0; kind::COUNT as usize],
            _logger: logger,
        })
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

    /// Appends every record waiting in the ring to `out`, without waiting.
    pub fn drain(&mut self, out: &mut Vec<Event>) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            match Event::decode(&item) {
                Ok(event) => out.push(event),
                Err(err) => tracing::error!("dropping an undecodable kernel record: {err}"),
            }
        }
    }

    /// Records lost since the last call, or None when nothing new was lost.
    pub fn check_lost(&mut self) -> Result<Option<Lost>> {
        let mut now = [0u64; kind::COUNT as usize];
        for (k, slot) in now.iter_mut().enumerate() {
            let per_cpu = self
                .lost
                .get(&(k as u32), 0)
                .context("reading the lost-record counters")?;
            *slot = per_cpu.iter().sum();
        }
        let new: u64 = now.iter().sum::<u64>() - self.lost_seen.iter().sum::<u64>();
        self.lost_seen = now;
        if new == 0 {
            return Ok(None);
        }
        Ok(Some(Lost {
            count: new,
            total: now.iter().sum(),
            by_kind: PerKind::from_fn(|k| now[k.wire() as usize]),
        }))
    }

    /// The guard map: exec of a process whose name is in it is stopped by
    /// the kernel before its first instruction.
    pub fn guard(&mut self) -> Result<HashMap<&mut MapData, [u8; COMM_LEN], u32>> {
        Ok(HashMap::try_from(
            self.ebpf
                .map_mut(names::GUARD)
                .context("map GUARD missing")?,
        )?)
    }
}

/// Forwards aya-log lines from the kernel programs to `log`, and so to
/// tracing. The programs log only on rare failures.
fn start_kernel_log(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(err) => {
            tracing::warn!("kernel log lines will not be shown: {err}");
            return None;
        }
    };
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

/// A comm as the kernel stores it: at most 15 bytes, NUL-padded.
pub fn comm_key(name: &str) -> [u8; COMM_LEN] {
    let mut key = [0u8; COMM_LEN];
    let bytes = name.as_bytes();
    let n = bytes.len().min(COMM_LEN - 1);
    key[..n].copy_from_slice(&bytes[..n]);
    key
}
