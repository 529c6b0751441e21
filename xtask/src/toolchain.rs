//! Installs what the builds and tests need, once, outside the checkout.

use std::{
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::step;

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the end-to-end tests run for real: bash, coreutils and
/// procps for the workloads, perl for the signal storm, util-linux for
/// setpriv, a C compiler for the multi-threaded fixture, runit, monit,
/// supervisord, s6 and daemontools as real supervisors, PostgreSQL as the
/// real database, Prometheus Alertmanager as a real alert engine, and the
/// database HA tools that restart a stopped server themselves: Patroni
/// (with etcd 3.4 as its store, python3-etcd its v2 client, a dependency)
/// and MariaDB's mysqld_safe; etcd is also the store the agent records to,
/// set up with etcdctl (etcd-client), openssl for its test certificates and
/// curl for its TLS health checks. The tests run private instances of each;
/// the packages' own services are kept from starting (`NoServiceStarts`).
const TEST_PACKAGES: &[&str] = &[
    "bash",
    "coreutils",
    "procps",
    "perl-base",
    "util-linux",
    "gcc",
    "libc6-dev",
    "runit",
    "monit",
    "supervisor",
    "s6",
    "daemontools",
    "postgresql",
    "prometheus-alertmanager",
    "patroni",
    "etcd-server",
    "etcd-client",
    "openssl",
    "curl",
    "mariadb-server",
];

/// Runs an install step, its output shown with the progress on stderr
/// (stdout is for a task's results); an error names `what`.
pub fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let stderr = std::io::stderr().as_fd().try_clone_to_owned()?;
    let status = cmd
        .stdout(stderr)
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("STOPGUARD_TOOLCHAIN_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("stopguard")
}

/// Makes sure rust-src and a bpf-linker built against this toolchain's LLVM
/// exist; returns the directory holding `bpf-linker`.
pub fn ensure_bpf_toolchain() -> Result<PathBuf> {
    let sysroot = PathBuf::from(output(Command::new("rustc").args(["--print", "sysroot"]))?);
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        step("installing rust-src (needed to build core for the BPF target)");
        run(
            Command::new("rustup").args(["component", "add", "rust-src"]),
            "rustup component add rust-src",
        )?;
    }
    let llvm = find_libllvm(&sysroot)?;
    let name = llvm.file_name().unwrap().to_string_lossy().to_string();
    let key = name.trim_start_matches("libLLVM.so.");
    let dir = cache_root().join(format!("bpf-linker-{BPF_LINKER_VERSION}-llvm-{key}"));
    let bin = dir.join("bin");
    if bin.join("bpf-linker").exists() {
        return Ok(bin);
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against {name} into {} (about 2 minutes, once)",
        dir.display()
    ));
    let lib = dir.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    // Copies, not links: a toolchain update removes the original.
    for target in [lib.join(&name), lib.join("libLLVM.so")] {
        fs::copy(&llvm, &target)
            .with_context(|| format!("copying {} to {}", llvm.display(), target.display()))?;
    }
    let mut install = Command::new("cargo");
    install
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            &format!("llvm-{}", key.split('.').next().unwrap_or("22")),
            "--root",
        ])
        .arg(&dir)
        .env("LLVM_PREFIX", &dir);
    run(&mut install, "building bpf-linker")?;
    Ok(bin)
}

/// The mdBook that builds docs/.
const MDBOOK_VERSION: &str = "0.4.52";

/// Makes sure mdBook is built (without its server and watcher, which the
/// build does not use), cached outside the checkout; returns its path.
pub fn ensure_mdbook() -> Result<PathBuf> {
    let dir = cache_root().join(format!("mdbook-{MDBOOK_VERSION}"));
    let bin = dir.join("bin/mdbook");
    if bin.exists() {
        return Ok(bin);
    }
    step(&format!(
        "building mdBook {MDBOOK_VERSION} into {} (about 2 minutes, once)",
        dir.display()
    ));
    let mut install = Command::new("cargo");
    install
        .args([
            "install",
            &format!("mdbook@{MDBOOK_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            "search",
            "--root",
        ])
        .arg(&dir);
    run(&mut install, "building mdBook")?;
    Ok(bin)
}

fn find_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        {
            return Ok(path);
        }
    }
    bail!(
        "no libLLVM.so.* in {}: this toolchain does not ship its LLVM",
        lib.display()
    )
}

