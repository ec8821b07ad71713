//! The Redis usage store against a real redis-server: idempotent flushes,
//! the key layout (one hash tag per tenant), queries, and the reporter lease.

mod support;

use std::sync::Arc;
use std::time::Duration;

use framegate::metering::wal::Wal;
use framegate::metering::{
    period_of, Budgets, FlushLeft, FlushStats, Flusher, UsageAccumulator, UsageDelta,
};
use framegate::usage::redis::RedisStore;
use framegate::usage::{BillingState, FlushBatch, UsageStore};
use support::redis::RedisServer;

fn delta(tenant: &str, model: &str, window: u64, frames: u64) -> UsageDelta {
    UsageDelta {
        tenant: tenant.into(),
        key_id: "abc123".into(),
        model: model.into(),
        window_start: window,
        frames,
        pixels: frames * 100,
    }
}

/// A tenant's usage in 1,300 one-minute windows (more than two of the
/// store's reads of windows: the buckets must fold across them), read back
/// in hours: `m` one frame a window, `m2` five frames in the first, and
/// another tenant's frame that must not show.
async fn check_buckets_over_many_windows(store: &UsageStore) {
    let mut deltas: Vec<UsageDelta> = (0..1_300).map(|i| delta("t", "m", i * 60, 1)).collect();
    deltas.push(delta("t", "m2", 0, 5));
    deltas.push(delta("other", "m", 0, 7));
    store
        .apply(&FlushBatch {
            id: "gw-b-1".into(),
            deltas,
        })
        .await
        .unwrap();
    let b = store.buckets("t", 0, 1_300 * 60, 3_600).await.unwrap();
    let of = |model: &str| -> Vec<(u64, u64)> {
        b.iter()
            .filter(|x| x.model == model)
            .map(|x| (x.start, x.frames))
            .collect()
    };
    let m = of("m");
    assert_eq!(m.len(), 22, "21 full hours and 40 minutes");
    assert!(m[..21].iter().all(|&(_, f)| f == 60), "{m:?}");
    assert_eq!(m[21], (21 * 3_600, 40));
    assert_eq!(of("m2"), [(0, 5)]);
    assert_eq!(b.iter().map(|x| x.pixels).sum::<u64>(), 1_305 * 100);
    // A range inside an hour: its windows only.
    let part = store.buckets("t", 600, 1_200, 3_600).await.unwrap();
    assert_eq!(part.len(), 1);
    assert_eq!((part[0].start, part[0].frames), (0, 10));
}

#[tokio::test]
async fn usage_buckets_fold_every_window_of_a_long_range() {
    let redis = RedisServer::start();
    let store =
        UsageStore::Redis(RedisStore::connect(&redis.url(), Duration::from_secs(2)).unwrap());
    check_buckets_over_many_windows(&store).await;
    // The same on the embedded store.
    let dir = tempfile::tempdir().unwrap();
    let embedded = UsageStore::Embedded(
        framegate::usage::embedded::EmbeddedStore::open(&dir.path().join("u.redb")).unwrap(),
    );
    check_buckets_over_many_windows(&embedded).await;
}

/// The store on `redis`, where `tenant`'s windows key has the wrong type:
/// its usage is refused until the key is deleted.
fn store_refusing(redis: &RedisServer, tenant: &str) -> UsageStore {
    let key = format!("fg:{{{tenant}}}:windows");
    redis.cmd(&["SET", &key, "not a sorted set"]).unwrap();
    UsageStore::Redis(RedisStore::connect(&redis.url(), Duration::from_secs(2)).unwrap())
}

/// A flusher of `acc` into `store` over `wal` (2 s store timeout),
/// replaying `replayed`.
fn flusher(
    acc: &Arc<UsageAccumulator>,
    store: &UsageStore,
    budgets: Arc<Budgets>,
    wal: Wal,
    replayed: Vec<FlushBatch>,
    stats: Arc<FlushStats>,
) -> Flusher {
    Flusher::new(
        acc.clone(),
        store.clone(),
        budgets,
        wal,
        replayed,
        "gw-test",
        1 << 20,
        Duration::from_secs(2),
        stats,
    )
}

