//! The seam between the fleet and the store that holds its truth: keys,
//! leases that expire by themselves, and a watch from a revision. etcd v3
//! is the one behind it today (`etcd`); another store with leases and
//! revisions (Consul's sessions and indexes) fits the same calls.

use std::time::Duration;

use anyhow::Result;

/// A lease: keys put under it go when it expires or is revoked.
pub type Lease = i64;

/// One key and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    /// The store's revision of its last change.
    pub revision: i64,
}

/// Every key under a prefix, at one revision of the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub kvs: Vec<Kv>,
    pub revision: i64,
}

/// One change a watch saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put(Kv),
    Delete { key: String, revision: i64 },
}

impl Change {
    pub fn key(&self) -> &str {
        match self {
            Change::Put(kv) => &kv.key,
            Change::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> i64 {
        match self {
            Change::Put(kv) => kv.revision,
            Change::Delete { revision, .. } => *revision,
        }
    }
}

/// How a watch ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchEnd {
    /// Its time was up: watch again from this revision.
    From(i64),
    /// The revisions asked for were compacted away: list again.
    Compacted,
}

/// What the fleet asks of its store. Each call has a deadline of its own.
pub trait Store: Send + Sync + 'static {
    /// A lease of `ttl`, renewed by `keep_alive`.
    fn grant(&self, ttl: Duration) -> Result<Lease>;
    /// Renews `lease`; false when it is gone (expired or revoked).
    fn keep_alive(&self, lease: Lease) -> Result<bool>;
    fn revoke(&self, lease: Lease) -> Result<()>;
    fn put(&self, key: &str, value: &[u8], lease: Option<Lease>) -> Result<()>;
    fn delete(&self, key: &str) -> Result<()>;
    /// Every key under `prefix`.
    fn list(&self, prefix: &str) -> Result<Listing>;
    /// How many keys are under `prefix`.
    fn count(&self, prefix: &str) -> Result<usize>;
    /// Calls `on` with each change under `prefix` from revision `from` on,
    /// for at most `length`.
    fn watch(
        &self,
        prefix: &str,
        from: i64,
        length: Duration,
        on: &mut dyn FnMut(Change),
    ) -> Result<WatchEnd>;
}
