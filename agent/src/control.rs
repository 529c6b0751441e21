//! The control plane: `stopguard <command>` talks to the running agent over
//! a Unix socket, one JSON request and one JSON response per connection.
//! Who may change state is decided from the peer's credentials.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

/// Larger requests are refused: no command needs more.
pub const MAX_REQUEST: u64 = 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    WindowOpen {
        service: String,
        reason: String,
        /// Seconds until it closes by itself.
        for_secs: Option<u64>,
    },
    WindowClose {
        target: String,
        thaw: bool,
        kill: bool,
    },
    WindowList,
    Status,
    Thaw {
        target: String,
    },
    /// Open a window (unless one is open) and stop the service.
    Stop {
        service: String,
        reason: String,
        for_secs: Option<u64>,
        /// How long to wait for the main process to exit.
        wait_secs: u64,
    },
    /// A test alert through every sink, or the one named.
    AlertTest {
        sink: Option<String>,
    },
    /// The audit log, oldest first.
    Audit {
        since_secs: Option<u64>,
        service: Option<String>,
    },
}

impl Request {
    /// Whether the request changes state (and so needs root or the group).
    pub fn changes_state(&self) -> bool {
        !matches!(
            self,
            Request::WindowList | Request::Status | Request::Audit { .. }
        )
    }
}

/// The peer of a control connection, from SO_PEERCRED.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub loginuid: Option<u32>,
}

/// An answer now, or one that needs waiting for (a stop) without holding
/// up the agent's loop.
pub enum Answer {
    Now(serde_json::Value),
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = serde_json::Value> + Send>>),
}

/// A request the agent's loop answers (or refuses, and audits).
pub struct Call {
    pub request: Request,
    pub peer: Peer,
    /// False when the peer may not change state but asked to.
    pub permitted: bool,
    pub reply: oneshot::Sender<serde_json::Value>,
}

pub fn error(message: impl Into<String>) -> serde_json::Value {
    serde_json::json!({"ok": false, "error": message.into()})
}

/// Binds the socket (mode 0660, group `group` when given) and serves it,
/// handing each well-formed request to `calls`.
pub fn serve(path: &Path, group: Option<&str>, calls: mpsc::Sender<Call>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    let gid = match group {
        Some(name) => Some(
            nix::unistd::Group::from_name(name)?
                .with_context(|| format!("control_group `{name}` does not exist"))?
                .gid,
        ),
        None => None,
    };
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {gid}", path.display()))?;
    }
    let allowed_gid = gid.map(|g| g.as_raw());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                if let Err(err) = handle(stream, allowed_gid, calls).await {
                    tracing::debug!("control connection: {err:#}");
                }
            });
        }
    });
    Ok(())
}

fn in_group(uid: u32, gid: u32, allowed: u32) -> bool {
    if gid == allowed {
        return true;
    }
    let Ok(Some(user)) = nix::unistd::User::from_uid(uid.into()) else {
        return false;
    };
    nix::unistd::Group::from_gid(allowed.into())
        .ok()
        .flatten()
        .is_some_and(|g| g.mem.contains(&user.name))
}

async fn handle(
    stream: UnixStream,
    allowed_gid: Option<u32>,
    calls: mpsc::Sender<Call>,
) -> Result<()> {
    let cred = stream.peer_cred()?;
    let pid = cred.pid().unwrap_or(0) as u32;
    let peer = Peer {
        pid,
        uid: cred.uid(),
        gid: cred.gid(),
        loginuid: std::fs::read_to_string(format!("/proc/{pid}/loginuid"))
            .ok()
            .and_then(|l| l.trim().parse().ok())
            .filter(|&l: &u32| l != u32::MAX),
    };
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut read = BufReader::new(read).take(MAX_REQUEST + 1);
    let answer = match tokio::time::timeout(Duration::from_secs(5), read.read_line(&mut line)).await
    {
        Err(_) => error("no request within 5 s"),
        Ok(Err(err)) => error(format!("reading the request: {err}")),
        Ok(Ok(n)) if n as u64 > MAX_REQUEST => error(format!("request over {MAX_REQUEST} bytes")),
        Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
            Err(err) => error(format!("malformed request: {err}")),
            Ok(request) => {
                let permitted = !request.changes_state()
                    || peer.uid == 0
                    || allowed_gid.is_some_and(|g| in_group(peer.uid, peer.gid, g));
                let (reply, answer) = oneshot::channel();
                calls
                    .send(Call {
                        request,
                        peer,
                        permitted,
                        reply,
                    })
                    .await?;
                answer
                    .await
                    .unwrap_or_else(|_| error("the agent is shutting down"))
            }
        },
    };
    write.write_all(format!("{answer}\n").as_bytes()).await?;
    Ok(())
}

/// Sends `request` to the agent at `socket` and returns its answer.
pub fn call(socket: &Path, request: &Request) -> Result<serde_json::Value> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the agent at {} (is `stopguard run` running? --socket or STOPGUARD_SOCKET picks another)",
            socket.display()
        )
    })?;
    let wait = match request {
        Request::Stop { wait_secs, .. } => *wait_secs + 30,
        _ => 30,
    };
    stream.set_read_timeout(Some(Duration::from_secs(wait)))?;
    writeln!(stream, "{}", serde_json::to_string(request)?)?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        bail!("the agent closed the connection without an answer");
    }
    Ok(serde_json::from_str(&line)?)
}
