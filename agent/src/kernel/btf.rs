//! Kernel struct field offsets from the running kernel's BTF.

use std::path::Path;

use agent_common::Offsets;
use anyhow::{Context, Result, anyhow, bail};
use btf_rs::{Backend, Btf, Type};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Reads every offset the kernel programs need from `path` (vmlinux BTF).
pub fn offsets(path: &Path) -> Result<Offsets> {
    if !path.exists() {
        bail!(
            "{} is missing: this kernel was built without BTF (CONFIG_DEBUG_INFO_BTF=y), \
             which stopguard needs to find kernel struct layouts",
            path.display()
        );
    }
    let btf = open(path).with_context(|| format!("parsing BTF from {}", path.display()))?;
    let task_struct = struct_named(&btf, "task_struct")?;
    let task = |field: &str| field_offset(&btf, "task_struct", &task_struct, field);
    let (pid, tgid) = (task("pid")?, task("tgid")?);
    if tgid != pid + 4 {
        bail!("kernel BTF: task_struct.tgid does not directly follow pid");
    }
    let (loginuid, sessionid) = (task("loginuid")?, task("sessionid")?);
    if sessionid != loginuid + 4 {
        bail!("kernel BTF: task_struct.sessionid does not directly follow loginuid");
    }
    let mm_struct = struct_named(&btf, "mm_struct")?;
    let mm = |field: &str| field_offset(&btf, "mm_struct", &mm_struct, field);
    let (arg_start, arg_end) = (mm("arg_start")?, mm("arg_end")?);
    if arg_end != arg_start + 8 {
        bail!("kernel BTF: mm_struct.arg_end does not directly follow arg_start");
    }
    Ok(Offsets {
        task_pid: pid,
        task_real_parent: task("real_parent")?,
        task_group_leader: task("group_leader")?,
        task_start_boottime: task("start_boottime")?,
        task_loginuid: loginuid,
        task_exit_code: task("exit_code")?,
        task_flags: task("flags")?,
        task_comm: task("comm")?,
        task_signal: task("signal")?,
        task_mm: task("mm")?,
        signal_live: byte_offset(&btf, "signal_struct", "live")?,
        bprm_filename: byte_offset(&btf, "linux_binprm", "filename")?,
        mm_arg_start: arg_start,
        task_cred: task("cred")?,
        cred_uid: byte_offset(&btf, "cred", "uid")?,
        task_cgroups: task("cgroups")?,
        css_set_dfl_cgrp: byte_offset(&btf, "css_set", "dfl_cgrp")?,
        cgroup_kn: byte_offset(&btf, "cgroup", "kn")?,
        kernfs_node_id: byte_offset(&btf, "kernfs_node", "id")?,
    })
}

/// The kernel's BTF, mapped rather than parsed: types are read as they are
/// asked for. Parsing all of vmlinux BTF up front costs about 0.4 s and
/// 25 MB of heap for the dozen offsets wanted here. Kernels before 6.16
/// cannot map it: there it is parsed.
fn open(path: &Path) -> btf_rs::Result<Btf> {
    Btf::from_file_with_backend(path, Backend::Mmap).or_else(|_| Btf::from_file(path))
}

/// Byte offset of `field` in `struct name`, looking into anonymous members.
pub fn byte_offset(btf: &Btf, name: &str, field: &str) -> Result<u32> {
    field_offset(btf, name, &struct_named(btf, name)?, field)
}

/// `struct name`; looked up once per struct, as each lookup by name reads
/// every type of a mapped BTF.
fn struct_named(btf: &Btf, name: &str) -> Result<btf_rs::Struct> {
    btf.resolve_types_by_name(name)
        .with_context(|| format!("no type `{name}` in kernel BTF"))?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| anyhow!("`{name}` in kernel BTF is not a struct"))
}

fn field_offset(btf: &Btf, name: &str, strukt: &btf_rs::Struct, field: &str) -> Result<u32> {
    let bits = find_member(btf, strukt, field)?
        .ok_or_else(|| anyhow!("kernel BTF: struct {name} has no field `{field}`"))?;
    if bits % 8 != 0 {
        bail!("kernel BTF: {name}.{field} is a bitfield");
    }
    Ok(bits / 8)
}

fn find_member(btf: &Btf, strukt: &btf_rs::Struct, field: &str) -> Result<Option<u32>> {
    for member in &strukt.members {
        let name = btf.resolve_name(member).unwrap_or_default();
        if name == field {
            return Ok(Some(member.bit_offset()));
        }
        if name.is_empty() {
            let inner = match btf.resolve_chained_type(member)? {
                Type::Struct(s) | Type::Union(s) => s,
                _ => continue,
            };
            if let Some(bits) = find_member(btf, &inner, field)? {
                return Ok(Some(member.bit_offset() + bits));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_from_this_kernel_are_distinct_and_inside_task_struct() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI: {VMLINUX_BTF} is missing"
            );
            eprintln!("skipped: {VMLINUX_BTF} is missing");
            return;
        }
        let o = offsets(path).unwrap();
        let task = [
            o.task_pid,
            o.task_real_parent,
            o.task_group_leader,
            o.task_start_boottime,
            o.task_loginuid,
            o.task_exit_code,
            o.task_flags,
            o.task_comm,
            o.task_signal,
            o.task_mm,
            o.task_cred,
            o.task_cgroups,
        ];
        let mut sorted = task.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), task.len(), "duplicate offsets: {o:?}");
        assert!(o.task_comm > 0 && o.task_comm < 16384, "{o:?}");
        assert!(o.mm_arg_start > 0, "{o:?}");
    }

    #[test]
    fn unknown_field_is_named_in_the_error() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: {VMLINUX_BTF} is missing");
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let err = byte_offset(&btf, "task_struct", "no_such_field").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel BTF: struct task_struct has no field `no_such_field`"
        );
    }
}
