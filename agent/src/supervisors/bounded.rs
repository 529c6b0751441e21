//! Acting for a supervisor, bounded: its credentials, which the commands
//! run for it take on; commands, config reads and HTTP requests with a
//! total deadline and a cap on what they read, whatever the other side
//! does (a FIFO for a config, an endpoint that drips a byte a second, a
//! child that keeps the pipe open).

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// How long one probe's command or HTTP request may take, in all.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The most of a supervisor's config file, or of a command's output or an
/// HTTP answer, a probe reads.
pub const READ_CAP: u64 = 1024 * 1024;

/// A process's credentials, as /proc shows them: what the agent takes on
/// to act for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub groups: Vec<u32>,
}

impl Credentials {
    /// The effective user, group and supplementary groups of `pid`.
    pub fn of(pid: u32) -> Option<Credentials> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<Vec<u32>> {
            let line = status.lines().find_map(|l| l.strip_prefix(name))?;
            Some(
                line.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect(),
            )
        };
        // Uid: real, effective, saved, filesystem.
        let uid = *field("Uid:")?.get(1)?;
        let gid = *field("Gid:")?.get(1)?;
        Some(Credentials {
            uid,
            gid,
            groups: field("Groups:").unwrap_or_default(),
        })
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Makes `command` run with these credentials, and the user's HOME,
    /// USER and LOGNAME (from the password database; `/` for a user it
    /// does not name). As root, nothing changes.
    pub fn apply(&self, command: &mut Command) {
        if self.is_root() {
            return;
        }
        let user = nix::unistd::User::from_uid(self.uid.into()).ok().flatten();
        let home = user
            .as_ref()
            .map_or_else(|| PathBuf::from("/"), |u| u.dir.clone());
        let name = user
            .as_ref()
            .map_or_else(|| self.uid.to_string(), |u| u.name.clone());
        command
            .env("HOME", &home)
            .env("USER", &name)
            .env("LOGNAME", &name)
            .current_dir("/");
        let (uid, gid, groups) = (self.uid, self.gid, self.groups.clone());
        // SAFETY: between fork and exec only async-signal-safe calls on
        // values made beforehand.
        unsafe {
            command.pre_exec(move || drop_to(uid, gid, &groups));
        }
    }
}

/// A supervisor's switch as run, and how it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchRun {
    pub supervisor: String,
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SwitchRun {
    /// The run in a line: what it did (`done`), or why it failed.
    pub fn line(&self, done: &str) -> String {
        use crate::escape::terminal as t;
        let (supervisor, command) = (t(&self.supervisor), t(&self.command));
        match &self.error {
            None => format!("{supervisor} {done}: {command}"),
            Some(err) => format!(
                "{supervisor} NOT {done}: {command} failed: {} (run it by hand)",
                t(err)
            ),
        }
    }
}

