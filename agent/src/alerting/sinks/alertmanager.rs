//! Prometheus Alertmanager's v2 API: the alert stays active until a
//! resolution posts it again with `endsAt`.

use serde_json::json;

use super::{Request, SinkFormat, message};
use crate::alert::Alert;

pub struct Alertmanager;

impl SinkFormat for Alertmanager {
    fn render(&self, alert: &Alert, _secret: Option<&str>, _now_unix: u64) -> Request {
        let mut posted = json!({
            "labels": {
                "alertname": "StopguardRespawn",
                "service": alert.service,
                "host": alert.host,
                "severity": alert.severity.as_str(),
                "kind": alert.kind.as_str(),
                // A resolution carries the labels of the alert it ends.
                "alert_id": alert.resolves.as_deref().unwrap_or(&alert.id),
            },
            "annotations": {
                "summary": alert.summary,
                "details": message::details(alert).join("\n"),
            },
            "startsAt": alert.at,
        });
        // Firing: no endsAt; resolved: endsAt is when it ended.
        if let Some(ended) = &alert.resolved_at {
            posted["endsAt"] = json!(ended);
        }
        Request::json(&json!([posted]))
    }

    fn tracks_resolution(&self) -> bool {
        true
    }
}
