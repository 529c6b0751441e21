//! A real etcd 3.4 (Debian's etcd-server) on loopback, as the store the
//! agent writes its records to: plain HTTP, TLS with client certificates,
//! or TLS with client certificates and etcd's own users and roles.
//!
//! The certificates come from the `openssl` CLI, the users and roles from
//! `etcdctl` (etcd-client), and the health checks go through `curl`: the
//! tests crate's ureq has no TLS. Two things etcd 3.4 demands with
//! `--client-cert-auth`: the server certificate must allow `clientAuth`
//! too (its JSON gateway dials etcd's gRPC side with it), and once auth is
//! on, the gateway refuses any client certificate with a Common Name (HTTP
//! 400 "CommonName of client sending a request against gateway will be
//! ignored and not used as expected"), so `Mode::TlsAuth`'s has none.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde_json::Value;

use crate::{
    free_port,
    pki::{make_pki, random_hex, write_secret},
    poll,
};

/// Debian's etcd server (etcd-server).
const ETCD: &str = "/usr/bin/etcd";
/// Debian's etcd client (etcd-client), run with `ETCDCTL_API=3`.
const ETCDCTL: &str = "/usr/bin/etcdctl";

/// The etcd user, and its role, that the agent is given in `Mode::TlsAuth`.
pub const ETCD_USER: &str = "stopguard";
/// The only key prefix `ETCD_USER`'s role may read and write.
pub const ETCD_PREFIX: &str = "/stopguard/";

/// How the etcd is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `http://127.0.0.1:PORT`, no auth.
    Plain,
    /// `https://127.0.0.1:PORT`; a client certificate from the test CA is
    /// required (CN=stopguard); no etcd auth.
    Tls,
    /// As `Tls`, with etcd auth on: user `stopguard` (password in
    /// `password_file()`) may read and write under `/stopguard/` only. Its
    /// client certificate has no Common Name (subject O=stopguard), which
    /// etcd 3.4's JSON gateway demands once auth is on.
    TlsAuth,
}

/// A running (or stopped) single-member etcd, its files in the caller's
/// dir: `data/`, `etcd.log`, and `pki/` in the TLS modes. Dropping it stops
/// etcd; the dir stays.
pub struct Etcd {
    dir: PathBuf,
    mode: Mode,
    child: Option<Child>,
    /// The client port: `endpoint()` is on it.
    pub port: u16,
    peer_port: u16,
}

impl Etcd {
    /// Makes the certificates (TLS modes), starts etcd and waits until it
    /// is healthy and its JSON gateway answers; in `Mode::TlsAuth` then
    /// adds the users and the role and enables auth.
    pub fn start(dir: &Path, mode: Mode) -> Etcd {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let mut etcd = Etcd {
            dir: dir.to_path_buf(),
            mode,
            child: None,
            port: free_port(),
            peer_port: free_port(),
        };
        if mode != Mode::Plain {
            make_pki(&etcd.pki(), mode);
        }
        etcd.start_again();
        if mode == Mode::TlsAuth {
            etcd.enable_auth();
        }
        etcd
    }

