//! Alert delivery. Every alert is written to a spool in `state_dir`
//! (synced) before any attempt; one task per sink delivers in order,
//! retries with exponential backoff and jitter, honours `Retry-After`, and
//! marks an alert undeliverable for that sink only after `max_age` — logged
//! and audited, never dropped silently. A sink that is down holds up only
//! itself: detection and the other sinks go on.

pub mod payload;

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{
    audit::AuditLog,
    config::{SecretSource, Severity, SinkConfig, SinkKind},
    metrics::Metrics,
};

/// The severity an alert record states.
fn severity_of(alert: &Value) -> Severity {
    match alert["severity"].as_str() {
        Some("critical") => Severity::Critical,
        Some("warning") => Severity::Warning,
        _ => Severity::Info,
    }
}

/// A sink ready to deliver: its secret read, its limits set.
#[derive(Clone)]
pub struct Sink {
    pub name: String,
    pub kind: SinkKind,
    pub url: String,
    secret: Option<String>,
    pub min_severity: Severity,
    pub max_age: Duration,
    /// Slack takes about one message a second per webhook.
    min_interval: Duration,
    /// One HTTP client per sink: its connections are kept between alerts.
    http: ureq::Agent,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(f, "{} ({:?} {})", self.name, self.kind, self.shown_url())
    }
}

impl Sink {
    /// The URL without its path: chat webhook URLs carry their token there.
    pub fn shown_url(&self) -> String {
        let (scheme, rest) = self.url.split_once("://").unwrap_or(("", &self.url));
        let host = rest.split(['/', '?']).next().unwrap_or("");
        let more = if rest.len() > host.len() { "/…" } else { "" };
        format!("{scheme}://{host}{more}")
    }
}

/// A sink in `stopguard status`: the URL without its path.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SinkStatus {
    pub name: String,
    pub kind: SinkKind,
    pub url: String,
    pub min_severity: Severity,
    pub health: Health,
}

/// How a sink has been doing, for `stopguard status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Health {
    pub delivered: u64,
    pub failed_attempts: u64,
    pub undeliverable: u64,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

type Healths = Arc<Mutex<BTreeMap<String, Health>>>;

fn now_text() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The result of a test alert to one sink.
#[derive(Debug, Serialize, Deserialize)]
pub struct TestResult {
    pub sink: String,
    pub ok: bool,
    pub status: Option<u16>,
    pub latency_ms: f64,
    pub error: Option<String>,
}

/// Sends `alert` to `sink` now, once, outside the spool: `stopguard alert test`.
pub async fn test(sink: Sink, alert: Value) -> TestResult {
    let started = std::time::Instant::now();
    let name = sink.name.clone();
    let outcome = tokio::task::spawn_blocking(move || send(&sink, &alert))
        .await
        .unwrap_or_else(|e| Attempt::Retry(format!("delivery task: {e}"), None));
    let latency_ms = (started.elapsed().as_secs_f64() * 1e4).round() / 10.0;
    match outcome {
        Attempt::Delivered(status) => TestResult {
            sink: name,
            ok: true,
            status: Some(status),
            latency_ms,
            error: None,
        },
        Attempt::Retry(error, _) => TestResult {
            sink: name,
            ok: false,
            status: None,
            latency_ms,
            error: Some(error),
        },
    }
}

