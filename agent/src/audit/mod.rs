//! The audit log: one JSON object per line, appended as things happen, and
//! read back by `stopguard audit` as a timeline.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};

use crate::{control::Timeline, sys::files};

mod describe;
mod event;

pub use describe::describe;
pub use event::{AgentEvent, AuditEvent};
use serde::Serialize;
use serde_json::{Value, value::RawValue};

/// `stopguard audit` answers with at most this many entries, the newest.
pub const MAX_ENTRIES: usize = 10_000;

/// Appends JSON lines to the audit log; clones share the file.
#[derive(Clone)]
pub struct AuditLog {
    path: std::path::PathBuf,
    file: std::sync::Arc<std::sync::Mutex<fs::File>>,
}

#[derive(Serialize)]
struct AuditLine<'a, T: Serialize> {
    at: String,
    #[serde(flatten)]
    entry: &'a T,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<AuditLog> {
        if let Some(dir) = path.parent() {
            files::private_dir(dir).context("the audit log's directory")?;
        }
        let file = files::open_append(path).context("the audit log")?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: std::sync::Arc::new(std::sync::Mutex::new(file)),
        })
    }

    /// Opens the log's path again, for every clone: after logrotate moved
    /// the file away, entries go to a new file under the configured name.
    pub fn reopen(&self) -> Result<()> {
        let file = files::open_append(&self.path).context("reopening the audit log")?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = file;
        Ok(())
    }

    pub fn write(&self, entry: impl Into<AuditEvent>) {
        let entry = &entry.into();
        let line = AuditLine {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            entry,
        };
        let text = serde_json::to_string(&line).expect("audit entries serialize");
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = writeln!(file, "{text}") {
            tracing::error!("writing the audit log: {err}");
        }
    }
}

/// Reads the audit log at `path`: entries at most `since` old, about
/// `service` (anywhere in the entry) when given. Streams the file: memory
/// stays bounded by the newest `MAX_ENTRIES` matching lines, however long
/// the log.
pub fn read(path: &Path, since: Option<Duration>, service: Option<&str>) -> Result<Timeline> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Timeline {
                entries: Vec::new(),
                left_out: 0,
                unreadable: 0,
            });
        }
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    read_from(BufReader::new(file), since, service)
        .with_context(|| format!("reading {}", path.display()))
}

/// `read` on the lines from `log`; fails only when reading fails.
pub fn read_from(
    log: impl BufRead,
    since: Option<Duration>,
    service: Option<&str>,
) -> std::io::Result<Timeline> {
    let after = since.and_then(|s| SystemTime::now().checked_sub(s));
    let mut entries = std::collections::VecDeque::new();
    let (mut left_out, mut unreadable) = (0, 0);
    for line in log.split(b'\n') {
        // A damaged line (not UTF-8, or torn inside a character) is
        // unreadable like a torn one; the rest of the log still reads.
        let Ok(mut line) = String::from_utf8(line?) else {
            unreadable += 1;
            continue;
        };
        if line.ends_with('\r') {
            line.pop();
        }
        if line.trim().is_empty() {
            continue;
        }
        let Ok(entry) = serde_json::from_str::<Value>(&line) else {
            unreadable += 1;
            continue;
        };
        if let Some(after) = after {
            let at = entry["at"]
                .as_str()
                .and_then(|a| humantime::parse_rfc3339(a).ok());
            if at.is_none_or(|at| at < after) {
                continue;
            }
        }
        if service.is_some_and(|s| !mentions_service(&entry, s)) {
            continue;
        }
        entries.push_back(RawValue::from_string(line).expect("parsed above"));
        if entries.len() > MAX_ENTRIES {
            entries.pop_front();
            left_out += 1;
        }
    }
    Ok(Timeline {
        entries: entries.into(),
        left_out,
        unreadable,
    })
}

/// Whether a `service` field anywhere in `value` names `service`.
fn mentions_service(value: &Value, service: &str) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(key, v)| {
            (key == "service" && v.as_str() == Some(service)) || mentions_service(v, service)
        }),
        Value::Array(items) => items.iter().any(|v| mentions_service(v, service)),
        _ => false,
    }
}

