//! Helpers for stopguard's end-to-end tests: the real agent binary, run as
//! root against the real kernel.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard, mpsc},
    time::{Duration, Instant},
};

use serde_json::Value;

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
    Some(PROBES.lock().unwrap_or_else(|e| e.into_inner()))
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

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A running `stopguard trace`, its output collected as it comes.
pub struct Trace {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

pub struct Traced {
    pub lines: Vec<String>,
    pub stderr: String,
    pub status: std::process::ExitStatus,
}

impl Traced {
    /// Every stdout line parsed as JSON; panics on a line that is not.
    pub fn events(&self) -> Vec<Value> {
        self.lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

impl Trace {
    /// Starts `stopguard trace ARGS` and waits until its probes are attached.
    pub fn start(args: &[&str]) -> Trace {
        let mut child = Command::new(stopguard_bin())
            .arg("trace")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning stopguard trace");
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        err.read_line(&mut first)
            .expect("reading stopguard's stderr");
        if !first.contains("tracing") {
            let _ = child.kill();
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            panic!("stopguard trace did not start:\n{first}{rest}");
        }
        let stderr = std::thread::spawn(move || {
            let mut rest = first;
            let _ = err.read_to_string(&mut rest);
            rest
        });
        Trace {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits until a stdout line satisfies `pred` (consuming lines before
    /// it into `seen`), or panics after `timeout`.
    pub fn wait_for(&self, seen: &mut Vec<String>, timeout: Duration, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let hit = pred(&line);
                    seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no matching line within {timeout:?}; saw {} lines, last: {:?}",
                    seen.len(),
                    seen.last()
                ),
            }
        }
    }

    /// Stops the tracer with SIGINT, as Ctrl-C would, and collects all output.
    pub fn stop(mut self, mut seen: Vec<String>) -> Traced {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("waiting for stopguard trace");
        seen.extend(self.stdout.iter());
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new))
            .join()
            .unwrap();
        Traced {
            lines: seen,
            stderr,
            status,
        }
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
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

/// A running `stopguard run` on a config file, its alert lines collected.
pub struct Agent {
    child: Child,
    alerts: mpsc::Receiver<String>,
    log: std::sync::Arc<Mutex<String>>,
}

impl Agent {
    /// Writes `config` to `path`, starts the agent on it and waits until it
    /// runs.
    pub fn start(path: &std::path::Path, config: &str) -> Agent {
        std::fs::write(path, config).unwrap();
        let mut child = Command::new(stopguard_bin())
            .args(["run", "--config"])
            .arg(path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting stopguard run");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        if !line.contains("stopguard running") {
            let _ = child.kill();
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
            panic!("the agent did not start:\n{line}{rest}");
        }
        let log = std::sync::Arc::new(Mutex::new(line));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let (tx, alerts) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Agent { child, alerts, log }
    }

    /// Everything the agent has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The next alert record, or None after `timeout`.
    pub fn next_alert(&self, timeout: Duration) -> Option<Value> {
        let line = self.alerts.recv_timeout(timeout).ok()?;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("alert is not JSON ({e}): {line}")),
        )
    }
}

impl Agent {
    /// SIGKILL, as a crash or the OOM killer would: no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Whether `pid` sits in its own frozen cgroup made by the agent.
pub fn in_frozen_cgroup(pid: u32) -> bool {
    let dir =
        std::path::Path::new("/sys/fs/cgroup/unified/stopguard").join(format!("frozen-{pid}"));
    std::fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|e| e.lines().any(|l| l == "frozen 1"))
        && std::fs::read_to_string(dir.join("cgroup.procs"))
            .is_ok_and(|p| p.lines().any(|l| l == pid.to_string()))
}

/// Whether `pid` sits in its own frozen cgroup v1 freezer cgroup.
pub fn in_frozen_v1_cgroup(pid: u32) -> bool {
    let dir =
        std::path::Path::new("/sys/fs/cgroup/freezer/stopguard").join(format!("frozen-{pid}"));
    std::fs::read_to_string(dir.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
        && std::fs::read_to_string(dir.join("cgroup.procs"))
            .is_ok_and(|p| p.lines().any(|l| l == pid.to_string()))
}

/// The state letter of /proc/PID/stat ('T' when stopped).
pub fn state_of(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit(')')
        .next()
        .unwrap()
        .trim()
        .chars()
        .next()
        .unwrap()
}

/// Removes the agent's frozen cgroups left empty by a test.
pub fn remove_frozen_cgroups() {
    let _ = Command::new("/bin/sh")
        .arg("-c")
        .arg("for d in /sys/fs/cgroup/unified/stopguard/frozen-* /sys/fs/cgroup/freezer/stopguard/frozen-*; do [ -d \"$d\" ] && rmdir \"$d\"; done; true")
        .status();
}

/// Starts monit in the foreground with a 1 s cycle, its files in `dir`,
/// checking what `check` says (one `check ...` block).
pub fn start_monit(dir: &std::path::Path, check: &str) -> Child {
    let d = dir.display();
    let rc = dir.join("monitrc");
    std::fs::write(
        &rc,
        format!(
            "set daemon 1\nset logfile {d}/monit.log\nset pidfile {d}/monit.pid\n\
             set idfile {d}/monit.id\nset statefile {d}/monit.state\n{check}\n"
        ),
    )
    .unwrap();
    // monit refuses a control file others can read.
    std::fs::set_permissions(&rc, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    Command::new("monit")
        .args(["-I", "-c"])
        .arg(&rc)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting monit")
}

/// One request a `Receiver` got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    /// Header names in lower case.
    pub headers: std::collections::HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Statuses a `Receiver` gives its next requests: (status, Retry-After).
type Answers = std::sync::Arc<Mutex<std::collections::VecDeque<(u16, Option<u64>)>>>;

/// A real HTTP receiver on loopback: records every request and answers
/// with the status it is told (and a Retry-After when given). It can go
/// down (nothing listens on its port) and come back on the same port.
pub struct Receiver {
    pub port: u16,
    received: std::sync::Arc<Mutex<Vec<Received>>>,
    /// Statuses for the next requests, then 200: (status, Retry-After).
    answers: Answers,
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let mut receiver = Receiver {
            port: 0,
            received: Default::default(),
            answers: Default::default(),
            stop: None,
        };
        receiver.up();
        receiver
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answers the next requests with these statuses (and Retry-After).
    pub fn answer(&self, answers: &[(u16, Option<u64>)]) {
        self.answers.lock().unwrap().extend(answers.iter().copied());
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests have arrived; panics after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} requests within {timeout:?}: {:?}",
                got.len(),
                got.iter().map(|r| &r.path).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops listening: connections to the port are refused.
    pub fn down(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Listens (again, on the same port once it has one).
    pub fn up(&mut self) {
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port)).expect("binding");
        self.port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.stop = Some(stop.clone());
        let (received, answers) = (self.received.clone(), self.answers.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                if let Some(request) = read_request(&stream) {
                    let (status, retry) =
                        answers.lock().unwrap().pop_front().unwrap_or((200, None));
                    received.lock().unwrap().push(request);
                    use std::io::Write;
                    let retry = retry
                        .map(|s| format!("retry-after: {s}\r\n"))
                        .unwrap_or_default();
                    let _ = (&stream).write_all(
                        format!("HTTP/1.1 {status} X\r\n{retry}content-length: 0\r\nconnection: close\r\n\r\n")
                            .as_bytes(),
                    );
                }
            }
        });
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

fn read_request(stream: &std::net::TcpStream) -> Option<Received> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = std::collections::HashMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let Some((key, value)) = line.trim_end().split_once(':') else {
            break;
        };
        headers.insert(key.trim().to_lowercase(), value.trim().to_string());
    }
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        path,
        headers,
        body,
        at: Instant::now(),
    })
}

