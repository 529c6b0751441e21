//! `cargo xtask soak`: the randomized end-to-end soak (tests/tests/soak/)
//! on the release agent, as root.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{build_agent, build_ebpf, is_root, step, toolchain, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// How many trials.
    #[arg(long, default_value_t = 10)]
    trials: u64,
    /// The first trial's seed (trial i runs on seed + i); default: the time.
    #[arg(long)]
    seed: Option<u64>,
}

pub fn run(args: &Args) -> Result<()> {
    if !is_root() {
        bail!("the soak loads eBPF programs and runs supervisors: run it as root");
    }
    toolchain::ensure_test_packages()?;
    build_ebpf()?;
    let agent = build_agent()?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    step(&format!("soak: {} trials from seed {seed}", args.trials));
    let status = Command::new("cargo")
        .current_dir(workspace_root())
        .args(["test", "--package", "stopguard-tests", "--test", "soak"])
        .args(["--", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("STOPGUARD_BIN", &agent)
        .env("STOPGUARD_SOAK_TRIALS", args.trials.to_string())
        .env("STOPGUARD_SOAK_SEED", seed.to_string())
        .status()
        .context("running cargo test --test soak")?;
    if !status.success() {
        bail!("the soak failed ({status}): replay a failing trial with the command it printed");
    }
    Ok(())
}
