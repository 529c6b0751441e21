//! `cargo xtask lab`: stopguard's package proven in Debian guests with
//! systemd as PID 1, on the kernels database hosts run.
//!
//! - `image`: guest images, built once per recipe, cached outside the checkout.
//! - `guest`: one boot of a guest, with a payload disk and its serial output.
//! - `fleet`: several guests on one etcd, `cargo xtask lab fleet`.
//!
//! The guest side (what runs inside, as root, with bash) is in tests/lab/.

mod fleet;
mod guest;
mod image;

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use self::guest::{Guest, Line};
use crate::{build_next, is_root, step, toolchain, workspace_root};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<LabCommand>,
    /// Only the rows on this kernel (repeatable; default: every row).
    #[arg(long, value_name = "VERSION")]
    kernel: Vec<Kernel>,
    /// Only the rows of this userland (repeatable; default: every row).
    #[arg(long, value_name = "RELEASE")]
    userland: Vec<Userland>,
}

#[derive(clap::Subcommand)]
enum LabCommand {
    /// Boot one guest with the current .deb installed and stopguard.service
    /// running on its packaged config, run SCRIPT in it as root with bash,
    /// print its output and exit with its status.
    ///
    /// Example: cargo xtask lab run --kernel 5.10 --script try.sh
    Run {
        #[command(flatten)]
        guest: GuestChoice,
        #[arg(long, value_name = "FILE")]
        script: PathBuf,
    },
    /// Boot N guests, sg1 to sgN, each with the current .deb installed and
    /// `[fleet]` in its packaged config (cluster "lab"), all on one etcd on
    /// this machine's loopback; run SCRIPT on sg1 as root with bash, print
    /// its output and exit with its status.
    ///
    /// In the guests, `lab-on HOST CMD...` runs CMD (its words joined by
    /// spaces and read by bash, as ssh does) as root on guest HOST and
    /// exits with its status, its output on stdout and stderr;
    /// `lab-partition HOST on|off` cuts or restores HOST's path to etcd.
    ///
    /// Example: cargo xtask lab fleet --hosts 3 --script tests/lab/fleet.sh
    Fleet {
        /// How many guests (1 to 9), named sg1 to sgN.
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        #[command(flatten)]
        guest: GuestChoice,
        /// The bash script run as root on sg1.
        #[arg(long, value_name = "FILE")]
        script: PathBuf,
    },
    /// Build the guest images (and nothing else) when the cache lacks them.
    Images,
}

/// The guest a single run boots: bookworm on its own 6.1 unless told.
#[derive(clap::Args)]
struct GuestChoice {
    #[arg(long, value_name = "VERSION", default_value = "6.1")]
    kernel: Kernel,
    #[arg(long, value_name = "RELEASE", default_value = "bookworm")]
    userland: Userland,
}

/// A kernel the lab boots, by the Debian release that ships it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Kernel {
    #[value(name = "5.10")]
    V5_10,
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
}

impl Kernel {
    pub fn as_str(self) -> &'static str {
        match self {
            Kernel::V5_10 => "5.10",
            Kernel::V6_1 => "6.1",
            Kernel::V6_12 => "6.12",
        }
    }

    /// The Debian release whose cloud kernel this is.
    pub fn suite(self) -> &'static str {
        match self {
            Kernel::V5_10 => "bullseye",
            Kernel::V6_1 => "bookworm",
            Kernel::V6_12 => "trixie",
        }
    }
}

/// A guest's Debian userland (its systemd, its databases).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Userland {
    /// Debian 12: systemd 252, PostgreSQL 15.
    Bookworm,
    /// Debian 13: systemd 257 (services exec'd through systemd-executor),
    /// PostgreSQL 17.
    Trixie,
}

impl Userland {
    pub fn as_str(self) -> &'static str {
        match self {
            Userland::Bookworm => "bookworm",
            Userland::Trixie => "trixie",
        }
    }

    pub fn suite(self) -> &'static str {
        self.as_str()
    }

    /// The kernels its image carries: bookworm's own, and the older and newer
    /// ones database hosts run beside its userland.
    pub fn kernels(self) -> &'static [Kernel] {
        match self {
            Userland::Bookworm => &[Kernel::V5_10, Kernel::V6_1, Kernel::V6_12],
            Userland::Trixie => &[Kernel::V6_12],
        }
    }
}

