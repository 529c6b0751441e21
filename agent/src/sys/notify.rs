//! Telling systemd how the agent is doing, as sd_notify(3) does: one
//! datagram of `KEY=VALUE` lines to the socket in `$NOTIFY_SOCKET`. With
//! `Type=notify` the unit is started once the probes are attached and the
//! control socket serves, so services ordered after it start guarded.
//! Without `$NOTIFY_SOCKET` (not started by systemd) every call does nothing.

use std::{
    io,
    os::{
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram},
    },
    time::{Duration, Instant},
};

/// Variables systemd sets for the agent alone: children (a service's
/// `stop_command`) must not inherit them, or they could speak for the agent.
pub const ENV_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// One message to systemd.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice<'a> {
    /// Started, or done reloading; `status` is shown by `systemctl status`.
    Ready {
        status: &'a str,
    },
    /// A SIGHUP reload began, at this CLOCK_MONOTONIC time; `Ready` ends it.
    Reloading {
        monotonic_usec: u64,
    },
    Stopping,
    /// Still alive, for `WatchdogSec=`.
    Watchdog,
}

impl Notice<'_> {
    /// The datagram's text.
    pub fn encode(&self) -> String {
        match self {
            // A status is one line: a newline would start another variable.
            Notice::Ready { status } => format!("READY=1\nSTATUS={}", status.replace('\n', " ")),
            Notice::Reloading { monotonic_usec } => {
                format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
            }
            Notice::Stopping => "STOPPING=1".into(),
            Notice::Watchdog => "WATCHDOG=1".into(),
        }
    }
}

/// Where notices go, and how often systemd's watchdog wants to hear.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Half the watchdog timeout, as sd_watchdog_enabled(3) advises.
    watchdog_every: Option<Duration>,
    last_ping: Option<Instant>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` and `$WATCHDOG_USEC`/`$WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        let var = |name| std::env::var(name).ok();
        let watchdog = watchdog_every(
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        );
        match var("NOTIFY_SOCKET") {
            Some(socket) => Notifier::to(&socket, watchdog),
            None => Notifier::silent(),
        }
    }

    /// One that sends nothing.
    pub fn silent() -> Notifier {
        Notifier {
            target: None,
            watchdog_every: None,
            last_ping: None,
        }
    }

    /// Notices to `socket`: a path, or an abstract name after '@'. A socket
    /// it cannot use is logged and then ignored: the agent runs regardless.
    pub fn to(socket: &str, watchdog_every: Option<Duration>) -> Notifier {
        let target = address(socket).and_then(|addr| {
            let datagram = UnixDatagram::unbound()?;
            // systemd reads at once; never let a stuck manager stall the agent.
            datagram.set_write_timeout(Some(Duration::from_secs(1)))?;
            Ok((datagram, addr))
        });
        match target {
            Ok(target) => Notifier {
                target: Some(target),
                watchdog_every,
                last_ping: None,
            },
            Err(err) => {
                tracing::warn!(
                    "NOTIFY_SOCKET={socket}: {err}; systemd will not hear from the agent"
                );
                Notifier::silent()
            }
        }
    }

    pub fn send(&self, notice: Notice) {
        let Some((datagram, addr)) = &self.target else {
            return;
        };
        if let Err(err) = datagram.send_to_addr(notice.encode().as_bytes(), addr) {
            tracing::warn!("telling systemd {notice:?}: {err}");
        }
    }

    /// The start of a reload, stamped now.
    pub fn reloading(&self) {
        self.send(Notice::Reloading {
            monotonic_usec: monotonic_usec(),
        });
    }

    /// Tells the watchdog the agent is alive: at the first call, then once
    /// half its timeout has passed since the last ping. Called from the
    /// agent's loop, so a stuck loop goes quiet and systemd restarts it.
    pub fn keep_alive(&mut self) {
        let Some(every) = self.watchdog_every else {
            return;
        };
        if self.last_ping.is_none_or(|last| last.elapsed() >= every) {
            self.send(Notice::Watchdog);
            self.last_ping = Some(Instant::now());
        }
    }
}

/// A `$NOTIFY_SOCKET` value as a socket address.
fn address(socket: &str) -> io::Result<SocketAddr> {
    match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name),
        None if socket.starts_with('/') => SocketAddr::from_pathname(socket),
        None => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "not a path or an abstract socket name",
        )),
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, when it is
/// set and `$WATCHDOG_PID` (when set) names this process.
fn watchdog_every(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if pid.is_some_and(|pid| pid.parse() != Ok(me)) {
        return None;
    }
    let usec: u64 = usec?.parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares reloads on.
fn monotonic_usec() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always there");
    now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket standing in for systemd's, in a directory of its own.
    fn manager(name: &str) -> (UnixDatagram, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("stopguard-notify-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (socket, path)
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notice arrives");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notices_reach_a_path_socket_as_sd_notify_sends_them() {
        let (manager, path) = manager("path");
        let notifier = Notifier::to(path.to_str().unwrap(), None);
        notifier.send(Notice::Ready {
            status: "watching 6 services\n(postgres, …)",
        });
        assert_eq!(
            receive(&manager),
            "READY=1\nSTATUS=watching 6 services (postgres, …)"
        );
        notifier.reloading();
        let reloading = receive(&manager);
        let usec: u64 = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{reloading:?}"))
            .parse()
            .unwrap();
        assert!(usec.abs_diff(monotonic_usec()) < 5_000_000, "{usec}");
        notifier.send(Notice::Stopping);
        assert_eq!(receive(&manager), "STOPPING=1");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn notices_reach_an_abstract_socket() {
        let name = format!("stopguard-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(&name).unwrap();
        let manager = UnixDatagram::bind_addr(&addr).unwrap();
        manager
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Notifier::to(&format!("@{name}"), None).send(Notice::Stopping);
        assert_eq!(receive(&manager), "STOPPING=1");
    }

    #[test]
    fn without_a_usable_socket_nothing_is_sent_and_nothing_fails() {
        Notifier::silent().send(Notice::Stopping);
        Notifier::to("vsock:2:1234", None).send(Notice::Stopping);
        Notifier::to("/nonexistent/notify", None).send(Notice::Stopping);
    }

    #[test]
    fn the_watchdog_is_pinged_at_half_its_timeout_and_only_for_this_process() {
        assert_eq!(
            watchdog_every(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_every(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_every(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_every(None, None, 7), None);
        assert_eq!(watchdog_every(Some("0"), None, 7), None);

        let (manager, path) = manager("watchdog");
        let mut notifier = Notifier::to(path.to_str().unwrap(), Some(Duration::from_secs(60)));
        notifier.keep_alive();
        assert_eq!(receive(&manager), "WATCHDOG=1", "the first call pings");
        notifier.keep_alive();
        manager.set_nonblocking(true).unwrap();
        assert!(manager.recv(&mut [0u8; 64]).is_err(), "pinged too early");
        notifier.last_ping = Some(Instant::now() - Duration::from_secs(61));
        notifier.keep_alive();
        manager.set_nonblocking(false).unwrap();
        assert_eq!(receive(&manager), "WATCHDOG=1", "pinged again once due");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
