//! The names the exec program looks up: the notable ones (what their exec
//! calls for) and the guarded ones (stopped at once), with the filter in
//! front of both that spares every other exec the two hash lookups.
//!
//! The filter only ever lags behind the maps on the safe side: a name's
//! bit is set before the name goes into a map, and cleared only after it
//! has left both.

use agent_common::{COMM_LEN, filter};
use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, MapData};

type Filter = [u64; filter::WORDS];

/// The exec program's name maps.
pub struct Names {
    pub(super) notable: HashMap<MapData, [u8; COMM_LEN], u32>,
    pub(super) guard: HashMap<MapData, [u8; COMM_LEN], u32>,
    /// None in a generation pinned by an agent from before the filter:
    /// its exec program makes both lookups for every name.
    pub(super) filter: Option<Array<MapData, Filter>>,
}

impl Names {
    /// Makes the notable map hold `names` and nothing else.
    pub fn set_notable(&mut self, names: &[(String, u32)]) -> Result<()> {
        let wanted: std::collections::HashMap<[u8; COMM_LEN], u32> = names
            .iter()
            .map(|(name, bits)| (comm_key(name), *bits))
            .collect();
        self.widen(wanted.keys())?;
        let stale: Vec<[u8; COMM_LEN]> = self
            .notable
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !wanted.contains_key(key))
            .collect();
        for key in stale {
            self.notable
                .remove(&key)
                .context("emptying the notable-names map")?;
        }
        for (key, bits) in wanted {
            self.notable
                .insert(key, bits, 0)
                .context("filling the notable-names map")?;
        }
        self.refilter()
    }

    /// Puts `key` in the guard map with `value`.
    pub fn guard(&mut self, key: [u8; COMM_LEN], value: u32) -> Result<()> {
        self.widen([&key])?;
        self.guard.insert(key, value, 0).context("the guard map")
    }

    /// Takes `key` out of the guard map.
    pub fn unguard(&mut self, key: &[u8; COMM_LEN]) -> Result<()> {
        self.guard.remove(key).context("the guard map")?;
        self.refilter()
    }

    /// What the guard map holds.
    pub fn guarded(&self) -> Vec<([u8; COMM_LEN], u32)> {
        self.guard.iter().filter_map(Result::ok).collect()
    }

    /// Sets the bits of `keys`, keeping every bit already set.
    fn widen<'a>(&mut self, keys: impl IntoIterator<Item = &'a [u8; COMM_LEN]>) -> Result<()> {
        let Some(map) = &mut self.filter else {
            return Ok(());
        };
        let before = map.get(&0, 0).context("reading the name filter")?;
        let mut words = bits_of(keys);
        for (word, old) in words.iter_mut().zip(before) {
            *word |= old;
        }
        if words != before {
            map.set(0, words, 0).context("writing the name filter")?;
        }
        Ok(())
    }

    /// Sets exactly the bits of the names in either map.
    fn refilter(&mut self) -> Result<()> {
        let Some(map) = &mut self.filter else {
            return Ok(());
        };
        let keys: Vec<[u8; COMM_LEN]> = self
            .notable
            .keys()
            .chain(self.guard.keys())
            .collect::<Result<_, _>>()
            .context("reading the name maps")?;
        map.set(0, bits_of(&keys), 0)
            .context("writing the name filter")
    }
}

/// The filter with the bits of `keys` set.
fn bits_of<'a>(keys: impl IntoIterator<Item = &'a [u8; COMM_LEN]>) -> Filter {
    let mut words = [0u64; filter::WORDS];
    for key in keys {
        let (word, bit) = filter::slot_of(key);
        words[word] |= bit;
    }
    words
}

/// A comm as the kernel stores it: at most 15 bytes, NUL-padded.
pub fn comm_key(name: &str) -> [u8; COMM_LEN] {
    let mut key = [0u8; COMM_LEN];
    let bytes = name.as_bytes();
    let n = bytes.len().min(COMM_LEN - 1);
    key[..n].copy_from_slice(&bytes[..n]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_sets_one_bit_within_the_filter() {
        let names = [
            "postgres",
            "pg_ctl",
            "monit",
            "supervisord",
            "runsv",
            "a",
            "",
        ];
        let keys: Vec<[u8; COMM_LEN]> = names.iter().map(|n| comm_key(n)).collect();
        let words = bits_of(&keys);
        let set: u32 = words.iter().map(|w| w.count_ones()).sum();
        assert!(set >= 1 && set <= names.len() as u32);
        for key in &keys {
            let (word, bit) = filter::slot_of(key);
            assert!(word < filter::WORDS);
            assert_eq!(bit.count_ones(), 1);
            assert_ne!(words[word] & bit, 0, "{key:?} is let through");
        }
    }

    #[test]
    fn names_differing_past_the_first_word_land_apart() {
        // Service names often share a prefix of eight bytes or more.
        let a = filter::slot_of(&comm_key("postgres-main"));
        let b = filter::slot_of(&comm_key("postgres-replica"));
        let c = filter::slot_of(&comm_key("postgres"));
        assert!(a != b && b != c && a != c, "{a:?} {b:?} {c:?}");
    }

    #[test]
    fn most_other_names_are_kept_out() {
        // The default config's notable names against the names a busy
        // host execs: few should pass the filter.
        let notable = [
            "systemctl",
            "service",
            "pg_ctl",
            "pg_ctlcluster",
            "kill",
            "pkill",
            "killall",
            "monit",
            "supervisord",
            "supervisorctl",
            "runsv",
            "sv",
            "s6-supervise",
            "s6-svc",
            "postgres",
            "mysqld",
            "mysqld_safe",
            "patroni",
            "sudo",
            "su",
        ];
        let words = bits_of(&notable.map(comm_key));
        let others = [
            "true", "ls", "cat", "grep", "sed", "awk", "date", "sleep", "find", "xargs", "cut",
            "sort", "uniq", "head", "tail", "wc", "tr", "mkdir", "rm", "cp", "mv", "ln", "chmod",
            "stat", "id", "env", "basename", "dirname", "uname", "hostname",
        ];
        let passed = others
            .iter()
            .filter(|n| {
                let (word, bit) = filter::slot_of(&comm_key(n));
                words[word] & bit != 0
            })
            .count();
        assert!(passed <= 2, "{passed} of {} other names pass", others.len());
    }
}
