//! The billing reporter against the Stripe test server, through the real
//! `async-stripe` client: faults, lost successes, late usage, a reporter
//! killed mid-send, and windows too old for Stripe.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use framegate::billing::stripe::StripeSender;
use framegate::billing::{preview, MeterReporter};
use framegate::config::{BillingConfig, BillingCustomer};
use framegate::metering::{unix_now, UsageDelta};
use framegate::usage::embedded::EmbeddedStore;
use framegate::usage::{FlushBatch, UsageStore};
use support::fake_stripe::{FakeStripe, Fault, SECRET};

const WINDOW: u64 = 60;

fn billing_config(stripe: &FakeStripe) -> BillingConfig {
    BillingConfig {
        enabled: true,
        api_base: stripe.base_url(),
        grace_secs: 0,
        customers: vec![
            BillingCustomer {
                tenant: "acme".into(),
                customer: "cus_acme".into(),
                meter_event_name: "frames".into(),
            },
            BillingCustomer {
                tenant: "globex".into(),
                customer: "cus_globex".into(),
                meter_event_name: "frames".into(),
            },
        ],
        ..BillingConfig::default()
    }
}

fn reporter(store: &UsageStore, stripe: &FakeStripe, name: &str) -> MeterReporter {
    reporter_with_timeout(store, stripe, name, Duration::from_millis(150))
}

fn reporter_with_timeout(
    store: &UsageStore,
    stripe: &FakeStripe,
    name: &str,
    timeout: Duration,
) -> MeterReporter {
    let sender = StripeSender::new(&stripe.base_url(), SECRET, timeout, name)
        .unwrap()
        .with_retries(3, Duration::from_millis(5), Duration::from_millis(20));
    MeterReporter::new(
        store.clone(),
        sender,
        &billing_config(stripe),
        WINDOW,
        name.into(),
    )
}

fn delta(tenant: &str, window: u64, frames: u64) -> UsageDelta {
    UsageDelta {
        tenant: tenant.into(),
        key_id: "k1".into(),
        model: "nanodet-g".into(),
        window_start: window,
        frames,
        pixels: frames * 1000,
    }
}

async fn apply(store: &UsageStore, id: &str, deltas: Vec<UsageDelta>) {
    store
        .apply(&FlushBatch {
            id: id.into(),
            deltas,
        })
        .await
        .unwrap();
}

