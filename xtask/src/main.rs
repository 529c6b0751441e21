//! Project tasks: `cargo xtask <command>`. Each one installs what it needs
//! first, so a fresh machine needs nothing beyond the Rust toolchain.
mod bench;
mod deb;
mod demo;
mod docs;
mod etcd;
mod fleet_bench;
mod fuzz;
mod lab;
mod measure;
mod peers;
mod soak;
mod toolchain;

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "stopguard's build, run, test and bench tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the kernel programs (installs rust-src and bpf-linker when missing).
    BuildEbpf,
    /// Build the next agent, whose kernel object differs from the default
    /// build's; prints its path, target/next/stopguard, last.
    ///
    /// The same sources, the kernel programs built with
    /// STOPGUARD_EBPF_VARIANT set (another license string, so other bytes),
    /// as an upgrade to a new kernel object looks. Builds in target dirs of
    /// its own (target/ebpf-next, and ~/.cache/stopguard/next-build), so that neither build
    /// undoes the other: the first one compiles everything once.
    BuildNext,
    /// Build everything and run stopguard as root, passing ARGS through.
    ///
    /// Example: cargo xtask run -- trace --comm postgres
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install what the tests need and run every test, unit and end-to-end.
    Test {
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The randomized soak (root): each trial picks a supervisor, a stop
    /// path, delays and faults, and counts missed respawns, false alerts
    /// and lost alerts; fails when any is non-zero.
    ///
    /// Example: cargo xtask soak --trials 100 --seed 7 (a failing trial
    /// prints the `--seed S --trials 1` that replays it)
    Soak(soak::Args),
    /// Measure the agent's overhead on a fork+exec storm.
    Bench(bench::Args),
    /// Fleet mode at scale: simulated hosts (the real fleet code, without
    /// probes) against a real etcd on loopback; times a cluster window's
    /// open to every host's answer (p50, p99), counts writes at rest,
    /// restarts etcd and times the hosts' return, reads etcd's CPU and
    /// memory.
    ///
    /// Example: cargo xtask fleet-bench --hosts 1000
    FleetBench(fleet_bench::Args),
    /// Replay the incident in a sandbox: PostgreSQL under monit, an operator
    /// stop, monit's restart frozen by stopguard; then clean up.
    ///
    /// Needs root (it loads eBPF programs and runs a database); installs monit
    /// and PostgreSQL when missing.
    Demo,
    /// Fuzz the parsers of outside input (the config file, control requests,
    /// kernel ring records, the audit log) with cargo-fuzz on nightly, from
    /// and into the corpus in fuzz/corpus/; fails naming the input of any
    /// crash.
    ///
    /// Installs cargo-fuzz when missing. Not run by `cargo xtask test`: too long.
    ///
    /// Example: cargo xtask fuzz config --secs 600
    Fuzz(fuzz::Args),
    /// Build the Debian package target/stopguard_VERSION_amd64.deb (the
    /// agent as a hardened systemd service, its config, manual pages and
    /// completions) and check it with lintian; prints its path last.
    ///
    /// Installs lintian and dpkg-dev when missing (root).
    ///
    /// Example: cargo xtask deb && apt install ./target/stopguard_0.1.0-1_amd64.deb
    Deb(deb::Args),
    /// Prove the package in Debian guests with systemd as PID 1 (qemu):
    /// bookworm on kernels 5.10, 6.1 and 6.12, trixie on 6.12. Scenarios
    /// that depend on the kernel (probes, verifier, freezer, pins) run on
    /// every row; those that depend on the userland (databases, systemd)
    /// on bookworm/6.1 and trixie/6.12. Prints a matrix of userland/kernel
    /// x scenario; fails when any cell fails.
    ///
    /// Needs root. Guest images are built once (a few minutes each) and kept
    /// in ~/.cache/stopguard/lab.
    ///
    /// Examples:
    ///   cargo xtask lab                      # the whole matrix
    ///   cargo xtask lab --kernel 5.10        # only the rows on 5.10
    ///   cargo xtask lab run --kernel 6.12 --userland trixie --script try.sh
    Lab(lab::Args),
    /// Check the docs and build the book (docs/, mdBook) into docs/book:
    /// every relative link of the README and the book resolves, the
    /// summary lists every page, and every `stopguard` and `cargo xtask`
    /// example parses with the real command line parser.
    ///
    /// Installs mdBook when missing, cached in ~/.cache/stopguard.
    ///
    /// Example: cargo xtask docs && xdg-open docs/book/index.html
    Docs,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Task::BuildEbpf => build_ebpf().map(|_| ()),
        Task::BuildNext => {
            let next = build_next()?;
            println!("{}", next.display());
            Ok(())
        }
        Task::Run { args } => {
            build_ebpf()?;
            let agent = build_agent()?;
            let status = as_root(&agent)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", agent.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test { args } => test(&args),
        Task::Demo => demo::run(),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Soak(args) => soak::run(&args),
        Task::Deb(args) => deb::run(&args),
        Task::Lab(args) => lab::run(&args),
        Task::Docs => docs::run(parse_args),
        Task::FleetBench(args) => {
            build_ebpf()?;
            fleet_bench::run(&build_agent()?, &args)
        }
        Task::Bench(args) => {
            build_ebpf()?;
            let agent = build_agent()?;
            bench::run(&agent, &args)
        }
    }
}

