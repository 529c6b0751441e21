//! The spool: every alert not yet delivered everywhere, one synced file
//! each, so neither a dead receiver nor a `kill -9` of the agent loses one.
//! An alert the disk refuses (full, read-only) is kept in memory, delivered
//! from there, and written out as soon as the disk takes it.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    alert::Alert,
    sys::files::{self, WriteFailure},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Delivered,
    Undeliverable,
}

/// Where one alert has got to at one sink.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SinkState {
    pub status: Status,
    pub attempts: u32,
    pub last_error: Option<String>,
}

impl SinkState {
    pub fn pending() -> SinkState {
        SinkState {
            status: Status::Pending,
            attempts: 0,
            last_error: None,
        }
    }
}

/// One spooled alert and where it has got to, per sink.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spooled {
    pub alert: Alert,
    pub spooled_at_unix_ms: u64,
    pub sinks: BTreeMap<String, SinkState>,
}

impl Spooled {
    /// Whether `sink` still has to deliver it.
    pub fn pending_for(&self, sink: &str) -> bool {
        self.sinks
            .get(sink)
            .is_some_and(|s| s.status == Status::Pending)
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Alerts not yet delivered everywhere, one synced file each.
pub struct Spool {
    dir: PathBuf,
    /// Entries the disk refused, by alert id: delivered from here, written
    /// out when the disk takes them again.
    unsynced: BTreeMap<String, Spooled>,
    /// Why the last write failed, while an entry is held in memory.
    failure: Option<WriteFailure>,
}

impl Spool {
    pub fn open(dir: &Path) -> Result<Spool> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Spool {
            dir: dir.to_path_buf(),
            unsynced: BTreeMap::new(),
            failure: None,
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        let safe: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{safe}.json"))
    }

    /// Writes `entry` under its alert's id: synced, then renamed into place,
    /// so a crash leaves the old entry or the new, never half of one. When
    /// the disk refuses it, the entry is kept in memory (and read from
    /// there) and the error returned: nothing is lost while the agent runs.
    pub fn write(&mut self, entry: &Spooled) -> Result<()> {
        let id = &entry.alert.id;
        match self.write_file(entry) {
            Ok(()) => {
                self.unsynced.remove(id);
                if self.unsynced.is_empty() {
                    self.failure = None;
                }
                Ok(())
            }
            Err(err) => {
                self.unsynced.insert(id.clone(), entry.clone());
                self.failure = Some(WriteFailure::now(&err));
                Err(err.context(format!("spooling alert {id} in {}", self.dir.display())))
            }
        }
    }

    fn write_file(&self, entry: &Spooled) -> Result<()> {
        files::replace(&self.path(&entry.alert.id), &serde_json::to_vec(entry)?)
    }

    /// Writes out the entries held in memory; returns how many the disk
    /// took.
    pub fn retry_unsynced(&mut self) -> usize {
        let held: Vec<Spooled> = self.unsynced.values().cloned().collect();
        held.iter()
            .filter(|entry| self.write(entry).is_ok())
            .count()
    }

    /// Entries held in memory because the disk refused them.
    pub fn unsynced(&self) -> usize {
        self.unsynced.len()
    }

    /// The last write failure, while an entry is held in memory.
    pub fn failure(&self) -> Option<&WriteFailure> {
        self.failure.as_ref()
    }

    pub fn read(&self, id: &str) -> Option<Spooled> {
        if let Some(entry) = self.unsynced.get(id) {
            return Some(entry.clone());
        }
        serde_json::from_slice(&fs::read(self.path(id)).ok()?).ok()
    }

    /// Every spooled alert, oldest first. An entry that cannot be read is
    /// said so and kept aside (`.unreadable`), never dropped silently: it
    /// no longer counts in the depth, but a person can still read it.
    pub fn pending(&self) -> Vec<Spooled> {
        let mut all: Vec<Spooled> = self
            .files()
            .filter_map(|path| {
                let read = fs::read(&path)
                    .map_err(anyhow::Error::from)
                    .and_then(|bytes| Ok(serde_json::from_slice(&bytes)?));
                read.map_err(|err| {
                    let kept = path.with_extension("json.unreadable");
                    tracing::error!(
                        "spool: {} is unreadable ({err:#}); kept as {}, not delivered",
                        path.display(),
                        kept.display()
                    );
                    let _ = fs::rename(&path, &kept);
                })
                .ok()
            })
            .collect();
        all.sort_by_key(|s: &Spooled| s.spooled_at_unix_ms);
        all
    }

    /// How many alerts are spooled: a directory listing, nothing parsed,
    /// and those held in memory.
    pub fn depth(&self) -> usize {
        let in_memory_only = self
            .unsynced
            .keys()
            .filter(|id| !self.path(id).exists())
            .count();
        self.files().count() + in_memory_only
    }

    fn files(&self) -> impl Iterator<Item = PathBuf> {
        fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|path| path.extension().is_some_and(|x| x == "json"))
    }

    /// Records what happened to `id` at `sink`; the file goes once no sink
    /// is pending.
    pub fn update(&mut self, id: &str, sink: &str, state: SinkState) -> Result<()> {
        let Some(mut entry) = self.read(id) else {
            return Ok(());
        };
        entry.sinks.insert(sink.to_string(), state);
        if entry.sinks.values().all(|s| s.status != Status::Pending) {
            self.unsynced.remove(id);
            if self.unsynced.is_empty() {
                self.failure = None;
            }
            match fs::remove_file(self.path(id)) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
                _ => Ok(()),
            }
        } else {
            self.write(&entry)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{alert, sys::clock::Clock};

    /// A spool in a directory of its own, removed when the test ends.
    struct TempSpool {
        spool: Spool,
        dir: PathBuf,
    }

    impl TempSpool {
        fn new(test: &str) -> TempSpool {
            let dir =
                std::env::temp_dir().join(format!("stopguard-spool-{test}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            TempSpool {
                spool: Spool::open(&dir).unwrap(),
                dir,
            }
        }
    }

    impl Drop for TempSpool {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn entry(n: u64, sinks: &[&str]) -> Spooled {
        Spooled {
            alert: alert::test("db-3", &Clock::now(), n),
            spooled_at_unix_ms: 1_000 + n,
            sinks: sinks
                .iter()
                .map(|s| (s.to_string(), SinkState::pending()))
                .collect(),
        }
    }

    fn delivered(attempts: u32) -> SinkState {
        SinkState {
            status: Status::Delivered,
            attempts,
            last_error: None,
        }
    }

    #[test]
    fn spool_write_then_pending_lists_it_per_sink() {
        let mut temp = TempSpool::new("pending");
        let spool = &mut temp.spool;
        spool.write(&entry(2, &["webhook", "slack"])).unwrap();
        spool.write(&entry(1, &["webhook"])).unwrap();
        assert_eq!(spool.depth(), 2);
        let pending = spool.pending();
        let ids: Vec<&str> = pending.iter().map(|e| e.alert.id.as_str()).collect();
        assert_eq!(ids, ["db-3-test-1", "db-3-test-2"], "oldest first");
        assert!(pending[1].pending_for("slack"));
        assert!(!pending[0].pending_for("slack"));
        assert_eq!(pending[1].alert, entry(2, &[]).alert);
    }

    #[test]
    fn spool_keeps_the_on_disk_shape() {
        let mut temp = TempSpool::new("shape");
        temp.spool.write(&entry(7, &["webhook"])).unwrap();
        let text = fs::read_to_string(temp.dir.join("db-3-test-7.json")).unwrap();
        let on_disk: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(on_disk["alert"]["kind"], "test");
        assert_eq!(on_disk["spooled_at_unix_ms"], 1_007);
        assert_eq!(on_disk["sinks"]["webhook"]["status"], "pending");
        assert!(on_disk["alert"].get("resolves").is_none(), "{text}");
    }

    #[test]
    fn spool_resumes_after_reopen() {
        let mut temp = TempSpool::new("reopen");
        temp.spool.write(&entry(3, &["webhook"])).unwrap();
        let reopened = Spool::open(&temp.dir).unwrap();
        let pending = reopened.pending();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].alert.id, "db-3-test-3");
        assert!(pending[0].pending_for("webhook"));
    }

    #[test]
    fn spool_removes_an_entry_when_every_sink_is_done() {
        let mut temp = TempSpool::new("done");
        let spool = &mut temp.spool;
        spool.write(&entry(4, &["webhook", "slack"])).unwrap();
        spool
            .update("db-3-test-4", "webhook", delivered(1))
            .unwrap();
        let left = spool.read("db-3-test-4").unwrap();
        assert!(!left.pending_for("webhook") && left.pending_for("slack"));
        assert_eq!(left.sinks["webhook"].attempts, 1);
        let undeliverable = SinkState {
            status: Status::Undeliverable,
            attempts: 9,
            last_error: Some("max_age reached".into()),
        };
        spool.update("db-3-test-4", "slack", undeliverable).unwrap();
        assert!(spool.read("db-3-test-4").is_none());
        assert_eq!(spool.depth(), 0);
        // An update for an entry already gone is no error.
        spool.update("db-3-test-4", "slack", delivered(2)).unwrap();
    }

    #[test]
    fn spool_keeps_in_memory_what_the_disk_refuses_and_writes_it_later() {
        let mut temp = TempSpool::new("refused");
        fs::remove_dir_all(&temp.dir).unwrap();
        let spool = &mut temp.spool;
        let err = spool.write(&entry(5, &["webhook"])).unwrap_err();
        assert!(
            format!("{err:#}").contains("spooling alert db-3-test-5"),
            "{err:#}"
        );
        assert_eq!((spool.unsynced(), spool.depth()), (1, 1));
        assert!(spool.failure().is_some());
        // Delivery goes on from memory.
        assert!(spool.read("db-3-test-5").unwrap().pending_for("webhook"));
        spool
            .update(
                "db-3-test-5",
                "webhook",
                SinkState {
                    attempts: 1,
                    ..SinkState::pending()
                },
            )
            .unwrap_err();
        assert_eq!(
            spool.read("db-3-test-5").unwrap().sinks["webhook"].attempts,
            1
        );
        assert_eq!(spool.retry_unsynced(), 0, "still no directory");
        fs::create_dir_all(&temp.dir).unwrap();
        let spool = &mut temp.spool;
        assert_eq!(spool.retry_unsynced(), 1);
        assert_eq!((spool.unsynced(), spool.depth()), (0, 1));
        assert!(spool.failure().is_none());
        let on_disk = Spool::open(&temp.dir).unwrap().pending();
        assert_eq!(on_disk[0].sinks["webhook"].attempts, 1);
        // Done from memory: nothing left anywhere.
        spool
            .update("db-3-test-5", "webhook", delivered(2))
            .unwrap();
        assert_eq!(spool.depth(), 0);
    }

    #[test]
    fn spool_keeps_an_unreadable_entry_aside() {
        let mut temp = TempSpool::new("unreadable");
        temp.spool.write(&entry(6, &["webhook"])).unwrap();
        fs::write(temp.dir.join("torn.json"), b"{\"alert\": {\"id\"").unwrap();
        let pending = temp.spool.pending();
        assert_eq!(pending.len(), 1);
        assert!(temp.dir.join("torn.json.unreadable").exists());
        assert_eq!(temp.spool.depth(), 1);
    }
}
