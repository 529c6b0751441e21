//! `cargo xtask deb`: stopguard as a Debian package, built with dpkg-deb
//! from a tree assembled here (xtask knows every file; nothing else to
//! install), then checked with lintian.
//!
//! What goes in comes from `packaging/` (the unit, the conffile, the
//! maintainer scripts, the copyright) and from the built binary itself (its
//! manual pages and shell completions). The control file, md5sums and
//! changelog are written here, from the version and the files.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{build_agent, build_ebpf, is_root, step, toolchain, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// The package version, upstream-revision; default: the workspace
    /// version, revision 1 (e.g. 0.1.0-1). A higher one (0.1.0-2) tests an
    /// upgrade.
    #[arg(long, value_name = "VERSION")]
    version: Option<String>,
    /// The agent binary to package, as built elsewhere (e.g.
    /// target/next/stopguard from `cargo xtask build-next`); default: build
    /// target/release/stopguard.
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
}

/// What the package needs from the host: lintian to check it, dpkg-dev for
/// dpkg-shlibdeps, binutils for strip.
const HOST_PACKAGES: &[&str] = &["lintian", "dpkg-dev", "binutils"];

/// Files from `packaging/`: (source, path in the package, mode).
const FILES: &[(&str, &str, u32)] = &[
    ("stopguard.toml", "etc/stopguard/stopguard.toml", 0o644),
    (
        "stopguard.service",
        "lib/systemd/system/stopguard.service",
        0o644,
    ),
    ("copyright", "usr/share/doc/stopguard/copyright", 0o644),
    ("postinst", "DEBIAN/postinst", 0o755),
    ("prerm", "DEBIAN/prerm", 0o755),
    ("postrm", "DEBIAN/postrm", 0o755),
];

/// Configuration files dpkg keeps the admin's edits of.
const CONFFILES: &[&str] = &["/etc/stopguard/stopguard.toml"];

/// Where each shell's completions go, as `stopguard completions SHELL` prints them.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "usr/share/bash-completion/completions/stopguard"),
    ("zsh", "usr/share/zsh/vendor-completions/_stopguard"),
    ("fish", "usr/share/fish/vendor_completions.d/stopguard.fish"),
];

/// Besides the shared libraries: procps for the unit's /bin/kill.
const DEPENDS: &str = "procps";

const DESCRIPTION: &str = "\
catches supervisors restarting services an operator stopped
 stopguard watches every process start, exit, fork and signal on the host
 through eBPF. When a supervisor (monit, systemd, supervisord, runit, s6,
 daemontools) restarts a database that a person stopped, it freezes the
 respawned process before its first instruction, or alerts, and records who
 stopped it and what brought it back.
 .
 The package runs the agent as a hardened systemd service that starts
 before any ordinary service; its configuration is
 /etc/stopguard/stopguard.toml. Needs a kernel with BTF, 5.8 or later.";

pub fn run(args: &Args) -> Result<()> {
    let version = args
        .version
        .clone()
        .unwrap_or_else(|| format!("{}-1", env!("CARGO_PKG_VERSION")));
    let agent = match &args.binary {
        Some(binary) => {
            if !binary.is_file() {
                bail!("--binary {}: no such file", binary.display());
            }
            step(&format!("packaging {}", binary.display()));
            binary.clone()
        }
        None => {
            build_ebpf()?;
            build_agent()?
        }
    };
    if is_root() {
        toolchain::ensure_packages(HOST_PACKAGES)?;
    }
    let target = workspace_root().join("target");
    let tree = target.join("deb");
    step(&format!(
        "assembling the package tree in {}",
        tree.display()
    ));
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    assemble(&tree, &agent, &version)?;
    // Debian file names leave out the epoch.
    let file_version = version.split_once(':').map_or(&*version, |(_, v)| v);
    let deb = target.join(format!("stopguard_{file_version}_amd64.deb"));
    step(&format!("building {}", deb.display()));
    // Its "building package" line goes with the progress, off stdout.
    eprint!(
        "{}",
        output(
            Command::new("dpkg-deb")
                .args(["--root-owner-group", "--build"])
                .arg(&tree)
                .arg(&deb)
                // File times of the latest commit: the same sources, the same package.
                .env("SOURCE_DATE_EPOCH", git(&["log", "-1", "--format=%ct"])?),
        )?
    );
    lintian(&deb)?;
    println!("{}", deb.display());
    Ok(())
}

