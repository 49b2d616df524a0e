//! The refresh rules under paused tokio time, with a provider whose answers
//! and delay the test controls.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::provider::{BoxFuture, Callback, Endpoint, LoginRequest, TokenSet};
use crate::session::memory::MemoryStore;
use crate::session::{Identity, SessionKey, SessionStore};

#[derive(Clone, Copy)]
enum Answer {
    Ok,
    /// Rotates the refresh token.
    OkRotating,
    Reject,
    Fail,
    /// Answers nothing until the provider's own timeout (the delay) ends the call.
    Hang,
}

struct Fake {
    calls: AtomicUsize,
    delay: Duration,
    answer: Mutex<Answer>,
    lifetime: Duration,
    seen_refresh_tokens: Mutex<Vec<String>>,
}

impl Fake {
    fn new(delay: Duration, answer: Answer) -> Arc<Fake> {
        Arc::new(Fake {
            calls: AtomicUsize::new(0),
            delay,
            answer: Mutex::new(answer),
            lifetime: Duration::from_secs(100),
            seen_refresh_tokens: Mutex::new(Vec::new()),
        })
    }
}

impl Provider for Fake {
    fn authorize_url<'a>(
        &'a self,
        _: &'a LoginRequest,
    ) -> BoxFuture<'a, Result<url::Url, IdpError>> {
        unreachable!()
    }
    fn login<'a>(
        &'a self,
        _: &'a Callback,
    ) -> BoxFuture<'a, Result<(TokenSet, serde_json::Value), IdpError>> {
        unreachable!()
    }
    fn refresh<'a>(
        &'a self,
        rt: &'a str,
        _subject: Option<&'a str>,
    ) -> BoxFuture<'a, Result<TokenSet, IdpError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            self.seen_refresh_tokens
                .lock()
                .unwrap()
                .push(rt.to_string());
            tokio::time::sleep(self.delay).await;
            let answer = *self.answer.lock().unwrap();
            match answer {
                Answer::Ok | Answer::OkRotating => Ok(TokenSet {
                    access_token: format!("at-{n}"),
                    refresh_token: matches!(answer, Answer::OkRotating).then(|| format!("rt-{n}")),
                    expires_in: self.lifetime,
                    backend_url: None,
                    id_token: None,
                    claims: None,
                }),
                Answer::Reject => Err(IdpError::Rejected {
                    endpoint: Endpoint::Refresh,
                    status: 400,
                    code: Some("invalid_grant".into()),
                    message: None,
                }),
                Answer::Fail => Err(IdpError::ServerError {
                    endpoint: Endpoint::Refresh,
                    status: 503,
                }),
                Answer::Hang => Err(IdpError::Timeout {
                    endpoint: Endpoint::Refresh,
                }),
            }
        })
    }
}

struct Setup {
    fake: Arc<Fake>,
    store: Arc<MemoryStore>,
    cache: Arc<TokenCache>,
    session: Arc<Session>,
    metrics: Arc<Metrics>,
    key: SessionKey,
}

/// `provider.timeout`: the longest a request waits for a refresh.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(3);

/// A session whose token expires in `expires_in`, with a 10 s margin.
async fn setup(fake: Arc<Fake>, expires_in: Duration) -> Setup {
    let store = Arc::new(MemoryStore::new(
        100,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    ));
    let metrics = Arc::new(Metrics::new().unwrap());
    let cache = TokenCache::new(
        fake.clone(),
        store.clone(),
        metrics.clone(),
        IdentityRules::for_tests("/sub"),
        Duration::from_secs(10),
        PROVIDER_TIMEOUT,
    );
    let tokens = Tokens::issued(
        TokenSet {
            access_token: "at-0".into(),
            refresh_token: Some("rt-0".into()),
            expires_in,
            backend_url: Some("https://backend/".into()),
            id_token: None,
            claims: None,
        },
        Instant::now(),
        Duration::from_secs(10),
    )
    .unwrap();
    let session = Arc::new(Session::new(
        tokens,
        &serde_json::json!({}),
        Identity::default(),
    ));
    let key = SessionKey::generate();
    store.insert(&key, session.clone()).await.unwrap();
    Setup {
        fake,
        store,
        cache,
        session,
        metrics,
        key,
    }
}

fn valid(f: Fresh) -> Arc<Tokens> {
    match f {
        Fresh::Valid(t) => t,
        other => panic!("expected a valid token, got {other:?}"),
    }
}

