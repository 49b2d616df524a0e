//! One suite, run against every session store (as oauth2-proxy runs its
//! store tests): the memory store, and a real redis-server. Stores are
//! driven directly, as the login flow and the token cache use them.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use emp_sidecar::config::{Config, StoreKind};
use emp_sidecar::metrics::Metrics;
use emp_sidecar::provider::TokenSet;
use emp_sidecar::session::memory::MemoryStore;
use emp_sidecar::session::redis::RedisStore;
use emp_sidecar::session::{IdentityRules, Session, SessionKey, SessionStore, Tokens};
use support::Conf;
use support::redis::Redis;
use tokio::time::Instant;

fn config(conf: Conf) -> Config {
    let toml = conf
        .claim("\"X-Auth-Request-User\" = \"/sub\"")
        .toml()
        .replace("{SIDECAR}", "127.0.0.1:4180");
    Config::from_toml_str(&toml).expect("valid test config")
}

/// Tokens as a refresh answers them: `access_token`, refresh token `rt-2`.
fn refreshed(access_token: &str) -> Tokens {
    Tokens::issued(
        TokenSet {
            access_token: access_token.into(),
            refresh_token: Some("rt-2".into()),
            expires_in: Duration::from_secs(600),
            backend_url: None,
            id_token: None,
            claims: None,
        },
        Instant::now(),
        Duration::from_secs(60),
    )
    .unwrap()
}

fn session(access_token: &str, user: &str, config: &Config) -> Arc<Session> {
    let tokens = Tokens::issued(
        TokenSet {
            access_token: access_token.into(),
            refresh_token: Some(format!("rt-of-{access_token}")),
            expires_in: Duration::from_secs(600),
            backend_url: Some("https://kr.lgthinq.example/".into()),
            id_token: None,
            claims: None,
        },
        Instant::now(),
        Duration::from_secs(60),
    )
    .unwrap();
    let claims = serde_json::json!({"sub": user, "email": format!("{user}@example.com")});
    let identity = IdentityRules::new(config).identity(&claims);
    Arc::new(Session::new(tokens, &claims, identity))
}

/// A Redis store as one replica would build it, started (connecting in
/// the background; it may never manage to).
fn started_store_with(config: &Config, metrics: Arc<Metrics>) -> RedisStore {
    let StoreKind::Redis(redis) = &config.session.store else {
        panic!("not a redis configuration")
    };
    let store = RedisStore::new(
        redis,
        &config.session,
        IdentityRules::new(config),
        Duration::from_secs(60),
        metrics,
    )
    .unwrap();
    store.start();
    store
}

fn started_store(config: &Config) -> RedisStore {
    started_store_with(config, Arc::new(Metrics::new().unwrap()))
}

