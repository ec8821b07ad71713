//! The key store contract, run against both backends: the embedded redb
//! file and a real redis-server.

mod support;

use std::time::Duration;

use framegate::auth::keys::*;
use framegate::auth::Scope;
use framegate::config::{PlanLimits, TenantConfig};
use support::redis::RedisServer;

/// The store contract, run against each backend.
async fn contract(store: KeyStore) {
    let a = store
        .create(NewKey {
            tenant: "acme".into(),
            name: "ci".into(),
            scopes: vec![Scope::Detect, Scope::Stream, Scope::Detect],
            expires_at: Some(now_secs() + 60),
            limits: Some(PlanLimits {
                frames_per_sec: Some(2.0),
                ..Default::default()
            }),
            parent: None,
        })
        .await
        .unwrap();
    let (id, secret) = parse_key(&a.key).expect("well-formed key");
    assert_eq!(id, a.record.id);
    assert_eq!(a.record.secret_sha256, hash_secret(secret));
    assert_eq!(a.record.scopes, vec![Scope::Stream, Scope::Detect]);
    let b = store
        .create(NewKey {
            tenant: "globex".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(b.record.scopes, Scope::DEFAULT.to_vec());
    assert_ne!(a.record.id, b.record.id);
    assert_eq!(store.get_key(id).await.unwrap().unwrap(), a.record);
    assert!(store.get_key("aaaaaaaaaaaa").await.unwrap().is_none());
    assert_eq!(store.list_keys(None).await.unwrap().len(), 2);
    let acme = store.list_keys(Some("acme")).await.unwrap();
    assert_eq!(acme.len(), 1);
    assert_eq!(acme[0].id, a.record.id);
    // Never the secret, anywhere in the record.
    assert!(!serde_json::to_string(&acme[0]).unwrap().contains(secret));
    assert!(a.record.active_at(now_secs()));
    // A key minted by a, and one minted by that one.
    let child = |parent: &str| NewKey {
        tenant: "acme".into(),
        parent: Some(parent.to_string()),
        ..Default::default()
    };
    let c = store.create(child(id)).await.unwrap();
    let d = store.create(child(&c.record.id)).await.unwrap();
    assert_eq!(
        store.get_key(&d.record.id).await.unwrap().unwrap().parent,
        Some(c.record.id.clone())
    );
    let revoked = store.revoke(id).await.unwrap().unwrap();
    let at = revoked.record.revoked_at.unwrap();
    assert!(!revoked.record.active_at(now_secs()));
    assert_eq!(
        revoked.minted,
        vec![c.record.id.clone(), d.record.id.clone()]
    );
    for k in [&c, &d] {
        let r = store.get_key(&k.record.id).await.unwrap().unwrap();
        assert!(
            !r.active_at(now_secs()),
            "a key minted from a revoked key is active"
        );
    }
    assert_eq!(store.list_keys(Some("acme")).await.unwrap().len(), 3);
    let again = store.revoke(id).await.unwrap().unwrap();
    assert_eq!((again.record.revoked_at, again.minted.len()), (Some(at), 0));
    assert!(store.revoke("zzzzzzzzzzzz").await.unwrap().is_none());
    assert!(store
        .create(NewKey {
            tenant: "a{b}".into(),
            ..Default::default()
        })
        .await
        .is_err());

    let plan = PlanLimits {
        max_keys: Some(3),
        models: Some(vec!["m".into()]),
        ..Default::default()
    };
    store.put_plan("gold", &plan).await.unwrap();
    assert_eq!(store.get_plan("gold").await.unwrap(), Some(plan.clone()));
    assert!(store.get_plan("none").await.unwrap().is_none());
    let t = TenantConfig {
        plan: Some("gold".into()),
        limits: PlanLimits {
            weight: Some(3),
            ..Default::default()
        },
    };
    store.put_tenant("acme", &t).await.unwrap();
    assert_eq!(store.get_tenant("acme").await.unwrap(), Some(t.clone()));
    assert_eq!(store.list_tenants().await.unwrap().len(), 1);
    assert_eq!(store.list_plans().await.unwrap()["gold"], plan);
}

#[tokio::test]
async fn embedded_store_keeps_the_contract_and_locks_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.redb");
    let store = KeyStore::Embedded(EmbeddedKeys::open(&path).unwrap());
    contract(store.clone()).await;
    // A second opener (the CLI while a gateway runs) is told it is locked.
    let err = EmbeddedKeys::open(&path).unwrap_err();
    assert!(matches!(err, KeyStoreError::Locked(_)));
    assert!(err.to_string().contains("--admin-url"), "{err}");
    drop(store);
    let again = KeyStore::Embedded(EmbeddedKeys::open(&path).unwrap());
    assert_eq!(again.list_keys(None).await.unwrap().len(), 4);
}

#[tokio::test]
async fn redis_store_keeps_the_contract_and_is_shared() {
    let redis = RedisServer::start();
    let store = KeyStore::Redis(RedisKeys::connect(&redis.url(), Duration::from_secs(2)).unwrap());
    contract(store).await;
    // Another client (another gateway) sees the same keys.
    let other = KeyStore::Redis(RedisKeys::connect(&redis.url(), Duration::from_secs(2)).unwrap());
    assert_eq!(other.list_keys(None).await.unwrap().len(), 4);
    assert_eq!(other.list_plans().await.unwrap().len(), 1);
    // Everything lives under the one hash tag (one cluster slot).
    let dump = redis.cmd(&["KEYS", "*"]).unwrap();
    assert!(dump.contains("fgauth:{keys}:keys"), "{dump}");
}