/// Verifies a Standard Webhooks signature the way the README tells a
/// receiver to: HMAC-SHA256 over "{webhook-id}.{webhook-timestamp}.{body}"
/// with the secret (base64 after `whsec_`, else its bytes), base64, and
/// compared with each `v1,` entry of `webhook-signature`.
pub fn webhook_signature_valid(secret: &str, request: &Received) -> bool {
    use base64::Engine;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = secret
        .strip_prefix("whsec_")
        .map(|k| b64.decode(k).unwrap())
        .unwrap_or_else(|| secret.as_bytes().to_vec());
    let header = |name: &str| request.headers.get(name).cloned().unwrap_or_default();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    mac.update(&request.body);
    let expected = b64.encode(mac.finalize().into_bytes());
    header("webhook-signature")
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
}

/// A real Prometheus Alertmanager (Debian's) on a free loopback port, its
/// data in `dir`; gossip off.
pub struct Alertmanager {
    child: Child,
    pub port: u16,
}

impl Alertmanager {
    pub fn start(dir: &std::path::Path) -> Alertmanager {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n",
        )
        .unwrap();
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus-alertmanager (installed by `cargo xtask test`)");
        let am = Alertmanager { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while am.get("/-/ready").is_none() {
            assert!(Instant::now() < deadline, "alertmanager did not get ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        am
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn get(&self, path: &str) -> Option<String> {
        let mut response = ureq::get(&self.url(path)).call().ok()?;
        response.body_mut().read_to_string().ok()
    }

    /// The active alerts, as its API v2 lists them.
    pub fn alerts(&self) -> Vec<Value> {
        self.get("/api/v2/alerts?active=true")
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
