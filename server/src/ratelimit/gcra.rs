//! The generic cell rate algorithm (GCRA), sans-IO: pure functions over a
//! bucket's *theoretical arrival time* (TAT) and a time given by the caller.
//!
//! A limit of `rate` per second with `burst` is an emission interval
//! `T = 1 s / rate` and a tolerance `τ = burst × T`. A bucket keeps one
//! number, its TAT: the time at which it would be empty again if nothing more
//! arrived. `k` units are admitted at `now` when
//! `max(TAT, now) + k·T − now ≤ τ`, and the TAT then moves by `k·T`.
//!
//! Because the TAT never exceeds `now + τ` after an admission and grows by
//! `T` per unit, any window `[t0, t1]` admits at most
//! `burst + (t1 − t0) / T` units — the bound the property tests check. A
//! bucket whose TAT is not after `now` is indistinguishable from a new one,
//! which is what lets stores evict it.
//!
//! The Redis store runs the same arithmetic in Lua (`super::redis`), on
//! Redis's clock.

/// One limit: an emission interval and a tolerance, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Microseconds per unit (`1 s / rate`, rounded up so the rate is never
    /// exceeded), at least 1.
    pub emission_us: u64,
    /// Burst tolerance: `burst × emission_us`.
    pub tolerance_us: u64,
}

impl Rate {
    /// `per_sec` units per second with `burst` at once (burst ≥ 1).
    pub fn per_second(per_sec: f64, burst: u32) -> Rate {
        let emission_us = if per_sec.is_finite() && per_sec > 0.0 {
            (1e6 / per_sec).ceil().clamp(1.0, 1e15) as u64
        } else {
            u64::MAX / 4
        };
        Rate {
            emission_us,
            tolerance_us: emission_us.saturating_mul(u64::from(burst.max(1))),
        }
    }

    /// `per_min` units per minute with `burst` at once.
    pub fn per_minute(per_min: u32, burst: u32) -> Rate {
        Rate::per_second(f64::from(per_min) / 60.0, burst)
    }

    /// The burst (units that fit in an empty bucket).
    pub fn burst(&self) -> u64 {
        self.tolerance_us / self.emission_us
    }
}

/// What one decision admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Units admitted: a prefix of the `n` asked for (the rest are refused).
    pub admitted: u32,
    /// When nothing more was admitted: microseconds until one more unit
    /// would be (0 when everything asked for was admitted).
    pub retry_after_us: u64,
}

/// Decides `n` units at `now_us` against every bucket at once: admits the
/// largest `k ≤ n` that fits in all of them and charges `k` to each.
/// `tats[i]` is the TAT of the bucket limited by `rates[i]` (0 for a bucket
/// never seen), updated in place.
pub fn decide(now_us: u64, rates: &[Rate], tats: &mut [u64], n: u32) -> Decision {
    debug_assert_eq!(rates.len(), tats.len());
    let mut k = u64::from(n);
    for (r, &tat) in rates.iter().zip(tats.iter()) {
        let base = tat.max(now_us);
        let room = now_us.saturating_add(r.tolerance_us).saturating_sub(base) / r.emission_us;
        k = k.min(room);
    }
    let mut retry_after_us = 0;
    for (r, tat) in rates.iter().zip(tats.iter_mut()) {
        let base = (*tat).max(now_us);
        *tat = base.saturating_add(k.saturating_mul(r.emission_us));
        if k < u64::from(n) {
            // One more unit fits once now + τ ≥ TAT + T.
            let wait = tat
                .saturating_add(r.emission_us)
                .saturating_sub(now_us.saturating_add(r.tolerance_us));
            retry_after_us = retry_after_us.max(wait);
        }
    }
    Decision {
        admitted: k as u32,
        retry_after_us: if k < u64::from(n) {
            retry_after_us.max(1)
        } else {
            0
        },
    }
}

