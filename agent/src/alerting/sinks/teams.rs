//! Microsoft Teams workflows: an Adaptive Card, the details as facts.

use serde_json::{Value, json};

use super::{Request, SinkFormat, message};
use crate::{alert::Alert, escape};

pub struct Teams;

impl SinkFormat for Teams {
    fn render(&self, alert: &Alert, _secret: Option<&str>, _now_unix: u64) -> Request {
        let facts: Vec<Value> = message::details(alert)
            .into_iter()
            .filter_map(|line| {
                let (title, value) = line.split_once(": ")?;
                Some(json!({"title": title, "value": escape::markdown(value)}))
            })
            .collect();
        Request::json(&json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": null,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": [
                        {"type": "TextBlock", "text": message::title(alert), "weight": "Bolder", "size": "Medium", "color": "Attention"},
                        {"type": "TextBlock", "text": escape::markdown(&alert.summary), "wrap": true},
                        {"type": "FactSet", "facts": facts},
                    ],
                },
            }],
        }))
    }
}