/// Becomes `uid`:`gid` with `groups`, for good: called in a child between
/// fork and exec, after anything that needs root (writing its login uid).
pub fn drop_to(uid: u32, gid: u32, groups: &[u32]) -> std::io::Result<()> {
    // SAFETY: plain system calls on values owned by the caller.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0
            || libc::setresgid(gid, gid, gid) != 0
            || libc::setresuid(uid, uid, uid) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs `argv` as root with no input, for at most [`PROBE_TIMEOUT`]; its
/// standard output, or what went wrong in a line.
pub fn run(argv: &[&str]) -> Result<String, String> {
    run_as(None, argv)
}

/// Runs `argv` with `credentials` (root when none) and no input, for at
/// most [`PROBE_TIMEOUT`] in all; its standard output (at most
/// [`READ_CAP`]), or what went wrong in a line. What it leaves running
/// holding its output does not hold the probe.
pub fn run_as(credentials: Option<&Credentials>, argv: &[&str]) -> Result<String, String> {
    use std::os::fd::AsRawFd;
    let shown = argv.join(" ");
    let mut command = Command::new(argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in crate::sys::notify::ENV_VARS {
        command.env_remove(name);
    }
    if let Some(credentials) = credentials {
        credentials.apply(&mut command);
    }
    let mut child = command.spawn().map_err(|err| format!("`{shown}`: {err}"))?;
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    for pipe in [
        stdout.as_ref().map(|p| p.as_raw_fd()),
        stderr.as_ref().map(|p| p.as_raw_fd()),
    ]
    .into_iter()
    .flatten()
    {
        // SAFETY: fcntl on a descriptor this function owns.
        unsafe { libc::fcntl(pipe, libc::F_SETFL, libc::O_NONBLOCK) };
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut drain = |out: &mut Vec<u8>, err: &mut Vec<u8>| {
        drain_into(&mut stdout, out);
        drain_into(&mut stderr, err);
    };
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let status = loop {
        drain(&mut out, &mut err);
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{shown}` did not answer within {} s",
                    PROBE_TIMEOUT.as_secs()
                ));
            }
            Err(err) => return Err(format!("`{shown}`: {err}")),
        }
    };
    drain(&mut out, &mut err);
    let (out, err) = (String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
    if status.success() {
        Ok(out.into_owned())
    } else {
        let said = if err.trim().is_empty() { &out } else { &err };
        Err(format!(
            "`{shown}` failed ({status}): {}",
            said.trim().lines().next().unwrap_or("")
        ))
    }
}

/// Appends what a child's output pipe (non-blocking) holds now, up to
/// [`READ_CAP`] in all.
fn drain_into(pipe: &mut Option<impl Read>, into: &mut Vec<u8>) {
    let Some(pipe) = pipe else { return };
    let mut chunk = [0u8; 8192];
    while (into.len() as u64) < READ_CAP {
        match pipe.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => into.extend_from_slice(&chunk[..n.min(READ_CAP as usize - into.len())]),
        }
    }
}

/// A supervisor's config file at `path`, read for a supervisor running as
/// `uid`: a regular file (no link followed at its last component, no FIFO
/// or device), owned by `uid` or root, of at most [`READ_CAP`].
pub fn read_config(path: &Path, uid: u32) -> Result<String, String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|err| format!("{shown}: {err}"))?;
    let meta = file.metadata().map_err(|err| format!("{shown}: {err}"))?;
    if !meta.file_type().is_file() {
        return Err(format!("{shown}: not a regular file"));
    }
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(format!(
            "{shown}: owned by uid {}, not by its supervisor's user (uid {uid}) or root",
            meta.uid()
        ));
    }
    if meta.uid() != uid && uid != 0 && meta.mode() & 0o004 == 0 {
        return Err(format!("{shown}: not readable by uid {uid}"));
    }
    if meta.len() > READ_CAP {
        return Err(format!("{shown}: over {READ_CAP} bytes"));
    }
    let mut text = String::new();
    file.take(READ_CAP)
        .read_to_string(&mut text)
        .map_err(|err| format!("{shown}: {err}"))?;
    Ok(text)
}

/// `GET path` from an HTTP server at `address` (`host:port`), for at most
/// [`PROBE_TIMEOUT`] in all; the body of a 200 answer.
pub fn http_get(address: &str, path: &str) -> Result<String, String> {
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let failed = |err: std::io::Error| format!("GET http://{address}{path}: {err}");
    let late = || {
        format!(
            "GET http://{address}{path}: no answer within {} s",
            PROBE_TIMEOUT.as_secs()
        )
    };
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    let target = address
        .to_socket_addrs()
        .map_err(failed)?
        .next()
        .ok_or_else(|| format!("GET http://{address}{path}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&target, PROBE_TIMEOUT).map_err(failed)?;
    stream
        .set_write_timeout(Some(left().ok_or_else(late)?))
        .map_err(failed)?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nAccept: application/json\r\n\r\n"
    )
    .map_err(failed)?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        stream
            .set_read_timeout(Some(left().ok_or_else(late)?))
            .map_err(failed)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(late());
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(failed(err)),
        }
        if answer.len() as u64 > READ_CAP {
            return Err(format!(
                "GET http://{address}{path}: answer over {READ_CAP} bytes"
            ));
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET http://{address}{path}: no HTTP answer"))?;
    let status = head.lines().next().unwrap_or("");
    // Patroni answers /patroni with 503 on a member that is not running.
    if !(status.contains(" 200 ") || status.contains(" 503 ")) {
        return Err(format!("GET http://{address}{path}: {status}"));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_are_regular_files_of_their_user_or_root_and_bounded() {
        let dir = std::env::temp_dir().join(format!("sg-read-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("patroni.yml");
        std::fs::write(&file, "scope: demo\n").unwrap();
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(read_config(&file, me).unwrap(), "scope: demo\n");
        std::os::unix::fs::symlink(&file, dir.join("link.yml")).unwrap();
        assert!(read_config(&dir.join("link.yml"), me).is_err(), "a link");
        assert!(read_config(Path::new("/dev/zero"), me).is_err(), "a device");
        nix::unistd::mkfifo(&dir.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = read_config(&dir.join("fifo"), me).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        std::fs::write(&file, vec![b'#'; READ_CAP as usize + 1]).unwrap();
        assert!(read_config(&file, me).unwrap_err().contains("over"));
        if me != 0 {
            assert!(read_config(&file, me + 1).unwrap_err().contains("owned by"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_probe_command_is_cut_at_its_deadline_even_when_its_child_keeps_the_pipe() {
        let started = Instant::now();
        let out = run(&["sh", "-c", "(sleep 30 &) ; echo hello"]).unwrap();
        assert_eq!(out.trim(), "hello");
        assert!(started.elapsed() < PROBE_TIMEOUT, "{:?}", started.elapsed());
        let err = run(&["sleep", "30"]).unwrap_err();
        assert!(err.contains("did not answer"), "{err}");
    }
}