/// Reads each sink's secret; errors name the sink and where it looked.
pub fn load(sinks: &[SinkConfig]) -> Result<Vec<Sink>> {
    sinks
        .iter()
        .map(|config| {
            let name = &config.name;
            let secret = match &config.secret {
                Some(SecretSource::File(path)) => Some(
                    fs::read_to_string(path)
                        .with_context(|| {
                            format!("sink `{name}`: reading secret_file {}", path.display())
                        })?
                        .trim()
                        .to_string(),
                ),
                Some(SecretSource::Env(var)) => Some(
                    std::env::var(var)
                        .with_context(|| format!("sink `{name}`: secret_env `{var}` is not set"))?,
                ),
                None => None,
            };
            Ok(Sink {
                name: name.clone(),
                kind: config.kind,
                url: config.url.clone(),
                secret,
                min_severity: config.min_severity,
                max_age: config.max_age,
                http: ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(10)))
                    .http_status_as_error(false)
                    .build()
                    .into(),
                min_interval: if config.kind == SinkKind::Slack {
                    Duration::from_secs(1)
                } else {
                    Duration::ZERO
                },
            })
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Delivered,
    Undeliverable,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SinkState {
    pub status: Status,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// One spooled alert and where it has got to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spooled {
    pub alert: Value,
    pub spooled_at_unix_ms: u64,
    pub sinks: BTreeMap<String, SinkState>,
}

/// Alerts not yet delivered everywhere, one synced file each.
pub struct Spool {
    dir: PathBuf,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl Spool {
    pub fn open(dir: &Path) -> Result<Spool> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Spool {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        let safe: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{safe}.json"))
    }

    fn write(&self, id: &str, entry: &Spooled) -> Result<()> {
        let path = self.path(id);
        let tmp = path.with_extension("json.tmp");
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(entry)?)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    fn read(&self, id: &str) -> Option<Spooled> {
        serde_json::from_slice(&fs::read(self.path(id)).ok()?).ok()
    }

    /// Every spooled alert, oldest first.
    pub fn pending(&self) -> Vec<Spooled> {
        let mut all: Vec<Spooled> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&fs::read(e.path()).ok()?).ok())
            .collect();
        all.sort_by_key(|s: &Spooled| s.spooled_at_unix_ms);
        all
    }

    /// How many alerts are spooled: a directory listing, nothing parsed.
    pub fn depth(&self) -> usize {
        fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .count()
    }

    /// Records what happened to `id` at `sink`; the file goes once no sink
    /// is pending.
    fn update(&self, id: &str, sink: &str, state: SinkState) -> Result<()> {
        let Some(mut entry) = self.read(id) else {
            return Ok(());
        };
        entry.sinks.insert(sink.to_string(), state);
        if entry.sinks.values().all(|s| s.status != Status::Pending) {
            fs::remove_file(self.path(id))?;
            Ok(())
        } else {
            self.write(id, &entry)
        }
    }
}

/// The delivery side of the agent: the spool and a queue per sink.
pub struct Delivery {
    metrics: Metrics,
    spool: Arc<Mutex<Spool>>,
    health: Healths,
    queues: Vec<(Sink, mpsc::UnboundedSender<String>)>,
}

/// The outcome of one attempt.
enum Attempt {
    Delivered(u16),
    /// Try again; after at least this long when the receiver said so.
    Retry(String, Option<Duration>),
}

fn send(sink: &Sink, alert: &Value) -> Attempt {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let request = payload::render(sink.kind, alert, sink.secret.as_deref(), now);
    let mut builder = sink
        .http
        .post(&sink.url)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("stopguard/", env!("CARGO_PKG_VERSION")),
        );
    for (key, value) in &request.headers {
        builder = builder.header(*key, value);
    }
    match builder.send(&request.body[..]) {
        Err(err) => Attempt::Retry(format!("{err}"), None),
        Ok(response) => {
            let status = response.status().as_u16();
            if (200..300).contains(&status) {
                return Attempt::Delivered(status);
            }
            let after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Attempt::Retry(format!("HTTP {status}"), after)
        }
    }
}

/// Backoff before retry `attempt` (1, 2, ...): 1 s doubling up to 5 min,
/// ±20 % jitter so a fleet does not retry in step.
fn backoff(attempt: u32) -> Duration {
    let base =
        Duration::from_secs(1u64 << attempt.saturating_sub(1).min(8)).min(Duration::from_secs(300));
    base.mul_f64(rand::random_range(0.8..1.2))
}