/// Lays out every file of the package under `tree`, DEBIAN/ included.
fn assemble(tree: &Path, agent: &Path, version: &str) -> Result<()> {
    let packaging = workspace_root().join("packaging");
    for (source, dest, mode) in FILES {
        let dest = tree.join(dest);
        make_parent(&dest)?;
        fs::copy(packaging.join(source), &dest)
            .with_context(|| format!("copying packaging/{source} to {}", dest.display()))?;
        set_mode(&dest, *mode)?;
    }

    let binary = tree.join("usr/sbin/stopguard");
    make_parent(&binary)?;
    // As dh_strip does.
    toolchain::run(
        Command::new("strip")
            .args([
                "--remove-section=.comment",
                "--remove-section=.note",
                "--strip-unneeded",
            ])
            .arg("-o")
            .arg(&binary)
            .arg(agent),
        "strip",
    )?;
    set_mode(&binary, 0o755)?;

    let man = tree.join("usr/share/man/man8");
    fs::create_dir_all(&man)?;
    let pages = output(Command::new(&binary).arg("man").arg(&man))?;
    for page in pages.lines() {
        gzip(Path::new(page))?;
    }
    for (shell, dest) in COMPLETIONS {
        let dest = tree.join(dest);
        make_parent(&dest)?;
        let script = output(Command::new(&binary).args(["completions", shell]))?;
        write(&dest, &script, 0o644)?;
    }

    let maintainer = maintainer()?;
    let changelog = tree.join("usr/share/doc/stopguard/changelog.Debian");
    write(&changelog, &changelog_entry(version, &maintainer)?, 0o644)?;
    gzip(&changelog)?;

    let depends = format!("{}, {DEPENDS}", shared_library_depends(&binary)?);
    let debian = tree.join("DEBIAN");
    let conffiles: String = CONFFILES.iter().map(|c| format!("{c}\n")).collect();
    write(&debian.join("conffiles"), &conffiles, 0o644)?;
    write(&debian.join("md5sums"), &md5sums(tree)?, 0o644)?;
    let control = format!(
        "Package: stopguard\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: {maintainer}\n\
         Installed-Size: {}\n\
         Depends: {depends}\n\
         Section: admin\n\
         Priority: optional\n\
         Description: {DESCRIPTION}\n",
        installed_kib(tree)?
    );
    write(&debian.join("control"), &control, 0o644)?;
    // Whatever the umask, directories as dpkg expects them.
    for dir in walk(tree)?.into_iter().filter(|p| p.is_dir()) {
        set_mode(&dir, 0o755)?;
    }
    set_mode(tree, 0o755)
}

/// `$DEBFULLNAME <$DEBEMAIL>` as Debian tools take it, else the author of
/// the latest commit.
fn maintainer() -> Result<String> {
    if let (Ok(name), Ok(email)) = (std::env::var("DEBFULLNAME"), std::env::var("DEBEMAIL")) {
        return Ok(format!("{name} <{email}>"));
    }
    git(&["log", "-1", "--format=%an <%ae>"])
}

/// One changelog entry for `version`, dated by the latest commit so that the
/// same sources make the same package.
fn changelog_entry(version: &str, maintainer: &str) -> Result<String> {
    let date = git(&["log", "-1", "--format=%cD"])?;
    Ok(format!(
        "stopguard ({version}) unstable; urgency=medium\n\n  \
         * Built from the stopguard sources by `cargo xtask deb`.\n\n \
         -- {maintainer}  {date}\n"
    ))
}