#[tokio::test]
async fn flushes_apply_once_per_id_and_keys_are_tagged_per_tenant() {
    let redis = RedisServer::start();
    let store =
        UsageStore::Redis(RedisStore::connect(&redis.url(), Duration::from_secs(2)).unwrap());
    let batch = FlushBatch {
        id: "gw1-aa-1".into(),
        deltas: vec![
            delta("acme", "m1", 3600, 5),
            delta("acme", "m2", 3600, 1),
            delta("globex", "m1", 7200, 2),
        ],
    };
    // A retry after a lost reply: applied once.
    store.apply(&batch).await.unwrap();
    store.apply(&batch).await.unwrap();
    store
        .apply(&FlushBatch {
            id: "gw2-bb-1".into(),
            deltas: vec![delta("acme", "m1", 3600, 4)],
        })
        .await
        .unwrap();
    let rows = store.rows("acme", 0, 10_000).await.unwrap();
    let m1: Vec<_> = rows.iter().filter(|r| r.model == "m1").collect();
    assert_eq!((m1[0].frames, m1[0].pixels), (9, 900));
    assert_eq!(store.window_frames("acme", 3600).await.unwrap(), 10);
    assert_eq!(store.window_frames("globex", 7200).await.unwrap(), 2);
    assert!(store.rows("acme", 0, 3600).await.unwrap().is_empty());
    assert_eq!(
        store.period_total("acme", period_of(3600)).await.unwrap(),
        10
    );
    assert_eq!(store.unbilled("acme", 10_000).await.unwrap(), vec![3600]);
    // Every key of a tenant carries its hash tag (one cluster slot).
    let keys = redis.cmd(&["KEYS", "*"]).unwrap();
    for k in keys.lines() {
        assert!(
            k.starts_with("fg:{acme}:") || k.starts_with("fg:{globex}:"),
            "untagged key {k}"
        );
    }
    let ttl: i64 = redis
        .cmd(&["TTL", "fg:{acme}:applied:gw1-aa-1"])
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        ttl > 6 * 86_400,
        "applied ids expire after 7 days, ttl {ttl}"
    );
    // Billing progress is compare-and-set.
    let s0 = BillingState::default();
    let s1 = BillingState {
        reported: 0,
        pending_to: Some(10),
    };
    assert!(store
        .swap_billing_state("acme", "frames", 3600, s0, s1)
        .await
        .unwrap());
    assert!(!store
        .swap_billing_state("acme", "frames", 3600, s0, s1)
        .await
        .unwrap());
    let s2 = BillingState {
        reported: 10,
        pending_to: None,
    };
    assert!(store
        .swap_billing_state("acme", "frames", 3600, s1, s2)
        .await
        .unwrap());
    assert!(store.unbilled("acme", 10_000).await.unwrap().is_empty());
}

