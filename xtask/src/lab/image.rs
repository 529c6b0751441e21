//! Debian guest images: a root file system built with mmdebstrap, with every
//! package the scenarios need installed at build time (guests have no
//! network), extra kernels from other Debian releases, and the lab's runner.
//! Built once per recipe and kept outside the checkout.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::{Kernel, Userland};
use crate::{
    step,
    toolchain::{self, run},
};

/// Bumped whenever the recipe below changes in a way its inputs do not show.
const RECIPE: &str = "3";

/// What every guest has, besides the init system and the kernel: the
/// databases and supervisors the scenarios (and the ones to come) run, and
/// the tools their checks use.
const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "kmod",
    "initramfs-tools",
    "linux-image-cloud-amd64",
    "procps",
    "psmisc",
    "iproute2",
    "sudo",
    "jq",
    "postgresql",
    "monit",
    "redis-server",
    "mariadb-server",
    "patroni",
    "etcd-server",
    "runit",
];

/// Installed but not started at boot: the scenarios start what they use, and
/// every service started costs seconds of emulated boot. PostgreSQL's
/// cluster stays enabled: a real host starts it through systemd.
const DISABLED_AT_BOOT: &[&str] = &["etcd", "mariadb", "patroni", "redis-server", "monit"];

/// Runs the payload disk's `boot.sh` once the guest is up, its output on the
/// serial line between the markers the host reads, then powers off.
const RUNNER: &str = r#"#!/bin/sh
exec >/dev/ttyS0 2>&1
echo "stopguard-lab: up $(uname -r)"
mkdir -p /lab
rc=0
if mount -o ro /dev/vdb /lab; then
    bash /lab/boot.sh || rc=$?
else
    rc=125
fi
echo "stopguard-lab: exit $rc"
sync
systemctl --no-block poweroff || echo o > /proc/sysrq-trigger
"#;

/// After basic.target, not multi-user.target: a database start that never
/// ends (a respawn held frozen across a reboot) must not keep the payload
/// from running; the scripts wait for what they need.
const RUNNER_UNIT: &str = "[Unit]
Description=stopguard lab payload
After=basic.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/stopguard-lab

[Install]
WantedBy=multi-user.target
";

/// A built guest image: its root file system and the kernels it boots.
pub struct Image {
    pub userland: Userland,
    pub dir: PathBuf,
}

impl Image {
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs.img")
    }

    /// The kernel and initrd for `kernel`, or an error naming what this
    /// image has.
    pub fn boot_files(&self, kernel: Kernel) -> Result<(PathBuf, PathBuf)> {
        let prefix = format!("vmlinuz-{}.", kernel.as_str());
        let boot = self.dir.join("boot");
        for entry in fs::read_dir(&boot).with_context(|| format!("reading {}", boot.display()))? {
            let name = entry?.file_name().to_string_lossy().to_string();
            if let Some(release) = name.strip_prefix("vmlinuz-")
                && name.starts_with(&prefix)
            {
                return Ok((boot.join(&name), boot.join(format!("initrd.img-{release}"))));
            }
        }
        bail!(
            "the {} guest has no {} kernel (it boots {})",
            self.userland.as_str(),
            kernel.as_str(),
            self.userland
                .kernels()
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// The image for `userland`, built when the cache has none for this recipe.
pub fn ensure(userland: Userland) -> Result<Image> {
    let key = recipe_key(userland);
    let dir = cache_dir().join(format!("{}-{key}", userland.as_str()));
    if dir.join("rootfs.img").exists() {
        return Ok(Image { userland, dir });
    }
    let started = std::time::Instant::now();
    step(&format!(
        "building the {} guest image into {} (a few minutes, once per recipe)",
        userland.as_str(),
        dir.display()
    ));
    let building = cache_dir().join(format!(".building-{}-{key}", userland.as_str()));
    if building.exists() {
        fs::remove_dir_all(&building)
            .with_context(|| format!("removing the unfinished {}", building.display()))?;
    }
    let root = building.join("root");
    fs::create_dir_all(&building)?;
    let sources = building.join("sources.list");
    fs::write(&sources, sources_list(&[userland.suite()]))?;
    run(
        Command::new("mmdebstrap")
            .args(["--variant=minbase", "--quiet"])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(userland.suite())
            .arg(&root)
            .arg(&sources),
        &format!("mmdebstrap {}", userland.suite()),
    )?;
    for kernel in userland.kernels() {
        if kernel.suite() != userland.suite() {
            install_kernel(&root, *kernel)?;
        }
    }
    add_runner(&root)?;
    let boot = building.join("boot");
    fs::create_dir_all(&boot)?;
    for entry in fs::read_dir(root.join("boot"))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("vmlinuz-") || name.starts_with("initrd.img-") {
            fs::copy(entry.path(), boot.join(&name))?;
        }
    }
    run(
        Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-L", "root", "-d"])
            .arg(&root)
            .arg(building.join("rootfs.img"))
            .arg("4G"),
        "mke2fs (the guest's root file system)",
    )?;
    fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    fs::rename(&building, &dir)
        .with_context(|| format!("moving {} to {}", building.display(), dir.display()))?;
    remove_older(userland, &dir);
    step(&format!(
        "built the {} guest image in {:.0} s",
        userland.as_str(),
        started.elapsed().as_secs_f64()
    ));
    Ok(Image { userland, dir })
}

/// Images of `userland` built from earlier recipes: gigabytes nothing uses.
fn remove_older(userland: Userland, current: &Path) {
    let prefix = format!("{}-", userland.as_str());
    let Ok(entries) = fs::read_dir(cache_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != current && entry.file_name().to_string_lossy().starts_with(&prefix) {
            step(&format!("removing the outdated image {}", path.display()));
            let _ = fs::remove_dir_all(&path);
        }
    }
}

pub fn cache_dir() -> PathBuf {
    toolchain::cache_root().join("lab")
}

/// A short hash of everything the image is made from, so a changed recipe
/// builds a new image and an unchanged one is reused.
fn recipe_key(userland: Userland) -> String {
    let mut text = format!("{RECIPE}\n{}\n{RUNNER}\n{RUNNER_UNIT}\n", userland.suite());
    text.push_str(&PACKAGES.join(","));
    text.push_str(&DISABLED_AT_BOOT.join(","));
    for kernel in userland.kernels() {
        text.push_str(kernel.as_str());
    }
    // FNV-1a: stable across toolchains, unlike std's hasher.
    let hash = text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    format!("{:012x}", hash >> 16)
}

/// apt sources for `suites` on the Debian mirror this host uses.
fn sources_list(suites: &[&str]) -> String {
    let mirror = host_mirror();
    suites
        .iter()
        .map(|suite| format!("deb {mirror} {suite} main\n"))
        .collect()
}

/// The Debian mirror in this host's apt sources (its `.../debian` URI, not
/// the security archive nor third-party sources), else deb.debian.org.
fn host_mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(dir.filter_map(|e| e.ok().map(|e| e.path())));
    }
    files
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .find(|word| word.starts_with("http") && word.trim_end_matches('/').ends_with("/debian"))
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
        .trim_end_matches('/')
        .to_string()
}

