//! Slack incoming webhooks: Block Kit, with `text` as the notification's
//! fallback.

use std::time::Duration;

use serde_json::json;

use super::{Request, SinkFormat, message};
use crate::{alert::Alert, escape};

pub struct Slack;

impl SinkFormat for Slack {
    fn render(&self, alert: &Alert, _secret: Option<&str>, _now_unix: u64) -> Request {
        // Slack obeys `<!channel>` and `<https://x|y>` in a command line.
        let summary = escape::slack(&alert.summary);
        let details = escape::slack(&message::details(alert).join("\n")).into_owned();
        Request::json(&json!({
            "text": format!("{summary}\n{details}"),
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": message::title(alert)}},
                {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{summary}*")}},
                {"type": "section", "text": {"type": "mrkdwn", "text": details}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("stopguard · {} · {}", alert.id, alert.at)}]},
            ],
        }))
    }

    /// Slack takes about one message a second per webhook.
    fn min_interval(&self) -> Duration {
        Duration::from_secs(1)
    }
}
