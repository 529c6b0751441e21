//! The etcd harness on its own (no agent, no root): in each mode it starts,
//! stores and reads back, keeps its data over a stop and over a crash, and
//! in the TLS modes asks for the client certificate; with auth, user
//! stopguard writes under /stopguard/ through the JSON gateway and nowhere
//! else.

use std::{
    fs,
    net::TcpStream,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Command, Stdio},
};

use serde_json::{Value, json};
use stopguard_tests::{
    Etcd,
    etcd::{ETCD_USER, Mode},
    etcd_test,
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};

/// A fresh private dir for one test.
fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sg-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// A gateway put of `key` = `value` with `token`; the JSON answer.
fn gateway_put(etcd: &Etcd, key: &str, value: &str, token: Option<&str>) -> Value {
    let body = json!({"key": B64.encode(key), "value": B64.encode(value)});
    etcd.post_json("/v3/kv/put", &body, token)
}

/// What every mode must do: store, read back, list, and keep it all over
/// a stop and over a SIGKILL.
fn exercise(etcd: &mut Etcd) {
    etcd.put("/stopguard/a", "1");
    etcd.put("/stopguard/b", "two words\nand a line");
    etcd.put("/other/c", "-starts with a dash");
    assert_eq!(etcd.get("/stopguard/a").as_deref(), Some("1"));
    assert_eq!(
        etcd.get("/stopguard/b").as_deref(),
        Some("two words\nand a line")
    );
    assert_eq!(etcd.get("/other/c").as_deref(), Some("-starts with a dash"));
    assert_eq!(etcd.get("/stopguard/missing"), None);
    assert_eq!(etcd.keys("/stopguard/"), ["/stopguard/a", "/stopguard/b"]);

    let port = etcd.port;
    etcd.stop();
    assert_eq!(etcd.pid(), None);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    etcd.start_again();
    assert_eq!(etcd.port, port);
    assert_eq!(etcd.get("/stopguard/a").as_deref(), Some("1"));

    etcd.kill();
    etcd.start_again();
    assert_eq!(etcd.keys("/stopguard/"), ["/stopguard/a", "/stopguard/b"]);
}

#[test]
fn plain() {
    if !etcd_test("plain") {
        return;
    }
    let dir = test_dir("etcd-plain");
    let mut etcd = Etcd::start(&dir, Mode::Plain);
    assert_eq!(etcd.endpoint(), format!("http://127.0.0.1:{}", etcd.port));
    assert_eq!(etcd.ca_file(), None);
    assert_eq!(etcd.password_file(), None);
    exercise(&mut etcd);
    let answer = gateway_put(&etcd, "/stopguard/gw", "x", None);
    assert!(answer["header"]["revision"].is_string(), "{answer}");
    assert_eq!(etcd.get("/stopguard/gw").as_deref(), Some("x"));
    etcd.stop();
    drop(etcd);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn tls() {
    if !etcd_test("tls") {
        return;
    }
    let dir = test_dir("etcd-tls");
    let mut etcd = Etcd::start(&dir, Mode::Tls);
    assert_eq!(etcd.endpoint(), format!("https://127.0.0.1:{}", etcd.port));
    for file in [etcd.ca_file(), etcd.cert_file(), etcd.key_file()] {
        assert!(file.unwrap().exists());
    }
    assert_eq!(etcd.password_file(), None);
    exercise(&mut etcd);
    // Without a client certificate the handshake fails.
    let status = Command::new("curl")
        .args(["-sS", "--max-time", "3", "--cacert"])
        .arg(etcd.ca_file().unwrap())
        .arg(format!("{}/health", etcd.endpoint()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    drop(etcd);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn tls_auth() {
    if !etcd_test("tls_auth") {
        return;
    }
    let dir = test_dir("etcd-tls-auth");
    let mut etcd = Etcd::start(&dir, Mode::TlsAuth);
    assert_eq!(etcd.user(), Some(ETCD_USER));
    let password_file = etcd.password_file().unwrap();
    let meta = fs::metadata(&password_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let password = fs::read_to_string(&password_file).unwrap();
    assert!(password.ends_with('\n'));
    exercise(&mut etcd);

    // The agent's way in: user and password, then the token.
    let token = |etcd: &Etcd| {
        let body = json!({"name": ETCD_USER, "password": password.trim()});
        let answer = etcd.post_json("/v3/auth/authenticate", &body, None);
        answer["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {answer}"))
            .to_string()
    };
    let t = token(&etcd);
    let ok = gateway_put(&etcd, "/stopguard/x", "mine", Some(&t));
    assert!(ok["header"]["revision"].is_string(), "{ok}");
    assert_eq!(etcd.get("/stopguard/x").as_deref(), Some("mine"));
    let denied = gateway_put(&etcd, "/other/x", "not mine", Some(&t));
    assert_eq!(denied["error"], "etcdserver: permission denied", "{denied}");
    assert_eq!(etcd.get("/other/x"), None);
    let anonymous = gateway_put(&etcd, "/stopguard/y", "anyone", None);
    assert!(anonymous["error"].is_string(), "{anonymous}");
    let wrong = etcd.post_json(
        "/v3/auth/authenticate",
        &json!({"name": ETCD_USER, "password": "wrong"}),
        None,
    );
    assert!(wrong["token"].is_null(), "{wrong}");

    // Users, role and auth live in the data dir: a restart keeps them.
    etcd.start_again();
    let t = token(&etcd);
    let ok = gateway_put(&etcd, "/stopguard/z", "again", Some(&t));
    assert!(ok["header"]["revision"].is_string(), "{ok}");
    let denied = gateway_put(&etcd, "/other/z", "again", Some(&t));
    assert_eq!(denied["error"], "etcdserver: permission denied", "{denied}");
    drop(etcd);
    let _ = fs::remove_dir_all(&dir);
}
