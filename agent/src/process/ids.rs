//! A hasher for the maps keyed by process ids that every kernel record
//! touches. Pids and start times are small integers the kernel hands out,
//! not input shaped to collide, and SipHash, the standard maps' hasher,
//! costs more than the rest of an insert.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

/// A map keyed by process ids (pids, `ProcessKey`s).
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Multiply-rotate hashing of whole words, as rustc's own maps do.
#[derive(Clone, Copy, Default)]
pub struct IdHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl IdHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ProcessKey;

    #[test]
    fn keys_that_differ_in_either_field_hash_apart() {
        let hash = |pid, start_ticks| {
            use std::hash::BuildHasher;
            BuildHasherDefault::<IdHasher>::default().hash_one(ProcessKey { pid, start_ticks })
        };
        assert_ne!(hash(1, 2), hash(2, 1));
        assert_ne!(hash(100, 7), hash(100, 8));
        let mut map: IdMap<ProcessKey, u32> = IdMap::default();
        for pid in 0..10_000 {
            map.insert(
                ProcessKey {
                    pid,
                    start_ticks: u64::from(pid) * 3,
                },
                pid,
            );
        }
        assert_eq!(map.len(), 10_000);
        assert_eq!(
            map[&ProcessKey {
                pid: 77,
                start_ticks: 231
            }],
            77
        );
    }
}
