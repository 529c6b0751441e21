//! Getting spooled alerts to the sinks: one task per sink, in order, each
//! alert until it is delivered or too old.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use tokio::sync::mpsc;

use super::{
    Sink,
    spool::{SinkState, Spool, Spooled, Status, unix_ms},
};
use crate::{
    alert::Alert,
    audit::{AgentEvent, AuditLog},
    control::{Health, SinkStatus, TestResult},
    sys::files::WriteFailure,
    sys::metrics::Metrics,
};

type Healths = Arc<Mutex<BTreeMap<String, Health>>>;

fn now_text() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Sends `alert` to `sink` now, once, outside the spool: `stopguard alert test`.
pub async fn test(sink: Sink, alert: Alert) -> TestResult {
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

fn send(sink: &Sink, alert: &Alert) -> Attempt {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let request = sink.render(alert, now);
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
                .and_then(|v| v.to_str().ok());
            Attempt::Retry(format!("HTTP {status}"), retry_after(after))
        }
    }
}

/// A `Retry-After` header's wait, when it gives one in seconds.
fn retry_after(header: Option<&str>) -> Option<Duration> {
    header
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Backoff before retry `attempt` (1, 2, ...) without jitter: 1 s doubling,
/// at most 2^8 s (4 min 16 s).
fn backoff_base(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(8))
}

/// The backoff with ±20 % jitter, so a fleet does not retry in step.
fn backoff(attempt: u32) -> Duration {
    backoff_base(attempt).mul_f64(rand::random_range(0.8..1.2))
}

/// How long to wait after failed attempt `attempt`: the backoff, or longer
/// when the receiver asked for longer.
fn wait_after(attempt: u32, retry_after: Option<Duration>) -> Duration {
    retry_after.unwrap_or_default().max(backoff(attempt))
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
            for entry in pending.iter().filter(|e| e.pending_for(&sink.name)) {
                let _ = tx.send(entry.alert.id.clone());
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
    pub fn deliver(&self, alert: &Alert) -> Result<()> {
        self.spool_for(alert, |_| true)
    }

    /// Says that `alert` is over (its process thawed or killed, its window
    /// closed) to the sinks that track alert state.
    pub fn resolve(&self, alert: &Alert) -> Result<()> {
        let resolution = alert.resolution(now_text());
        self.spool_for(&resolution, |sink| sink.format.tracks_resolution())
    }

    fn spool_for(&self, alert: &Alert, wanted: impl Fn(&Sink) -> bool) -> Result<()> {
        let wanted: Vec<&(Sink, _)> = self
            .queues
            .iter()
            .filter(|(sink, _)| wanted(sink) && alert.severity >= sink.min_severity)
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let entry = Spooled {
            alert: alert.clone(),
            spooled_at_unix_ms: unix_ms(SystemTime::now()),
            sinks: wanted
                .iter()
                .map(|(sink, _)| (sink.name.clone(), SinkState::pending()))
                .collect(),
        };
        let mut spool = self.spool.lock().expect("spool lock");
        let written = spool.write(&entry);
        self.spool_metrics(&spool);
        if written.is_err() {
            self.metrics.spool_write_errors.inc();
        }
        drop(spool);
        // Queued even when the disk refused it: the spool holds it in
        // memory, and the sinks deliver it from there.
        for (_, queue) in wanted {
            let _ = queue.send(alert.id.clone());
        }
        written
    }

    fn spool_metrics(&self, spool: &Spool) {
        self.metrics.spool_depth.set(spool.depth() as i64);
        self.metrics.spool_unsynced.set(spool.unsynced() as i64);
    }

    /// Writes out the alerts the disk refused before; returns how many it
    /// took now.
    pub fn retry_unsynced(&self) -> usize {
        let mut spool = self.spool.lock().expect("spool lock");
        if spool.unsynced() == 0 {
            return 0;
        }
        let written = spool.retry_unsynced();
        self.spool_metrics(&spool);
        written
    }

    /// How many alerts are held in memory only, and why, when any is.
    pub fn spool_failure(&self) -> Option<(usize, WriteFailure)> {
        let spool = self.spool.lock().expect("spool lock");
        spool.failure().map(|f| (spool.unsynced(), f.clone()))
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
        let mut spool = spool.lock().expect("spool lock");
        if let Err(err) = spool.update(id, &sink.name, state) {
            tracing::error!("spool: {err:#}");
        }
        metrics.spool_depth.set(spool.depth() as i64);
        metrics.spool_unsynced.set(spool.unsynced() as i64);
    };
    let note = |f: &dyn Fn(&mut Health)| {
        if let Some(h) = health.lock().expect("health lock").get_mut(&sink.name) {
            f(h);
        }
    };
    let min_interval = sink.format.min_interval();
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
                audit.write(AgentEvent::AlertUndeliverable {
                    service: entry.alert.service.clone(),
                    sink: sink.name.clone(),
                    id: id.clone(),
                    attempts,
                });
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
                tokio::time::sleep_until(last + min_interval).await;
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
                    audit.write(AgentEvent::AlertDelivered {
                        service: entry.alert.service.clone(),
                        sink: sink.name.clone(),
                        id: id.clone(),
                        attempts,
                        status,
                    });
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
                    let wait = wait_after(attempts, after);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second() {
        let seconds: Vec<u64> = (1..=5).map(|a| backoff_base(a).as_secs()).collect();
        assert_eq!(seconds, [1, 2, 4, 8, 16]);
        assert_eq!(backoff_base(0), Duration::from_secs(1));
    }

    #[test]
    fn backoff_is_capped_at_256_seconds() {
        for attempt in [9, 10, 40, u32::MAX] {
            assert_eq!(backoff_base(attempt), Duration::from_secs(256), "{attempt}");
        }
        assert!(backoff(u32::MAX) < Duration::from_secs(308));
    }

    #[test]
    fn backoff_jitter_stays_within_twenty_percent() {
        for attempt in [1, 4, 9] {
            let base = backoff_base(attempt).as_secs_f64();
            for _ in 0..500 {
                let got = backoff(attempt).as_secs_f64();
                assert!(
                    got >= base * 0.8 - 1e-9 && got <= base * 1.2 + 1e-9,
                    "{got} from {base}"
                );
            }
        }
    }

    #[test]
    fn retry_after_is_honoured() {
        assert_eq!(retry_after(Some(" 3 ")), Some(Duration::from_secs(3)));
        // HTTP dates and garbage fall back to the backoff.
        assert_eq!(retry_after(Some("Wed, 21 Oct 2026 07:28:00 GMT")), None);
        assert_eq!(retry_after(None), None);
        // The receiver's wait wins when it is longer than the backoff...
        assert!(wait_after(1, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
        // ...and the backoff when it is longer than the receiver's.
        assert!(wait_after(9, Some(Duration::from_secs(1))) >= Duration::from_secs(204));
    }
}