/// Lets spawned tasks run, with time paused: advances the clock by `d`.
async fn run_for(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(start_paused = true)]
async fn a_fresh_token_is_used_without_refreshing() {
    let s = setup(
        Fake::new(Duration::ZERO, Answer::Ok),
        Duration::from_secs(100),
    )
    .await;
    let t = valid(s.cache.fresh(&s.key, &s.session, Instant::now()).await);
    assert_eq!(t.access_token, "at-0");
    run_for(Duration::from_secs(1)).await;
    assert_eq!(s.fake.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn near_expiry_refreshes_in_the_background_without_making_the_request_wait() {
    // The IdP takes 30 s to answer. The token lives 5 s, so its refresh is
    // due after 2.5 s (the 10 s margin is capped at half the lifetime).
    let s = setup(
        Fake::new(Duration::from_secs(30), Answer::Ok),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        valid(s.cache.fresh(&s.key, &s.session, Instant::now()).await).access_token,
        "at-0"
    );
    run_for(Duration::from_millis(10)).await;
    assert_eq!(
        s.fake.calls.load(Ordering::SeqCst),
        0,
        "no refresh before it is due"
    );
    run_for(Duration::from_secs(3)).await;
    let before = Instant::now();
    for _ in 0..50 {
        let t = valid(s.cache.fresh(&s.key, &s.session, Instant::now()).await);
        assert_eq!(t.access_token, "at-0");
    }
    // No request waited: paused time would have moved if one had.
    assert_eq!(Instant::now(), before);
    run_for(Duration::from_millis(1)).await;
    assert_eq!(
        s.fake.calls.load(Ordering::SeqCst),
        1,
        "one background refresh (single flight)"
    );
    run_for(Duration::from_secs(31)).await;
    let t = valid(s.cache.fresh(&s.key, &s.session, Instant::now()).await);
    assert_eq!(t.access_token, "at-1");
    assert_eq!(s.fake.calls.load(Ordering::SeqCst), 1);
    let text = String::from_utf8(s.metrics.render()).unwrap();
    assert!(text.contains(r#"emp_sidecar_token_refreshes_total{result="success"} 1"#));
}

#[tokio::test(start_paused = true)]
async fn two_hundred_concurrent_requests_on_an_expired_token_cause_one_refresh() {
    let s = setup(
        Fake::new(Duration::from_millis(500), Answer::Ok),
        Duration::from_secs(1),
    )
    .await;
    run_for(Duration::from_secs(2)).await; // expired now
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let cache = s.cache.clone();
        let session = s.session.clone();
        let key = s.key.clone();
        tasks.push(tokio::spawn(async move {
            valid(cache.fresh(&key, &session, Instant::now()).await)
        }));
    }
    for t in tasks {
        let tokens = t.await.unwrap();
        assert_eq!(tokens.access_token, "at-1");
        assert!(Instant::now() < tokens.expires_at);
    }
    assert_eq!(s.fake.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_refresh_ends_the_session() {
    let s = setup(
        Fake::new(Duration::ZERO, Answer::Reject),
        Duration::from_secs(1),
    )
    .await;
    run_for(Duration::from_secs(2)).await;
    assert!(matches!(
        s.cache.fresh(&s.key, &s.session, Instant::now()).await,
        Fresh::Ended
    ));
    assert!(s.store.get(&s.key).await.unwrap().is_none());
    // Refused means refused: no retries.
    assert_eq!(s.fake.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn an_idp_outage_keeps_the_current_token_until_it_expires() {
    let s = setup(
        Fake::new(Duration::ZERO, Answer::Fail),
        Duration::from_secs(10),
    )
    .await;
    run_for(Duration::from_secs(6)).await; // refresh due at 5 s, expiry at 10 s
    // The background refresh fails (3 attempts over 1 s); the token stays in use.
    let t = valid(s.cache.fresh(&s.key, &s.session, Instant::now()).await);
    assert_eq!(t.access_token, "at-0");
    run_for(Duration::from_secs(2)).await;
    assert_eq!(s.fake.calls.load(Ordering::SeqCst), 3);
    // The cool-down holds off new attempts.
    assert_eq!(
        valid(s.cache.fresh(&s.key, &s.session, Instant::now()).await).access_token,
        "at-0"
    );
    run_for(Duration::from_millis(10)).await;
    assert_eq!(s.fake.calls.load(Ordering::SeqCst), 3);
    // Expired during the cool-down (it runs to 12 s): 503 at once, no call.
    run_for(Duration::from_secs(3)).await;
    let before = Instant::now();
    assert!(matches!(
        s.cache.fresh(&s.key, &s.session, Instant::now()).await,
        Fresh::Unavailable(_)
    ));
    assert_eq!(Instant::now(), before, "no wait during the cool-down");
    assert_eq!(s.fake.calls.load(Ordering::SeqCst), 3);
    // After it, one more flight of three attempts; the session survives.
    run_for(Duration::from_secs(2)).await;
    assert!(matches!(
        s.cache.fresh(&s.key, &s.session, Instant::now()).await,
        Fresh::Unavailable(_)
    ));
    assert_eq!(s.fake.calls.load(Ordering::SeqCst), 6);
    assert!(s.store.get(&s.key).await.unwrap().is_some());
    // The IdP comes back: once the cool-down is over, a new token.
    *s.fake.answer.lock().unwrap() = Answer::Ok;
    run_for(COOL_DOWN).await;
    assert!(
        valid(s.cache.fresh(&s.key, &s.session, Instant::now()).await)
            .access_token
            .starts_with("at-")
    );
    assert_eq!(s.fake.calls.load(Ordering::SeqCst), 7);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_idp_holds_expired_requests_one_timeout_and_sees_one_schedule_of_calls() {
    // Each call hangs for the provider's 3 s timeout. The attack run saw
    // three queued requests wait 10, 20 and 30 s and cause 9 calls.
    let s = setup(
        Fake::new(PROVIDER_TIMEOUT, Answer::Hang),
        Duration::from_secs(1),
    )
    .await;
    run_for(Duration::from_secs(2)).await; // expired
    let start = Instant::now();
    let request = |delay: Duration| {
        let cache = s.cache.clone();
        let session = s.session.clone();
        let key = s.key.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let asked = Instant::now();
            let fresh = cache.fresh(&key, &session, Instant::now()).await;
            (
                matches!(fresh, Fresh::Unavailable(_)),
                Instant::now() - asked,
            )
        })
    };
    // Three at once, then two while the flight is still in the air.
    let tasks: Vec<_> = [0, 0, 0, 4, 8]
        .map(|s| request(Duration::from_secs(s)))
        .into_iter()
        .collect();
    for t in tasks {
        let (unavailable, waited) = t.await.unwrap();
        assert!(unavailable);
        assert!(waited <= PROVIDER_TIMEOUT, "waited {waited:?}");
    }
    // The flight: 0-3 s, 3.2-6.2 s, 7-10 s; then the cool-down.
    run_for(Duration::from_secs(10) - (Instant::now() - start)).await;
    assert_eq!(s.fake.calls.load(Ordering::SeqCst), 3);
    let asked = Instant::now();
    assert!(matches!(
        s.cache.fresh(&s.key, &s.session, Instant::now()).await,
        Fresh::Unavailable(_)
    ));
    assert_eq!(Instant::now(), asked, "503 at once during the cool-down");
    run_for(Duration::from_secs(1)).await;
    assert_eq!(s.fake.calls.load(Ordering::SeqCst), 3);
    let text = String::from_utf8(s.metrics.render()).unwrap();
    assert!(text.contains(r#"emp_sidecar_token_refreshes_total{result="failed"} 1"#));
}

#[tokio::test(start_paused = true)]
async fn an_expired_request_shares_a_background_refresh_already_in_the_air() {
    // The background refresh starts at 5 s and takes 2 s; the token expires
    // at 6 s: a request then waits for that flight, not a second one.
    let s = setup(
        Fake::new(Duration::from_secs(2), Answer::Ok),
        Duration::from_secs(6),
    )
    .await;
    run_for(Duration::from_secs(5)).await;
    assert_eq!(
        valid(s.cache.fresh(&s.key, &s.session, Instant::now()).await).access_token,
        "at-0"
    );
    run_for(Duration::from_millis(1500)).await;
    let t = valid(s.cache.fresh(&s.key, &s.session, Instant::now()).await);
    assert_eq!(t.access_token, "at-1");
    assert_eq!(s.fake.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn an_answer_without_refresh_token_keeps_the_old_one_and_a_new_one_rotates() {
    let s = setup(
        Fake::new(Duration::ZERO, Answer::Ok),
        Duration::from_secs(1),
    )
    .await;
    run_for(Duration::from_secs(2)).await;
    let t = valid(s.cache.fresh(&s.key, &s.session, Instant::now()).await);
    assert_eq!(t.refresh_token.as_deref(), Some("rt-0"));
    assert_eq!(t.backend_url.as_deref(), Some("https://backend/"));
    *s.fake.answer.lock().unwrap() = Answer::OkRotating;
    run_for(Duration::from_secs(101)).await;
    let t = valid(s.cache.fresh(&s.key, &s.session, Instant::now()).await);
    assert_eq!(t.refresh_token.as_deref(), Some("rt-2"));
    run_for(Duration::from_secs(101)).await;
    valid(s.cache.fresh(&s.key, &s.session, Instant::now()).await);
    let seen = s.fake.seen_refresh_tokens.lock().unwrap().clone();
    assert_eq!(seen, vec!["rt-0", "rt-0", "rt-2"]);
}

#[test]
fn the_margin_is_capped_at_half_the_lifetime() {
    let now = Instant::now();
    let set = |secs| TokenSet {
        access_token: "a".into(),
        refresh_token: None,
        expires_in: Duration::from_secs(secs),
        backend_url: None,
        id_token: None,
        claims: None,
    };
    let t = Tokens::issued(set(60), now, Duration::from_secs(300)).unwrap();
    assert_eq!(t.refresh_at - now, Duration::from_secs(30));
    let t = Tokens::issued(set(3600), now, Duration::from_secs(60)).unwrap();
    assert_eq!(t.refresh_at - now, Duration::from_secs(3540));
    // A token that cannot be a header value is refused, not sent broken.
    let mut bad = set(60);
    bad.access_token = "line\nbreak".into();
    assert!(Tokens::issued(bad, now, Duration::from_secs(1)).is_none());
}
