//! The probes outlive the agent: their links and maps are pinned in bpffs,
//! so that while no agent runs (a crash, a restart, an upgrade) the kernel
//! still stops guarded execs and still writes records for the next agent.
//!
//! Each set of loaded programs is a generation, a directory under the root
//! named after the record layout and the programs' identity
//! (`v1-8c0f…`): one link per program, and the maps an agent reads. An agent
//! whose programs are the pinned ones adopts them; another loads its own,
//! attaches them, and only then takes the old generation apart, so that
//! some programs are always attached.

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt, fs::DirBuilderExt},
    path::{Path, PathBuf},
    time::SystemTime,
};

use agent_common::{LAYOUT, names};
use anyhow::{Context, Result, bail};

/// Where the agent pins its generations.
pub const ROOT: &str = "/sys/fs/bpf/stopguard";

/// statfs(2)'s `f_type` of a bpffs mount.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The maps a generation pins: what a later agent reads and writes.
pub const MAPS: [&str; 4] = [
    names::EVENTS,
    names::LOST,
    names::GUARD,
    names::SIGNAL_INTEREST,
];

/// One pinned set of programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub dir: PathBuf,
    /// The record layout its name declares; None for a name this agent
    /// does not understand (never read as its own).
    pub layout: Option<u32>,
}

impl Generation {
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.dir.join(program)
    }

    pub fn map(&self, map: &str) -> PathBuf {
        self.dir.join(map)
    }

    /// Whether every link and map is there: a generation a crash left half
    /// pinned is taken apart, never adopted.
    pub fn complete(&self) -> bool {
        names::PROGRAMS
            .iter()
            .map(|(program, _)| self.link(program))
            .chain(MAPS.iter().map(|m| self.map(m)))
            .all(|p| p.exists())
    }

    /// When it was pinned: its ring's pin time.
    pub fn since(&self) -> Option<SystemTime> {
        fs::metadata(self.map(names::EVENTS))
            .and_then(|m| m.modified())
            .ok()
    }
}

/// The name of the generation of programs with `identity`.
pub fn generation_name(identity: u64) -> String {
    format!("v{LAYOUT}-{identity:016x}")
}

/// The suffix of a generation being pinned: bpffs allows no dot in names.
const MAKING: &str = "-new";

/// Where generation `dir` is pinned until complete, then renamed to `dir`.
pub fn making(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(MAKING);
    PathBuf::from(name)
}

/// The layout a generation's name declares (`v1-…` → 1).
fn layout_of(name: &str) -> Option<u32> {
    let (version, rest) = name.strip_prefix('v')?.split_once('-')?;
    if rest.is_empty() || rest.ends_with(MAKING) {
        return None;
    }
    version.parse().ok()
}

/// The generations pinned under `root`, oldest first; a half-made one
/// (`…-new`, a load a crash interrupted) is listed with no layout.
pub fn generations(root: &Path) -> Vec<Generation> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found: Vec<(Option<SystemTime>, Generation)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let generation = Generation {
                dir: e.path(),
                layout: layout_of(&name),
            };
            (generation.since(), generation)
        })
        .collect();
    found.sort_by_key(|(since, _)| *since);
    found.into_iter().map(|(_, g)| g).collect()
}

/// Makes sure `root`'s parent is a bpffs mount and `root` exists. Returns
/// whether bpffs had to be mounted (a host whose init does not mount it).
pub fn prepare(root: &Path) -> Result<bool> {
    let base = root.parent().context("the pin root has no parent")?;
    let mounted = if is_bpffs(base) {
        false
    } else {
        mount_bpffs(base)?;
        true
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .with_context(|| format!("creating {}", root.display()))?;
    Ok(mounted)
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs to write into.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

fn mount_bpffs(path: &Path) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    let target = CString::new(path.as_os_str().as_bytes())?;
    let kind = c"bpf";
    let options = c"mode=0700";
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            kind.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        bail!(
            "{} is not a bpffs mount and mounting one there failed: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Takes a generation apart: its links first (its programs detach), then
/// its maps and the directory.
pub fn remove(generation: &Generation) -> Result<()> {
    detach(generation)?;
    remove_all(&generation.dir)
}

/// Removes the links of a generation: its programs stop running.
pub fn detach(generation: &Generation) -> Result<()> {
    for (program, _) in names::PROGRAMS {
        remove_pin(&generation.link(program))?;
    }
    Ok(())
}

fn remove_pin(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing {}", path.display())),
    }
}

fn remove_all(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing {}", dir.display())),
    }
}

/// `stopguard unpin`: removes every generation under `root`, and `root`.
/// Returns the names of the generations removed.
pub fn unpin_all(root: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for generation in generations(root) {
        remove(&generation)?;
        removed.push(generation.name());
    }
    if root.exists() {
        fs::remove_dir(root).with_context(|| format!("removing {}", root.display()))?;
    }
    Ok(removed)
}

/// FNV-1a over `bytes`, continuing from `hash`: a stable identity for the
/// programs as loaded (the same on every build of this code).
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x100_0000_01b3);
    }
    hash
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_names_carry_the_layout() {
        let name = generation_name(0x8c0f);
        assert_eq!(name, format!("v{LAYOUT}-0000000000008c0f"));
        assert_eq!(layout_of(&name), Some(LAYOUT));
        assert_eq!(layout_of("v7-abc"), Some(7));
        // A load a crash interrupted, or a name of another making.
        assert_eq!(layout_of("v1-abc-new"), None);
        assert_eq!(making(Path::new("/p/v1-abc")), Path::new("/p/v1-abc-new"));
        assert_eq!(layout_of("v1-"), None);
        assert_eq!(layout_of("maps"), None);
        assert_eq!(layout_of("vx-1"), None);
    }

    #[test]
    fn identities_differ_with_any_byte() {
        let a = fnv1a(FNV_OFFSET, b"object");
        assert_eq!(a, fnv1a(FNV_OFFSET, b"object"));
        assert_ne!(a, fnv1a(FNV_OFFSET, b"objecu"));
        assert_ne!(fnv1a(a, &1u32.to_ne_bytes()), fnv1a(a, &2u32.to_ne_bytes()));
    }
}
