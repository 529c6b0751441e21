//! The agent's side of the control socket: binds it, reads one request per
//! connection, decides from the peer's credentials whether it may change
//! state, hands it to the agent's loop and writes the answer back.

use std::{future::Future, path::Path, pin::Pin, sync::Arc, time::Duration};

use super::{Ask, MAX_REQUEST, Peer, Request};
use anyhow::{Context, Result};
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, mpsc, oneshot},
};

/// The answer to a request whose reply is `T`: now, or one that needs
/// waiting for (a stop) without holding up the agent's loop. A refusal is
/// its reason.
pub enum Answer<T> {
    Now(Result<T, String>),
    Later(Pin<Box<dyn Future<Output = Result<T, String>> + Send>>),
}

/// The answer to request `A`: its own reply type, nothing else.
pub type Reply<A> = Answer<<A as Ask>::Reply>;

impl<T: Serialize + Send + 'static> Answer<T> {
    /// A refusal, now.
    pub fn refuse(why: impl Into<String>) -> Answer<T> {
        Answer::Now(Err(why.into()))
    }

    /// The answer later, once `future` is done.
    pub fn later(future: impl Future<Output = Result<T, String>> + Send + 'static) -> Answer<T> {
        Answer::Later(Box::pin(future))
    }

    /// The answer as the socket carries it.
    pub fn into_wire(self) -> Wire {
        match self {
            Answer::Now(result) => Wire::Now(wire(result)),
            Answer::Later(future) => Wire::Later(Box::pin(async move { wire(future.await) })),
        }
    }
}

/// An answer of any request, as the JSON line to send back.
pub enum Wire {
    Now(serde_json::Value),
    Later(Pin<Box<dyn Future<Output = serde_json::Value> + Send>>),
}

impl Wire {
    /// A refusal of any request, now.
    pub fn refuse(why: impl Into<String>) -> Wire {
        Wire::Now(error(why))
    }
}

/// A reply or a refusal, as JSON: the reply's fields with `"ok": true`, or
/// `{"ok": false, "error": ...}`.
fn wire<T: Serialize>(result: Result<T, String>) -> serde_json::Value {
    match result {
        Ok(reply) => ok(reply),
        Err(why) => error(why),
    }
}

/// A request the agent's loop answers (or refuses, and audits).
pub struct Call {
    pub request: Request,
    pub peer: Peer,
    /// False when the peer may not change state but asked to.
    pub permitted: bool,
    pub reply: oneshot::Sender<serde_json::Value>,
}

/// A refusal: `{"ok": false, "error": ...}`.
fn error(message: impl Into<String>) -> serde_json::Value {
    serde_json::json!({"ok": false, "error": message.into()})
}

/// A success: the answer's fields with `"ok": true`.
fn ok(answer: impl Serialize) -> serde_json::Value {
    let mut value = serde_json::to_value(answer).expect("answers serialize");
    if let Some(map) = value.as_object_mut() {
        map.insert("ok".into(), true.into());
    }
    value
}

/// Binds the socket (mode 0660, group `group` when given) and serves it,
/// handing each well-formed request to `calls`.
pub fn serve(path: &Path, group: Option<&str>, calls: mpsc::Sender<Call>) -> Result<()> {
    if let Some(dir) = path.parent() {
        crate::sys::files::private_dir(dir).context("the control socket's directory")?;
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
    let limit = max_connections();
    let permits = Arc::new(Semaphore::new(limit));
    // Requests that ask supervisors (`explain`) take few of the
    // connections, so that `status`, `thaw`, `window close` and `stop`
    // never wait behind a slow probe.
    let probing = Arc::new(Semaphore::new(probe_connections(limit)));
    tokio::spawn(async move {
        let mut pause = ACCEPT_PAUSE;
        loop {
            // Beyond the cap, clients wait in the listen backlog: file
            // descriptors stay free for freezing (cgroup files) and the ring.
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            match listener.accept().await {
                Ok((stream, _)) => {
                    pause = ACCEPT_PAUSE;
                    let calls = calls.clone();
                    let probing = probing.clone();
                    tokio::spawn(async move {
                        if let Err(err) = handle(stream, allowed_gid, calls, probing).await {
                            tracing::debug!("control connection: {err:#}");
                        }
                        drop(permit);
                    });
                }
                Err(err) => {
                    // Out of file descriptors, most likely: retrying at once
                    // would spin; wait, longer each time, up to a second.
                    if pause == ACCEPT_PAUSE {
                        tracing::warn!(
                            "control socket: accepting a connection failed: {err} (at most {limit} connections at once; retrying)"
                        );
                    }
                    drop(permit);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    });
    Ok(())
}

/// First wait after a failed accept.
const ACCEPT_PAUSE: Duration = Duration::from_millis(10);

/// Control connections served at once: 32, or fewer under a low file
/// descriptor limit, so that a crowd of idle clients cannot take the
/// descriptors a freeze needs.
fn max_connections() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    (soft / 4).clamp(1, 32) as usize
}

/// Of `limit` connections, how many may wait on supervisors at once: a
/// quarter, at least one.
fn probe_connections(limit: usize) -> usize {
    (limit / 4).max(1)
}

/// Whether the client at the other end of `fd` (a Unix stream socket) has
/// closed its socket: both directions shut (POLLHUP), not merely its
/// writing side after sending the request.
fn client_gone(fd: std::os::fd::RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLHUP,
        revents: 0,
    };
    // SAFETY: one pollfd on a descriptor the caller keeps open; no wait.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// Resolves once the client of `fd` has gone (checked every 100 ms).
async fn until_gone(fd: std::os::fd::RawFd) {
    while !client_gone(fd) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    probing: Arc<Semaphore>,
) -> Result<()> {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
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
        Ok(Ok(_)) => match Request::from_line(&line) {
            Err(why) => error(why),
            Ok(request) => {
                let permitted = !request.changes_state()
                    || peer.uid == 0
                    || allowed_gid.is_some_and(|g| in_group(peer.uid, peer.gid, g));
                let probe = match request.asks_supervisors() {
                    false => None,
                    true => match probing.try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        Err(_) => {
                            let busy = error(format!(
                                "busy: {} requests are asking supervisors already; try again in a few seconds",
                                probe_connections(max_connections())
                            ));
                            write.write_all(format!("{busy}\n").as_bytes()).await?;
                            return Ok(());
                        }
                    },
                };
                let (reply, answer) = oneshot::channel();
                calls
                    .send(Call {
                        request,
                        peer,
                        permitted,
                        reply,
                    })
                    .await?;
                // A client that leaves takes its request with it: dropping
                // `answer` cancels what it waits on.
                let answer = tokio::select! {
                    answer = answer => answer.unwrap_or_else(|_| error("the agent is shutting down")),
                    () = until_gone(fd) => return Ok(()),
                };
                drop(probe);
                answer
            }
        },
    };
    write.write_all(format!("{answer}\n").as_bytes()).await?;
    Ok(())
}