fn git(args: &[&str]) -> Result<String> {
    output(Command::new("git").current_dir(workspace_root()).args(args))
        .map(|s| s.trim().to_string())
}

/// The Depends on shared libraries (libc6 at the version whose symbols the
/// binary uses, libgcc-s1), as dpkg-shlibdeps works them out.
fn shared_library_depends(binary: &Path) -> Result<String> {
    // dpkg-shlibdeps reads the source package's debian/control.
    let source = workspace_root().join("target/deb-shlibdeps");
    fs::create_dir_all(source.join("debian"))?;
    fs::write(
        source.join("debian/control"),
        "Source: stopguard\n\nPackage: stopguard\nArchitecture: amd64\n",
    )?;
    let found = output(
        Command::new("dpkg-shlibdeps")
            .current_dir(&source)
            .arg("-O")
            .arg(format!("-e{}", binary.display())),
    )
    .context("dpkg-shlibdeps (apt-get install dpkg-dev)")?;
    found
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {found}"))
}

/// DEBIAN/md5sums: every file but the conffiles (dpkg keeps their sums).
fn md5sums(tree: &Path) -> Result<String> {
    let files: Vec<PathBuf> = walk(tree)?
        .into_iter()
        .filter(|p| p.is_file() && !p.starts_with(tree.join("DEBIAN")))
        .map(|p| p.strip_prefix(tree).unwrap().to_path_buf())
        .filter(|p| !CONFFILES.contains(&format!("/{}", p.display()).as_str()))
        .collect();
    output(Command::new("md5sum").current_dir(tree).args(&files))
}

/// Installed-Size: KiB, each file rounded up, one for each directory.
fn installed_kib(tree: &Path) -> Result<u64> {
    let mut kib = 0;
    for path in walk(tree)? {
        if path.starts_with(tree.join("DEBIAN")) {
            continue;
        }
        let meta = fs::symlink_metadata(&path)?;
        kib += if meta.is_file() {
            meta.len().div_ceil(1024)
        } else {
            1
        };
    }
    Ok(kib)
}

/// Runs lintian on `deb` and shows what it says; fails on errors, passes
/// on warnings. Skipped, saying so, when it is not installed.
fn lintian(deb: &Path) -> Result<()> {
    if !toolchain::installed("lintian") {
        step("lintian is not installed (root installs it): the package is not checked");
        return Ok(());
    }
    step("checking the package with lintian");
    let mut cmd = Command::new("lintian");
    if is_root() {
        cmd.arg("--allow-root");
    }
    let out = cmd
        .arg(deb)
        .stderr(Stdio::inherit())
        .output()
        .context("running lintian")?;
    let said = String::from_utf8_lossy(&out.stdout);
    eprint!("{said}");
    let errors = said.lines().filter(|l| l.starts_with("E: ")).count();
    if errors > 0 || !out.status.success() {
        bail!(
            "lintian found {errors} errors in {} ({})",
            deb.display(),
            out.status
        );
    }
    let warnings = said.lines().filter(|l| l.starts_with("W: ")).count();
    step(&format!("lintian: no errors, {warnings} warnings"));
    Ok(())
}

/// Every path under `dir`, depth first.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            found.extend(walk(&path)?);
        }
        found.push(path);
    }
    found.sort();
    Ok(found)
}

/// Compresses `file` to `file.gz` as Debian wants: best, no name or time.
fn gzip(file: &Path) -> Result<()> {
    toolchain::run(
        Command::new("gzip").args(["-9n", "--force"]).arg(file),
        &format!("gzip {}", file.display()),
    )?;
    set_mode(Path::new(&format!("{}.gz", file.display())), 0o644)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    make_parent(path)?;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, mode)
}

fn make_parent(path: &Path) -> Result<()> {
    let dir = path.parent().expect("a path in the tree");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// A command's stdout; its stderr shown; an error when it fails.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(String::from_utf8(out.stdout)?)
}