#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Finding, OperatorStop};

    #[test]
    fn reads_filters_and_describes() {
        let dir = std::env::temp_dir().join(format!("sg-audit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let old = humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(7200))
            .to_string();
        let line = |at: &str, event: AuditEvent| {
            let mut value = serde_json::to_value(event).unwrap();
            value["at"] = at.into();
            format!("{value}\n")
        };
        let stop = Finding::OperatorStop(OperatorStop::example("pg"));
        let mut alert = crate::alert::test("h", &crate::sys::clock::Clock::now(), 5);
        alert.kind = crate::alert::AlertKind::RespawnAfterOperatorStop;
        alert.service = "pg".into();
        alert.summary = "pg respawned by monit".into();
        let thawed = AgentEvent::Thawed {
            service: "redis".into(),
            pid: 9,
        };
        fs::write(
            &path,
            line(&old, stop.into())
                + &line(&now, alert.into())
                + &line(&now, thawed.into())
                + &format!("{{\"at\":\"{now}\",\"event\":\"thaw"),
        )
        .unwrap();
        let all = read(&path, None, None).unwrap();
        assert_eq!((all.entries.len(), all.unreadable), (3, 1));
        let recent = read(&path, Some(Duration::from_secs(3600)), Some("pg")).unwrap();
        assert_eq!(recent.entries.len(), 1);
        assert_eq!(
            describe(&recent.entries[0]),
            format!("{now}  pg           ALERT respawn_after_operator_stop: pg respawned by monit")
        );
        let stop = describe(&all.entries[0]);
        assert!(
            stop.ends_with("pg           stopped by uid 1000 (SIGTERM from kill pid 7)")
                || stop.contains("stopped by")
                    && stop.contains("(uid 1000) (SIGTERM from kill pid 7)"),
            "{stop}"
        );
        assert_eq!(read(&path, None, Some("redis")).unwrap().entries.len(), 1);
        assert!(
            read(&dir.join("none"), None, None)
                .unwrap()
                .entries
                .is_empty()
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn delivery_entries_name_their_service() {
        let entry = |event: AgentEvent| {
            let mut value = serde_json::to_value(AuditEvent::from(event)).unwrap();
            value["at"] = "T".into();
            describe(&RawValue::from_string(value.to_string()).unwrap())
        };
        assert_eq!(
            entry(AgentEvent::AlertDelivered {
                service: "pg".into(),
                sink: "slack".into(),
                id: "a1".into(),
                attempts: 2,
                status: 200,
            }),
            "T  pg           alert a1 delivered to slack (HTTP 200, attempt 2)"
        );
        assert_eq!(
            entry(AgentEvent::AlertGrouped {
                service: "pg".into(),
                id: "a2".into(),
                group_of: "a1".into(),
            }),
            "T  pg           alert a2 held back: one follow-up will follow alert a1"
        );
    }

    #[test]
    fn a_line_that_is_not_utf8_is_unreadable_and_the_rest_still_reads() {
        let dir = std::env::temp_dir().join(format!("sg-audit-utf8-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        // A line torn inside a multi-byte character, between two good ones.
        let mut log = b"{\"event\":\"guard_released\",\"pid\":1}\n".to_vec();
        log.extend_from_slice(b"{\"event\":\"config_refused\",\"error\":\"caf\xc3\n");
        log.extend_from_slice(b"{\"event\":\"guard_released\",\"pid\":2}\r\n");
        fs::write(&path, log).unwrap();
        let timeline = read(&path, None, None).unwrap();
        assert_eq!((timeline.entries.len(), timeline.unreadable), (2, 1));
        assert_eq!(
            timeline.entries[1].get(),
            r#"{"event":"guard_released","pid":2}"#
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_long_log_keeps_the_newest_entries_and_counts_the_rest() {
        let dir = std::env::temp_dir().join(format!("sg-audit-long-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let lines: String = (0..MAX_ENTRIES + 5)
            .map(|i| format!("{{\"event\":\"guard_released\",\"pid\":{i}}}\n"))
            .collect();
        fs::write(&path, lines).unwrap();
        let timeline = read(&path, None, None).unwrap();
        assert_eq!(timeline.left_out, 5);
        assert_eq!(timeline.entries.len(), MAX_ENTRIES);
        assert_eq!(
            timeline.entries[0].get(),
            r#"{"event":"guard_released","pid":5}"#
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