#[tokio::test]
async fn one_reporter_holds_the_lease_at_a_time() {
    let redis = RedisServer::start();
    let a = UsageStore::Redis(RedisStore::connect(&redis.url(), Duration::from_secs(2)).unwrap());
    let b = UsageStore::Redis(RedisStore::connect(&redis.url(), Duration::from_secs(2)).unwrap());
    assert!(a.lease("a", 300).await.unwrap());
    assert!(!b.lease("b", 300).await.unwrap());
    assert!(a.lease("a", 300).await.unwrap(), "renewal");
    // A holder that dies stops renewing; the lease expires.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(b.lease("b", 300).await.unwrap());
    assert!(!a.lease("a", 300).await.unwrap());
    // Released at shutdown: the other takes over at once.
    b.release_lease("b").await.unwrap();
    a.release_lease("b").await.unwrap(); // not a's to release: no effect
    assert!(a.lease("a", 300).await.unwrap());
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_hang() {
    let mut redis = RedisServer::start();
    let store =
        UsageStore::Redis(RedisStore::connect(&redis.url(), Duration::from_millis(300)).unwrap());
    redis.kill();
    let started = std::time::Instant::now();
    let batch = FlushBatch {
        id: "x".into(),
        deltas: vec![delta("acme", "m", 0, 1)],
    };
    assert!(store.apply(&batch).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A batch of thousands of tenants (a busy minute, or what merged during an
/// outage) against a Redis 5 ms away: the tenants' scripts go in pipelines,
/// several at once. Before, each tenant cost its own round
/// trip: 2,000 × 5 ms = 10 s for one apply, past any store timeout, and
/// every retry the same (the flusher would never get the batch through).
#[test]
fn a_batch_of_thousands_of_tenants_takes_few_round_trips() {
    let redis = RedisServer::start();
    let far = support::forwarder::Forwarder::start_delayed(
        format!("127.0.0.1:{}", redis.port).parse().unwrap(),
        Duration::from_millis(5),
    );
    // The forwarder runs its own runtime: this test is not inside one.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let store = UsageStore::Redis(
        RedisStore::connect(
            &format!("redis://127.0.0.1:{}/", far.port),
            Duration::from_secs(5),
        )
        .unwrap(),
    );
    let tenants: Vec<String> = (0..2000).map(|i| format!("t{i:04}")).collect();
    let batch = FlushBatch {
        id: "gw1-many-1".into(),
        deltas: tenants
            .iter()
            .flat_map(|t| [delta(t, "m1", 3600, 2), delta(t, "m2", 7200, 1)])
            .collect(),
    };
    let started = std::time::Instant::now();
    rt.block_on(store.apply(&batch)).unwrap();
    let took = started.elapsed();
    // Pipelines of 1,024 deltas, 8 at once on one connection: well under
    // a second of forwarding delay; one round trip per tenant would be
    // 10 s at the least.
    assert!(took < Duration::from_secs(4), "apply took {took:?}");
    for t in [&tenants[0], &tenants[977], &tenants[1999]] {
        assert_eq!(rt.block_on(store.window_frames(t, 3600)).unwrap(), 2, "{t}");
        assert_eq!(rt.block_on(store.window_frames(t, 7200)).unwrap(), 1, "{t}");
    }
    // The budgets' refresh reads every tenant's period total in one call.
    let totals = rt
        .block_on(store.period_totals(&tenants, period_of(3600)))
        .unwrap();
    assert_eq!(totals.len(), 2000);
    assert!(totals.iter().all(|&t| t == 3), "{:?}", &totals[..5]);
    // Applied once: the retry after a lost reply changes nothing.
    rt.block_on(store.apply(&batch)).unwrap();
    assert_eq!(
        rt.block_on(store.window_frames(&tenants[5], 3600)).unwrap(),
        2
    );
    let applied = redis.cmd(&["KEYS", "*:applied:gw1-many-1"]).unwrap();
    assert_eq!(applied.lines().count(), 2000);
}

/// A tenant whose keys the apply script cannot use (here a key of the
/// wrong type) fails the flush with an error that names it, on every
/// retry, while the batch's other tenants are applied. Before, the error
/// was Redis's own ("WRONGTYPE …" from inside the script), with no word of
/// whose keys to look at.
#[tokio::test]
async fn a_tenant_whose_keys_are_broken_is_named() {
    let redis = RedisServer::start();
    let store = store_refusing(&redis, "broken");
    // A counter INCRBY would refuse, after the other deltas' writes.
    redis
        .cmd(&["SET", "fg:{odd}:period:197001", "1.5"])
        .unwrap();
    let batch = FlushBatch {
        id: "gw1-bad-1".into(),
        deltas: vec![
            delta("acme", "m1", 3600, 5),
            delta("broken", "m1", 3600, 2),
            delta("odd", "m1", 60, 1),
            delta("odd", "m1", 3600, 1),
            delta("zeta", "m1", 3600, 1),
        ],
    };
    for _ in 0..2 {
        let e = store.apply(&batch).await.unwrap_err().to_string();
        assert!(e.contains("\"broken\"") && e.contains("WRONGTYPE"), "{e}");
        assert!(e.contains("\"odd\"") && e.contains("not a counter"), "{e}");
    }
    assert_eq!(
        redis.cmd(&["EXISTS", "fg:{odd}:u:60", "fg:{odd}:u:3600"]),
        Some("0".into())
    );
    assert_eq!(store.window_frames("acme", 3600).await.unwrap(), 5);
    assert_eq!(store.window_frames("zeta", 3600).await.unwrap(), 1);
    // Refused before anything of its part was written (a script that
    // failed half-way would have counted it again on every retry).
    assert_eq!(
        redis.cmd(&["EXISTS", "fg:{broken}:u:3600", "fg:{broken}:period:197001"]),
        Some("0".into())
    );
}

/// A tenant whose keys the store refuses (a key of the wrong type) holds up
/// only its own usage: the other tenants' part of the same flush, and every
/// later flush, reach the store; the refused part waits, in the write-ahead
/// file too (alone: a restart does not send the applied parts again), and
/// is applied once, as soon as the key is mended. Before, the batch failed
/// whole on every retry and every later flush waited behind it.
#[tokio::test]
async fn a_refused_tenant_holds_up_only_its_own_usage() {
    let redis = RedisServer::start();
    let store = store_refusing(&redis, "broken");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.wal");
    let acc = Arc::new(UsageAccumulator::new(60));
    let stats = Arc::new(FlushStats::default());
    // A flusher over the write-ahead file, replaying what it holds: the
    // tenants of that.
    let start = || {
        let (wal, replayed) = Wal::open(&path).unwrap();
        let tenants: Vec<String> = replayed
            .iter()
            .flat_map(|b| &b.deltas)
            .map(|d| d.tenant.clone())
            .collect();
        let budgets = Arc::new(Budgets::new(&Default::default()));
        let flusher = flusher(&acc, &store, budgets, wal, replayed, stats.clone());
        (flusher, tenants)
    };
    let (mut flusher, _) = start();
    // Every delta lands in the window starting at 3600.
    let now = 3_600;
    let record = |tenant: &str, frames: u32| {
        for _ in 0..frames {
            acc.handle(tenant, "k", "m").record(100);
        }
    };
    record("acme", 2);
    record("broken", 3);
    flusher.tick(now).await.unwrap();
    assert_eq!(store.window_frames("acme", now).await.unwrap(), 2);
    assert_eq!(flusher.pending_frames(), 3, "the refused part waits");
    // A restart replays the refused part alone.
    drop(flusher);
    let (mut flusher, replayed) = start();
    assert_eq!(replayed, ["broken"], "what the write-ahead file holds");

    record("zeta", 1);
    flusher.tick(now).await.unwrap();
    assert_eq!(
        store.window_frames("zeta", now).await.unwrap(),
        1,
        "a later flush is not held up"
    );
    assert_eq!(flusher.pending_frames(), 3);
    // Steady traffic of the refused tenant: its usage merges, one batch
    // waits, whatever the number of flushes.
    for _ in 0..5 {
        record("broken", 1);
        flusher.tick(now).await.unwrap();
    }
    assert_eq!(flusher.pending_frames(), 8);
    assert_eq!(
        stats
            .pending_batches
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    redis.cmd(&["DEL", "fg:{broken}:windows"]).unwrap();
    flusher.tick(now).await.unwrap();
    assert!(flusher.is_idle());
    for (tenant, frames) in [("acme", 2), ("broken", 8), ("zeta", 1)] {
        assert_eq!(
            store.window_frames(tenant, now).await.unwrap(),
            frames,
            "{tenant}: applied once"
        );
    }
}

/// At shutdown, usage the store refuses outright is not waited for: no
/// retry within the flush deadline would mend the key. The final flush
/// applies everyone else's, names the refused tenant, and leaves its
/// frames in the write-ahead file; a store that is only unreachable is
/// still waited for.
#[tokio::test]
async fn the_final_flush_does_not_wait_out_its_deadline_for_a_refused_tenant() {
    let redis = RedisServer::start();
    let store = store_refusing(&redis, "broken");
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(&dir.path().join("usage.wal")).unwrap();
    let acc = Arc::new(UsageAccumulator::new(60));
    let budgets = Arc::new(Budgets::new(&Default::default()));
    let mut first = flusher(&acc, &store, budgets, wal, Vec::new(), Default::default());
    for tenant in ["acme", "broken", "broken"] {
        acc.handle(tenant, "k", "m").record(100);
    }
    let deadline = Duration::from_secs(30);
    let started = std::time::Instant::now();
    let left = first.flush_all(|| 3_600, deadline).await;
    let took = started.elapsed();
    assert_eq!(
        left,
        FlushLeft {
            frames: 2,
            refused: vec!["broken".into()]
        }
    );
    assert!(
        took < deadline / 3,
        "the final flush waited {took:?} for a key no retry mends"
    );
    assert_eq!(store.window_frames("acme", 3_600).await.unwrap(), 1);
    // With no time to wait at all (shutdown_flush_secs = 0) the refusal is
    // still named, not taken for an unreachable store.
    acc.handle("broken", "k", "m").record(100);
    let left = first.flush_all(|| 3_600, Duration::ZERO).await;
    assert_eq!(
        left,
        FlushLeft {
            frames: 3,
            refused: vec!["broken".into()]
        }
    );
    drop(first);
    let (_, replayed) = Wal::open(&dir.path().join("usage.wal")).unwrap();
    let kept: u64 = replayed
        .iter()
        .flat_map(|b| &b.deltas)
        .map(|d| d.frames)
        .sum();
    assert_eq!(kept, 3, "the refused frames stay in the write-ahead file");

    // An unreachable store is another matter: it may come back.
    let gone = UsageStore::Redis(
        RedisStore::connect("redis://127.0.0.1:1", Duration::from_secs(2)).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(&dir.path().join("usage.wal")).unwrap();
    let budgets = Arc::new(Budgets::new(&Default::default()));
    let mut second = flusher(&acc, &gone, budgets, wal, Vec::new(), Default::default());
    acc.handle("acme", "k", "m").record(100);
    let left = second
        .flush_all(|| 3_600, Duration::from_millis(1_500))
        .await;
    assert_eq!(
        left,
        FlushLeft {
            frames: 1,
            refused: Vec::new()
        }
    );
}

/// A refused part of a batch replayed from an earlier run travels on with
/// this run's usage; when it is finally applied it must not count as
/// delivered by this run, or it would cancel this run's delivered frames
/// not yet in the store from the tenant's budget (1,000 instead of 1,003
/// used).
#[tokio::test]
async fn a_refused_part_of_an_earlier_run_leaves_this_runs_budget_right() {
    let redis = RedisServer::start();
    let store = store_refusing(&redis, "t");
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(&dir.path().join("usage.wal")).unwrap();
    let budgets = Arc::new(Budgets::new(&std::collections::BTreeMap::from([(
        "t".to_string(),
        10_000,
    )])));
    let now = framegate::metering::unix_now();
    let replayed = vec![FlushBatch {
        id: "gw1-earlier-run-7".into(),
        deltas: vec![delta("t", "m", now - now % 60, 1_000)],
    }];
    // This run delivered 3 frames, not yet in the store.
    for _ in 0..3 {
        budgets.reserve("t").unwrap().deliver();
    }
    let acc = Arc::new(UsageAccumulator::new(60));
    let stats = Arc::new(FlushStats::default());
    let mut flusher = flusher(&acc, &store, budgets.clone(), wal, replayed, stats);
    flusher.tick(now).await.unwrap();
    assert_eq!(flusher.pending_frames(), 1_000, "refused");
    redis.cmd(&["DEL", "fg:{t}:windows"]).unwrap();
    flusher.tick(now).await.unwrap();
    assert!(flusher.is_idle());
    assert_eq!(budgets.used("t"), Some((1_003, 10_000)));
}
