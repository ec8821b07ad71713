//! The in-process usage accumulator: what was delivered since the last flush.
//!
//! The hot path is one lookup in a copy-on-write map (wait-free: an
//! `ArcSwap` load) and two relaxed `fetch_add`s on the series' counters; a
//! session looks its series up once and then only adds. New series (a
//! tenant, key or model seen for the first time) take a mutex and publish a
//! new map; that happens once per series for the life of the process.
//!
//! [`UsageAccumulator::drain`] takes every counter with `swap(0)` and turns
//! what it took into [`UsageDelta`]s for the window that contains `now`. It is
//! given the time, never reads a clock, so tests drive it with any clock.
//!
//! Invariant (checked by the model test below): for every series, the sum of
//! everything drained plus what is still in the counters equals everything
//! recorded, whatever the interleaving of `record` and `drain`.
//!
//! Window attribution: a frame belongs to the window in which the drain that
//! carries it runs, so a frame delivered at most one `flush_interval` before a
//! window boundary may be attributed to the next window. Totals are exact; the
//! split between adjacent windows is exact to within one flush interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// What a usage series is counted by (the window comes from the drain).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey {
    /// The tenant billed.
    pub tenant: String,
    /// The API key's id (a prefix of its hash, never the key).
    pub key_id: String,
    /// The model that answered.
    pub model: String,
}

/// Counters of one series; shared by every session recording into it.
#[derive(Debug)]
pub struct Series {
    key: SeriesKey,
    frames: AtomicU64,
    pixels: AtomicU64,
}

/// A handle for recording into one series, cheap to clone and keep.
#[derive(Debug, Clone)]
pub struct MeterHandle(Arc<Series>);

impl MeterHandle {
    /// Counts one delivered frame of `pixels` pixels. Lock-free.
    #[inline]
    pub fn record(&self, pixels: u64) {
        self.0.frames.fetch_add(1, Ordering::Relaxed);
        self.0.pixels.fetch_add(pixels, Ordering::Relaxed);
    }

    /// The series this handle records into.
    pub fn key(&self) -> &SeriesKey {
        &self.0.key
    }
}

/// Usage of one series in one window, as written to the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageDelta {
    /// Tenant.
    pub tenant: String,
    /// API key id.
    pub key_id: String,
    /// Model.
    pub model: String,
    /// Start of the window, unix seconds (a multiple of the window length).
    pub window_start: u64,
    /// Frames delivered.
    pub frames: u64,
    /// Pixels of those frames.
    pub pixels: u64,
}

type SeriesMap = HashMap<SeriesKey, Arc<Series>>;

/// The accumulator; one per process, shared by every transport.
#[derive(Debug)]
pub struct UsageAccumulator {
    window_secs: u64,
    series: ArcSwap<SeriesMap>,
    insert: Mutex<()>,
}

impl UsageAccumulator {
    /// An empty accumulator with windows of `window_secs` seconds.
    pub fn new(window_secs: u64) -> Self {
        assert!(window_secs > 0, "window_secs must be positive");
        Self {
            window_secs,
            series: ArcSwap::from_pointee(HashMap::new()),
            insert: Mutex::new(()),
        }
    }

    /// The window length in seconds.
    pub fn window_secs(&self) -> u64 {
        self.window_secs
    }

    /// The handle of a series, created on first use.
    pub fn handle(&self, tenant: &str, key_id: &str, model: &str) -> MeterHandle {
        let key = SeriesKey {
            tenant: tenant.to_string(),
            key_id: key_id.to_string(),
            model: model.to_string(),
        };
        if let Some(s) = self.series.load().get(&key) {
            return MeterHandle(s.clone());
        }
        let _guard = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.series.load_full();
        if let Some(s) = current.get(&key) {
            return MeterHandle(s.clone());
        }
        let series = Arc::new(Series {
            key: key.clone(),
            frames: AtomicU64::new(0),
            pixels: AtomicU64::new(0),
        });
        let mut next: SeriesMap = (*current).clone();
        next.insert(key, series.clone());
        self.series.store(Arc::new(next));
        MeterHandle(series)
    }

    /// Start of the window containing `now` (unix seconds).
    pub fn window_of(&self, now: u64) -> u64 {
        now - now % self.window_secs
    }

