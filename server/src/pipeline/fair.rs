//! Fair sharing of one model's pipeline among tenants: who may queue a frame
//! ([`FairAdmission`]) and whose frame goes into the next batch
//! ([`FairScheduler`]).
//!
//! Both are sans-IO: no threads, no clock (times are passed in), so the
//! bound below is checked by a simulation with a fake clock.
//!
//! **Admission** (on the transport's thread, lock-free). Let `C` be
//! `pipeline.queue_capacity`, `w` the tenant's weight and `W` the weights of
//! the tenants that have frames queued, this one included. A tenant may hold
//! at most
//!
//! * `C` frames when no other tenant has frames queued (one tenant: the
//!   plain bounded queue of a single-tenant gateway), else
//! * `max(floor, ⌈C · w / W⌉)` frames (`floor` =
//!   `pipeline.tenant_queue_floor`),
//!
//! and all tenants together at most `C`, or `C + H` (`H` =
//! `pipeline.queue_headroom`) while several have frames queued. The headroom
//! is what lets a quiet tenant in at once when a noisy one filled the queue
//! while it was alone; the noisy one is refused (queue-full) until it drains
//! below its new share. Refused frames are answered at once: HTTP 429, a
//! stream's `Dropped` (queue-full).
//!
//! **Scheduling** (by the worker forming a batch). Admitted frames wait in one FIFO
//! per tenant. Batches are filled by deficit round robin with a cost of one
//! per frame and a quantum of `w` frames per round: the tenant at the head of
//! the round gets `w` more credit when its turn starts, gives frames while it
//! has credit, then goes to the back; a tenant whose FIFO empties leaves the
//! round and forgets its credit; a batch that fills mid-turn leaves the turn
//! open for the next batch. With one tenant this is its FIFO.
//!
//! **The bound.** A tenant `b` that keeps at most `k` frames queued (a quiet
//! tenant: `k = 1`) sees, ahead of its frame, at most `⌈k / w_b⌉ · (W − w_b)`
//! frames of the others plus `k − 1` of its own, so its frame is at position
//! `p ≤ ⌈k / w_b⌉ · (W − w_b) + k` of the dispatch order, whatever the others
//! send. With `N` workers, batches of up to `M` frames and at most `S` per
//! batch, it leaves within `⌈p / M⌉` batches, after the worker it needs frees
//! up, so its queueing delay is at most
//!
//! ```text
//! D_b ≤ S · (1 + ⌈(⌈p / M⌉ − 1) / N⌉) + max_delay
//! ```
//!
//! (`max_delay` covers a partial batch waiting for mates). With a FIFO the
//! same frame waits behind everything the noisy tenant queued: up to
//! `⌈C / M⌉ · S / N`. `tests::quiet_tenant_delay_is_bounded_*` check the bound
//! with a tenant offering 100× the quiet one's rate, weights 1:1 and 1:4.
//!
//! **Under a latency budget** ([`super::wait`]) the queue may hold at most
//! `D` frames, the count whose expected wait fits `pipeline.max_queue_wait_ms`.
//! When `D < C + H`, admission runs with `C' = max(1, ⌊D · C / (C + H)⌋)`
//! for `C` and `H' = D − C'` for `H` (the floor is capped by `C'` as by
//! `C`): the same shares and the same headroom for a tenant arriving next to
//! a noisy one, scaled so that no more than `D` frames are ever queued
//! ([`FairAdmission::try_admit_within`], [`Refusal::OverBudget`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

/// The most frames a tenant of weight `weight` may hold queued, when the
/// other tenants with frames queued weigh `others` together (see the module
/// docs).
pub fn share_limit(capacity: usize, floor: usize, weight: u32, others: u64) -> usize {
    if others == 0 {
        return capacity;
    }
    let w = u64::from(weight.max(1));
    let share = (capacity as u64 * w).div_ceil(w + others) as usize;
    share.max(floor).min(capacity)
}

/// One tenant's standing in one pipeline: its weight and frames queued.
/// Sessions hold it for their lifetime; queued frames hold it until they
/// leave for a worker.
#[derive(Debug)]
pub struct TenantShare {
    key: u64,
    name: Arc<str>,
    weight: u32,
    queued: AtomicUsize,
}

impl TenantShare {
    /// The tenant.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its deficit round robin weight (at least 1).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Its frames admitted and not yet handed to a worker.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// A number unique to this share within its pipeline.
    pub fn key(&self) -> u64 {
        self.key
    }
}

/// Why a frame was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The tenant holds its share of the queue while others wait.
    OverShare,
    /// The queue (with its headroom) is full.
    Full,
    /// The queue holds every frame the latency budget allows (the budget,
    /// not `queue_capacity`, set the limit that was reached).
    OverBudget,
}

