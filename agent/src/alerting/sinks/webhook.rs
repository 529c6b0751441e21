//! A generic webhook: the alert record itself, signed the Standard Webhooks
//! way when the sink has a secret.

use base64::Engine;
use hmac::{Hmac, Mac};

use super::{Request, SinkFormat};
use crate::alert::Alert;

pub struct Webhook;

impl SinkFormat for Webhook {
    fn render(&self, alert: &Alert, secret: Option<&str>, now_unix: u64) -> Request {
        // Through a JSON value: keys sorted, the form receivers have always
        // been sent.
        let record = serde_json::to_value(alert).expect("alerts serialize");
        let body = serde_json::to_vec(&record).expect("alerts serialize");
        let mut headers = vec![
            ("webhook-id", alert.id.clone()),
            ("webhook-timestamp", now_unix.to_string()),
        ];
        if let Some(secret) = secret {
            headers.push((
                "webhook-signature",
                signature(secret, &alert.id, now_unix, &body),
            ));
        }
        Request { body, headers }
    }
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
