//! OpenID Connect Back-Channel Logout 1.0 against the real OpenID provider
//! (oauth2-mock-server signing the logout tokens with its own key): a
//! logout token ends the sessions of its `sid` (or, without one, of its
//! `sub`) on every replica sharing Redis; a replayed, unsigned,
//! nonce-bearing or event-less token is refused with 400.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use support::browser::Browser;
use support::openid::{OpenIdProvider, sidecar_conf};
use support::{Sidecar, http_client, upstream};

const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

async fn logged_in(sc: &Sidecar) -> Browser {
    let mut b = Browser::new();
    let authorize = Browser::location(&b.get(&sc.url("/app/start")).await);
    let callback = Browser::location(&b.get(&authorize).await);
    assert_eq!(b.get(&callback).await.status(), 302, "login failed");
    b
}

async fn post_logout(sc: &Sidecar, token: &str) -> (u16, Value) {
    let resp = http_client()
        .post(sc.url("/oauth2/backchannel_logout"))
        .form(&[("logout_token", token)])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body = resp.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Waits (at most 3 s) until `b` is refused by `sc`.
async fn signed_out(sc: &Sidecar, b: &Browser) -> bool {
    for _ in 0..60 {
        if b.api(&sc.url("/app/echo")).await.status() == 401 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

fn logout_claims(jti: &str, extra: Value) -> Value {
    let mut c = json!({"aud": "sidecar-client", "jti": jti, "events": {EVENT: {}}});
    c.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_token_ends_the_sid_on_every_replica_and_bad_ones_get_400() {
    let redis = support::redis::Redis::start();
    let up = upstream::start(None).await;
    let mut op = OpenIdProvider::start(0, std::time::Duration::from_secs(3600));
    let a = Sidecar::start(&sidecar_conf(&up.url(), &op.issuer).redis_store(&redis.url())).await;
    let b = Sidecar::start(
        &sidecar_conf(&up.url(), &op.issuer)
            .redis_store(&redis.url())
            .provider(&format!(
                "redirect_url = \"http://{}/oauth2/callback\"",
                a.addr
            )),
    )
    .await;
    // Two provider sessions of the same user, and another user.
    op.set_claims(&json!({"sub": "john", "sid": "sid-1"}));
    let first = logged_in(&a).await;
    op.set_claims(&json!({"sub": "john", "sid": "sid-2"}));
    let second = logged_in(&a).await;
    op.set_claims(&json!({"sub": "jane", "sid": "sid-3"}));
    let other = logged_in(&a).await;
    for browser in [&first, &second, &other] {
        for sc in [&a, &b] {
            assert_eq!(browser.api(&sc.url("/app/echo")).await.status(), 200);
        }
    }

    // Refused, 400 each, nothing ended: no event, a nonce, unsigned,
    // another audience, no sid and no sub.
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD
            .encode(logout_claims("u", json!({"iss": op.issuer, "sid": "sid-1"})).to_string())
    );
    let bad = [
        (
            "no event",
            op.logout_token(&json!({"aud": "sidecar-client", "jti": "j0", "sid": "sid-1"})),
        ),
        (
            "nonce",
            op.logout_token(&logout_claims("j1", json!({"sid": "sid-1", "nonce": "n"}))),
        ),
        ("unsigned", unsigned),
        (
            "audience",
            op.logout_token(&logout_claims(
                "j2",
                json!({"sid": "sid-1", "aud": "other"}),
            )),
        ),
        (
            "no sid or sub",
            op.logout_token(&logout_claims("j3", json!({"sub": null}))),
        ),
    ];
    for (what, token) in &bad {
        let (status, body) = post_logout(&b, token).await;
        assert_eq!(status, 400, "{what}");
        assert_eq!(body["error"], "invalid_request", "{what}");
    }
    assert_eq!(first.api(&a.url("/app/echo")).await.status(), 200);

    // sid-1, posted to b: that session ends on both replicas, at once.
    let token = op.logout_token(&logout_claims("j4", json!({"sid": "sid-1", "sub": "john"})));
    assert_eq!(post_logout(&b, &token).await.0, 200);
    for sc in [&a, &b] {
        assert!(signed_out(sc, &first).await, "sid-1 still signed in");
        assert_eq!(second.api(&sc.url("/app/echo")).await.status(), 200);
    }
    // The same token again: a replay, on the other replica too.
    assert_eq!(post_logout(&a, &token).await.0, 400);
    // No sid: every session of the sub (sid-2), not jane's.
    let token = op.logout_token(&logout_claims("j5", json!({"sub": "john"})));
    assert_eq!(post_logout(&a, &token).await.0, 200);
    for sc in [&a, &b] {
        assert!(signed_out(sc, &second).await, "john's other session lives");
        assert_eq!(other.api(&sc.url("/app/echo")).await.status(), 200);
    }
    let text = support::get_text(&a.url("/metrics")).await;
    let count = |r: &str| {
        support::metric(
            &text,
            &format!("emp_sidecar_backchannel_logouts_total{{result=\"{r}\"}}"),
        )
    };
    // Both replicas count into one registry each: a saw the replay and j5.
    assert_eq!(count("replayed"), 1.0);
    assert_eq!(count("accepted"), 1.0);
    // GET is not how it is called.
    let resp = http_client()
        .get(a.url("/oauth2/backchannel_logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_ends_sessions_by_sid_too() {
    let up = upstream::start(None).await;
    let mut op = OpenIdProvider::start(0, std::time::Duration::from_secs(3600));
    let sc = Sidecar::start(&sidecar_conf(&up.url(), &op.issuer)).await;
    op.set_claims(&json!({"sub": "john", "sid": "s-1"}));
    let b = logged_in(&sc).await;
    assert_eq!(b.api(&sc.url("/app/echo")).await.status(), 200);
    let token = op.logout_token(&logout_claims("m1", json!({"sid": "s-1"})));
    assert_eq!(post_logout(&sc, &token).await.0, 200);
    assert_eq!(b.api(&sc.url("/app/echo")).await.status(), 401);
    assert_eq!(post_logout(&sc, &token).await.0, 400, "replay");
    sc.shutdown().await;
}