    /// Starts etcd again, after `stop` or `kill` (stopping it first if it
    /// runs): same port, data dir and flags. Returns once it is ready.
    pub fn start_again(&mut self) {
        self.stop();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log_file().display()));
        let mut command = Command::new(ETCD);
        command
            .args(["--name", "default", "--enable-v2=false"])
            .args(["--logger=zap", "--log-outputs=stderr"])
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={}", self.endpoint()))
            .arg(format!("--advertise-client-urls={}", self.endpoint()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"));
        if self.mode != Mode::Plain {
            let pki = self.pki();
            command
                .arg(format!("--cert-file={}", pki.join("server.crt").display()))
                .arg(format!("--key-file={}", pki.join("server.key").display()))
                .arg("--client-cert-auth")
                .arg(format!(
                    "--trusted-ca-file={}",
                    pki.join("ca.crt").display()
                ));
        }
        let child = command
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {ETCD} (etcd-server): {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Stops etcd with SIGTERM and waits for it (SIGKILL after 10 s); does
    /// nothing when it is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if poll(Duration::from_secs(10), || child.try_wait().ok().flatten()).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Kills etcd with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The pid of the etcd last started, until `stop` or `kill`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How it is reached.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The client URL: `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.mode == Mode::Plain {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// etcd's log (zap JSON lines), appended to by each start.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// The CA certificate that signed the server and client certificates
    /// (TLS modes).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls_file("ca.crt")
    }

    /// The client certificate (TLS modes).
    pub fn cert_file(&self) -> Option<PathBuf> {
        self.tls_file("client.crt")
    }

    /// The client certificate's key, PKCS#8 PEM, mode 0600 (TLS modes).
    pub fn key_file(&self) -> Option<PathBuf> {
        self.tls_file("client.key")
    }

    /// The user the agent logs in as (`Mode::TlsAuth`).
    pub fn user(&self) -> Option<&'static str> {
        (self.mode == Mode::TlsAuth).then_some(ETCD_USER)
    }

    /// The password of `user()`, one line with a newline, mode 0600
    /// (`Mode::TlsAuth`).
    pub fn password_file(&self) -> Option<PathBuf> {
        (self.mode == Mode::TlsAuth).then(|| self.pki().join("stopguard.password"))
    }

    /// The value at `key`, read as root; None when there is no such key.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl(&["get", "-w", "json", "--", key], None);
        kvs(&out).into_iter().next().map(|(_, value)| value)
    }

    /// The keys under `prefix`, sorted, read as root.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.etcdctl(
            &["get", "-w", "json", "--prefix", "--keys-only", "--", prefix],
            None,
        );
        kvs(&out).into_iter().map(|(key, _)| key).collect()
    }

    /// Writes `value` at `key` as root (a record the test plants).
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl(&["put", "--", key], Some(value));
    }

    /// POSTs `body` to the JSON gateway at `path` (e.g.
    /// `/v3/auth/authenticate`) with the client certificate, and `token`
    /// as the `Authorization` header; returns the JSON answer, an error
    /// answer included. Panics when nothing JSON comes back.
    pub fn post_json(&self, path: &str, body: &Value, token: Option<&str>) -> Value {
        let mut args = vec![
            "-X".to_string(),
            "POST".into(),
            "-H".into(),
            "Content-Type: application/json".into(),
            "--data-binary".into(),
            body.to_string(),
        ];
        if let Some(token) = token {
            args.extend(["-H".into(), format!("Authorization: {token}")]);
        }
        let url = format!("{}{path}", self.endpoint());
        let text = self
            .curl(&url, &args)
            .unwrap_or_else(|| panic!("POST {url}: no answer"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {url}: {e}: {text}"))
    }

    fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }

    fn tls_file(&self, name: &str) -> Option<PathBuf> {
        (self.mode != Mode::Plain).then(|| self.pki().join(name))
    }

    /// `curl` of `url` with the client certificate (TLS modes); its body,
    /// or None when the request fails.
    fn curl(&self, url: &str, args: &[String]) -> Option<String> {
        let mut command = Command::new("curl");
        command.args(["-sS", "--max-time", "3", "--noproxy", "*"]);
        if let (Some(ca), Some(cert), Some(key)) =
            (self.ca_file(), self.cert_file(), self.key_file())
        {
            command
                .arg("--cacert")
                .arg(ca)
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key);
        }
        let out = command
            .args(args)
            .arg(url)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running curl: {e}"));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits up to 20 s for `/health` to say true and the JSON gateway to
    /// answer (`/health` does not go through the gateway); panics with the
    /// tail of the log when they do not.
    fn wait_ready(&mut self) {
        let health = format!("{}/health", self.endpoint());
        let status = format!("{}/v3/maintenance/status", self.endpoint());
        let json = |text: Option<String>| text.and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let deadline = Instant::now() + Duration::from_secs(20);
        let why = loop {
            let exited = self
                .child
                .as_mut()
                .is_none_or(|child| !matches!(child.try_wait(), Ok(None)));
            if exited {
                break "exited";
            }
            if json(self.curl(&health, &[])).is_some_and(|h| h["health"] == "true")
                && json(self.curl(&status, &["-d".into(), "{}".into()]))
                    .is_some_and(|s| s["version"].is_string())
            {
                return;
            }
            if Instant::now() >= deadline {
                break "is not ready after 20 s";
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        self.kill();
        let log = fs::read_to_string(self.log_file()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!(
            "etcd on {} {why}; the end of {}:\n{}",
            self.endpoint(),
            self.log_file().display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    /// Adds `root` and `stopguard`, the role `stopguard` (readwrite on
    /// `/stopguard/` only), then enables auth.
    fn enable_auth(&self) {
        let pki = self.pki();
        let root_password = pki.join("root.password");
        let password = pki.join("stopguard.password");
        write_secret(&root_password, &format!("{}\n", random_hex()));
        write_secret(&password, &format!("{}\n", random_hex()));
        let read = |p: &Path| fs::read_to_string(p).unwrap();
        let (root_pw, pw) = (read(&root_password), read(&password));
        let setup: [(&[&str], Option<&str>); 8] = [
            (
                &["user", "add", "root", "--interactive=false"],
                Some(&root_pw),
            ),
            (&["role", "add", "root"], None),
            (&["user", "grant-role", "root", "root"], None),
            (
                &["user", "add", ETCD_USER, "--interactive=false"],
                Some(&pw),
            ),
            (&["role", "add", ETCD_USER], None),
            (
                &[
                    "role",
                    "grant-permission",
                    ETCD_USER,
                    "--prefix=true",
                    "readwrite",
                    ETCD_PREFIX,
                ],
                None,
            ),
            (&["user", "grant-role", ETCD_USER, ETCD_USER], None),
            (&["auth", "enable"], None),
        ];
        for (args, stdin) in setup {
            self.etcdctl_as(None, args, stdin);
        }
    }

    /// Runs etcdctl as root (in `Mode::TlsAuth`); returns its stdout.
    fn etcdctl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let root = (self.mode == Mode::TlsAuth).then(|| {
            let password = fs::read_to_string(self.pki().join("root.password")).unwrap();
            password.trim().to_string()
        });
        self.etcdctl_as(root.as_deref(), args, stdin)
    }

    /// Runs `etcdctl` (v3) against this etcd, as `root` with `password`
    /// when given; returns its stdout, panicking with its stderr when it
    /// fails.
    fn etcdctl_as(
        &self,
        root_password: Option<&str>,
        args: &[&str],
        stdin: Option<&str>,
    ) -> String {
        let mut command = Command::new(ETCDCTL);
        command
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()));
        if let (Some(ca), Some(cert), Some(key)) =
            (self.ca_file(), self.cert_file(), self.key_file())
        {
            command
                .arg(format!("--cacert={}", ca.display()))
                .arg(format!("--cert={}", cert.display()))
                .arg(format!("--key={}", key.display()));
        }
        if let Some(password) = root_password {
            command.args(["--user", "root", "--password", password]);
        }
        let mut child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {ETCDCTL} (etcd-client): {e}"));
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether an etcd test can run: Debian's etcd and etcdctl are installed.
/// When not, prints why `name` is skipped and returns false; under CI a
/// test that cannot run fails instead.
pub fn etcd_test(name: &str) -> bool {
    let missing: Vec<&str> = [ETCD, ETCDCTL]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "needs {} (etcd-server, etcd-client; `cargo xtask test` installs them)",
        missing.join(" and ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{name}: CI is set but this test cannot run: it {why}");
    }
    eprintln!("skipped {name}: {why}");
    false
}

/// The (key, value) pairs of `etcdctl get -w json` output, decoded.
fn kvs(json: &str) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let text = |field: &Value| {
        field.as_str().map_or_else(String::new, |b| {
            String::from_utf8_lossy(&B64.decode(b).unwrap()).into_owned()
        })
    };
    v["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| (text(&kv["key"]), text(&kv["value"])))
        .collect()
}