    /// Takes everything recorded so far and returns it as deltas for the
    /// window containing `now`, sorted by series; series with nothing new are
    /// left out.
    pub fn drain(&self, now: u64) -> Vec<UsageDelta> {
        let window_start = self.window_of(now);
        let map = self.series.load();
        let mut out: Vec<UsageDelta> = map
            .values()
            .filter_map(|s| {
                let frames = s.frames.swap(0, Ordering::Relaxed);
                let pixels = s.pixels.swap(0, Ordering::Relaxed);
                (frames > 0 || pixels > 0).then(|| UsageDelta {
                    tenant: s.key.tenant.clone(),
                    key_id: s.key.key_id.clone(),
                    model: s.key.model.clone(),
                    window_start,
                    frames,
                    pixels,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.tenant, &a.key_id, &a.model).cmp(&(&b.tenant, &b.key_id, &b.model)));
        out
    }

    /// Frames recorded and not yet drained, over every series.
    pub fn undrained_frames(&self) -> u64 {
        self.series
            .load()
            .values()
            .map(|s| s.frames.load(Ordering::Relaxed))
            .sum()
    }
}

/// Adds `more` into `into`, merging deltas of the same series and window.
pub fn merge_deltas(into: &mut Vec<UsageDelta>, more: impl IntoIterator<Item = UsageDelta>) {
    for d in more {
        match into.iter_mut().find(|x| {
            x.window_start == d.window_start
                && x.tenant == d.tenant
                && x.key_id == d.key_id
                && x.model == d.model
        }) {
            Some(x) => {
                x.frames += d.frames;
                x.pixels += d.pixels;
            }
            None => into.push(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_attributes_to_the_window_of_now() {
        let acc = UsageAccumulator::new(60);
        let h = acc.handle("acme", "k1", "m");
        h.record(100);
        h.record(50);
        let d = acc.drain(125);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].window_start, d[0].frames, d[0].pixels), (120, 2, 150));
        assert!(acc.drain(130).is_empty(), "nothing new, nothing drained");
    }

    #[test]
    fn handles_of_the_same_series_share_counters() {
        let acc = UsageAccumulator::new(1);
        acc.handle("t", "k", "m").record(1);
        acc.handle("t", "k", "m").record(1);
        acc.handle("t", "k2", "m").record(1);
        let d = acc.drain(0);
        assert_eq!(d.iter().map(|d| d.frames).collect::<Vec<_>>(), vec![2, 1]);
    }

    #[test]
    fn merge_adds_same_series_and_window() {
        let acc = UsageAccumulator::new(10);
        let h = acc.handle("t", "k", "m");
        h.record(3);
        let mut all = acc.drain(5);
        h.record(4);
        merge_deltas(&mut all, acc.drain(7));
        h.record(5);
        merge_deltas(&mut all, acc.drain(15));
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].frames, all[0].pixels), (2, 7));
        assert_eq!((all[1].window_start, all[1].frames), (10, 1));
    }

    /// Model-based test: random interleavings of records over several
    /// series, from several threads, with drains at random clock values.
    /// Whatever was recorded is drained exactly once: nothing lost, nothing
    /// counted twice, and each drain's window is the window of its clock.
    #[test]
    fn model_every_record_is_drained_exactly_once() {
        let acc = Arc::new(UsageAccumulator::new(7));
        let tenants = ["a", "b", "c"];
        let models = ["m1", "m2"];
        let threads = 4;
        let per_thread = 20_000u64;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The model: what each thread recorded, per series.
        let mut workers = Vec::new();
        for t in 0..threads {
            let acc = acc.clone();
            workers.push(std::thread::spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1);
                let mut model: HashMap<SeriesKey, (u64, u64)> = HashMap::new();
                for _ in 0..per_thread {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let tenant = tenants[(rng % 3) as usize];
                    let m = models[((rng >> 8) % 2) as usize];
                    let pixels = (rng >> 16) % 1000;
                    let h = acc.handle(tenant, "k", m);
                    h.record(pixels);
                    let e = model.entry(h.key().clone()).or_default();
                    e.0 += 1;
                    e.1 += pixels;
                }
                model
            }));
        }
        let drainer = {
            let acc = acc.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut drained: HashMap<SeriesKey, (u64, u64)> = HashMap::new();
                let mut clock = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    clock += 3;
                    for d in acc.drain(clock) {
                        assert_eq!(d.window_start, clock - clock % 7);
                        assert!(d.frames > 0 || d.pixels > 0);
                        let e = drained
                            .entry(SeriesKey {
                                tenant: d.tenant,
                                key_id: d.key_id,
                                model: d.model,
                            })
                            .or_default();
                        e.0 += d.frames;
                        e.1 += d.pixels;
                    }
                }
                drained
            })
        };
        let mut expected: HashMap<SeriesKey, (u64, u64)> = HashMap::new();
        for w in workers {
            for (k, (f, p)) in w.join().unwrap() {
                let e = expected.entry(k).or_default();
                e.0 += f;
                e.1 += p;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut drained = drainer.join().unwrap();
        for d in acc.drain(1_000_000) {
            let e = drained
                .entry(SeriesKey {
                    tenant: d.tenant,
                    key_id: d.key_id,
                    model: d.model,
                })
                .or_default();
            e.0 += d.frames;
            e.1 += d.pixels;
        }
        assert_eq!(drained, expected);
        assert_eq!(
            expected.values().map(|v| v.0).sum::<u64>(),
            threads as u64 * per_thread
        );
        assert_eq!(acc.undrained_frames(), 0);
    }
}