/// The matrix's columns, in the order the guest runs them, and the rows
/// each runs on.
const SCENARIOS: &[(&str, Reach)] = &[
    ("install", Reach::EveryKernel),
    ("trace", Reach::EveryKernel),
    ("freeze", Reach::EveryKernel),
    ("restart", Reach::EveryKernel),
    ("postgres", Reach::OwnKernel),
    ("systemd-monit", Reach::OwnKernel),
    ("systemd-stop-frozen", Reach::OwnKernel),
    ("systemd-redis", Reach::OwnKernel),
    ("systemd-clusters", Reach::OwnKernel),
    ("systemd-explain", Reach::OwnKernel),
    ("upgrade", Reach::EveryKernel),
    ("reboot", Reach::EveryKernel),
];

/// Which rows a scenario runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Kernel-sensitive (probes, verifier, freezer, pins): every kernel.
    EveryKernel,
    /// Userland (databases, systemd, supervisors): only on the kernel the
    /// userland's own release ships, once per userland.
    OwnKernel,
}

/// The scenarios of a row, in order.
fn scenarios(userland: Userland, kernel: Kernel) -> Vec<&'static str> {
    SCENARIOS
        .iter()
        .filter(|(_, reach)| *reach == Reach::EveryKernel || kernel.suite() == userland.suite())
        .map(|(name, _)| *name)
        .collect()
}

/// A boot has this long to come up, run its payload and power off; a
/// matrix boot runs every scenario under software emulation.
const BOOT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

pub fn run(args: &Args) -> Result<()> {
    if !is_root() {
        bail!("the lab builds guest images in a chroot and boots them: run it as root");
    }
    toolchain::ensure_lab_packages()?;
    match &args.command {
        Some(LabCommand::Images) => {
            for userland in [Userland::Bookworm, Userland::Trixie] {
                image::ensure(userland)?;
            }
            Ok(())
        }
        Some(LabCommand::Run { guest, script }) => run_script(guest.kernel, guest.userland, script),
        Some(LabCommand::Fleet {
            hosts,
            guest,
            script,
        }) => fleet::run(*hosts, guest.kernel, guest.userland, script),
        None => matrix(args),
    }
}

/// The files every payload carries: the guest-side library and scripts.
fn payload_dir(name: &str) -> Result<PathBuf> {
    let dir = workspace_root().join("target/lab/payloads").join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    let scripts = workspace_root().join("tests/lab");
    for entry in fs::read_dir(&scripts).with_context(|| format!("reading {}", scripts.display()))? {
        let entry = entry?;
        fs::copy(entry.path(), dir.join(entry.file_name()))?;
    }
    // The host suite's fixtures, the same in a guest.
    for fixture in ["workload.sh", "sgdaemon"] {
        fs::copy(
            workspace_root().join("tests/fixtures").join(fixture),
            dir.join(fixture),
        )?;
    }
    Ok(dir)
}

/// Builds the package (`cargo xtask deb`, whose last line is its path), of
/// `binary` when given, else of the release build.
fn package(version: Option<&str>, binary: Option<&Path>) -> Result<PathBuf> {
    let mut deb = std::process::Command::new(std::env::current_exe()?);
    deb.arg("deb");
    if let Some(version) = version {
        deb.args(["--version", version]);
    }
    if let Some(binary) = binary {
        deb.arg("--binary").arg(binary);
    }
    let out = toolchain::output(deb.stderr(std::process::Stdio::inherit()))?;
    let path = PathBuf::from(out.lines().last().unwrap_or_default());
    if !path.is_file() {
        bail!("`cargo xtask deb` did not end with the package's path: {out}");
    }
    Ok(path)
}

/// The upgrade of package `first`: the next build, whose kernel object
/// differs from the first's, so that the new version loads new programs.
fn upgrade_package(first: &Path) -> Result<PathBuf> {
    let version = deb_version(first)?;
    let next = build_next()?;
    package(Some(&format!("{version}+lab1")), Some(&next))
}