/// Parses `cargo xtask ARGS` as this program would, without running it:
/// how the docs' examples are checked.
pub fn parse_args(args: &[String]) -> Result<(), String> {
    let argv = std::iter::once("xtask".to_string()).chain(args.iter().cloned());
    match Cli::try_parse_from(argv) {
        Ok(_) => Ok(()),
        Err(err)
            if matches!(
                err.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            Ok(())
        }
        Err(err) => Err(err.to_string()),
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// A build of the kernel programs: the target dir cargo builds them in, and
/// whether STOPGUARD_EBPF_VARIANT is set (agent-ebpf's LICENSE depends on it).
struct EbpfBuild {
    target_dir: &'static str,
    variant: bool,
}

impl EbpfBuild {
    /// Where the object lands: where OBJECT_PATH has it in the default
    /// build's target dir, in this build's.
    fn object(&self) -> PathBuf {
        let inside = Path::new(agent_common::OBJECT_PATH)
            .strip_prefix(EBPF.target_dir)
            .expect("OBJECT_PATH is inside the kernel programs' target dir");
        workspace_root().join(self.target_dir).join(inside)
    }
}

/// The kernel programs the agent embeds.
const EBPF: EbpfBuild = EbpfBuild {
    target_dir: "target/ebpf",
    variant: false,
};

/// The next agent's kernel programs: the variant, beside the default's so
/// that building one does not undo the other.
const EBPF_NEXT: EbpfBuild = EbpfBuild {
    target_dir: "target/ebpf-next",
    variant: true,
};

pub fn build_ebpf() -> Result<PathBuf> {
    build_kernel_programs(&EBPF)
}

fn build_kernel_programs(build: &EbpfBuild) -> Result<PathBuf> {
    let linker_dir = toolchain::ensure_bpf_toolchain()?;
    if build.variant {
        step(&format!(
            "building the variant kernel programs (agent-ebpf, STOPGUARD_EBPF_VARIANT set) in {}",
            build.target_dir
        ));
    } else {
        step("building the kernel programs (agent-ebpf)");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![linker_dir];
    dirs.extend(std::env::split_paths(&path));
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    let mut cargo = Command::new("cargo");
    // The variant only when asked for, whatever the caller's environment says.
    if build.variant {
        cargo.env("STOPGUARD_EBPF_VARIANT", "1");
    } else {
        cargo.env_remove("STOPGUARD_EBPF_VARIANT");
    }
    let status = cargo
        .current_dir(workspace_root())
        .args([
            "build",
            "--package",
            "agent-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            // Its own target dir: host build dependencies with other features
            // would otherwise rebuild the agent's every time, and back.
            "--target-dir",
            build.target_dir,
        ])
        .env("PATH", std::env::join_paths(dirs)?)
        // build-std is unstable; the stable toolchain allows it for this crate only.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTFLAGS")
        .status()
        .context("running cargo build for agent-ebpf")?;
    if !status.success() {
        bail!("building agent-ebpf failed ({status})");
    }
    let object = build.object();
    if !object.exists() {
        bail!("the build succeeded but {} is missing", object.display());
    }
    Ok(object)
}

pub fn build_agent() -> Result<PathBuf> {
    step("building the agent (release)");
    cargo(&["build", "--release", "--package", "stopguard"])?;
    Ok(target_dir().join("release/stopguard"))
}

/// Cargo's target dir for the workspace: $CARGO_TARGET_DIR when set (CI
/// keeps it in the cache, outside the checkout, so a fresh clone compiles
/// only what changed), else target/.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Where the next agent is built, apart from target/release: each build
/// embeds its own object, so sharing a target dir would rebuild the agent
/// whenever the other one was built last. It is kept in the cache, outside
/// the checkout, so that a fresh clone compiles only the agent itself; one
/// per checkout, since cargo tells sources apart by their paths' times. A
/// target dir set for the workspace ($CARGO_TARGET_DIR) holds it instead:
/// whoever set it shares the builds between checkouts.
fn next_build_dir() -> PathBuf {
    if std::env::var_os("CARGO_TARGET_DIR").is_some() {
        return target_dir().join("next-build");
    }
    let root = workspace_root();
    // FNV-1a: stable across toolchains, unlike std's hasher.
    let hash = root
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
        });
    toolchain::cache_root()
        .join("next-build")
        .join(format!("{:012x}", hash >> 16))
}

/// Where the next agent's binary is left.
const NEXT_BIN: &str = "target/next/stopguard";

/// Builds the next agent (see `Task::BuildNext`); returns its binary's path.
pub fn build_next() -> Result<PathBuf> {
    let object = build_kernel_programs(&EBPF_NEXT)?;
    let build_dir = next_build_dir();
    step(&format!(
        "building the next agent (release, embedding {}) in {}",
        object.display(),
        build_dir.display()
    ));
    toolchain::run(
        Command::new("cargo")
            .current_dir(workspace_root())
            .args(["build", "--release", "--package", "stopguard"])
            .arg("--target-dir")
            .arg(&build_dir)
            .env("STOPGUARD_EBPF_OBJECT_PATH", &object),
        "cargo build of the next agent",
    )?;
    let built = build_dir.join("release/stopguard");
    let next = workspace_root().join(NEXT_BIN);
    let dir = next.parent().expect("a file in a directory");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Copied beside it, then renamed over it: a running copy of the previous
    // binary keeps running, and no one sees half a file.
    let partial = next.with_extension("partial");
    fs::copy(&built, &partial)
        .with_context(|| format!("copying {} to {}", built.display(), partial.display()))?;
    fs::rename(&partial, &next)
        .with_context(|| format!("renaming {} to {}", partial.display(), next.display()))?;
    Ok(next)
}

fn test(args: &[String]) -> Result<()> {
    if is_root() {
        toolchain::ensure_test_packages()?;
    } else {
        step("not root: Debian packages for the end-to-end tests are not installed");
    }
    build_ebpf()?;
    let agent = build_agent()?;
    // The next agent: an upgrade from this one to a new kernel object.
    let next = build_next()?;
    step("running every test (unit and end-to-end)");
    let mut child = Command::new("cargo")
        .current_dir(workspace_root())
        .args(["test", "--workspace", "--exclude", "agent-ebpf"])
        .args(args)
        .env("STOPGUARD_BIN", &agent)
        .env("STOPGUARD_NEXT_BIN", &next)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    // Pass the output through, adding up every test binary's result line.
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            passed += count_before(result, " passed");
            failed += count_before(result, " failed");
            ignored += count_before(result, " ignored");
        }
    }
    let status = child.wait()?;
    println!("all tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("tests failed ({status})");
    }
    Ok(())
}

/// The number just before `label` in a cargo test result line.
fn count_before(result: &str, label: &str) -> u64 {
    result
        .find(label)
        .and_then(|end| result[..end].rsplit([' ', ';', '.']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

pub fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new("cargo")
        .current_dir(workspace_root())
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// `program` run as root: directly when we are root, through sudo otherwise.
pub fn as_root(program: &Path) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("--preserve-env=RUST_LOG,STOPGUARD_SOCKET")
            .arg(program);
        cmd
    }
}

pub fn step(what: &str) {
    eprintln!("==> {what}");
}
