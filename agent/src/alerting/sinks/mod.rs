//! Alert delivery to the `[[sink]]`s. Every alert is written to a spool in
//! `state_dir` (synced) before any attempt; one task per sink delivers in
//! order, retries with exponential backoff and jitter, honours
//! `Retry-After`, and marks an alert undeliverable for that sink only after
//! `max_age` — logged and audited, never dropped silently. A sink that is
//! down holds up only itself: detection and the other sinks go on.
//!
//! - one file per kind of sink (`webhook`, `slack`, `teams`,
//!   `alertmanager`, `pagerduty`): what it sends, registered in `format`;
//!   `message`: the text the chat and paging kinds share.
//! - `spool`: alerts on disk until every sink is done with them.
//! - `delivery`: the per-sink tasks, retries, health, the test alert.

mod alertmanager;
mod delivery;
mod message;
mod pagerduty;
mod slack;
mod spool;
mod teams;
mod webhook;

use std::{fs, time::Duration};

use anyhow::{Context, Result};
use serde::Serialize;

pub use self::delivery::{Delivery, test};
use crate::{
    alert::Alert,
    config::{SecretSource, Severity, SinkConfig, SinkKind},
};

/// An HTTP request body and the headers that go with it.
pub struct Request {
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Request {
    fn json(body: &impl Serialize) -> Request {
        Request {
            body: serde_json::to_vec(body).expect("payloads serialize"),
            headers: Vec::new(),
        }
    }
}

/// Everything particular to one kind of sink.
pub trait SinkFormat: Sync {
    /// The request that tells this kind of receiver about `alert` (which
    /// may be a resolution: `resolves`, `resolved_at`).
    fn render(&self, alert: &Alert, secret: Option<&str>, now_unix: u64) -> Request;

    /// The least time between two requests to one receiver.
    fn min_interval(&self) -> Duration {
        Duration::ZERO
    }

    /// Whether the receiver keeps an alert open until told it ended; only
    /// these are sent resolutions.
    fn tracks_resolution(&self) -> bool {
        false
    }
}

/// The one place a kind of sink is registered.
pub fn format(kind: SinkKind) -> &'static dyn SinkFormat {
    match kind {
        SinkKind::Webhook => &webhook::Webhook,
        SinkKind::Slack => &slack::Slack,
        SinkKind::Teams => &teams::Teams,
        SinkKind::Alertmanager => &alertmanager::Alertmanager,
        SinkKind::Pagerduty => &pagerduty::Pagerduty,
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
    format: &'static dyn SinkFormat,
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

    fn render(&self, alert: &Alert, now_unix: u64) -> Request {
        self.format.render(alert, self.secret.as_deref(), now_unix)
    }
}

/// Reads a secret file; warns when anyone on the host can read it too.
fn readable_secret(sink: &str, path: &std::path::Path) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    if fs::metadata(path).is_ok_and(|m| m.mode() & 0o004 != 0) {
        tracing::warn!(
            "sink `{sink}`: secret_file {} is readable by everyone on this host (chmod o-r it)",
            path.display()
        );
    }
    fs::read_to_string(path)
}

