//! In-process rate-limit state: GCRA buckets and session counters.
//!
//! Buckets are sharded by tenant (all of one tenant's buckets live in one
//! shard, so a decision over its key and tenant buckets takes one lock).
//! Memory is bounded: a shard holds at most `max_entries / SHARDS` buckets.
//! A bucket whose TAT has passed is as good as new and is never stored (or
//! is removed on the next sweep); when a shard is full of busy buckets, the
//! ones closest to idle are evicted (which hands those callers a part of their
//! burst back early — the documented price of a hard memory cap).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

use super::gcra::{self, Decision, Rate};

/// Shards of the bucket map (a power of two).
pub const SHARDS: usize = 64;

/// GCRA buckets in this process.
#[derive(Debug)]
pub struct LocalBuckets {
    shards: Box<[Mutex<HashMap<String, u64>>]>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl LocalBuckets {
    /// At most `max_entries` buckets in all.
    pub fn new(max_entries: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (max_entries / SHARDS).max(16),
            hasher: Default::default(),
        }
    }

    fn shard(&self, tenant: &str) -> &Mutex<HashMap<String, u64>> {
        &self.shards[(self.hasher.hash_one(tenant) as usize) & (SHARDS - 1)]
    }

    /// Decides `n` units at `now_us` over the buckets `names` (all of
    /// `tenant`) limited by `rates`.
    pub fn decide(
        &self,
        tenant: &str,
        names: &[String],
        rates: &[Rate],
        n: u32,
        now_us: u64,
    ) -> Decision {
        let mut tats = [0u64; 4];
        let tats = &mut tats[..names.len()];
        let mut shard = self.shard(tenant).lock().expect("ratelimit shard");
        for (t, name) in tats.iter_mut().zip(names) {
            *t = shard.get(name.as_str()).copied().unwrap_or(0);
        }
        let d = gcra::decide(now_us, rates, tats, n);
        for (t, name) in tats.iter().zip(names) {
            if gcra::is_idle(*t, now_us) {
                shard.remove(name.as_str());
            } else if let Some(slot) = shard.get_mut(name.as_str()) {
                *slot = *t;
            } else {
                if shard.len() >= self.per_shard {
                    make_room(&mut shard, self.per_shard, now_us);
                }
                shard.insert(name.clone(), *t);
            }
        }
        d
    }

    /// Forgets every idle bucket.
    pub fn sweep(&self, now_us: u64) {
        for s in self.shards.iter() {
            s.lock()
                .expect("ratelimit shard")
                .retain(|_, tat| !gcra::is_idle(*tat, now_us));
        }
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("ratelimit shard").len())
            .sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Frees at least an eighth of a full shard: idle buckets first, then the
/// buckets closest to idle.
fn make_room(shard: &mut HashMap<String, u64>, cap: usize, now_us: u64) {
    shard.retain(|_, tat| !gcra::is_idle(*tat, now_us));
    let target = cap - cap / 8;
    if shard.len() <= target {
        return;
    }
    let mut tats: Vec<u64> = shard.values().copied().collect();
    let cut = shard.len() - target;
    let (_, threshold, _) = tats.select_nth_unstable(cut - 1);
    let threshold = *threshold;
    let mut left = cut;
    shard.retain(|_, tat| {
        if left > 0 && *tat <= threshold {
            left -= 1;
            false
        } else {
            true
        }
    });
}

/// Streaming sessions open in this process, by counter name.
#[derive(Debug, Default)]
pub struct LocalSessions {
    open: Mutex<HashMap<String, u32>>,
}

impl LocalSessions {
    /// Takes one slot of every counter in `names` if each is below its
    /// maximum; otherwise takes none and returns the index of the full one.
    pub fn acquire(&self, names: &[(String, u32)]) -> Result<(), usize> {
        let mut open = self.open.lock().expect("ratelimit sessions");
        for (i, (name, max)) in names.iter().enumerate() {
            if open.get(name).copied().unwrap_or(0) >= *max {
                return Err(i);
            }
        }
        for (name, _) in names {
            *open.entry(name.clone()).or_insert(0) += 1;
        }
        Ok(())
    }

    /// Takes one slot of every counter in `names` whatever the maximum
    /// (a slot granted elsewhere, counted here too).
    pub fn hold(&self, names: &[(String, u32)]) {
        let mut open = self.open.lock().expect("ratelimit sessions");
        for (name, _) in names {
            *open.entry(name.clone()).or_insert(0) += 1;
        }
    }

    /// Gives back one slot of every counter in `names`.
    pub fn release(&self, names: &[(String, u32)]) {
        let mut open = self.open.lock().expect("ratelimit sessions");
        for (name, _) in names {
            if let Some(n) = open.get_mut(name) {
                *n -= 1;
                if *n == 0 {
                    open.remove(name);
                }
            }
        }
    }

    /// Counters held now (zero counters are removed).
    pub fn len(&self) -> usize {
        self.open.lock().expect("ratelimit sessions").len()
    }

    /// Whether no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_stays_bounded_with_a_million_keys() {
        let b = LocalBuckets::new(64 * 1024);
        let r = Rate::per_second(1.0, 5);
        let mut now = 1_000_000u64;
        for i in 0..1_000_000u32 {
            let tenant = format!("t{}", i % 1000);
            let names = [format!("{tenant}:k{i}")];
            let d = b.decide(&tenant, &names, &[r], 1, now);
            assert_eq!(d.admitted, 1, "a new key gets its burst");
            now += 1;
        }
        assert!(b.len() <= 64 * 1024, "{}", b.len());
        // Long idle: a sweep forgets everything.
        b.sweep(now + 10_000_000);
        assert!(b.is_empty());
    }

    #[test]
    fn idle_buckets_are_not_kept() {
        let b = LocalBuckets::new(1024);
        let r = Rate::per_second(10.0, 2);
        let names = ["t:f".to_string()];
        assert_eq!(b.decide("t", &names, &[r], 1, 1_000_000).admitted, 1);
        assert_eq!(b.len(), 1);
        // Refilled by now: the decision leaves nothing behind... until it
        // charges the bucket again.
        assert_eq!(b.decide("t", &names, &[r], 0, 2_000_000).admitted, 0);
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn sessions_are_all_or_nothing() {
        let s = LocalSessions::default();
        let tenant_and_key = [("t".to_string(), 2), ("t:k".to_string(), 1)];
        assert!(s.acquire(&tenant_and_key).is_ok());
        assert_eq!(s.acquire(&tenant_and_key), Err(1), "the key's one slot");
        let tenant_only = [("t".to_string(), 2)];
        assert!(s.acquire(&tenant_only).is_ok());
        assert_eq!(s.acquire(&tenant_only), Err(0));
        s.release(&tenant_and_key);
        s.release(&tenant_only);
        assert!(s.is_empty());
    }
}
