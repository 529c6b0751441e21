//! Loading the kernel object with its globals set, and its tracepoint
//! programs against the kernel's BTF.

use agent_common::{Capture, Offsets, WakePolicy, names};
use anyhow::{Context, Result};
use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{BtfTracePoint, links::FdLink},
};

use super::{OBJECT, ProbeOptions};

/// What the exec program reads, for these options.
pub(super) fn capture(options: &ProbeOptions) -> Capture {
    Capture {
        all_args: u32::from(options.notable.is_none()),
        _pad: 0,
    }
}

/// The object, loaded with its globals set, and the kernel's BTF its
/// programs are loaded against. Parsing the BTF costs a fraction of a
/// second and tens of MB, which the caller frees by dropping it once the
/// programs are loaded. The programs need no CO-RE relocation (the
/// offsets they read are a global set here), so aya's loader is given no
/// BTF of its own to parse: the one parse runs while the loader creates
/// the maps.
pub(super) fn load_object(
    options: &ProbeOptions,
    offsets: &Offsets,
    wake: &WakePolicy,
) -> Result<(Ebpf, Btf)> {
    let parsing = std::thread::spawn(Btf::from_sys_fs);
    let ebpf = EbpfLoader::new()
        .btf(None)
        .override_global(names::OFFSETS, offsets, true)
        .override_global(names::WAKE, wake, true)
        .override_global(names::CAPTURE, &capture(options), true)
        .map_max_entries(names::EVENTS, options.ring_bytes.get())
        .load(OBJECT)
        .context(
            "loading the eBPF programs (the kernel refused them: is BPF disabled or \
             restricted by a security module?)",
        )?;
    let btf = parsing
        .join()
        .map_err(|_| anyhow::anyhow!("parsing the kernel's BTF panicked"))?
        .context("parsing the kernel's BTF")?;
    Ok((ebpf, btf))
}

/// Loads `program` and attaches it to the BTF-typed tracepoint
/// `tracepoint`; the link stays the object's.
pub(super) fn attach_program(
    ebpf: &mut Ebpf,
    btf: &Btf,
    program: &str,
    tracepoint: &str,
) -> Result<()> {
    load_program(ebpf, btf, program, tracepoint)?
        .attach()
        .with_context(|| format!("attaching {program} to tracepoint {tracepoint}"))?;
    Ok(())
}

/// Like `attach_program`, the link taken from the object: it outlives it
/// once pinned.
pub(super) fn attach_program_link(
    ebpf: &mut Ebpf,
    btf: &Btf,
    program: &str,
    tracepoint: &str,
) -> Result<FdLink> {
    let prog = load_program(ebpf, btf, program, tracepoint)?;
    let id = prog
        .attach()
        .with_context(|| format!("attaching {program} to tracepoint {tracepoint}"))?;
    Ok(prog.take_link(id)?.into())
}

fn load_program<'a>(
    ebpf: &'a mut Ebpf,
    btf: &Btf,
    program: &str,
    tracepoint: &str,
) -> Result<&'a mut BtfTracePoint> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the object"))?
        .try_into()?;
    prog.load(tracepoint, btf)
        .with_context(|| format!("loading program {program} (verifier log above)"))?;
    Ok(prog)
}
