//! Booting a guest: qemu on a copy-on-write overlay of the image, a payload
//! disk with what to run, and the serial line read for the runner's output.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{Kernel, image::Image};
use crate::{step, toolchain::run};

const UP: &str = "stopguard-lab: up ";
const EXIT: &str = "stopguard-lab: exit ";

/// No screen or monitor: the serial line on stdio, and a reboot ends qemu.
const HEADLESS: [&str; 7] = [
    "-display",
    "none",
    "-serial",
    "stdio",
    "-monitor",
    "none",
    "-no-reboot",
];

/// A guest's disk: changes land in an overlay, the image stays as built, and
/// a second boot of the same guest sees what the first left (a reboot).
pub struct Guest<'a> {
    image: &'a Image,
    kernel: Kernel,
    work: PathBuf,
    cpus: u32,
    memory_mib: u32,
    /// qemu arguments for its network; none by default (no network).
    net: Vec<String>,
}

/// One boot's outcome.
pub struct Boot {
    /// The payload's exit status; None when the guest never reported one
    /// (it did not come up, crashed or ran out of time).
    pub exit: Option<i32>,
    pub secs: f64,
    /// Everything the serial line carried, for a failure's reader.
    pub log: PathBuf,
    /// The kernel panicked before anything of userspace ran (a guest
    /// kernel's own failure under emulation): nothing was tested, and the
    /// same boot may be tried again.
    pub died_booting: bool,
}

/// What a line of the serial output is.
pub enum Line<'a> {
    /// The runner's own output: the payload's.
    Payload(&'a str),
    /// The kernel's and systemd's, before and after.
    Console(&'a str),
}

impl<'a> Guest<'a> {
    /// A fresh guest of `image` booting `kernel`, its files under `work`.
    pub fn new(image: &'a Image, kernel: Kernel, work: &Path) -> Result<Guest<'a>> {
        image.boot_files(kernel)?;
        if work.exists() {
            fs::remove_dir_all(work).with_context(|| format!("removing {}", work.display()))?;
        }
        fs::create_dir_all(work)?;
        let overlay = work.join("overlay.qcow2");
        run(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(image.rootfs())
                .arg(&overlay),
            "qemu-img create (the guest's overlay)",
        )?;
        Ok(Guest {
            image,
            kernel,
            work: work.to_path_buf(),
            cpus: 2,
            memory_mib: 2048,
            net: Vec::new(),
        })
    }

    /// The same guest with `cpus` processors and `memory_mib` of memory.
    pub fn sized(mut self, cpus: u32, memory_mib: u32) -> Guest<'a> {
        self.cpus = cpus;
        self.memory_mib = memory_mib;
        self
    }

    /// The same guest with a network card: qemu's `-netdev` options for it.
    pub fn with_network(mut self, netdev: String) -> Guest<'a> {
        self.net = vec![
            "-netdev".into(),
            format!("{netdev},id=n0"),
            "-device".into(),
            "virtio-net-pci,netdev=n0".into(),
        ];
        self
    }

    /// Boots the guest with `payload` (a directory whose `boot.sh` the
    /// runner executes) as its second disk; each serial line goes to `on_line`.
    pub fn boot(
        &self,
        payload: &Path,
        timeout: Duration,
        on_line: &mut dyn FnMut(Line),
    ) -> Result<Boot> {
        self.boot_until(payload, timeout, None, on_line)
    }

    /// As `boot`, and the guest is stopped as soon as `stop` is set.
    pub fn boot_until(
        &self,
        payload: &Path,
        timeout: Duration,
        stop: Option<&AtomicBool>,
        on_line: &mut dyn FnMut(Line),
    ) -> Result<Boot> {
        let (kernel, initrd) = self.image.boot_files(self.kernel)?;
        let disk = self.work.join("payload.img");
        let _ = fs::remove_file(&disk);
        run(
            Command::new("mke2fs")
                .args(["-q", "-t", "ext4", "-d"])
                .arg(payload)
                .arg(&disk)
                .arg("512M"),
            "mke2fs (the payload disk)",
        )?;
        let boots = fs::read_dir(&self.work)?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("serial-"))
            })
            .count();
        let log_path = self.work.join(format!("serial-{}.log", boots + 1));
        let mut log = fs::File::create(&log_path)?;
        let started = Instant::now();
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(accel_args())
            .arg("-m")
            .arg(self.memory_mib.to_string())
            .arg("-smp")
            .arg(self.cpus.to_string())
            .args(&self.net)
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=qcow2",
                self.work.join("overlay.qcow2").display()
            ))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=raw", disk.display()))
            .args(["-append", "root=/dev/vda rw console=ttyS0 quiet"])
            .args(HEADLESS)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
        let lines = serial_lines(child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let mut exit = None;
        let mut in_payload = false;
        let mut userspace = false;
        let mut died_booting = false;
        let deadline = started + timeout;
        loop {
            if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                writeln!(log, "(the host stopped the guest: its work was done)")?;
                let _ = child.kill();
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left.min(Duration::from_millis(500))) {
                Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => continue,
                Ok(line) => {
                    writeln!(log, "{line}")?;
                    let line = plain(&line);
                    let line = line.trim_end_matches('\r');
                    if line.starts_with(UP) {
                        in_payload = true;
                        on_line(Line::Console(line));
                    } else if let Some(code) = line.strip_prefix(EXIT) {
                        in_payload = false;
                        exit = code.trim().parse().ok();
                        on_line(Line::Console(line));
                    } else if in_payload {
                        on_line(Line::Payload(line));
                    } else {
                        on_line(Line::Console(line));
                        if !line.trim().is_empty() && !is_kernel_line(line) {
                            userspace = true;
                        } else if !userspace && line.contains("Kernel panic - not syncing") {
                            on_line(Line::Console(
                                "the guest's kernel died before userspace started: stopped",
                            ));
                            let _ = child.kill();
                            died_booting = true;
                            break;
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    writeln!(log, "(the host stopped the guest after {timeout:?})")?;
                    on_line(Line::Console(&format!(
                        "the guest ran out of time ({} s): stopped",
                        timeout.as_secs()
                    )));
                    let _ = child.kill();
                    exit = None;
                    break;
                }
            }
        }
        let _ = child.wait();
        Ok(Boot {
            exit,
            secs: started.elapsed().as_secs_f64(),
            log: log_path,
            died_booting,
        })
    }
}