impl Delivery {
    /// Opens the spool and starts one delivery task per sink, handing each
    /// what the spool still holds for it (alerts from before a restart).
    pub fn start(
        sinks: Vec<Sink>,
        spool_dir: &Path,
        audit: AuditLog,
        metrics: Metrics,
    ) -> Result<Delivery> {
        let spool = Spool::open(spool_dir)?;
        let pending = spool.pending();
        metrics.spool_depth.set(pending.len() as i64);
        let spool = Arc::new(Mutex::new(spool));
        let health: Healths = Default::default();
        let mut queues = Vec::new();
        for sink in sinks {
            let (tx, rx) = mpsc::unbounded_channel();
            for entry in &pending {
                if entry
                    .sinks
                    .get(&sink.name)
                    .is_some_and(|s| s.status == Status::Pending)
                {
                    let _ = tx.send(entry.alert["id"].as_str().unwrap_or_default().to_string());
                }
            }
            health
                .lock()
                .expect("health lock")
                .insert(sink.name.clone(), Health::default());
            let shared = Shared {
                spool: spool.clone(),
                audit: audit.clone(),
                health: health.clone(),
                metrics: metrics.clone(),
            };
            tokio::spawn(run(sink.clone(), rx, shared));
            queues.push((sink, tx));
        }
        Ok(Delivery {
            metrics,
            spool,
            health,
            queues,
        })
    }

    /// Spools `alert` (synced to disk) and queues it for every sink whose
    /// `min_severity` it meets.
    pub fn deliver(&self, alert: &Value) -> Result<()> {
        self.spool_for(alert, |_| true)
    }

    /// Says that `alert` is over (its process thawed or killed, its window
    /// closed) to the sinks that track alert state: Alertmanager (endsAt)
    /// and PagerDuty (resolve).
    pub fn resolve(&self, alert: &Value) -> Result<()> {
        let mut resolved = alert.clone();
        let id = alert["id"].as_str().unwrap_or_default();
        resolved["id"] = json!(format!("{id}-resolved"));
        resolved["resolves"] = json!(id);
        resolved["resolved_at"] =
            json!(humantime::format_rfc3339_millis(SystemTime::now()).to_string());
        self.spool_for(&resolved, |kind| {
            matches!(kind, SinkKind::Alertmanager | SinkKind::Pagerduty)
        })
    }

    fn spool_for(&self, alert: &Value, kinds: impl Fn(SinkKind) -> bool) -> Result<()> {
        let id = alert["id"].as_str().unwrap_or_default().to_string();
        let wanted: Vec<&(Sink, _)> = self
            .queues
            .iter()
            .filter(|(sink, _)| kinds(sink.kind) && severity_of(alert) >= sink.min_severity)
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let entry = Spooled {
            alert: alert.clone(),
            spooled_at_unix_ms: unix_ms(SystemTime::now()),
            sinks: wanted
                .iter()
                .map(|(sink, _)| {
                    (
                        sink.name.clone(),
                        SinkState {
                            status: Status::Pending,
                            attempts: 0,
                            last_error: None,
                        },
                    )
                })
                .collect(),
        };
        let spool = self.spool.lock().expect("spool lock");
        spool.write(&id, &entry)?;
        self.metrics.spool_depth.set(spool.depth() as i64);
        drop(spool);
        for (_, queue) in wanted {
            let _ = queue.send(id.clone());
        }
        Ok(())
    }

    /// Alerts still waiting for at least one sink.
    pub fn spool_depth(&self) -> usize {
        self.spool.lock().expect("spool lock").depth()
    }

    pub fn sinks(&self) -> impl Iterator<Item = &Sink> {
        self.queues.iter().map(|(s, _)| s)
    }

    /// Each sink: name, kind, host, and how it has been doing.
    pub fn status(&self) -> Vec<SinkStatus> {
        let health = self.health.lock().expect("health lock");
        self.sinks()
            .map(|s| SinkStatus {
                name: s.name.clone(),
                kind: s.kind,
                url: s.shown_url(),
                min_severity: s.min_severity,
                health: health.get(&s.name).cloned().unwrap_or_default(),
            })
            .collect()
    }
}

/// What a sink's delivery loop shares with the agent.
struct Shared {
    spool: Arc<Mutex<Spool>>,
    audit: AuditLog,
    health: Healths,
    metrics: Metrics,
}

