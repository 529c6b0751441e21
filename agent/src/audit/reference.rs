//! The audit and alert references (docs/src/reference/audit.md and
//! alerts.md) held to the real types: every kind of entry and of alert
//! they can carry is named there.

use crate::{alert::AlertKind, audit::AgentEvent, config::reference::expected, detect::Finding};

const AUDIT: &str = include_str!("../../../docs/src/reference/audit.md");
const ALERTS: &str = include_str!("../../../docs/src/reference/alerts.md");

/// Every variant name serde knows for a type, from the error an unknown
/// one gets.
fn variants<T: serde::de::DeserializeOwned>(unknown: serde_json::Value) -> Vec<String> {
    let err = serde_json::from_value::<T>(unknown).err().unwrap();
    let names = expected(&err.to_string());
    assert!(names.len() > 2, "too few variants in: {err}");
    names
}

fn missing(names: Vec<String>, page: &str) -> Vec<String> {
    names
        .into_iter()
        .filter(|name| !page.contains(&format!("`{name}`")))
        .collect()
}

#[test]
fn the_audit_reference_names_every_finding_and_event() {
    let findings = variants::<Finding>(serde_json::json!({"finding": "zz"}));
    let events = variants::<AgentEvent>(serde_json::json!({"event": "zz"}));
    let not_named = [missing(findings, AUDIT), missing(events, AUDIT)].concat();
    assert!(
        not_named.is_empty(),
        "docs/src/reference/audit.md does not name: {not_named:?}"
    );
}

#[test]
fn the_alert_reference_names_every_kind_of_alert() {
    let kinds = variants::<AlertKind>(serde_json::json!("zz"));
    let not_named = missing(kinds, ALERTS);
    assert!(
        not_named.is_empty(),
        "docs/src/reference/alerts.md does not name: {not_named:?}"
    );
}
