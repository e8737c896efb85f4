//! The shared table policies reach through the `kv` import: one namespace per
//! policy, shared by every worker, entries with a time to live.
//!
//! The table is split into shards, each behind its own mutex, so workers
//! touching different keys rarely meet. Expired entries are dropped when
//! touched and by [`Table::sweep`], which the host runs periodically.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

const SHARDS: usize = 16;
pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvError {
    NotANumber,
    TooLarge,
    Full,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    /// Milliseconds on the table's clock; `None` never expires.
    expires: Option<u64>,
}

/// One policy's table.
#[derive(Debug)]
pub struct Table {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    hasher: RandomState,
    /// Set at start and by reloads (`table_entries`).
    max_entries_per_shard: AtomicUsize,
    epoch: Instant,
}

fn per_shard(max_entries: usize) -> usize {
    max_entries.div_ceil(SHARDS).max(1)
}

impl Table {
    pub fn new(max_entries: usize) -> Self {
        Table {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            max_entries_per_shard: AtomicUsize::new(per_shard(max_entries)),
            epoch: Instant::now(),
        }
    }

    /// A new bound on the entries; entries over it stay until they expire
    /// or are deleted, and no new key is added meanwhile.
    pub fn resize(&self, max_entries: usize) {
        self.max_entries_per_shard
            .store(per_shard(max_entries), Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A panic while holding a shard lock leaves plain data behind: use it.
        self.shards[index].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live<'a>(map: &'a mut HashMap<String, Entry>, key: &str, now: u64) -> Option<&'a mut Entry> {
        if map
            .get(key)
            .is_some_and(|e| e.expires.is_some_and(|at| at <= now))
        {
            map.remove(key);
        }
        map.get_mut(key)
    }

    fn insert(
        &self,
        map: &mut HashMap<String, Entry>,
        key: &str,
        entry: Entry,
    ) -> Result<(), KvError> {
        if key.len() > MAX_KEY_BYTES || entry.value.len() > MAX_VALUE_BYTES {
            return Err(KvError::TooLarge);
        }
        if map.len() >= self.max_entries_per_shard.load(Ordering::Relaxed) && !map.contains_key(key)
        {
            let now = self.now();
            map.retain(|_, e| e.expires.is_none_or(|at| at > now));
            if map.len() >= self.max_entries_per_shard.load(Ordering::Relaxed) {
                return Err(KvError::Full);
            }
        }
        map.insert(key.to_owned(), entry);
        Ok(())
    }

    fn expiry(&self, ttl_ms: Option<u64>) -> Option<u64> {
        ttl_ms.map(|t| self.now().saturating_add(t))
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = self.now();
        Self::live(&mut self.shard(key), key, now).map(|e| e.value.clone())
    }

    pub fn set(&self, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), KvError> {
        let expires = self.expiry(ttl_ms);
        self.insert(&mut self.shard(key), key, Entry { value, expires })
    }

    pub fn add(&self, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<bool, KvError> {
        let now = self.now();
        let mut map = self.shard(key);
        if Self::live(&mut map, key, now).is_some() {
            return Ok(false);
        }
        let expires = self.expiry(ttl_ms);
        self.insert(&mut map, key, Entry { value, expires })
            .map(|()| true)
    }

    pub fn delete(&self, key: &str) -> bool {
        let now = self.now();
        let mut map = self.shard(key);
        Self::live(&mut map, key, now).is_some() && map.remove(key).is_some()
    }

    pub fn incr(&self, key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
        let now = self.now();
        let mut map = self.shard(key);
        if let Some(entry) = Self::live(&mut map, key, now) {
            let n: i64 = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(KvError::NotANumber)?;
            let n = n.saturating_add(delta);
            entry.value = n.to_string().into_bytes();
            return Ok(n);
        }
        let expires = self.expiry(ttl_ms);
        let entry = Entry {
            value: delta.to_string().into_bytes(),
            expires,
        };
        self.insert(&mut map, key, entry).map(|()| delta)
    }

    pub fn ttl(&self, key: &str) -> Option<u64> {
        let now = self.now();
        Self::live(&mut self.shard(key), key, now).and_then(|e| e.expires.map(|at| at - now))
    }

    /// Drop every expired entry; returns how many are left.
    pub fn sweep(&self) -> usize {
        let now = self.now();
        self.shards
            .iter()
            .map(|s| {
                let mut map = s.lock().unwrap_or_else(|p| p.into_inner());
                map.retain(|_, e| e.expires.is_none_or(|at| at > now));
                map.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incr_counts_from_zero_and_refuses_text() {
        let t = Table::new(100);
        assert_eq!(t.incr("a", 2, None), Ok(2));
        assert_eq!(t.incr("a", -5, None), Ok(-3));
        t.set("b", b"x".to_vec(), None).unwrap();
        assert_eq!(t.incr("b", 1, None), Err(KvError::NotANumber));
    }

    #[test]
    fn expired_entries_are_gone() {
        let t = Table::new(100);
        t.set("k", b"v".to_vec(), Some(0)).unwrap();
        assert_eq!(t.get("k"), None);
        assert!(t.add("k", b"w".to_vec(), None).unwrap());
        assert_eq!(t.get("k").as_deref(), Some(&b"w"[..]));
    }

    #[test]
    fn a_full_table_refuses_new_keys_but_updates_old_ones() {
        let t = Table::new(SHARDS);
        let mut refused = 0;
        for i in 0..200 {
            if t.set(&format!("k{i}"), vec![1], None) == Err(KvError::Full) {
                refused += 1;
            }
        }
        assert!(refused > 0);
        assert!(t.sweep() <= SHARDS);
    }

    /// A reload's `table_entries` bounds the table it keeps.
    #[test]
    fn a_resized_table_takes_as_many_keys_as_its_new_bound() {
        let t = Table::new(SHARDS);
        let fill = |t: &Table, from: usize| {
            (from..from + 2000)
                .filter(|i| t.set(&format!("k{i}"), vec![1], None).is_ok())
                .count()
        };
        assert!(fill(&t, 0) <= SHARDS);
        t.resize(SHARDS * 100);
        let more = fill(&t, 10_000);
        assert!(more > SHARDS * 10, "{more}");
        assert!(t.sweep() <= SHARDS * 100);
    }
}
