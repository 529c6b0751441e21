//! The table the bench prints: each tracer's medians, side by side.

use super::*;

/// What one tracer's session measured over its two storms (1 and 2 workers).
pub(super) struct Run {
    pub(super) wall: [Duration; 2],
    /// The tracer's CPU time during the storms and the settling after them.
    pub(super) cpu: Duration,
    /// Per program label: runs and run time during the storms.
    pub(super) programs: BTreeMap<String, (u64, Duration)>,
    /// The storms' execs the tracer reported (stopguard: every exec it read,
    /// the host's own included, since its output goes to /dev/null).
    pub(super) captured: u64,
    /// Events the tracer read or wrote (records, lines).
    pub(super) events: u64,
    pub(super) lost: u64,
    /// stopguard's resident memory before the storms and its peak after.
    pub(super) rss: Option<(u64, u64)>,
}

#[derive(Default)]
pub(super) struct Results {
    /// Per worker count: the with/without wall ratio of each pair.
    pub(super) ratios: [Vec<f64>; 2],
    pub(super) base: [Vec<Duration>; 2],
    pub(super) cpu: Duration,
    pub(super) programs: BTreeMap<String, (u64, Duration)>,
    pub(super) captured: u64,
    pub(super) expected: u64,
    pub(super) events: u64,
    pub(super) lost: u64,
    pub(super) rss_idle: Vec<u64>,
    pub(super) rss_peak: u64,
}

impl Results {
    pub(super) fn add(&mut self, execs: u32, base: [Duration; 2], run: Run) {
        self.expected += 2 * u64::from(execs);
        for (w, base) in base.into_iter().enumerate() {
            self.ratios[w].push(run.wall[w].as_secs_f64() / base.as_secs_f64());
            self.base[w].push(base);
        }
        self.cpu += run.cpu;
        for (label, (count, time)) in run.programs {
            let slot = self.programs.entry(label).or_default();
            slot.0 += count;
            slot.1 += time;
        }
        self.captured += run.captured;
        self.events += run.events;
        self.lost += run.lost;
        if let Some((idle, peak)) = run.rss {
            self.rss_idle.push(idle);
            self.rss_peak = self.rss_peak.max(peak);
        }
    }

    /// The execs of all the storms run under this tracer.
    pub(super) fn storm_execs(&self) -> f64 {
        self.expected as f64
    }

    pub(super) fn kernel_ns(&self) -> Option<f64> {
        if self.programs.is_empty() {
            return None;
        }
        let total: Duration = self.programs.values().map(|(_, t)| *t).sum();
        Some(total.as_nanos() as f64 / self.storm_execs())
    }

    pub(super) fn cpu_per_exec_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.storm_execs()
    }
}

pub(super) fn median<T: Copy + PartialOrd>(values: &[T]) -> T {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

pub(super) fn print_table(
    execs: u32,
    rounds: u32,
    results: &[(Tracer, Results)],
    all: &[(Tracer, Option<String>)],
) {
    println!(
        "stopguard bench --peers: {execs} fork+exec+wait of /bin/true per storm, \
         1 and 2 workers, {rounds} rounds; {}",
        machine()
    );
    println!(
        "{:<30} {:>7} {:>7} {:>9} {:>9} {:>10} {:>15} {:>6} {:>11}",
        "", "wall", "ratio", "CPU µs/", "CPU µs/", "kernel ns/", "storm execs", "", "RSS MiB"
    );
    println!(
        "{:<30} {:>7} {:>7} {:>9} {:>9} {:>10} {:>15} {:>6} {:>11}",
        "tracer", "1 wkr", "2 wkr", "exec", "event", "exec", "seen/expected", "lost", "idle/peak"
    );
    let mut bases: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for (_, r) in results {
        for (all, these) in bases.iter_mut().zip(&r.base) {
            all.extend(these);
        }
    }
    if !bases[0].is_empty() {
        let us = |w: usize| median(&bases[w]).as_secs_f64() * 1e6 / f64::from(execs);
        println!(
            "{:<30} {:>7} {:>7}",
            "no tracer (µs per exec)",
            format!("{:.0}", us(0)),
            format!("{:.0}", us(1))
        );
    }
    for (tracer, r) in results {
        let per_event = if r.events == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", r.cpu.as_secs_f64() * 1e6 / r.events as f64)
        };
        let rss = if r.rss_idle.is_empty() {
            "-".to_string()
        } else {
            let mib = |kib: u64| kib as f64 / 1024.0;
            format!("{:.1}/{:.1}", mib(median(&r.rss_idle)), mib(r.rss_peak))
        };
        println!(
            "{:<30} {:>7.3} {:>7.3} {:>9.2} {:>9} {:>10} {:>15} {:>6} {:>11}",
            tracer.label(),
            median(&r.ratios[0]),
            median(&r.ratios[1]),
            r.cpu_per_exec_us(),
            per_event,
            r.kernel_ns()
                .map_or("-".to_string(), |ns| format!("{ns:.0}")),
            format!("{}/{}", r.captured, r.expected),
            r.lost,
            rss
        );
        for (label, (count, time)) in &r.programs {
            println!(
                "{:<30} {:>7} {:>7} {:>9} {:>9} {:>10} {:>15}",
                format!("  {label}"),
                "",
                "",
                "",
                "",
                format!("{:.0}/run", time.as_nanos() as f64 / (*count).max(1) as f64),
                format!("{:.2} runs/exec", *count as f64 / r.storm_execs())
            );
        }
    }
    for (tracer, why) in all {
        if let Some(why) = why {
            println!("{:<30} skipped: {why}", tracer.label());
        }
    }
    let find = |t: Tracer| results.iter().find(|(x, _)| *x == t).map(|(_, r)| r);
    if let Some(snoops) = find(Tracer::Snoops) {
        for tracer in [Tracer::StopguardRun, Tracer::StopguardTrace] {
            let Some(ours) = find(tracer) else { continue };
            let kernel = match (ours.kernel_ns(), snoops.kernel_ns()) {
                (Some(a), Some(b)) => format!("{:.2}x", a / b),
                _ => "-".to_string(),
            };
            println!(
                "{} vs execsnoop + exitsnoop: in-kernel ns per storm exec {kernel} (target <= 0.08x), \
                 CPU per storm exec {:.2}x (target <= 0.15x)",
                tracer.label(),
                ours.cpu_per_exec_us() / snoops.cpu_per_exec_us()
            );
        }
    }
}

/// "2 CPUs, AMD EPYC, kernel 6.1.0-18-amd64": what the numbers were taken on.
pub(super) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, {model}, kernel {}", kernel.trim())
}
