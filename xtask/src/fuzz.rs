//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/`, run one after the
//! other on the nightly toolchain, each from and into its corpus in the repo.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use crate::{step, toolchain, workspace_root};

/// A fuzz target: one parser of input the agent reads from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Target {
    /// The TOML configuration file.
    Config,
    /// A request line on the control socket.
    ControlRequest,
    /// A raw record from the kernel's ring buffer.
    RingRecord,
    /// The audit log, as `stopguard audit` reads it.
    AuditLine,
    /// What supervisors say: Patroni's config, `monit status`,
    /// `supervisorctl status`, status lines, command-line options.
    SupervisorText,
}

impl Target {
    fn name(self) -> String {
        self.to_possible_value()
            .expect("no target is skipped")
            .get_name()
            .to_string()
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// The target to fuzz; default: every one, in turn.
    #[arg(value_enum)]
    target: Option<Target>,
    /// How long to fuzz each target, in seconds.
    #[arg(long, default_value_t = 60)]
    secs: u64,
}

/// What one run did, read from libFuzzer's output.
#[derive(Default)]
struct Outcome {
    runs: Option<u64>,
    execs_per_sec: Option<u64>,
    artifact: Option<String>,
}

pub fn run(args: &Args) -> Result<()> {
    ensure_cargo_fuzz()?;
    // The agent crate embeds the kernel programs, so they must be built.
    crate::build_ebpf()?;
    let targets = match args.target {
        Some(target) => vec![target],
        None => Target::value_variants().to_vec(),
    };
    let mut crashed = Vec::new();
    for target in targets {
        let name = target.name();
        let outcome = fuzz(&name, args.secs)?;
        let (files, bytes) = corpus_size(&corpus(&name))?;
        let runs = outcome.runs.map_or("?".into(), |r| r.to_string());
        let rate = outcome.execs_per_sec.map_or("?".into(), |r| r.to_string());
        match &outcome.artifact {
            None => println!(
                "fuzz {name}: {runs} runs in {} s ({rate}/s), corpus {files} inputs ({} KiB), no crash",
                args.secs,
                bytes.div_ceil(1024)
            ),
            Some(artifact) => {
                println!(
                    "fuzz {name}: CRASH after {runs} runs; input in {artifact} (reproduce: cargo +nightly fuzz run {name} {artifact})"
                );
                crashed.push(format!("{name} ({artifact})"));
            }
        }
    }
    if !crashed.is_empty() {
        bail!("crashes found: {}", crashed.join(", "));
    }
    Ok(())
}

fn corpus(name: &str) -> PathBuf {
    workspace_root().join("fuzz/corpus").join(name)
}

/// Fuzzes `name` for `secs` seconds; libFuzzer's output goes to a log under
/// target/, with its progress lines passed through.
fn fuzz(name: &str, secs: u64) -> Result<Outcome> {
    let corpus = corpus(name);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let log_path = workspace_root().join(format!("fuzz/target/{name}.log"));
    fs::create_dir_all(log_path.parent().unwrap())?;
    let mut log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    step(&format!(
        "fuzzing {name} for {secs} s (libFuzzer's output: {})",
        log_path.display()
    ));
    let mut command = Command::new("cargo");
    // What `cargo run` set for xtask itself: build scripts that watch these
    // would otherwise rebuild when cargo fuzz is run by hand, and back.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|prefix| key.starts_with(prefix))
            || key == "CARGO_PRIMARY_PACKAGE"
        {
            command.env_remove(key.as_ref());
        }
    }
    let mut child = command
        .current_dir(workspace_root())
        .args(["+nightly", "fuzz", "run", name])
        .arg(&corpus)
        .args([
            "--",
            &format!("-max_total_time={secs}"),
            "-print_final_stats=1",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .context("running cargo +nightly fuzz run")?;
    let mut outcome = Outcome::default();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line?;
        writeln!(log, "{line}")?;
        // Compiler output and libFuzzer's periodic and final lines; not
        // every new coverage line or function, nor its dictionary.
        let coverage = line.starts_with('#')
            || line.trim_start().starts_with("NEW_FUNC")
            || line.contains("# Uses: ");
        if !coverage || line.contains("pulse") || line.contains("DONE") {
            eprintln!("{line}");
        }
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units: ") {
            outcome.runs = n.trim().parse().ok();
        }
        if let Some(n) = line.strip_prefix("stat::average_exec_per_sec: ") {
            outcome.execs_per_sec = n.trim().parse().ok();
        }
        if let Some((_, path)) = line.split_once("Test unit written to ") {
            outcome.artifact = Some(path.trim().to_string());
        }
    }
    let status = child.wait()?;
    if !status.success() && outcome.artifact.is_none() {
        bail!(
            "cargo fuzz run {name} failed ({status}) with no crash input; see {}",
            log_path.display()
        );
    }
    Ok(outcome)
}

/// Inputs in the corpus and their total size in bytes.
fn corpus_size(dir: &Path) -> Result<(usize, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            files += 1;
            bytes += meta.len();
        }
    }
    Ok((files, bytes))
}

/// Installs cargo-fuzz when `cargo fuzz` is missing, and the nightly
/// toolchain it builds with.
fn ensure_cargo_fuzz() -> Result<()> {
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_nightly {
        step("installing the nightly toolchain (cargo-fuzz builds with sanitizers)");
        toolchain::run(
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
            "rustup toolchain install nightly",
        )?;
    }
    let has_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_fuzz {
        return Ok(());
    }
    step("installing cargo-fuzz (about a minute, once)");
    toolchain::run(
        Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]),
        "installing cargo-fuzz",
    )
}
