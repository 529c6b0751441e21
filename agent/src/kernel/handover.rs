//! Generations of pinned probes: finding them, adopting this agent's own,
//! loading and pinning a new one, and taking older ones apart once the new
//! one is attached (see `pins`).

use std::{fs, path::Path, time::Duration};

use agent_common::{COMM_LEN, Capture, LAYOUT, Offsets, WakePolicy, boot_ns, names};
use anyhow::{Context, Result, bail};
use aya::{
    maps::{Map, MapData, RingBuf},
    programs::links::{FdLink, PinnedLink},
};

use super::{
    Maps, OBJECT, Overlap, Pinning, ProbeOptions, Probes,
    load::{attach_program_link, capture, load_object},
    pins, record_body_hash, record_time, set_interest, start_kernel_log, start_kernel_log_of,
    tasks, unreported_losses,
};
use crate::events::{Event, Lost, PerKind};

/// The programs as they would be loaded here: the object, the offsets this
/// kernel's BTF gives, the ring's size. Equal identities run the same code
/// on the same layout and may adopt each other's pins.
fn identity(options: &ProbeOptions, offsets: &Offsets, wake: &WakePolicy) -> u64 {
    // SAFETY: plain repr(C) data without padding, read as bytes.
    let bytes = |p: *const u8, n: usize| unsafe { std::slice::from_raw_parts(p, n) };
    let mut hash = pins::fnv1a(pins::FNV_OFFSET, OBJECT);
    hash = pins::fnv1a(
        hash,
        bytes((offsets as *const Offsets).cast(), size_of::<Offsets>()),
    );
    hash = pins::fnv1a(
        hash,
        bytes((wake as *const WakePolicy).cast(), size_of::<WakePolicy>()),
    );
    let capture = capture(options);
    hash = pins::fnv1a(
        hash,
        bytes((&capture as *const Capture).cast(), size_of::<Capture>()),
    );
    pins::fnv1a(hash, &options.ring_bytes.get().to_ne_bytes())
}

impl Probes {
    /// `attach` with the probes pinned under `root`: this agent's own
    /// generation adopted when pinned, else a new one loaded and pinned
    /// and the older ones taken apart after it is attached.
    pub(super) fn attach_pinned(
        options: &ProbeOptions,
        offsets: &Offsets,
        wake: &WakePolicy,
        root: &Path,
    ) -> Result<Probes> {
        let mounted_bpffs = match pins::prepare(root) {
            Ok(mounted) => mounted,
            Err(err) => {
                let reason = format!("{err:#}");
                return Probes::load(options, offsets, wake, Pinning::Failed { reason });
            }
        };
        let own = root.join(pins::generation_name(identity(options, offsets, wake)));
        let mut others = Vec::new();
        let mut adoptable = None;
        for generation in pins::generations(root) {
            if generation.dir == own && generation.complete() {
                adoptable = Some(generation);
            } else {
                others.push(generation);
            }
        }
        let adopted = adoptable.and_then(|generation| {
            Probes::adopt(options, &generation)
                .map_err(|err| {
                    tracing::warn!(
                        "pinned probes {} could not be taken over ({err:#}): loading new ones",
                        generation.name()
                    );
                    others.push(generation);
                })
                .ok()
        });
        let mut probes = match adopted {
            Some(probes) => probes,
            None => {
                let old: Vec<(pins::Generation, Option<Maps>)> = others
                    .drain(..)
                    .map(|g| {
                        let maps = readable(&g).then(|| Maps::from_pins(&g).ok()).flatten();
                        (g, maps)
                    })
                    .collect();
                let attached_ns = boot_ns();
                match Probes::load_pinned(options, offsets, wake, &own, &old) {
                    Ok(mut probes) => {
                        probes.take_over(old, attached_ns);
                        probes
                    }
                    Err(err) => {
                        // The older probes, if any, keep guarding: this agent
                        // runs on probes of its own, which end with it.
                        let _ = fs::remove_dir_all(pins::making(&own));
                        let reason = format!("{err:#}");
                        return Probes::load(options, offsets, wake, Pinning::Failed { reason });
                    }
                }
            }
        };
        // Left by an interrupted handover: what they hold is read too.
        let rest: Vec<(pins::Generation, Option<Maps>)> = others
            .into_iter()
            .map(|g| {
                let maps = readable(&g).then(|| Maps::from_pins(&g).ok()).flatten();
                (g, maps)
            })
            .collect();
        probes.take_over(rest, boot_ns());
        probes.handover.mounted_bpffs = mounted_bpffs;
        Ok(probes)
    }

    /// Loads the object and pins it as generation `dir`: the guard carried
    /// over from `old` before the programs attach, their links pinned as
    /// they attach (in `pins::making(dir)`, renamed when complete).
    fn load_pinned(
        options: &ProbeOptions,
        offsets: &Offsets,
        wake: &WakePolicy,
        dir: &Path,
        old: &[(pins::Generation, Option<Maps>)],
    ) -> Result<Probes> {
        let (mut ebpf, btf) = load_object(options, offsets, wake)?;
        let logger = start_kernel_log(&mut ebpf);
        let making = pins::making(dir);
        let _ = fs::remove_dir_all(&making);
        fs::create_dir(&making).with_context(|| format!("creating {}", making.display()))?;
        let mut maps = Maps::take(&mut ebpf, Some(&making))?;
        set_interest(&mut maps.interest, &options.signals)?;
        maps.names
            .set_notable(options.notable.as_deref().unwrap_or_default())?;
        for (generation, old) in old {
            // The guard map has kept its form across layouts: an older
            // layout's is carried over too.
            let guarded: Vec<([u8; COMM_LEN], u32)> = match old {
                Some(old) => old.names.guarded(),
                None => guard_of(generation),
            };
            for (name, value) in guarded {
                maps.names
                    .guard(name, value)
                    .context("carrying the guard map over")?;
            }
        }
        let mut links = Vec::new();
        for (program, tracepoint) in names::PROGRAMS {
            let link = attach_program_link(&mut ebpf, &btf, program, tracepoint)?;
            links.push(
                link.pin(making.join(program))
                    .with_context(|| format!("pinning the link of {program}"))?,
            );
        }
        fs::rename(&making, dir)
            .with_context(|| format!("renaming {} to {}", making.display(), dir.display()))?;
        let tasks = tasks::snapshot(&mut ebpf, &btf);
        let pinning = pinned(
            &pins::Generation {
                dir: dir.to_path_buf(),
                layout: Some(LAYOUT),
            },
            false,
        );
        // The links hold the programs now: the object may go.
        drop(ebpf);
        drop(btf);
        Probes::new(None, links, maps, pinning, logger, tasks)
    }