/// `cargo xtask lab run`: one guest, the package (and its upgrade, as
/// /lab/stopguard-2.deb), the caller's script.
fn run_script(kernel: Kernel, userland: Userland, script: &Path) -> Result<()> {
    let text = fs::read(script).with_context(|| format!("reading {}", script.display()))?;
    let deb = package(None, None)?;
    let upgrade = upgrade_package(&deb)?;
    let image = image::ensure(userland)?;
    let name = format!("run-{}-{}", userland.as_str(), kernel.as_str());
    let payload = payload_dir(&name)?;
    fs::copy(&deb, payload.join("stopguard.deb"))?;
    fs::copy(&upgrade, payload.join("stopguard-2.deb"))?;
    fs::write(payload.join("script.sh"), text)?;
    fs::write(
        payload.join("boot.sh"),
        "set -u\n\
         bash /lab/install.sh /lab/stopguard.deb || exit $?\n\
         echo 'stopguard-lab: script'\n\
         exec bash /lab/script.sh\n",
    )?;
    let guest = Guest::new(
        &image,
        kernel,
        &workspace_root().join("target/lab").join(&name),
    )?;
    step(&format!(
        "booting the {} guest on {} with the package installed, then {}",
        userland.as_str(),
        kernel.as_str(),
        script.display()
    ));
    let mut in_script = false;
    let boot = guest.boot(&payload, BOOT_TIMEOUT, &mut |line| match line {
        Line::Payload("stopguard-lab: script") => in_script = true,
        Line::Payload(text) if in_script => println!("{text}"),
        Line::Payload(text) => eprintln!("    {text}"),
        Line::Console(_) => {}
    })?;
    std::io::stdout().flush()?;
    match boot.exit {
        Some(code) => {
            step(&format!(
                "{} exited {code} (guest up and down in {:.0} s)",
                script.display(),
                boot.secs
            ));
            std::process::exit(code)
        }
        None => bail!(
            "the guest did not report the script's end (serial log: {})",
            boot.log.display()
        ),
    }
}

/// One row of the matrix: a userland on a kernel.
struct Row {
    userland: Userland,
    kernel: Kernel,
    /// scenario -> (passed, milliseconds)
    cells: BTreeMap<String, (bool, u64)>,
    exposure: Option<String>,
    boot_secs: Vec<f64>,
    failures: Vec<String>,
}

/// `cargo xtask lab`: every row, every scenario; the matrix printed; fails
/// when any cell does.
fn matrix(args: &Args) -> Result<()> {
    let started = Instant::now();
    let rows: Vec<(Userland, Kernel)> = [Userland::Bookworm, Userland::Trixie]
        .into_iter()
        .flat_map(|u| u.kernels().iter().map(move |k| (u, *k)))
        .filter(|(u, k)| {
            (args.userland.is_empty() || args.userland.contains(u))
                && (args.kernel.is_empty() || args.kernel.contains(k))
        })
        .collect();
    if rows.is_empty() {
        bail!("no guest matches: the lab runs bookworm on 5.10, 6.1 and 6.12, and trixie on 6.12");
    }
    let first = package(None, None)?;
    let upgrade = upgrade_package(&first)?;
    let mut done = Vec::new();
    for (userland, kernel) in rows {
        let image = image::ensure(userland)?;
        done.push(row(&image, kernel, &first, &upgrade)?);
    }
    print_matrix(&done);
    println!(
        "lab: {} guests in {:.1} min",
        done.len(),
        started.elapsed().as_secs_f64() / 60.0
    );
    let failed: Vec<&Row> = done
        .iter()
        // A failure reported by a scenario not in the matrix fails too.
        .filter(|r| {
            !r.failures.is_empty()
                || scenarios(r.userland, r.kernel)
                    .iter()
                    .any(|s| !r.cells.get(*s).is_some_and(|c| c.0))
        })
        .collect();
    if !failed.is_empty() {
        for row in &failed {
            for failure in &row.failures {
                eprintln!(
                    "{} on {}: {failure}",
                    row.userland.as_str(),
                    row.kernel.as_str()
                );
            }
        }
        bail!("{} of {} lab rows failed", failed.len(), done.len());
    }
    Ok(())
}