/// One sink's delivery loop: its alerts in order, each until delivered or
/// too old.
async fn run(sink: Sink, mut queue: mpsc::UnboundedReceiver<String>, shared: Shared) {
    let Shared {
        spool,
        audit,
        health,
        metrics,
    } = shared;
    let outcome = |what: &str| {
        metrics
            .deliveries
            .get_or_create(&vec![
                ("sink", sink.name.clone()),
                ("outcome", what.to_string()),
            ])
            .inc();
    };
    let update = |id: &str, state: SinkState| {
        let spool = spool.lock().expect("spool lock");
        if let Err(err) = spool.update(id, &sink.name, state) {
            tracing::error!("spool: {err:#}");
        }
        metrics.spool_depth.set(spool.depth() as i64);
    };
    let note = |f: &dyn Fn(&mut Health)| {
        if let Some(h) = health.lock().expect("health lock").get_mut(&sink.name) {
            f(h);
        }
    };
    let mut last_sent: Option<tokio::time::Instant> = None;
    while let Some(id) = queue.recv().await {
        let mut attempts = 0;
        loop {
            let Some(entry) = spool.lock().expect("spool lock").read(&id) else {
                break;
            };
            if let Some(state) = entry.sinks.get(&sink.name) {
                if state.status != Status::Pending {
                    break;
                }
                attempts = attempts.max(state.attempts);
            }
            let age = Duration::from_millis(
                unix_ms(SystemTime::now()).saturating_sub(entry.spooled_at_unix_ms),
            );
            if age > sink.max_age {
                tracing::error!(
                    "alert {id} undeliverable to sink {}: still failing after {}",
                    sink.name,
                    humantime::format_duration(sink.max_age)
                );
                audit.write(&json!({"event": "alert_undeliverable", "sink": sink.name, "id": id, "attempts": attempts}));
                note(&|h| h.undeliverable += 1);
                outcome("undeliverable");
                let state = SinkState {
                    status: Status::Undeliverable,
                    attempts,
                    last_error: Some("max_age reached".into()),
                };
                update(&id, state);
                break;
            }
            if let Some(last) = last_sent {
                tokio::time::sleep_until(last + sink.min_interval).await;
            }
            last_sent = Some(tokio::time::Instant::now());
            attempts += 1;
            let started = std::time::Instant::now();
            let (s, alert) = (sink.clone(), entry.alert.clone());
            let result = tokio::task::spawn_blocking(move || send(&s, &alert))
                .await
                .unwrap_or_else(|e| Attempt::Retry(format!("delivery task: {e}"), None));
            match result {
                Attempt::Delivered(status) => {
                    let ms = started.elapsed().as_secs_f64() * 1e3;
                    tracing::info!(
                        "alert {id} delivered to {} (HTTP {status}, {ms:.1} ms, attempt {attempts})",
                        sink.name
                    );
                    audit.write(&json!({"event": "alert_delivered", "sink": sink.name, "id": id, "attempts": attempts, "status": status}));
                    note(&|h| {
                        h.delivered += 1;
                        h.last_success = Some(now_text());
                    });
                    outcome("delivered");
                    let spooled_for =
                        unix_ms(SystemTime::now()).saturating_sub(entry.spooled_at_unix_ms);
                    metrics
                        .delivery_latency
                        .get_or_create(&vec![("sink", sink.name.clone())])
                        .observe(spooled_for as f64 / 1e3);
                    let state = SinkState {
                        status: Status::Delivered,
                        attempts,
                        last_error: None,
                    };
                    update(&id, state);
                    break;
                }
                Attempt::Retry(error, after) => {
                    note(&|h| {
                        h.failed_attempts += 1;
                        h.last_error = Some(error.clone());
                        h.last_error_at = Some(now_text());
                    });
                    outcome("failed");
                    let wait = after.unwrap_or_default().max(backoff(attempts));
                    tracing::warn!(
                        "alert {id} to {}: {error}; attempt {attempts}, next in {:.1} s",
                        sink.name,
                        wait.as_secs_f64()
                    );
                    let state = SinkState {
                        status: Status::Pending,
                        attempts,
                        last_error: Some(error),
                    };
                    update(&id, state);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
