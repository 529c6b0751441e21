//! What each kind of sink receives for an alert record.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

use crate::config::SinkKind;

/// An HTTP request body and the headers that go with it.
pub struct Request {
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// The Standard Webhooks signature: `v1,` then base64 of
/// HMAC-SHA256(key, "{id}.{timestamp}.{body}"). A secret `whsec_XXX` is
/// the base64 key XXX (the standard's form); any other secret is the key's
/// bytes as written.
pub fn signature(secret: &str, id: &str, timestamp: u64, body: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|k| b64.decode(k).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
}

fn s(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

/// The lines a person reads after the summary: who stopped it, what
/// restarted it, what was done, how to undo it.
fn details(alert: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    let stop = &alert["stopped_by"];
    if stop.is_object() {
        let who = match (stop["user"].as_str(), stop["loginuid"].as_u64()) {
            (Some(user), Some(uid)) => format!("{user} (uid {uid})"),
            (None, Some(uid)) => format!("uid {uid}"),
            _ => "someone".into(),
        };
        let via = stop["via"]
            .as_str()
            .map_or_else(|| s(&stop["comm"]).to_string(), |v| format!("`{v}`"));
        lines.push(format!(
            "Stopped by: {who}, {} via {via}",
            s(&stop["signal"])
        ));
    }
    let by = &alert["respawned_by"];
    if by.is_object() {
        let chain: Vec<&str> = by["chain"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| s(&l["comm"]))
            .collect();
        lines.push(format!(
            "Restarted by: {} (pid {}), chain {}",
            by["supervisor"].as_str().unwrap_or("unknown"),
            by["supervisor_pid"],
            chain.join(" <- ")
        ));
    }
    if let Some(pid) = alert["process"]["pid"].as_u64() {
        lines.push(format!(
            "Process: pid {pid} {}",
            s(&alert["process"]["exe"])
        ));
    }
    lines.push(format!("Action: {}", s(&alert["action"])));
    if alert["window"].is_object() {
        let w = &alert["window"];
        lines.push(format!(
            "Window: {} '{}', opened by {}",
            s(&w["id"]),
            s(&w["reason"]),
            s(&w["opened_by"])
        ));
    }
    if s(&alert["action"]).starts_with("frozen") {
        lines.push(format!(
            "To let it run: stopguard thaw {} (on {})",
            alert["process"]["pid"],
            s(&alert["host"])
        ));
    }
    lines
}

/// The request `kind` sends for `alert`; `resolved` for a follow-up that
/// ends it (Alertmanager, PagerDuty).
pub fn render(kind: SinkKind, alert: &Value, secret: Option<&str>, now_unix: u64) -> Request {
    let json_body = |v: Value| serde_json::to_vec(&v).expect("payloads serialize");
    let summary = s(&alert["summary"]);
    let title = format!(
        "{} {} on {}",
        s(&alert["severity"]).to_uppercase(),
        s(&alert["kind"]),
        s(&alert["host"])
    );
    match kind {
        SinkKind::Webhook => {
            let body = serde_json::to_vec(alert).expect("alerts serialize");
            let id = s(&alert["id"]).to_string();
            let mut headers = vec![
                ("webhook-id", id.clone()),
                ("webhook-timestamp", now_unix.to_string()),
            ];
            if let Some(secret) = secret {
                headers.push(("webhook-signature", signature(secret, &id, now_unix, &body)));
            }
            Request { body, headers }
        }
        SinkKind::Slack => {
            let details = details(alert).join("\n");
            Request {
                body: json_body(json!({
                    "text": format!("{summary}\n{details}"),
                    "blocks": [
                        {"type": "header", "text": {"type": "plain_text", "text": title}},
                        {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{summary}*")}},
                        {"type": "section", "text": {"type": "mrkdwn", "text": details}},
                        {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("stopguard · {} · {}", s(&alert["id"]), s(&alert["at"]))}]},
                    ],
                })),
                headers: Vec::new(),
            }
        }
        SinkKind::Teams => {
            let facts: Vec<Value> = details(alert)
                .into_iter()
                .filter_map(|line| {
                    let (title, value) = line.split_once(": ")?;
                    Some(json!({"title": title, "value": value}))
                })
                .collect();
            Request {
                body: json_body(json!({
                    "type": "message",
                    "attachments": [{
                        "contentType": "application/vnd.microsoft.card.adaptive",
                        "contentUrl": null,
                        "content": {
                            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                            "type": "AdaptiveCard",
                            "version": "1.4",
                            "body": [
                                {"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "color": "Attention"},
                                {"type": "TextBlock", "text": summary, "wrap": true},
                                {"type": "FactSet", "facts": facts},
                            ],
                        },
                    }],
                })),
                headers: Vec::new(),
            }
        }
        SinkKind::Alertmanager => {
            let mut posted = json!({
                "labels": {
                    "alertname": "StopguardRespawn",
                    "service": s(&alert["service"]),
                    "host": s(&alert["host"]),
                    "severity": s(&alert["severity"]),
                    "kind": s(&alert["kind"]),
                    "alert_id": alert["resolves"].as_str().unwrap_or(s(&alert["id"])),
                },
                "annotations": {
                    "summary": summary,
                    "details": details(alert).join("\n"),
                },
                "startsAt": s(&alert["at"]),
            });
            // Firing: no endsAt; resolved: endsAt is when it ended.
            if let Some(ended) = alert["resolved_at"].as_str() {
                posted["endsAt"] = json!(ended);
            }
            Request {
                body: json_body(json!([posted])),
                headers: Vec::new(),
            }
        }
        SinkKind::Pagerduty => {
            let window = alert["window"]["id"].as_str().unwrap_or("none");
            Request {
                body: json_body(json!({
                    "routing_key": secret.unwrap_or(""),
                    "event_action": if alert["resolved_at"].is_string() { "resolve" } else { "trigger" },
                    "dedup_key": format!("{}/{}/{window}", s(&alert["host"]), s(&alert["service"])),
                    "payload": {
                        "summary": summary.chars().take(1024).collect::<String>(),
                        "source": s(&alert["host"]),
                        "severity": match s(&alert["severity"]) { "critical" => "critical", "warning" => "warning", _ => "info" },
                        "component": s(&alert["service"]),
                        "class": s(&alert["kind"]),
                        "custom_details": alert,
                    },
                })),
                headers: Vec::new(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Value {
        json!({
            "version": 1, "id": "db-3-postgres-4121-5766", "kind": "respawn_in_window",
            "severity": "critical", "host": "db-3", "service": "postgres",
            "summary": "postgres respawned by monit 1.8 s after alice (uid 1000) stopped it",
            "action": "frozen (SIGSTOP at exec, cgroup frozen); thaw with: stopguard thaw 4121",
            "process": {"pid": 4121, "exe": "/usr/lib/postgresql/15/bin/postgres", "cmdline": []},
            "respawned_by": {"supervisor": "monit", "supervisor_pid": 880, "pid": 4119, "comm": "sh", "chain": [{"pid": 4119, "comm": "sh"}, {"pid": 880, "comm": "monit"}]},
            "stopped_by": {"pid": 4090, "comm": "pg_ctl", "uid": 1000, "loginuid": 1000, "user": "alice", "signal": "SIGINT", "via": null},
            "window": {"id": "w1", "reason": "schema change", "opened_by": "alice (uid 1000)"},
            "at": "2026-11-28T19:13:50.532Z",
        })
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
            text.contains("Restarted by: monit (pid 880), chain sh <- monit"),
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
    fn resolutions_end_the_same_alert() {
        let mut resolved = alert();
        resolved["id"] = json!("db-3-postgres-4121-5766-resolved");
        resolved["resolves"] = json!("db-3-postgres-4121-5766");
        resolved["resolved_at"] = json!("2026-11-28T19:20:00.000Z");
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