/// Boots one guest twice: every scenario, then (after its clean power-off)
/// the checks after a reboot.
fn row(image: &image::Image, kernel: Kernel, first: &Path, upgrade: &Path) -> Result<Row> {
    let userland = image.userland;
    let name = format!("{}-{}", userland.as_str(), kernel.as_str());
    step(&format!(
        "lab: {} userland on kernel {}",
        userland.as_str(),
        kernel.as_str()
    ));
    let guest = Guest::new(
        image,
        kernel,
        &workspace_root().join("target/lab").join(&name),
    )?;
    let mut row = Row {
        userland,
        kernel,
        cells: BTreeMap::new(),
        exposure: None,
        boot_secs: Vec::new(),
        failures: Vec::new(),
    };
    for (boot_no, script) in ["first-boot.sh", "after-reboot.sh"].iter().enumerate() {
        let payload = payload_dir(&format!("{name}-{}", boot_no + 1))?;
        fs::copy(first, payload.join("stopguard-1.deb"))?;
        fs::copy(upgrade, payload.join("stopguard-2.deb"))?;
        fs::write(
            payload.join("boot.sh"),
            format!("exec bash /lab/{script}\n"),
        )?;
        fs::write(
            payload.join("scenarios"),
            scenarios(userland, kernel).join("\n") + "\n",
        )?;
        let mut failing = Vec::new();
        let mut on_line = |line: Line| match line {
            Line::Payload(text) => {
                eprintln!("    {text}");
                if let Some(result) = text.strip_prefix("LAB-RESULT ") {
                    let mut words = result.split_whitespace();
                    if let (Some(name), Some(status), Some(ms)) =
                        (words.next(), words.next(), words.next())
                    {
                        row.cells.insert(
                            name.to_string(),
                            (status == "pass", ms.parse().unwrap_or(0)),
                        );
                        if status != "pass" {
                            failing.push(name.to_string());
                        }
                    }
                } else if let Some(score) = text.strip_prefix("LAB-EXPOSURE ") {
                    row.exposure = Some(score.trim().to_string());
                }
            }
            Line::Console(text) => eprintln!("    | {text}"),
        };
        let mut boot = guest.boot(&payload, BOOT_TIMEOUT, &mut on_line)?;
        if boot.died_booting {
            eprintln!("    booting the guest again: its kernel died before anything ran");
            boot = guest.boot(&payload, BOOT_TIMEOUT, &mut on_line)?;
        }
        row.boot_secs.push(boot.secs);
        for name in failing {
            row.failures.push(format!(
                "scenario {name} failed (serial log: {})",
                boot.log.display()
            ));
        }
        if boot.exit.is_none() {
            row.failures.push(format!(
                "boot {} did not finish (serial log: {})",
                boot_no + 1,
                boot.log.display()
            ));
        }
    }
    Ok(row)
}

fn print_matrix(rows: &[Row]) {
    println!();
    print!("{:<22}", "userland / kernel");
    for (scenario, _) in SCENARIOS {
        print!(" {scenario:>19}");
    }
    println!("  {:>9}  {:>12}", "exposure", "boots (s)");
    for row in rows {
        print!(
            "{:<22}",
            format!("{} / {}", row.userland.as_str(), row.kernel.as_str())
        );
        let expected = scenarios(row.userland, row.kernel);
        for (scenario, _) in SCENARIOS {
            let cell = match row.cells.get(*scenario) {
                Some((true, ms)) => format!("pass {:.1}s", *ms as f64 / 1000.0),
                Some((false, ms)) => format!("FAIL {:.1}s", *ms as f64 / 1000.0),
                None if expected.contains(scenario) => "not run".to_string(),
                None => "-".to_string(),
            };
            print!(" {cell:>19}");
        }
        let boots: Vec<String> = row.boot_secs.iter().map(|s| format!("{s:.0}")).collect();
        println!(
            "  {:>9}  {:>12}",
            row.exposure.as_deref().unwrap_or("?"),
            boots.join(" + ")
        );
    }
    println!();
}

/// The Version field of a .deb.
fn deb_version(deb: &Path) -> Result<String> {
    toolchain::output(
        std::process::Command::new("dpkg-deb")
            .args(["--field"])
            .arg(deb)
            .arg("Version"),
    )
}