/// Reads each sink's secret; errors name the sink and where it looked.
pub fn load(sinks: &[SinkConfig]) -> Result<Vec<Sink>> {
    sinks
        .iter()
        .map(|config| {
            let name = &config.name;
            let secret = match &config.secret {
                Some(SecretSource::File(path)) => Some(
                    readable_secret(name, path)
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
                format: format(config.kind),
                http: ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(10)))
                    .http_status_as_error(false)
                    .build()
                    .into(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::{webhook::signature, *};

    fn render(kind: SinkKind, alert: &Alert, secret: Option<&str>, now_unix: u64) -> Request {
        format(kind).render(alert, secret, now_unix)
    }

    fn alert() -> Alert {
        serde_json::from_value(json!({
            "version": 1, "id": "db-3-postgres-4121-5766", "kind": "respawn_in_window",
            "severity": "critical", "host": "db-3", "service": "postgres",
            "summary": "postgres respawned by monit 1.8 s after alice (uid 1000) stopped it",
            "action": "frozen (SIGSTOP at exec, cgroup frozen); thaw with: stopguard thaw 4121",
            "process": {"pid": 4121, "exe": "/usr/lib/postgresql/15/bin/postgres", "cmdline": []},
            "respawned_by": {"supervisor": "monit", "supervisor_pid": 880, "pid": 4119, "comm": "sh", "chain": [{"pid": 4119, "comm": "sh"}, {"pid": 880, "comm": "monit"}]},
            "stopped_by": {"pid": 4090, "comm": "pg_ctl", "uid": 1000, "loginuid": 1000, "user": "alice", "signal": "SIGINT", "via": null},
            "window": {"id": "w1", "service": "postgres", "reason": "schema change", "opened_by": "alice (uid 1000)", "opened_at": "2026-11-28T19:01:02.000Z", "expires_at": null},
            "at": "2026-11-28T19:13:50.532Z", "detected_after_ms": 3.5,
        }))
        .unwrap()
    }

    #[test]
    fn standard_webhooks_signature_matches_the_reference() {
        // The example of the Standard Webhooks specification.
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                body
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn chat_payloads_lead_with_the_summary_and_name_who_and_how() {
        let slack: Value =
            serde_json::from_slice(&render(SinkKind::Slack, &alert(), None, 0).body).unwrap();
        let text = slack["text"].as_str().unwrap();
        assert!(text.starts_with("postgres respawned by monit"), "{text}");
        assert!(
            text.contains("Stopped by: alice (uid 1000), SIGINT via pg_ctl"),
            "{text}"
        );
        assert!(
            text.contains("Restarted by: monit (pid 880), chain sh &lt;- monit"),
            "{text}"
        );
        assert!(text.contains("stopguard thaw 4121 (on db-3)"), "{text}");
        assert_eq!(slack["blocks"][0]["type"], "header");

        let teams: Value =
            serde_json::from_slice(&render(SinkKind::Teams, &alert(), None, 0).body).unwrap();
        let card = &teams["attachments"][0];
        assert_eq!(
            card["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert_eq!(card["content"]["type"], "AdaptiveCard");
        assert_eq!(
            card["content"]["body"][2]["facts"][0]["title"],
            "Stopped by"
        );

        let pd: Value =
            serde_json::from_slice(&render(SinkKind::Pagerduty, &alert(), Some("R0UTING"), 0).body)
                .unwrap();
        assert_eq!(pd["routing_key"], "R0UTING");
        assert_eq!(pd["event_action"], "trigger");
        assert_eq!(pd["dedup_key"], "db-3/postgres/w1");
        assert_eq!(pd["payload"]["severity"], "critical");

        let am: Value =
            serde_json::from_slice(&render(SinkKind::Alertmanager, &alert(), None, 0).body)
                .unwrap();
        assert_eq!(am[0]["labels"]["service"], "postgres");
        assert_eq!(am[0]["labels"]["kind"], "respawn_in_window");
        assert!(am[0].get("endsAt").is_none(), "firing: no endsAt");
    }

    #[test]
    fn chat_markup_in_what_a_process_wrote_is_shown_not_obeyed() {
        let mut alert = alert();
        let hostile = "<!channel> @here <https://evil|click> [x](https://evil) a&b";
        alert.summary = format!("postgres respawned by {hostile}");
        alert.process.as_mut().unwrap().exe = hostile.into();
        let slack: Value =
            serde_json::from_slice(&render(SinkKind::Slack, &alert, None, 0).body).unwrap();
        let mut texts = vec![slack["text"].as_str().unwrap().to_string()];
        for block in slack["blocks"].as_array().unwrap().iter().skip(1) {
            let text = block["text"]["text"]
                .as_str()
                .or(block["elements"][0]["text"].as_str());
            texts.push(text.unwrap().to_string());
        }
        for text in &texts {
            assert!(
                !text.contains("<!channel>") && !text.contains("<https"),
                "{text}"
            );
            assert!(!text.contains("a&b"), "{text}");
        }
        assert!(texts[0].contains("&lt;!channel&gt; @here &lt;https://evil|click&gt;"));

        let teams: Value =
            serde_json::from_slice(&render(SinkKind::Teams, &alert, None, 0).body).unwrap();
        let body = &teams["attachments"][0]["content"]["body"];
        let summary = body[1]["text"].as_str().unwrap();
        assert!(summary.contains("\\[x\\]\\(https://evil\\)"), "{summary}");
        let process = body[2]["facts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["title"] == "Process")
            .unwrap();
        assert!(
            !process["value"].as_str().unwrap().contains("[x](https"),
            "{process}"
        );
    }

    #[test]
    fn the_webhook_body_is_the_record_with_its_keys_sorted() {
        let body = String::from_utf8(render(SinkKind::Webhook, &alert(), None, 0).body).unwrap();
        assert!(body.starts_with(r#"{"action":"frozen"#), "{body}");
        assert!(
            body.ends_with(r#""summary":"postgres respawned by monit 1.8 s after alice (uid 1000) stopped it","version":1,"window":{"expires_at":null,"id":"w1","opened_at":"2026-11-28T19:01:02.000Z","opened_by":"alice (uid 1000)","reason":"schema change","service":"postgres"}}"#),
            "{body}"
        );
    }

    #[test]
    fn resolutions_end_the_same_alert() {
        let mut resolved = alert();
        resolved.id = "db-3-postgres-4121-5766-resolved".into();
        resolved.resolves = Some("db-3-postgres-4121-5766".into());
        resolved.resolved_at = Some("2026-11-28T19:20:00.000Z".into());
        let am: Value =
            serde_json::from_slice(&render(SinkKind::Alertmanager, &resolved, None, 0).body)
                .unwrap();
        assert_eq!(am[0]["endsAt"], "2026-11-28T19:20:00.000Z");
        assert_eq!(am[0]["labels"]["alert_id"], "db-3-postgres-4121-5766");
        let pd: Value =
            serde_json::from_slice(&render(SinkKind::Pagerduty, &resolved, Some("K"), 0).body)
                .unwrap();
        assert_eq!(pd["event_action"], "resolve");
        assert_eq!(pd["dedup_key"], "db-3/postgres/w1");
    }
}