/// Installs the Debian packages the end-to-end tests use (root only).
pub fn ensure_test_packages() -> Result<()> {
    ensure_packages(TEST_PACKAGES)
}

/// What the lab runs on the host: mmdebstrap builds the guests' root file
/// systems, e2fsprogs makes disks of them without mounting anything,
/// qemu boots them (qemu-utils for the overlays), dpkg-dev for dpkg-deb's
/// helpers; the fleet lab's etcd, and socat for qemu's forwards to it.
const LAB_PACKAGES: &[&str] = &[
    "mmdebstrap",
    "e2fsprogs",
    "qemu-system-x86",
    "qemu-utils",
    "dpkg-dev",
    "etcd-server",
    "socat",
];

/// Installs what the lab needs on the host (root only).
pub fn ensure_lab_packages() -> Result<()> {
    ensure_packages(LAB_PACKAGES)
}

/// Whether the Debian package `name` is installed.
pub fn installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs those of `packages` that are missing (root only), waiting for
/// another apt or dpkg run to finish rather than failing on its lock.
/// Installing one may remove another that conflicts with it (the host's
/// backported qemu-utils goes when Debian's qemu-system-x86 comes): those
/// are installed again, in the version that fits, and a package still
/// missing after that is an error.
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing = |packages: &[&str]| -> Vec<String> {
        packages
            .iter()
            .filter(|p| !installed(p))
            .map(|p| p.to_string())
            .collect()
    };
    let mut updated = false;
    for _ in 0..2 {
        let wanted = missing(packages);
        if wanted.is_empty() {
            return Ok(());
        }
        step(&format!("installing Debian packages: {}", wanted.join(" ")));
        let _no_starts = NoServiceStarts::new()?;
        let wait = ["-o", "DPkg::Lock::Timeout=600"];
        if !updated {
            run(
                Command::new("apt-get").args(wait).args(["update", "-q"]),
                "apt-get update",
            )?;
            updated = true;
        }
        run(
            Command::new("apt-get")
                .args(wait)
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&wanted)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            &format!("apt-get install {}", wanted.join(" ")),
        )?;
    }
    let left = missing(packages);
    if !left.is_empty() {
        bail!(
            "Debian packages still missing after installing them: {} (apt removed them \
             to install another; see the apt output above)",
            left.join(" ")
        );
    }
    Ok(())
}

/// Debian's policy-rc.d hook (invoke-rc.d, deb-systemd-invoke), written
/// for the length of an install when the host has none: without it
/// postinst scripts start the packages' own services (postgres on 5432,
/// MariaDB on 3306, etcd on 2379, monit, Alertmanager), which the tests
/// never use and which would stay running on the host.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Marks the hook as this installer's, so that one left by an interrupted
/// install is known as ours and removed by the next.
const POLICY_RC_D_MARK: &str =
    "# stopguard xtask: no service starts while installing test packages";

/// Service starts denied (exit 101) while this lives; a hook the host
/// already has is left as it is.
struct NoServiceStarts {
    written: bool,
}

impl NoServiceStarts {
    fn new() -> Result<NoServiceStarts> {
        let path = Path::new(POLICY_RC_D);
        match fs::read(path) {
            Ok(text) if !String::from_utf8_lossy(&text).contains(POLICY_RC_D_MARK) => {
                return Ok(NoServiceStarts { written: false });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {POLICY_RC_D}")),
        }
        fs::write(path, format!("#!/bin/sh\n{POLICY_RC_D_MARK}\nexit 101\n"))
            .with_context(|| format!("writing {POLICY_RC_D}"))?;
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .with_context(|| format!("making {POLICY_RC_D} executable"))?;
        Ok(NoServiceStarts { written: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.written
            && let Err(e) = fs::remove_file(POLICY_RC_D)
        {
            eprintln!("warning: removing {POLICY_RC_D}: {e}; remove it by hand");
        }
    }
}