/// Whether a bucket with this TAT is idle at `now_us` (as good as new, so a
/// store may forget it).
pub fn is_idle(tat: u64, now_us: u64) -> bool {
    tat <= now_us
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A fake clock: the tests move time by hand.
    struct FakeClock(u64);

    #[test]
    fn burst_then_rate() {
        let r = Rate::per_second(20.0, 10);
        assert_eq!(r.emission_us, 50_000);
        assert_eq!(r.burst(), 10);
        let mut clock = FakeClock(1_000_000);
        let mut tat = [0u64];
        let d = decide(clock.0, &[r], &mut tat, 15);
        assert_eq!(d.admitted, 10, "the burst at once");
        assert_eq!(d.retry_after_us, 50_000, "one emission interval later");
        assert_eq!(decide(clock.0, &[r], &mut tat, 1).admitted, 0);
        clock.0 += 49_999;
        assert_eq!(decide(clock.0, &[r], &mut tat, 1).admitted, 0);
        clock.0 += 1;
        assert_eq!(decide(clock.0, &[r], &mut tat, 1).admitted, 1);
        // Idle for a long time: back to a full burst, never more.
        clock.0 += 3_600_000_000;
        assert!(is_idle(tat[0], clock.0));
        assert_eq!(decide(clock.0, &[r], &mut tat, 100).admitted, 10);
    }

    #[test]
    fn the_tightest_bucket_wins_and_all_are_charged() {
        let key = Rate::per_second(5.0, 2);
        let tenant = Rate::per_second(100.0, 50);
        let mut tats = [0u64, 0];
        let d = decide(10, &[key, tenant], &mut tats, 10);
        assert_eq!(d.admitted, 2);
        assert_eq!(tats[1], 10 + 2 * tenant.emission_us, "tenant charged 2");
        assert_eq!(d.retry_after_us, key.emission_us);
    }

    #[test]
    fn extreme_but_valid_limits_do_not_overflow() {
        // A millionth of a frame per second with a burst of 100 million:
        // the tolerance saturates, and frames are admitted (no wrap-around
        // that refuses everything, no overflow panic in debug builds).
        let r = Rate::per_second(1e-6, 100_000_000);
        assert_eq!(r.tolerance_us, u64::MAX);
        let mut tat = [0u64];
        let now = 1_800_000_000_000_000;
        let d = decide(now, &[r], &mut tat, 3);
        assert_eq!(d.admitted, 3);
        assert_eq!(decide(now + 1, &[r], &mut tat, 1).admitted, 1);
    }

    #[test]
    fn per_minute_limit() {
        let r = Rate::per_minute(100, 10);
        assert_eq!(r.emission_us, 600_000);
        let mut tat = [0u64];
        let mut admitted = 0;
        // One request every 100 ms for a minute.
        for i in 0..600u64 {
            admitted += decide(i * 100_000, &[r], &mut tat, 1).admitted;
        }
        assert!((100..=110).contains(&admitted), "{admitted}");
    }

    /// Property: over every window, admitted ≤ burst + rate × window, for
    /// random limits, random arrival patterns and random batch sizes; and a
    /// client that always asks gets at least rate × window − 1 after its
    /// burst (the limiter is not stricter than it says; with a burst of 1,
    /// less its polling granularity).
    #[test]
    fn never_admits_more_than_burst_plus_rate_times_window() {
        let mut rng = StdRng::seed_from_u64(0x6c1a);
        for case in 0..300 {
            let per_sec = rng.gen_range(0.5..2000.0);
            let burst = rng.gen_range(1..200u32);
            let r = Rate::per_second(per_sec, burst);
            let mut tat = [0u64];
            let mut clock = FakeClock(rng.gen_range(0..1_000_000_000));
            let start = clock.0;
            // (time, admitted) of every decision.
            let mut log: Vec<(u64, u32)> = Vec::new();
            let greedy = case % 3 == 0;
            for _ in 0..2000 {
                let step = if greedy {
                    rng.gen_range(0..(r.emission_us / 2).max(2))
                } else {
                    rng.gen_range(0..r.emission_us * 3)
                };
                clock.0 += step;
                let n = rng.gen_range(1..=(burst * 2).max(2));
                let d = decide(clock.0, &[r], &mut tat, n);
                assert!(d.admitted <= n);
                assert_eq!(d.admitted == n, d.retry_after_us == 0);
                log.push((clock.0, d.admitted));
            }
            // Every window between two decisions.
            let prefix: Vec<u64> = log
                .iter()
                .scan(0u64, |acc, &(_, a)| {
                    *acc += u64::from(a);
                    Some(*acc)
                })
                .collect();
            for i in 0..log.len() {
                for j in (i..log.len()).step_by(7) {
                    let count = prefix[j] - if i == 0 { 0 } else { prefix[i - 1] };
                    let window_us = log[j].0 - log[i].0;
                    let bound = u64::from(burst) + window_us / r.emission_us;
                    assert!(
                        count <= bound,
                        "case {case}: {count} admitted in {window_us} µs, bound {bound} (rate {per_sec}/s, burst {burst})"
                    );
                }
            }
            if greedy {
                let total = *prefix.last().unwrap();
                let elapsed = clock.0 - start;
                // With a burst of 1 a unit frees only when the bucket is
                // empty, so each one waits up to one polling step extra.
                let per_unit = if burst == 1 {
                    r.emission_us + (r.emission_us / 2).max(2)
                } else {
                    r.emission_us
                };
                let floor = (elapsed / per_unit).saturating_sub(1);
                assert!(
                    total >= floor,
                    "case {case}: {total} < {floor} (rate {per_sec}/s, burst {burst}, T {})",
                    r.emission_us
                );
            }
        }
    }

    /// Property: a refused request told to wait `retry_after` is admitted
    /// when it comes back after exactly that long, and not a microsecond
    /// before.
    #[test]
    fn retry_after_is_exact() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let r = Rate::per_second(rng.gen_range(0.1..500.0), rng.gen_range(1..50));
            let key = Rate::per_second(rng.gen_range(0.1..500.0), rng.gen_range(1..50));
            let mut tats = [0u64, 0];
            let mut now = 5_000_000u64;
            loop {
                let d = decide(now, &[r, key], &mut tats, 1);
                if d.admitted == 0 {
                    let mut probe = tats;
                    if d.retry_after_us > 1 {
                        let early = decide(now + d.retry_after_us - 1, &[r, key], &mut probe, 1);
                        assert_eq!(early.admitted, 0);
                    }
                    let mut probe = tats;
                    let on_time = decide(now + d.retry_after_us, &[r, key], &mut probe, 1);
                    assert_eq!(on_time.admitted, 1);
                    break;
                }
                now += rng.gen_range(0..1000);
            }
        }
    }
}
