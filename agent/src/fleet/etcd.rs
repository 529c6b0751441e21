//! etcd v3 through its JSON gateway (`/v3/kv/range`, `/v3/watch`...), over
//! the HTTP client the sinks already use: TLS with a CA and a client
//! certificate, etcd's own users (a token from `/v3/auth/authenticate` in
//! the `Authorization` header), endpoints tried in turn, a deadline on
//! every call.

use std::{
    io::{BufRead, BufReader},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde::Deserialize;
use serde_json::{Value, json};

use super::store::{Change, Kv, Lease, Listing, Store, WatchEnd};
use crate::config::fleet::Fleet;

/// The deadline of one call.
const CALL_DEADLINE: Duration = Duration::from_secs(3);
/// The largest answer read: a listing of a thousand hosts' records fits.
const ANSWER_CAP: u64 = 64 * 1024 * 1024;

pub struct Etcd {
    endpoints: Vec<String>,
    /// The endpoint that answered last.
    current: AtomicUsize,
    http: ureq::Agent,
    auth: Option<(String, String)>,
    token: Mutex<Option<String>>,
}

/// A failure the next endpoint may not have.
#[derive(Debug)]
enum Failure {
    /// No answer: try the next endpoint.
    Unreachable(anyhow::Error),
    /// etcd answered with an error.
    Refused { status: u16, message: String },
}

impl Etcd {
    /// A client for `fleet`'s endpoints; reads its TLS files and password.
    pub fn new(fleet: &Fleet) -> Result<Etcd> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &fleet.tls.ca_file {
            let pem =
                std::fs::read(ca).with_context(|| format!("[fleet] ca_file {}", ca.display()))?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                bail!("[fleet] ca_file {}: no PEM certificate in it", ca.display());
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        if let (Some(cert), Some(key)) = (&fleet.tls.cert_file, &fleet.tls.key_file) {
            let pem = std::fs::read(cert)
                .with_context(|| format!("[fleet] cert_file {}", cert.display()))?;
            let chain: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if chain.is_empty() {
                bail!(
                    "[fleet] cert_file {}: no PEM certificate in it",
                    cert.display()
                );
            }
            let pem = std::fs::read(key)
                .with_context(|| format!("[fleet] key_file {}", key.display()))?;
            let key = ureq::tls::PrivateKey::from_pem(&pem)
                .map_err(|e| anyhow!("[fleet] key_file {}: {e}", key.display()))?;
            tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
        }
        let auth = match &fleet.auth {
            None => None,
            Some(auth) => {
                let password = std::fs::read_to_string(&auth.password_file).with_context(|| {
                    format!("[fleet] password_file {}", auth.password_file.display())
                })?;
                Some((
                    auth.user.clone(),
                    password.trim_end_matches(['\n', '\r']).to_string(),
                ))
            }
        };
        Ok(Etcd {
            endpoints: fleet.endpoints.iter().map(|e| e.url.clone()).collect(),
            current: AtomicUsize::new(0),
            http: ureq::Agent::config_builder()
                .tls_config(tls.build())
                .timeout_global(Some(CALL_DEADLINE))
                .http_status_as_error(false)
                .build()
                .into(),
            auth,
            token: Mutex::new(None),
        })
    }

    /// POSTs `body` to `path` on one endpoint.
    fn post_to(
        &self,
        endpoint: &str,
        path: &str,
        body: &Value,
        length: Option<Duration>,
    ) -> Result<ureq::http::Response<ureq::Body>, Failure> {
        let mut request = self
            .http
            .post(format!("{endpoint}{path}"))
            .content_type("application/json");
        if let Some(length) = length {
            request = request.config().timeout_global(Some(length)).build();
        }
        if let Some(token) = self.token.lock().unwrap().clone() {
            request = request.header("Authorization", token);
        }
        let mut response = request
            .send(body.to_string())
            .map_err(|e| Failure::Unreachable(anyhow!("{endpoint}: {e}")))?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(response);
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .or_else(|| v.get("error"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or(text);
        Err(Failure::Refused { status, message })
    }

    /// POSTs `body` to `path` on the endpoints in turn, authenticating
    /// again once when the token is refused.
    fn post(
        &self,
        path: &str,
        body: &Value,
        length: Option<Duration>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut unreachable = Vec::new();
        let start = self.current.load(Ordering::Relaxed);
        for step in 0..self.endpoints.len() {
            let at = (start + step) % self.endpoints.len();
            let endpoint = &self.endpoints[at];
            let mut tried_token = false;
            loop {
                if self.auth.is_some() && self.token.lock().unwrap().is_none() {
                    match self.authenticate(endpoint) {
                        Ok(()) => {}
                        Err(Failure::Unreachable(e)) => {
                            unreachable.push(e);
                            break;
                        }
                        Err(Failure::Refused { message, .. }) => {
                            bail!("etcd refused user authentication: {message}")
                        }
                    }
                }
                match self.post_to(endpoint, path, body, length) {
                    Ok(response) => {
                        self.current.store(at, Ordering::Relaxed);
                        return Ok(response);
                    }
                    Err(Failure::Unreachable(e)) => {
                        unreachable.push(e);
                        break;
                    }
                    Err(Failure::Refused { message, .. })
                        if self.auth.is_some() && !tried_token && message.contains("token") =>
                    {
                        tried_token = true;
                        *self.token.lock().unwrap() = None;
                    }
                    Err(Failure::Refused { status, message }) => {
                        bail!("etcd {path}: {message} (HTTP {status})")
                    }
                }
            }
        }
        let reasons: Vec<String> = unreachable.iter().map(|e| format!("{e:#}")).collect();
        bail!("etcd unreachable: {}", reasons.join("; "))
    }

    fn authenticate(&self, endpoint: &str) -> Result<(), Failure> {
        let (user, password) = self.auth.as_ref().expect("authenticate with auth");
        let mut response = self.post_to(
            endpoint,
            "/v3/auth/authenticate",
            &json!({ "name": user, "password": password }),
            None,
        )?;
        let answer: Value = read_json(&mut response).map_err(Failure::Unreachable)?;
        let token = answer["token"].as_str().ok_or_else(|| Failure::Refused {
            status: 200,
            message: "no token in the answer".into(),
        })?;
        *self.token.lock().unwrap() = Some(token.to_string());
        Ok(())
    }

    fn call(&self, path: &str, body: &Value) -> Result<Value> {
        let mut response = self.post(path, body, None)?;
        read_json(&mut response)
    }
}

fn read_json(response: &mut ureq::http::Response<ureq::Body>) -> Result<Value> {
    let text = response
        .body_mut()
        .with_config()
        .limit(ANSWER_CAP)
        .read_to_string()?;
    Ok(serde_json::from_str(&text)?)
}

fn b64(text: &str) -> String {
    B64.encode(text)
}

/// The end of the key range holding every key that starts with `prefix`.
fn range_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return B64.encode(end);
        }
    }
    B64.encode([0u8])
}

