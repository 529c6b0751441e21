//! A real HTTP receiver for the sinks, and the checks a receiver makes.

use std::{
    io::{BufRead, BufReader, Read},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;

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

/// `[[sink]]` tables for `receiver`, each `(kind, path, extra lines)`.
pub fn sinks(receiver: &Receiver, sinks: &[(&str, &str, &str)]) -> String {
    sinks
        .iter()
        .map(|(kind, path, extra)| {
            format!(
                "\n[[sink]]\nkind = \"{kind}\"\nurl = \"{}\"\n{extra}\n",
                receiver.url(path)
            )
        })
        .collect()
}
