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

    /// The state saved at `path`; None when there is none.
    pub fn load(path: &Path) -> Result<Option<State>> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let state = serde_json::from_str(&text)
            .with_context(|| format!("reading the saved state {}", path.display()))?;
        Ok(Some(state))
    }
}