/// Installs `kernel` from its own Debian release into the image: its
/// package is downloaded with a private apt configuration (the host's is
/// left alone), and installing it in the image makes its initrd there.
fn install_kernel(root: &Path, kernel: Kernel) -> Result<()> {
    step(&format!(
        "adding the {} kernel from Debian {}",
        kernel.as_str(),
        kernel.suite()
    ));
    let apt = cache_dir().join("apt");
    let lists = apt.join("lists");
    let archives = apt.join("cache/archives");
    fs::create_dir_all(lists.join("partial"))?;
    fs::create_dir_all(archives.join("partial"))?;
    let sources = apt.join(format!("{}.list", kernel.suite()));
    fs::write(&sources, sources_list(&[kernel.suite()]))?;
    let apt_options = |cmd: &mut Command| {
        cmd.arg(format!("-o=Dir::Etc::SourceList={}", sources.display()))
            .arg("-o=Dir::Etc::SourceParts=/dev/null")
            .arg(format!("-o=Dir::State::Lists={}", lists.display()))
            .arg(format!("-o=Dir::Cache={}", apt.join("cache").display()))
            .arg("-o=Dir::State::Status=/dev/null")
            .arg("-o=APT::Sandbox::User=root")
            .arg("-q");
    };
    let mut update = Command::new("apt-get");
    apt_options(&mut update);
    run(
        update.arg("update"),
        &format!("apt-get update ({})", kernel.suite()),
    )?;
    // The metapackage names the release's current kernel package.
    let mut show = Command::new("apt-cache");
    apt_options(&mut show);
    let stanza = toolchain::output(show.args(["show", "linux-image-cloud-amd64"]))?;
    let package = stanza
        .lines()
        .filter_map(|l| l.strip_prefix("Depends: "))
        .flat_map(|deps| deps.split(',').map(str::trim))
        .filter_map(|dep| dep.split_whitespace().next())
        .find(|name| name.starts_with(&format!("linux-image-{}.", kernel.as_str())))
        .with_context(|| {
            format!(
                "Debian {} has no linux-image-cloud-amd64 depending on a {} kernel",
                kernel.suite(),
                kernel.as_str()
            )
        })?
        .to_string();
    let mut download = Command::new("apt-get");
    apt_options(&mut download);
    run(
        download.current_dir(&archives).args(["download", &package]),
        &format!("apt-get download {package}"),
    )?;
    let deb = fs::read_dir(&archives)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        })
        .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
    let inside = root.join("tmp").join(deb.file_name().unwrap());
    fs::copy(&deb, &inside)?;
    run(
        Command::new("chroot")
            .arg(root)
            .args(["dpkg", "-i"])
            .arg(Path::new("/tmp").join(deb.file_name().unwrap())),
        &format!("installing {package} in the image"),
    )?;
    fs::remove_file(inside)?;
    Ok(())
}

/// The runner unit, a quiet serial line (a getty there would hang it up and
/// swallow the runner's output), services off at boot, a host name.
fn add_runner(root: &Path) -> Result<()> {
    let runner = root.join("usr/local/sbin/stopguard-lab");
    fs::write(&runner, RUNNER)?;
    run(
        Command::new("chmod").arg("755").arg(&runner),
        "chmod the runner",
    )?;
    let units = root.join("etc/systemd/system");
    fs::write(units.join("stopguard-lab.service"), RUNNER_UNIT)?;
    let wants = units.join("multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/stopguard-lab.service",
        wants.join("stopguard-lab.service"),
    )?;
    std::os::unix::fs::symlink("/dev/null", units.join("serial-getty@ttyS0.service"))?;
    // A release may lack one of them (or name it differently): disable
    // what it has.
    let present: Vec<&str> = DISABLED_AT_BOOT
        .iter()
        .copied()
        .filter(|name| {
            ["lib/systemd/system", "usr/lib/systemd/system"]
                .iter()
                .any(|dir| root.join(dir).join(format!("{name}.service")).exists())
                || root.join("etc/init.d").join(name).exists()
        })
        .collect();
    run(
        Command::new("chroot")
            .arg(root)
            .args(["systemctl", "disable", "--quiet"])
            .args(&present),
        "disabling services at boot in the image",
    )?;
    fs::write(root.join("etc/hostname"), "lab\n")?;
    Ok(())
}
