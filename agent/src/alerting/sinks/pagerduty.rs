//! PagerDuty Events API v2: the secret is the routing key; one incident
//! per host, service and window, resolved by the alert's resolution.

use serde_json::json;

use super::{Request, SinkFormat};
use crate::alert::Alert;

pub struct Pagerduty;

impl SinkFormat for Pagerduty {
    fn render(&self, alert: &Alert, secret: Option<&str>, _now_unix: u64) -> Request {
        let window = alert.window.as_ref().map_or("none", |w| w.id.as_str());
        Request::json(&json!({
            "routing_key": secret.unwrap_or(""),
            "event_action": if alert.resolved_at.is_some() { "resolve" } else { "trigger" },
            "dedup_key": format!("{}/{}/{window}", alert.host, alert.service),
            "payload": {
                "summary": alert.summary.chars().take(1024).collect::<String>(),
                "source": alert.host,
                "severity": alert.severity.as_str(),
                "component": alert.service,
                "class": alert.kind.as_str(),
                "custom_details": alert,
            },
        }))
    }

    fn tracks_resolution(&self) -> bool {
        true
    }
}
