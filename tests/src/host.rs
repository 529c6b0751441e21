//! The host a test runs on: the root gate, the binary under test, its
//! fixtures and a shell.

use std::{
    path::PathBuf,
    process::Command,
    sync::{Mutex, MutexGuard},
};

/// Tests that load probes take this lock, so that one test's event storm
/// cannot overflow another test's ring buffer.
static PROBES: Mutex<()> = Mutex::new(());

/// Returns the probe lock when the test can run (root), or None after
/// printing why it is skipped. Under CI a test that cannot run fails.
pub fn root_test(name: &str) -> Option<MutexGuard<'static, ()>> {
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var_os("CI").is_some() {
            panic!(
                "{name}: CI is set but this test is not running as root; it loads eBPF programs"
            );
        }
        eprintln!("skipped {name}: needs root to load eBPF programs");
        return None;
    }
    let lock = PROBES.lock().unwrap_or_else(|e| e.into_inner());
    // Probes an earlier test's agent left pinned are not this test's.
    crate::agent::unpin();
    Some(lock)
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The stopguard binary under test: $STOPGUARD_BIN, else the release build.
pub fn stopguard_bin() -> PathBuf {
    let path = std::env::var_os("STOPGUARD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/stopguard"));
    assert!(
        path.exists(),
        "{} does not exist: run the tests with `cargo xtask test`, which builds it",
        path.display()
    );
    path
}

/// The next build of the agent (`cargo xtask build-next`), whose kernel
/// object differs from the one `stopguard_bin` embeds: $STOPGUARD_NEXT_BIN,
/// else target/next/stopguard when it has been built; None when neither.
pub fn stopguard_next_bin() -> Option<PathBuf> {
    match std::env::var_os("STOPGUARD_NEXT_BIN") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.exists(),
                "STOPGUARD_NEXT_BIN names {}, which does not exist",
                path.display()
            );
            Some(path)
        }
        None => Some(workspace_root().join("target/next/stopguard")).filter(|p| p.exists()),
    }
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Runs a bash script; returns its stdout, panicking with its stderr on failure.
pub fn bash(script: &str) -> String {
    let out = Command::new("/bin/bash")
        .arg("-c")
        .arg(script)
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .output()
        .expect("running bash");
    assert!(
        out.status.success(),
        "script failed ({}):\n{script}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A process the test stopped with SIGSTOP, continued when this drops, so
/// that a failing test leaves nothing stopped (a stopped agent would never
/// see the SIGTERM that ends it).
pub struct Stopped(u32);

impl Stopped {
    pub fn new(pid: u32) -> Stopped {
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// A loopback TCP port nothing listens on now, from below the kernel's
/// ephemeral range, so that no outgoing connection (a client of etcd, a
/// webhook) takes it between here and the server's bind; each call in this
/// process returns a different port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (first, span) = (10_000u32, low.saturating_sub(10_000).max(1000));
    let seed = std::process::id() * 211 % span;
    for _ in 0..span {
        let port = first + (seed + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port in {first}..{}", first + span)
}
