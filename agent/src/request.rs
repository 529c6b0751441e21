//! What a person asks of the agent through `stopguard <command>`, and who
//! asked: the control socket carries these, the audit log records them.

use serde::{Deserialize, Serialize};

/// Larger requests are refused: no command needs more.
pub const MAX_REQUEST: u64 = 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    WindowOpen {
        service: String,
        reason: String,
        /// Seconds until it closes by itself.
        for_secs: Option<u64>,
    },
    WindowClose {
        target: String,
        thaw: bool,
        kill: bool,
    },
    // Braces, not unit variants: serde checks the fields of struct
    // variants only, and a request with fields it does not know is refused.
    WindowList {},
    Status {},
    Thaw {
        target: String,
    },
    /// Open a window (unless one is open) and stop the service.
    Stop {
        service: String,
        reason: String,
        for_secs: Option<u64>,
        /// How long to wait for the main process to exit.
        wait_secs: u64,
        /// Switch off, before the stop, every supervisor that would start
        /// it again; undone when the window closes.
        #[serde(default)]
        and_pause: bool,
    },
    /// What would start a service again if it stopped now.
    Explain {
        service: String,
    },
    /// A test alert through every sink, or the one named.
    AlertTest {
        sink: Option<String>,
    },
    /// The audit log, oldest first.
    Audit {
        since_secs: Option<u64>,
        service: Option<String>,
    },
}

/// The longest a window may stay open by itself (`--for`): a maintenance
/// that runs longer opens a new one. Also what keeps the expiry time from
/// overflowing, which would close the window at once and disarm the guard.
pub const MAX_WINDOW_SECS: u64 = 30 * 24 * 3600;

/// The longest `stopguard stop` waits for a service to exit.
pub const MAX_WAIT_SECS: u64 = 24 * 3600;

/// Checks a window length given to `--for`.
pub fn check_window(secs: u64) -> Result<(), String> {
    if secs > MAX_WINDOW_SECS {
        return Err(format!(
            "a window lasts at most 30 days (asked for {}); open a new one when it ends",
            humantime::format_duration(std::time::Duration::from_secs(secs))
        ));
    }
    Ok(())
}

impl Request {
    /// One line read from the control socket, parsed and checked; the error
    /// is the answer to send back.
    pub fn from_line(line: &str) -> Result<Request, String> {
        let request: Request =
            serde_json::from_str(line.trim()).map_err(|err| format!("malformed request: {err}"))?;
        request.check()?;
        Ok(request)
    }

    /// Checks the values a request carries; the error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Request::WindowOpen { for_secs, .. } => for_secs.map_or(Ok(()), check_window),
            Request::Stop {
                for_secs,
                wait_secs,
                ..
            } => {
                if *wait_secs > MAX_WAIT_SECS {
                    return Err(format!(
                        "--wait is at most 24 hours (asked for {})",
                        humantime::format_duration(std::time::Duration::from_secs(*wait_secs))
                    ));
                }
                for_secs.map_or(Ok(()), check_window)
            }
            Request::WindowClose { .. }
            | Request::WindowList {}
            | Request::Status {}
            | Request::Thaw { .. }
            | Request::AlertTest { .. }
            | Request::Explain { .. }
            | Request::Audit { .. } => Ok(()),
        }
    }

    /// Whether the request changes state (and so needs root or the group).
    pub fn changes_state(&self) -> bool {
        !matches!(
            self,
            Request::WindowList {}
                | Request::Status {}
                | Request::Audit { .. }
                | Request::Explain { .. }
        )
    }
}

/// The peer of a control connection, from SO_PEERCRED.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub loginuid: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_with_unknown_fields_are_refused() {
        for line in [
            r#"{"command":"status","extra":1}"#,
            r#"{"command":"window_open","service":"pg","reason":"x","for_secs":null,"bogus":1}"#,
            r#"{"command":"thaw","target":"pg","kill":true}"#,
        ] {
            assert!(
                serde_json::from_str::<Request>(line).is_err(),
                "accepted {line}"
            );
        }
        let ok: Request = serde_json::from_str(r#"{"command":"thaw","target":"pg"}"#).unwrap();
        assert_eq!(
            ok,
            Request::Thaw {
                target: "pg".into()
            }
        );
    }

    #[test]
    fn window_lengths_over_thirty_days_are_refused() {
        let open = |for_secs| Request::WindowOpen {
            service: "pg".into(),
            reason: "x".into(),
            for_secs,
        };
        assert!(open(Some(MAX_WINDOW_SECS)).check().is_ok());
        assert!(open(None).check().is_ok());
        let err = open(Some(18_446_744_074)).check().unwrap_err();
        assert!(err.contains("at most 30 days"), "{err}");
    }
}