/// etcd's int64 fields come as JSON strings.
fn int(value: &Value) -> i64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

#[derive(Deserialize)]
struct RawKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, alias = "modRevision")]
    mod_revision: Value,
}

impl RawKv {
    fn decode(self) -> Result<Kv> {
        Ok(Kv {
            key: String::from_utf8(B64.decode(&self.key)?)?,
            value: B64.decode(&self.value)?,
            revision: int(&self.mod_revision),
        })
    }
}

impl Store for Etcd {
    fn grant(&self, ttl: Duration) -> Result<Lease> {
        let answer = self.call("/v3/lease/grant", &json!({ "TTL": ttl.as_secs().max(1) }))?;
        match int(&answer["ID"]) {
            0 => bail!("etcd granted no lease: {answer}"),
            id => Ok(id),
        }
    }

    fn keep_alive(&self, lease: Lease) -> Result<bool> {
        let answer = self.call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))?;
        Ok(int(&answer["result"]["TTL"]) > 0)
    }

    fn revoke(&self, lease: Lease) -> Result<()> {
        match self.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() })) {
            Err(e) if format!("{e:#}").contains("lease not found") => Ok(()),
            other => other.map(drop),
        }
    }

    fn put(&self, key: &str, value: &[u8], lease: Option<Lease>) -> Result<()> {
        let mut body = json!({ "key": b64(key), "value": B64.encode(value) });
        if let Some(lease) = lease {
            body["lease"] = json!(lease.to_string());
        }
        self.call("/v3/kv/put", &body).map(drop)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.call("/v3/kv/deleterange", &json!({ "key": b64(key) }))
            .map(drop)
    }

    fn list(&self, prefix: &str) -> Result<Listing> {
        let answer = self.call(
            "/v3/kv/range",
            &json!({ "key": b64(prefix), "range_end": range_end(prefix) }),
        )?;
        let kvs = match answer.get("kvs") {
            None => Vec::new(),
            Some(kvs) => Vec::<RawKv>::deserialize(kvs)?
                .into_iter()
                .map(RawKv::decode)
                .collect::<Result<_>>()?,
        };
        Ok(Listing {
            kvs,
            revision: int(&answer["header"]["revision"]),
        })
    }

    fn count(&self, prefix: &str) -> Result<usize> {
        let answer = self.call(
            "/v3/kv/range",
            &json!({ "key": b64(prefix), "range_end": range_end(prefix), "count_only": true }),
        )?;
        Ok(int(&answer["count"]) as usize)
    }

    fn watch(
        &self,
        prefix: &str,
        from: i64,
        length: Duration,
        on: &mut dyn FnMut(Change),
    ) -> Result<WatchEnd> {
        let body = json!({ "create_request": {
            "key": b64(prefix),
            "range_end": range_end(prefix),
            "start_revision": from.to_string(),
        }});
        let response = self.post("/v3/watch", &body, Some(length))?;
        let mut next = from;
        let reader = BufReader::new(response.into_body().into_reader());
        for line in reader.lines() {
            // The deadline ends the stream: watch again from `next`.
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            let message: Value = serde_json::from_str(&line)
                .with_context(|| format!("etcd watch: not JSON: {line}"))?;
            if let Some(error) = message.get("error") {
                bail!("etcd watch: {error}");
            }
            let result = &message["result"];
            if int(&result["compact_revision"]) > 0 {
                return Ok(WatchEnd::Compacted);
            }
            if let Some(events) = result.get("events").and_then(Value::as_array) {
                for event in events {
                    let kv = RawKv::deserialize(&event["kv"])?.decode()?;
                    next = next.max(kv.revision + 1);
                    if event["type"] == "DELETE" {
                        on(Change::Delete {
                            key: kv.key,
                            revision: kv.revision,
                        });
                    } else {
                        on(Change::Put(kv));
                    }
                }
            }
        }
        Ok(WatchEnd::From(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_past_every_key_under_it() {
        assert_eq!(B64.decode(range_end("/sg/")).unwrap(), b"/sg0");
        assert_eq!(B64.decode(range_end("a\u{ff}")).unwrap(), b"a\xc3\xc0");
    }

    #[test]
    fn int64_fields_read_as_strings_or_numbers() {
        assert_eq!(int(&json!("7587869")), 7587869);
        assert_eq!(int(&json!(12)), 12);
        assert_eq!(int(&Value::Null), 0);
    }
}