    /// Takes over a generation an earlier agent pinned: its programs stay
    /// attached, its ring keeps what it wrote meanwhile.
    fn adopt(options: &ProbeOptions, generation: &pins::Generation) -> Result<Probes> {
        let mut maps = Maps::from_pins(generation)?;
        set_interest(&mut maps.interest, &options.signals)?;
        if maps.names.filter.is_none() {
            bail!("the pinned generation has no name filter map");
        }
        maps.names
            .set_notable(options.notable.as_deref().unwrap_or_default())?;
        let (program, _) = names::PROGRAMS[0];
        let logger = PinnedLink::from_pin(generation.link(program))
            .ok()
            .and_then(|link| FdLink::from(link).info().ok())
            .and_then(|info| start_kernel_log_of(info.program_id()));
        Probes::new(
            None,
            Vec::new(),
            maps,
            pinned(generation, true),
            logger,
            None,
        )
    }

    /// Takes older generations apart now that this agent's programs are
    /// attached (since `attached_ns`): their programs detach, then what
    /// their rings hold joins the backlog (read before the own ring), with
    /// what they lost; a ring of another layout is counted, never read.
    fn take_over(&mut self, old: Vec<(pins::Generation, Option<Maps>)>, attached_ns: u64) {
        for (generation, maps) in old {
            if let Err(err) = pins::detach(&generation) {
                self.handover
                    .failures
                    .push(format!("{}: {err:#}", generation.name()));
                continue;
            }
            // A program that was running as the link went finishes its record.
            std::thread::sleep(Duration::from_millis(20));
            let detached_ns = boot_ns();
            match maps {
                Some(mut maps) => {
                    let mut seen = std::collections::HashSet::new();
                    while let Some(item) = maps.ring.next() {
                        if record_time(&item) >= attached_ns {
                            seen.insert(record_body_hash(&item));
                        }
                        match Event::decode(&item) {
                            Ok(event) => self.backlog.push(event),
                            Err(err) => {
                                tracing::error!("dropping an undecodable kernel record: {err}")
                            }
                        }
                    }
                    if let Ok(Some(lost)) = unreported_losses(&mut maps.lost) {
                        self.backlog.push(Event::Lost(lost));
                    }
                    if !seen.is_empty() {
                        self.overlap = Some(Overlap {
                            until_ns: detached_ns,
                            seen,
                        });
                    }
                }
                None => {
                    // Records this agent cannot read are records lost: what
                    // they said must be found again from /proc.
                    let count = count_records(&generation);
                    self.handover.unreadable += count;
                    if count > 0 {
                        self.backlog.push(Event::Lost(Lost {
                            count,
                            total: count,
                            by_kind: PerKind::default(),
                        }));
                    }
                }
            }
            match pins::remove(&generation) {
                Ok(()) => self.handover.replaced.push(generation.name()),
                Err(err) => self
                    .handover
                    .failures
                    .push(format!("{}: {err:#}", generation.name())),
            }
        }
    }
}

/// Whether this agent reads records of `generation`'s layout.
fn readable(generation: &pins::Generation) -> bool {
    generation.layout == Some(LAYOUT)
}

/// The guard map pinned in `generation`, whatever its layout; empty when
/// it has none that opens as one.
fn guard_of(generation: &pins::Generation) -> Vec<([u8; COMM_LEN], u32)> {
    let guard = MapData::from_pin(generation.map(names::GUARD))
        .map_err(anyhow::Error::from)
        .and_then(|data| Ok(Map::from_map_data(data)?))
        .and_then(|map| Ok(aya::maps::HashMap::<_, [u8; COMM_LEN], u32>::try_from(map)?));
    match guard {
        Ok(guard) => guard.iter().filter_map(Result::ok).collect(),
        Err(_) => Vec::new(),
    }
}

/// How many records a generation's ring holds, read as frames only.
fn count_records(generation: &pins::Generation) -> u64 {
    let Ok(data) = MapData::from_pin(generation.map(names::EVENTS)) else {
        return 0;
    };
    let Ok(mut ring) = Map::from_map_data(data)
        .map_err(anyhow::Error::from)
        .and_then(|m| RingBuf::try_from(m).map_err(anyhow::Error::from))
    else {
        return 0;
    };
    let mut n = 0;
    while ring.next().is_some() {
        n += 1;
    }
    n
}

/// What status says of `generation`: where, and since its ring was pinned.
fn pinned(generation: &pins::Generation, adopted: bool) -> Pinning {
    let since = generation
        .since()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Pinning::Pinned {
        dir: generation.dir.display().to_string(),
        since,
        adopted,
    }
}