fn embedded() -> (tempfile::TempDir, UsageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = UsageStore::Embedded(EmbeddedStore::open(&dir.path().join("u.redb")).unwrap());
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_stripe_faults_and_lost_successes_bill_every_frame_exactly_once() {
    let stripe = FakeStripe::start().await;
    let (_dir, store) = embedded();
    let now = unix_now();
    let first = now - now % WINDOW - 30 * WINDOW;
    let mut expected: HashMap<String, u64> = HashMap::new();
    for w in 0..20u64 {
        let window = first + w * WINDOW;
        apply(
            &store,
            &format!("b{w}"),
            vec![
                delta("acme", window, w + 1),
                delta("globex", window, 2 * w + 3),
            ],
        )
        .await;
        *expected.entry("cus_acme".into()).or_default() += w + 1;
        *expected.entry("cus_globex".into()).or_default() += 2 * w + 3;
    }
    stripe.push_faults([Fault::LostSuccess(Duration::from_millis(400))]);
    stripe.random_faults(Some((
        0.5,
        vec![
            Fault::TooManyRequests,
            Fault::ServerError,
            Fault::Hang(Duration::from_millis(400)),
            Fault::LostSuccess(Duration::from_millis(400)),
            Fault::Slow(Duration::from_millis(50)),
        ],
    )));
    let r = reporter(&store, &stripe, "r1");
    let mut late_added = false;
    for pass in 0..300 {
        let _ = r.run_once(unix_now()).await;
        if pass == 3 && !late_added {
            // Usage arriving late for a window that was (maybe) reported already.
            apply(&store, "late", vec![delta("acme", first, 7)]).await;
            *expected.get_mut("cus_acme").unwrap() += 7;
            late_added = true;
        }
        if pass == 40 {
            stripe.random_faults(None);
        }
        if late_added && stripe.totals() == expected {
            break;
        }
    }
    // Nothing is left to send, and another pass sends nothing more.
    let summary = r.run_once(unix_now()).await.unwrap();
    assert_eq!(summary.events, 0, "{summary:?}");
    assert_eq!(stripe.totals(), expected, "Stripe totals per customer");
    let events = stripe.events();
    let ids: HashSet<_> = events.iter().map(|e| e.identifier.clone()).collect();
    assert_eq!(ids.len(), events.len(), "an identifier was recorded twice");
    // Aggregated: one event per customer and window, plus one for the late usage.
    let acme = events.iter().filter(|e| e.customer == "cus_acme").count();
    let globex = events.iter().filter(|e| e.customer == "cus_globex").count();
    assert_eq!((acme, globex), (21, 20));
    let statuses = stripe.statuses();
    assert!(
        statuses.get(&400).copied().unwrap_or(0) >= 1,
        "the lost success must come back as a duplicate: {statuses:?}"
    );
    assert!(
        statuses.get(&429).copied().unwrap_or(0) >= 1,
        "{statuses:?}"
    );
    assert!(
        statuses.get(&500).copied().unwrap_or(0) >= 1,
        "{statuses:?}"
    );
    assert!(
        r.stats
            .events_duplicate
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert!(
        preview(&store, &billing_config(&stripe), WINDOW, "acme", unix_now())
            .await
            .unwrap()
            .is_empty()
    );
    eprintln!(
        "{} requests for {} events; statuses {statuses:?}",
        stripe.requests(),
        events.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reporter_killed_mid_send_resumes_without_loss_or_duplicates() {
    let stripe = FakeStripe::start().await;
    let (_dir, store) = embedded();
    let now = unix_now();
    let window = now - now % WINDOW - 5 * WINDOW;
    apply(&store, "b1", vec![delta("acme", window, 10)]).await;
    // Stripe records the event, then the reporter dies before the answer.
    stripe.push_faults([Fault::LostSuccess(Duration::from_secs(5))]);
    let r1 = reporter_with_timeout(&store, &stripe, "r1", Duration::from_secs(30));
    let killed = tokio::time::timeout(Duration::from_millis(1500), r1.run_once(unix_now())).await;
    assert!(killed.is_err(), "the pass should have been cut mid-send");
    drop(r1);
    assert_eq!(stripe.totals().get("cus_acme"), Some(&10));
    let state = store.billing_state("acme", "frames", window).await.unwrap();
    assert_eq!(
        state.pending_to,
        Some(10),
        "the send was recorded before it left"
    );
    // More usage for the same window arrives before the next reporter runs.
    apply(&store, "b2", vec![delta("acme", window, 5)]).await;
    let r2 = reporter(&store, &stripe, "r2");
    let s = r2.run_once(unix_now()).await.unwrap();
    assert_eq!(s.events, 1, "the pending event is resent unchanged: {s:?}");
    let s = r2.run_once(unix_now()).await.unwrap();
    assert_eq!((s.events, s.frames), (1, 5), "then the late usage: {s:?}");
    assert_eq!(stripe.totals().get("cus_acme"), Some(&15));
    assert_eq!(stripe.events().len(), 2);
    assert_eq!(
        stripe.statuses().get(&400),
        Some(&1),
        "one duplicate answer"
    );
    assert_eq!(r2.run_once(unix_now()).await.unwrap().events, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_too_old_for_stripe_are_reported_loudly_and_kept() {
    let stripe = FakeStripe::start().await;
    let (_dir, store) = embedded();
    let now = unix_now();
    let old = now - now % WINDOW - 40 * 86_400;
    apply(&store, "old", vec![delta("globex", old, 4)]).await;
    let r = reporter(&store, &stripe, "r1");
    assert!(r.run_once(now).await.is_err());
    assert_eq!(
        r.stats.too_old.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        stripe.requests(),
        0,
        "nothing sent that Stripe would refuse"
    );
    let p = preview(&store, &billing_config(&stripe), WINDOW, "globex", now)
        .await
        .unwrap();
    assert_eq!(p.len(), 1);
    assert!(p[0].too_old && p[0].to_send == 4, "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_too_old_for_stripe_does_not_hold_up_the_newer_ones() {
    // A tenant that used the gateway for weeks before its billing entry
    // was added: its oldest window can never be sent, and every newer one
    // must still be billed, on every pass.
    let stripe = FakeStripe::start().await;
    let (_dir, store) = embedded();
    let now = unix_now();
    let old = now - now % WINDOW - 40 * 86_400;
    let recent = now - now % WINDOW - 2 * WINDOW;
    let later = now - now % WINDOW - WINDOW;
    apply(
        &store,
        "weeks",
        vec![
            delta("globex", old, 4),
            delta("globex", recent, 5),
            delta("globex", later, 6),
            delta("acme", recent, 7),
        ],
    )
    .await;
    let r = reporter(&store, &stripe, "r1");
    let summary = r.run_once(now).await.unwrap();
    assert_eq!(
        (summary.events, summary.frames, summary.deferred),
        (3, 18, 1)
    );
    assert_eq!(
        stripe.totals(),
        HashMap::from([("cus_globex".to_string(), 11), ("cus_acme".to_string(), 7)])
    );
    // The old window stays pending (for `billing preview`), nothing twice.
    let summary = r.run_once(now).await.unwrap_err();
    assert!(
        summary.to_string().contains("older than Stripe accepts"),
        "{summary}"
    );
    assert_eq!(stripe.events().len(), 3);
    let p = preview(&store, &billing_config(&stripe), WINDOW, "globex", now)
        .await
        .unwrap();
    assert!(p.iter().any(|w| w.too_old && w.to_send == 4), "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_and_nothing_is_marked_delivered() {
    let stripe = FakeStripe::start().await;
    let (_dir, store) = embedded();
    let now = unix_now();
    let window = now - now % WINDOW - 5 * WINDOW;
    apply(&store, "b", vec![delta("acme", window, 3)]).await;
    let sender = StripeSender::new(
        &stripe.base_url(),
        "sk_test_wrong",
        Duration::from_secs(2),
        "r",
    )
    .unwrap();
    let r = MeterReporter::new(
        store.clone(),
        sender,
        &billing_config(&stripe),
        WINDOW,
        "r".into(),
    );
    assert!(r.run_once(now).await.is_err());
    assert_eq!(stripe.statuses().get(&401), Some(&1));
    assert!(stripe.events().is_empty());
    // With the right key the same window goes through.
    let r = reporter(&store, &stripe, "r2");
    assert_eq!(r.run_once(now).await.unwrap().frames, 3);
}