/// A kernel message on the console (`[    4.023328] ...`), not a line of
/// systemd's or the runner's.
fn is_kernel_line(line: &str) -> bool {
    line.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .is_some_and(|(stamp, _)| {
            let stamp = stamp.trim();
            !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.')
        })
}

/// `line` without terminal control sequences: systemd 257 resets the
/// console (`ESC [ ! p`, `ESC ] 104 BEL`...) before a service writes to it.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters and intermediates up to a final byte @..~
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL or ESC \
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// qemu's stdout and stderr as one stream of lines.
fn serial_lines(
    stdout: std::process::ChildStdout,
    stderr: std::process::ChildStderr,
) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let err_tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            if tx
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if err_tx.send(format!("qemu: {line}")).is_err() {
                break;
            }
        }
    });
    rx
}

/// KVM when this machine can run a guest with it, software emulation (TCG)
/// otherwise. Nested virtualization may offer /dev/kvm and still hang a
/// guest right after its kernel decompresses, so the answer comes from
/// booting a kernel once, and is kept.
fn accel_args() -> Vec<&'static str> {
    static ACCEL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let kvm = *ACCEL.get_or_init(kvm_works);
    if kvm {
        vec!["-accel", "kvm", "-cpu", "max"]
    } else {
        vec!["-accel", "tcg", "-cpu", "max"]
    }
}

fn kvm_works() -> bool {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        step("lab: no usable /dev/kvm: guests run under software emulation (TCG)");
        return false;
    }
    let verdict = super::image::cache_dir().join(format!("kvm-{}", host_release()));
    if let Ok(text) = fs::read_to_string(&verdict) {
        return text.trim() == "works";
    }
    let works = probe_kvm();
    let _ = fs::create_dir_all(verdict.parent().unwrap());
    let _ = fs::write(&verdict, if works { "works\n" } else { "hangs\n" });
    step(if works {
        "lab: KVM boots a guest here: using it"
    } else {
        "lab: a KVM guest does not come up here (nested virtualization?): using software emulation (TCG)"
    });
    works
}

/// Boots any kernel the lab has under KVM and waits a few seconds for its
/// first console line.
fn probe_kvm() -> bool {
    let Some(kernel) = fs::read_dir(super::image::cache_dir())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| fs::read_dir(e.path().join("boot")).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
    else {
        return false;
    };
    let Ok(mut child) = Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-cpu", "max", "-m", "256", "-kernel"])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .args(HEADLESS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            if String::from_utf8_lossy(&line).contains("Linux version") {
                let _ = tx.send(());
                return;
            }
        }
    });
    let up = rx.recv_timeout(Duration::from_secs(15)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    up
}

fn host_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::{is_kernel_line, plain};

    #[test]
    fn kernel_messages_are_told_from_userspace_lines() {
        assert!(is_kernel_line(
            "[    4.028790] Kernel panic - not syncing: Fatal exception in interrupt"
        ));
        assert!(is_kernel_line("[12345.5] x"));
        assert!(!is_kernel_line("[  OK  ] Started stopguard.service"));
        assert!(!is_kernel_line("stopguard-lab: up 6.12.117"));
        assert!(!is_kernel_line("[] nothing"));
    }

    #[test]
    fn plain_drops_the_console_reset_of_systemd_257() {
        assert_eq!(
            plain("\x1b[!p\x1b]104\x07\x1b[?7hstopguard-lab: up 6.12.117"),
            "stopguard-lab: up 6.12.117"
        );
        assert_eq!(plain("\x1b[0;31mFAIL\x1b[0m: x"), "FAIL: x");
        assert_eq!(plain("no escapes"), "no escapes");
    }
}