/// Per-tenant admission bounds of one pipeline's queue. Lock-free on the
/// frame path: a frame costs a few atomic operations; only looking a tenant
/// up ([`Self::tenant`], once per session or request) takes a lock.
#[derive(Debug)]
pub struct FairAdmission {
    capacity: usize,
    floor: usize,
    headroom: usize,
    total: AtomicUsize,
    active_weight: AtomicI64,
    active_tenants: AtomicI64,
    next_key: AtomicU64,
    tenants: Mutex<HashMap<Arc<str>, Weak<TenantShare>>>,
}

impl FairAdmission {
    /// Bounds for a queue of `capacity` frames, each tenant allowed at least
    /// `floor`, all together `capacity + headroom` under contention.
    pub fn new(capacity: usize, floor: usize, headroom: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            floor,
            headroom,
            total: AtomicUsize::new(0),
            active_weight: AtomicI64::new(0),
            active_tenants: AtomicI64::new(0),
            next_key: AtomicU64::new(1),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// The most frames ever queued at once: `capacity + headroom`.
    pub fn hard_limit(&self) -> usize {
        self.capacity + self.headroom
    }

    /// The share of `tenant` (created on first use). Its weight is fixed
    /// while anything holds the share; a changed weight applies to the next
    /// share made once the old one is gone.
    pub fn tenant(&self, tenant: &str, weight: u32) -> Arc<TenantShare> {
        let mut map = self.tenants.lock().expect("tenant map lock");
        if let Some(s) = map.get(tenant).and_then(Weak::upgrade) {
            return s;
        }
        // Forget tenants nobody holds, so the map stays as small as the
        // set of tenants with sessions or frames in flight.
        if map.len() >= 64 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let name: Arc<str> = Arc::from(tenant);
        let share = Arc::new(TenantShare {
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
            name: name.clone(),
            weight: weight.max(1),
            queued: AtomicUsize::new(0),
        });
        map.insert(name, Arc::downgrade(&share));
        share
    }

    /// Admits one frame of `t`, or says why not. An admitted frame must be
    /// [`Self::release`]d exactly once when it leaves the queue.
    pub fn try_admit(&self, t: &TenantShare) -> Result<(), Refusal> {
        self.try_admit_within(t, None)
    }

    /// Capacity and headroom in force when at most `budget` frames may be
    /// queued (see the module docs), and whether the budget made them
    /// smaller than configured.
    pub fn bounds(&self, budget: Option<usize>) -> (usize, usize, bool) {
        let (c, h) = (self.capacity, self.headroom);
        match budget {
            Some(d) if d < c + h => {
                let cap = ((d as u128 * c as u128 / (c + h) as u128) as usize).max(1);
                (cap, d.saturating_sub(cap), true)
            }
            _ => (c, h, false),
        }
    }

    /// [`Self::try_admit`] with at most `budget` frames queued in all (the
    /// latency budget's frame count, [`super::wait::WaitBudget::frames`];
    /// `None`: only the configured capacity).
    pub fn try_admit_within(&self, t: &TenantShare, budget: Option<usize>) -> Result<(), Refusal> {
        let (capacity, headroom, budgeted) = self.bounds(budget);
        let w = i64::from(t.weight);
        let before = t.queued.fetch_add(1, Ordering::AcqRel);
        if before == 0 {
            self.active_weight.fetch_add(w, Ordering::AcqRel);
            self.active_tenants.fetch_add(1, Ordering::AcqRel);
        }
        // Racing admissions may see a weight a moment stale; the hard limit
        // below holds regardless.
        let others = (self.active_weight.load(Ordering::Acquire) - w).max(0) as u64;
        if before >= share_limit(capacity, self.floor, t.weight, others) {
            self.leave(t);
            // Alone, its share is the whole queue.
            return Err(if others == 0 && budgeted {
                Refusal::OverBudget
            } else {
                Refusal::OverShare
            });
        }
        let hard = if others == 0 {
            capacity
        } else {
            capacity + headroom
        };
        if self.total.fetch_add(1, Ordering::AcqRel) >= hard {
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.leave(t);
            return Err(if budgeted {
                Refusal::OverBudget
            } else {
                Refusal::Full
            });
        }
        Ok(())
    }

    /// One admitted frame of `t` left the queue (to a worker, or refused
    /// after admission).
    pub fn release(&self, t: &TenantShare) {
        self.release_n(t, 1);
    }

    /// [`Self::release`] for `n` frames of `t` at once (a batch's run of one
    /// tenant's frames: two atomic operations instead of `2n`).
    pub fn release_n(&self, t: &TenantShare, n: usize) {
        if n == 0 {
            return;
        }
        self.total.fetch_sub(n, Ordering::AcqRel);
        self.leave_n(t, n);
    }

    fn leave(&self, t: &TenantShare) {
        self.leave_n(t, 1);
    }

    fn leave_n(&self, t: &TenantShare, n: usize) {
        if t.queued.fetch_sub(n, Ordering::AcqRel) == n {
            self.active_weight
                .fetch_sub(i64::from(t.weight), Ordering::AcqRel);
            self.active_tenants.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Frames admitted and not yet handed to a worker.
    pub fn queued(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Tenants with frames queued.
    pub fn active_tenants(&self) -> usize {
        self.active_tenants.load(Ordering::Acquire).max(0) as usize
    }
}

struct TenantFifo<T> {
    key: u64,
    weight: u32,
    deficit: u32,
    in_turn: bool,
    items: VecDeque<(Instant, T)>,
}

/// Deficit round robin over per-tenant FIFOs (see the module docs). Driven
/// by the worker forming a batch, under the former's lock; holds no clock.
pub struct FairScheduler<T> {
    fifos: Vec<TenantFifo<T>>,
    free: Vec<usize>,
    slots: HashMap<u64, usize>,
    /// Slots with frames, in round order; the front is in (or next to
    /// start) its turn.
    round: VecDeque<usize>,
    len: usize,
    /// The last tenant pushed and its slot: one tenant costs no lookup.
    last: Option<(u64, usize)>,
}

impl<T> Default for FairScheduler<T> {
    fn default() -> Self {
        Self {
            fifos: Vec::new(),
            free: Vec::new(),
            slots: HashMap::new(),
            round: VecDeque::new(),
            len: 0,
            last: None,
        }
    }
}

impl<T> std::fmt::Debug for FairScheduler<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FairScheduler")
            .field("frames", &self.len)
            .field("tenants", &self.round.len())
            .finish()
    }
}

impl<T> FairScheduler<T> {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `item` of tenant `key` (weight `weight`), enqueued at `at`.
    pub fn push(&mut self, key: u64, weight: u32, at: Instant, item: T) {
        let slot = match self.last {
            Some((k, s)) if k == key => s,
            _ => {
                let s = match self.slots.get(&key) {
                    Some(&s) => s,
                    None => self.open(key, weight),
                };
                self.last = Some((key, s));
                s
            }
        };
        let fifo = &mut self.fifos[slot];
        if fifo.items.is_empty() {
            self.round.push_back(slot);
        }
        fifo.items.push_back((at, item));
        self.len += 1;
    }

    fn open(&mut self, key: u64, weight: u32) -> usize {
        let fifo = TenantFifo {
            key,
            weight: weight.max(1),
            deficit: 0,
            in_turn: false,
            items: VecDeque::new(),
        };
        let slot = match self.free.pop() {
            Some(s) => {
                let old = std::mem::replace(&mut self.fifos[s], fifo);
                // Keep the old FIFO's allocation.
                self.fifos[s].items = old.items;
                s
            }
            None => {
                self.fifos.push(fifo);
                self.fifos.len() - 1
            }
        };
        self.slots.insert(key, slot);
        slot
    }

    /// Moves up to `max` frames into `out`, by deficit round robin.
    pub fn pop_batch(&mut self, max: usize, out: &mut Vec<T>) {
        let target = out.len() + max;
        while out.len() < target {
            let Some(&slot) = self.round.front() else {
                return;
            };
            let fifo = &mut self.fifos[slot];
            if !fifo.in_turn {
                fifo.deficit += fifo.weight;
                fifo.in_turn = true;
            }
            while fifo.deficit > 0 && out.len() < target {
                let Some((_, item)) = fifo.items.pop_front() else {
                    break;
                };
                out.push(item);
                fifo.deficit -= 1;
                self.len -= 1;
            }
            if fifo.items.is_empty() {
                // Leaves the round; an idle tenant saves no credit.
                fifo.deficit = 0;
                fifo.in_turn = false;
                self.round.pop_front();
                let key = fifo.key;
                self.slots.remove(&key);
                self.free.push(slot);
                if self.last.is_some_and(|(k, _)| k == key) {
                    self.last = None;
                }
            } else if fifo.deficit == 0 {
                fifo.in_turn = false;
                self.round.pop_front();
                self.round.push_back(slot);
            }
            // Otherwise the batch is full mid-turn: the turn goes on next time.
        }
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tenants with frames waiting.
    pub fn tenants(&self) -> usize {
        self.round.len()
    }

    /// When the longest-waiting frame was enqueued.
    pub fn oldest(&self) -> Option<Instant> {
        self.round
            .iter()
            .filter_map(|&s| self.fifos[s].items.front().map(|(t, _)| *t))
            .min()
    }
}

#[cfg(test)]
mod tests;
