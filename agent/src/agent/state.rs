//! The agent's state on disk (`state_dir/state.json`): windows, operator
//! stops, what custody holds and guards, unresolved alerts. Written after
//! every change, read back at start, so a `kill -9` loses none of it.

use std::{fs, path::Path};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::custody;
use crate::{alert::Alert, detect, files};

#[derive(Default, Serialize, Deserialize)]
pub struct State {
    pub detector: detect::Saved,
    #[serde(flatten)]
    pub custody: custody::Saved,
    /// Alerts not yet resolved (thaw, kill, window close).
    #[serde(default)]
    pub firing: Vec<Alert>,
}

impl State {
    /// Writes the state to a temporary file, synced, then renamed, so a
    /// crash leaves the old state or the new, never half of one.
    pub fn save(&self, path: &Path) -> Result<()> {
        files::replace(path, &serde_json::to_vec_pretty(self)?)
    }

    /// The state saved at `path`. An unreadable file is kept aside (renamed,
    /// never deleted) so that the agent starts all the same: a host left
    /// unguarded because of a torn file is worse than one that starts
    /// without its memory and says so.
    pub fn load(path: &Path) -> Result<Saved> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Saved::None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        match serde_json::from_str(&text) {
            Ok(state) => Ok(Saved::State(Box::new(state))),
            Err(err) => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let kept = path.with_extension(format!("json.corrupt-{stamp}"));
                fs::rename(path, &kept)
                    .with_context(|| format!("keeping the unreadable {} aside", path.display()))?;
                Ok(Saved::Corrupt {
                    kept: kept.display().to_string(),
                    error: err.to_string(),
                })
            }
        }
    }
}

/// What `State::load` found.
pub enum Saved {
    None,
    State(Box<State>),
    /// Unreadable; renamed to `kept`.
    Corrupt {
        kept: String,
        error: String,
    },
}