/// A Redis store on `url` as one replica would build it, connected.
async fn redis_store(config: &Config, metrics: Arc<Metrics>) -> Arc<RedisStore> {
    let store = Arc::new(started_store_with(config, metrics));
    for _ in 0..200 {
        if store.ready().await {
            return store;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the Redis store never became ready");
}

/// Polls `check` every 10 ms until it holds or `limit` has passed.
async fn within<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The suite. `replica` is a second handle on the same shared store (a
/// second sidecar process), or the same store for a per-process one.
async fn suite(store: Arc<dyn SessionStore>, replica: Arc<dyn SessionStore>, config: &Config) {
    // Nothing is there before it is stored.
    let key = SessionKey::generate();
    assert!(store.get(&key).await.unwrap().is_none());

    // Stored, then read back (by the other replica too), tokens, claims
    // and identity intact.
    let s = session("at-1", "alice", config);
    store.insert(&key, s.clone()).await.unwrap();
    for (who, st) in [("store", &store), ("replica", &replica)] {
        let got = st
            .get(&key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{who}: gone"));
        let t = got.tokens();
        assert_eq!(t.access_token, "at-1", "{who}");
        assert_eq!(t.refresh_token.as_deref(), Some("rt-of-at-1"), "{who}");
        assert_eq!(
            t.backend_url.as_deref(),
            Some("https://kr.lgthinq.example/")
        );
        assert!(
            t.expires_at > Instant::now() + Duration::from_secs(590),
            "{who}"
        );
        assert_eq!(got.profile().subject.as_deref(), Some("alice"));
        assert_eq!(got.profile().identity.user.as_ref().unwrap(), "alice");
        assert!(got.profile().claims.contains("alice@example.com"));
    }

    // Another session's key, or the same id with another secret, finds nothing.
    assert!(store.get(&SessionKey::generate()).await.unwrap().is_none());

    // A refresh saved through one copy is what the other reads.
    let on_replica = replica.get(&key).await.unwrap().unwrap();
    on_replica.set_tokens(refreshed("at-2"));
    assert!(
        replica
            .save_refreshed(&key, &on_replica, "rt-of-at-1")
            .await
            .unwrap()
    );
    // The other replica's cached copy is dropped by the change message:
    // well within a second usually, and still long before the copy would
    // expire on its own (LOCAL_MAX_AGE, 10 s) when a loaded machine has
    // the subscriber reconnecting after a sentinel failover.
    let propagated = within(Duration::from_secs(3), || async {
        store
            .get(&key)
            .await
            .unwrap()
            .unwrap()
            .tokens()
            .access_token
            == "at-2"
    })
    .await;
    assert!(propagated, "the refresh did not reach the other replica");
    // A copy read before that refresh cannot overwrite it.
    assert!(
        !store.save_refreshed(&key, &s, "rt-of-at-1").await.unwrap()
            || Arc::ptr_eq(&store, &replica)
    );

    // Sign-out through one ends it for both.
    replica.remove(&key).await.unwrap();
    assert!(replica.get(&key).await.unwrap().is_none());
    let ended = within(Duration::from_secs(1), || async {
        store.get(&key).await.unwrap().is_none()
    })
    .await;
    assert!(ended, "the sign-out did not reach the other replica");

    // A login's state is accepted once, whichever replica sees it.
    assert!(
        store
            .consume_state("state-1", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        !replica
            .consume_state("state-1", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        !store
            .consume_state("state-1", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        replica
            .consume_state("state-2", Duration::from_secs(60))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn the_memory_store_passes_the_suite() {
    let config = config(Conf::new("http://127.0.0.1:9"));
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new(
        100,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    ));
    suite(store.clone(), store, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_standalone_passes_the_suite() {
    let redis = Redis::start();
    let config = config(Conf::new("http://127.0.0.1:9").redis_store(&redis.url()));
    let metrics = Arc::new(Metrics::new().unwrap());
    let a = redis_store(&config, metrics.clone()).await;
    let b = redis_store(&config, Arc::new(Metrics::new().unwrap())).await;
    suite(a, b, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_nothing_readable_and_a_corrupt_record_is_no_session() {
    let redis = Redis::start();
    let config = config(Conf::new("http://127.0.0.1:9").redis_store(&redis.url()));
    let metrics = Arc::new(Metrics::new().unwrap());
    let store = redis_store(&config, metrics.clone()).await;
    let key = SessionKey::generate();
    let s = session("at-secret-value-1234", "alice", &config);
    store.insert(&key, s.clone()).await.unwrap();
    assert!(
        store
            .consume_state("state-secret-value", Duration::from_secs(60))
            .await
            .unwrap()
    );

    // Nothing in any key or value reads as a token, a state, a claim.
    // The session, the consumed state, and the back-channel logout index
    // of its sub (a hash of it, holding the store key).
    let dump = redis.dump();
    assert_eq!(dump.len(), 3, "{dump:?}");
    let index = dump
        .iter()
        .find(|(k, _)| k.starts_with("emp-sidecar:who:"))
        .expect("a logout index");
    assert!(String::from_utf8_lossy(&index.1).contains(key.store_key()));
    for (k, v) in &dump {
        let text = format!("{k} {}", String::from_utf8_lossy(v));
        for secret in [
            "at-secret-value",
            "rt-of-at",
            "state-secret-value",
            "alice",
            "kr.lgthinq",
        ] {
            assert!(!text.contains(secret), "{secret} readable in Redis: {text}");
        }
        assert!(k.starts_with("emp-sidecar:"), "{k}");
    }
    // The session key is named by the store key, which the cookie alone gives.
    let session_key = format!("emp-sidecar:{{{}}}:s", key.store_key());
    assert!(dump.iter().any(|(k, _)| *k == session_key));
    // TTL: the session lifetime (12 h by default).
    let ttl: i64 = redis.cli(&["PTTL", &session_key]).trim().parse().unwrap();
    assert!(ttl > 43_000_000 && ttl <= 43_200_000, "{ttl}");

    // Garbage where the record was: no session, counted, no panic; from a
    // fresh replica that has no copy of its own.
    redis.cli(&["HSET", &session_key, "d", "garbage-bytes"]);
    let fresh = redis_store(&config, metrics.clone()).await;
    assert!(fresh.get(&key).await.unwrap().is_none());
    // A record sealed for another session (copied over) does not open either.
    let other = SessionKey::generate();
    store
        .insert(&other, session("at-2", "bob", &config))
        .await
        .unwrap();
    let other_key = format!("emp-sidecar:{{{}}}:s", other.store_key());
    let sealed = redis.cli(&["--no-raw", "HGET", &other_key, "d"]);
    assert!(!sealed.is_empty());
    redis.cli(&["RENAME", &other_key, &session_key]);
    let fresh = redis_store(&config, metrics.clone()).await;
    assert!(fresh.get(&key).await.unwrap().is_none());
    let text = String::from_utf8(metrics.render()).unwrap();
    assert!(
        text.contains("emp_sidecar_store_errors_total{kind=\"corrupt\"} 2"),
        "{text}"
    );
    let _ = s.generation.load(Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_holds_the_refresh_lease_and_the_others_adopt_its_result() {
    use emp_sidecar::session::RefreshTurn;
    let redis = Redis::start();
    let config = config(Conf::new("http://127.0.0.1:9").redis_store(&redis.url()));
    let ma = Arc::new(Metrics::new().unwrap());
    let mb = Arc::new(Metrics::new().unwrap());
    let a = redis_store(&config, ma.clone()).await;
    let b = redis_store(&config, mb.clone()).await;
    let key = SessionKey::generate();
    a.insert(&key, session("at-1", "alice", &config))
        .await
        .unwrap();
    let on_a = a.get(&key).await.unwrap().unwrap();
    let on_b = b.get(&key).await.unwrap().unwrap();

    // A takes the lease; B, asking at the same time, waits for A's result.
    let RefreshTurn::Mine(lease) = a.refresh_turn(&key, &on_a).await.unwrap() else {
        panic!("A should refresh")
    };
    let waiting = {
        let (b, key, on_b) = (b.clone(), key.clone(), on_b.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let turn = b.refresh_turn(&key, &on_b).await.unwrap();
            (matches!(turn, RefreshTurn::Adopted), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "B did not wait for the lease");
    on_a.set_tokens(refreshed("at-2"));
    assert!(a.save_refreshed(&key, &on_a, "rt-of-at-1").await.unwrap());
    drop(lease);
    let (adopted, waited) = waiting.await.unwrap();
    assert!(adopted, "B refreshed again instead of taking A's result");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert_eq!(on_b.tokens().access_token, "at-2");

    // A replica still holding the old refresh token, refused by the IdP,
    // finds the result under it instead of ending the session.
    let c = redis_store(&config, Arc::new(Metrics::new().unwrap())).await;
    let stale = session("at-1", "alice", &config);
    assert!(
        c.refreshed_elsewhere(&key, &stale, "rt-of-at-1")
            .await
            .unwrap()
    );
    assert_eq!(stale.tokens().access_token, "at-2");
    assert!(
        !c.refreshed_elsewhere(&key, &stale, "never-used")
            .await
            .unwrap()
    );

    // A holder that died: its lease (here set by hand, 500 ms) runs out
    // and the next replica takes over.
    let lease_key = format!("emp-sidecar:{{{}}}:l", key.store_key());
    redis.cli(&["SET", &lease_key, "dead-holder", "PX", "500"]);
    let started = Instant::now();
    let turn = b.refresh_turn(&key, &on_b).await.unwrap();
    assert!(matches!(turn, RefreshTurn::Mine(_)));
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
    let text = String::from_utf8(mb.render()).unwrap();
    for line in [
        "emp_sidecar_refresh_locks_total{result=\"waited\"} 1",
        "emp_sidecar_refresh_locks_total{result=\"taken_over\"} 1",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    assert!(
        String::from_utf8(ma.render())
            .unwrap()
            .contains("emp_sidecar_refresh_locks_total{result=\"acquired\"} 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_master_redis_cluster_passes_the_suite() {
    let cluster = support::redis::Cluster::start();
    let config = config(
        Conf::new("http://127.0.0.1:9")
            .session("store = \"redis\"")
            .redis(&format!("cluster_urls = {:?}", cluster.urls())),
    );
    let a = redis_store(&config, Arc::new(Metrics::new().unwrap())).await;
    let b = redis_store(&config, Arc::new(Metrics::new().unwrap())).await;
    suite(a.clone(), b, &config).await;
    // Sessions spread over the masters (each session's keys in one slot).
    for _ in 0..30 {
        a.insert(&SessionKey::generate(), session("at", "u", &config))
            .await
            .unwrap();
    }
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| n.cli(&["DBSIZE"]).trim() != "0")
        .count();
    assert_eq!(holding, 3, "every master holds sessions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_sentinel_failover() {
    let set = support::redis::Sentinel::start();
    let config = config(
        Conf::new("http://127.0.0.1:9")
            .session("store = \"redis\"")
            .redis(&format!(
                "sentinel_urls = [{:?}]\nsentinel_master = \"mymaster\"",
                set.sentinel.url()
            )),
    );
    let a = redis_store(&config, Arc::new(Metrics::new().unwrap())).await;
    let mut keys = Vec::new();
    for i in 0..20 {
        let key = SessionKey::generate();
        a.insert(&key, session(&format!("at-{i}"), "alice", &config))
            .await
            .unwrap();
        keys.push(key);
    }
    // Replicated before the switch (as it would be by then in production).
    assert_eq!(set.master.cli(&["WAIT", "1", "5000"]).trim(), "1");
    set.failover();

    // A replica that starts now finds every session on the new master,
    // and the one that was running writes there within a bounded time.
    let fresh = redis_store(&config, Arc::new(Metrics::new().unwrap())).await;
    for (i, key) in keys.iter().enumerate() {
        let s = fresh
            .get(key)
            .await
            .unwrap()
            .expect("session lost in the failover");
        assert_eq!(s.tokens().access_token, format!("at-{i}"));
    }
    // (Until the sentinel has demoted the old master, a write may still
    // land there and be lost: Redis replication is asynchronous.)
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let key = SessionKey::generate();
        let written = a
            .insert(&key, session("after", "bob", &config))
            .await
            .is_ok();
        let on_new_master = format!("emp-sidecar:{{{}}}:s", key.store_key());
        if written && set.replica.cli(&["EXISTS", &on_new_master]).trim() == "1" {
            break;
        }
        assert!(Instant::now() < deadline, "no writes reach the new master");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    suite(fresh, a, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_ca_file_and_a_password_passes_the_suite() {
    let redis = Redis::start_tls();
    redis.cli(&["CONFIG", "SET", "requirepass", "s3cret-pass"]);
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("redis_password");
    std::fs::write(&password, "s3cret-pass\n").unwrap();
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let good = config(
        Conf::new("http://127.0.0.1:9")
            .redis_store(&url)
            .redis(&format!("ca_file = {:?}", redis.ca_file().unwrap()))
            .redis(&format!("password_file = {password:?}")),
    );
    let a = redis_store(&good, Arc::new(Metrics::new().unwrap())).await;
    let b = redis_store(&good, Arc::new(Metrics::new().unwrap())).await;
    suite(a, b, &good).await;

    // Without the CA the server is not trusted, and without the password
    // it refuses: neither store becomes ready, and says so.
    for conf in [
        Conf::new("http://127.0.0.1:9")
            .redis_store(&url)
            .redis(&format!("password_file = {password:?}")),
        Conf::new("http://127.0.0.1:9")
            .redis_store(&url)
            .redis(&format!("ca_file = {:?}", redis.ca_file().unwrap())),
    ] {
        let store = started_store(&config(conf));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!store.ready().await);
        let err = store.get(&SessionKey::generate()).await;
        assert!(err.is_err(), "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_idle_timeout_slides_with_use_without_a_write_per_request() {
    let redis = Redis::start();
    let config = config(
        Conf::new("http://127.0.0.1:9")
            .redis_store(&redis.url())
            .session("idle_timeout = \"2s\""),
    );
    let metrics = Arc::new(Metrics::new().unwrap());
    let store = redis_store(&config, metrics.clone()).await;
    let key = SessionKey::generate();
    store
        .insert(&key, session("at", "alice", &config))
        .await
        .unwrap();
    let redis_key = format!("emp-sidecar:{{{}}}:s", key.store_key());
    // Used every 50 ms for 3 s (longer than the idle timeout): alive.
    let started = Instant::now();
    let mut gets = 0;
    while started.elapsed() < Duration::from_secs(3) {
        assert!(store.get(&key).await.unwrap().is_some());
        gets += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ttl: i64 = redis.cli(&["PTTL", &redis_key]).trim().parse().unwrap();
    assert!(ttl > 1000, "TTL {ttl} ms after 3 s of use");
    // Touches are throttled to one per tenth of the idle timeout.
    let text = String::from_utf8(metrics.render()).unwrap();
    let touches = support::metric(
        &text,
        "emp_sidecar_store_duration_seconds_count{operation=\"touch\"}",
    );
    assert!(
        (5.0..=3.0 / 0.2 + 1.0).contains(&touches),
        "{touches} touches for {gets} gets"
    );
    // Then left alone: gone from Redis after the idle timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(redis.cli(&["EXISTS", &redis_key]).trim(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_inside_the_url_works_and_the_password_key_overrides_it() {
    let redis = Redis::start();
    redis.cli(&["CONFIG", "SET", "requirepass", "url-pass"]);
    let url = format!("redis://:url-pass@127.0.0.1:{}", redis.port);
    let with_url = config(Conf::new("http://127.0.0.1:9").redis_store(&url));
    let a = redis_store(&with_url, Arc::new(Metrics::new().unwrap())).await;
    let key = SessionKey::generate();
    a.insert(&key, session("at", "alice", &with_url))
        .await
        .unwrap();
    // The password key wins over the URL's (here: a wrong one, so refused).
    let wrong = config(
        Conf::new("http://127.0.0.1:9")
            .redis_store(&url)
            .redis("password = \"not-it\""),
    );
    let store = started_store(&wrong);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.get(&key).await.is_err());
}
