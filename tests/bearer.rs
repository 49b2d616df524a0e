//! API clients with their own tokens (`[bearer]`): JWT access tokens from
//! the real OpenID provider (oauth2-mock-server's client_credentials grant,
//! claims set per test) and from an extra issuer; EMP's opaque tokens
//! checked through `/profile`. Valid tokens reach the app without a
//! session; every bad one is 401 with `WWW-Authenticate: Bearer
//! error="invalid_token"`, never a login redirect.

mod support;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use support::browser::Browser;
use support::openid::OpenIdProvider;
use support::{Conf, Sidecar, http_client, metric, seen, upstream};

fn conf(up: &str, issuer: &str) -> Conf {
    support::openid::sidecar_conf(up, issuer)
        .claim("\"X-Auth-Request-User\" = \"/sub\"")
        .append("[bearer]\nenabled = true")
}

/// An access token from the provider (client_credentials), with `claims`
/// over its own.
async fn token(op: &mut OpenIdProvider, claims: Value) -> String {
    op.set_claims(&claims);
    let resp = http_client()
        .post(format!("{}/token", op.issuer))
        .basic_auth("machine-client", Some("machine-secret"))
        .form(&[("grant_type", "client_credentials"), ("scope", "api")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

async fn call(sc: &Sidecar, token: &str, accept: &str) -> reqwest::Response {
    http_client()
        .get(sc.url("/app/echo"))
        .header("authorization", format!("Bearer {token}"))
        .header("accept", accept)
        .send()
        .await
        .unwrap()
}

fn assert_invalid_token(resp: &reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 401, "{what}");
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\"",
        "{what}"
    );
    assert!(
        resp.headers().get("location").is_none(),
        "{what}: a redirect"
    );
}

async fn bearer_metric(sc: &Sidecar, result: &str) -> f64 {
    let text = support::get_text(&sc.url("/metrics")).await;
    metric(
        &text,
        &format!("emp_sidecar_bearer_tokens_total{{result=\"{result}\"}}"),
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_access_tokens_are_verified_cached_and_never_a_session() {
    let up = upstream::start(None).await;
    let mut op = OpenIdProvider::start(0, Duration::from_secs(3600));
    let mut other = OpenIdProvider::start(0, Duration::from_secs(3600));
    let sc = Sidecar::start(&conf(&up.url(), &op.issuer).append(&format!(
        "extra_issuers = [\"{}=reports-api\"]",
        other.issuer
    )))
    .await;

    // Valid: the app gets the token and the claims; no cookie is set.
    let good = token(
        &mut op,
        json!({"aud": "sidecar-client", "sub": "machine-1"}),
    )
    .await;
    for _ in 0..3 {
        let resp = call(&sc, &good, "application/json").await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("set-cookie").is_none());
        let echo: Value = resp.json().await.unwrap();
        assert_eq!(seen(&echo, "authorization"), [format!("Bearer {good}")]);
        assert_eq!(
            seen(&echo, "x-forwarded-access-token"),
            std::slice::from_ref(&good)
        );
        assert_eq!(seen(&echo, "x-auth-request-user"), ["machine-1"]);
    }
    // One signature check, then the cache.
    assert_eq!(bearer_metric(&sc, "accepted").await, 1.0);
    assert_eq!(bearer_metric(&sc, "cached").await, 2.0);
    let text = support::get_text(&sc.url("/metrics")).await;
    assert_eq!(metric(&text, "emp_sidecar_sessions_active"), 0.0);
    // /oauth2/auth answers for it too.
    let resp = http_client()
        .get(sc.url("/oauth2/auth"))
        .header("authorization", format!("Bearer {good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["x-auth-request-user"], "machine-1");

    // From the extra issuer, for its audience.
    let extra = token(
        &mut other,
        json!({"aud": "reports-api", "sub": "machine-2"}),
    )
    .await;
    let echo: Value = call(&sc, &extra, "application/json")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen(&echo, "x-auth-request-user"), ["machine-2"]);

    // Refused, each with 401 invalid_token, a browser's Accept included.
    let expired = token(
        &mut op,
        json!({"aud": "sidecar-client", "sub": "m", "iat": now() - 7200, "nbf": now() - 7200, "exp": now() - 3600}),
    )
    .await;
    let wrong_aud = token(&mut op, json!({"aud": "someone-else", "sub": "m"})).await;
    // The extra issuer's token is for its own audience only.
    let wrong_aud_extra = token(&mut other, json!({"aud": "sidecar-client", "sub": "m"})).await;
    let wrong_iss = token(
        &mut op,
        json!({"aud": "sidecar-client", "sub": "m", "iss": "http://127.0.0.1:9/"}),
    )
    .await;
    let forged = {
        // Our own key, the provider's issuer and audience.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let enc = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("key-1".into());
        jsonwebtoken::encode(
            &header,
            &json!({"iss": op.issuer, "aud": "sidecar-client", "sub": "m", "iat": now(), "exp": now() + 600}),
            &enc,
        )
        .unwrap()
    };
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(
            json!({"iss": op.issuer, "aud": "sidecar-client", "sub": "m", "iat": now(), "exp": now() + 600})
                .to_string()
        )
    );
    for (what, t) in [
        ("expired", &expired),
        ("wrong audience", &wrong_aud),
        ("extra issuer, wrong audience", &wrong_aud_extra),
        ("wrong issuer", &wrong_iss),
        ("unknown key", &forged),
        ("alg none", &unsigned),
        ("garbage", &"not-a-token".to_string()),
    ] {
        for accept in ["application/json", "text/html"] {
            let resp = call(&sc, t, accept).await;
            assert_invalid_token(&resp, what);
        }
    }
    // A browser without any token still goes to log in as before.
    let mut b = Browser::new();
    assert_eq!(b.get(&sc.url("/app/echo")).await.status(), 302);
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emp_opaque_tokens_are_checked_through_profile_and_cached() {
    let up = upstream::start(None).await;
    let emp = support::mock_emp(Duration::from_secs(3600)).await;
    let sc = Sidecar::start(
        &Conf::new(&up.url())
            .emp(&emp.base_url())
            .append("[bearer]\nenabled = true\nopaque_cache = \"60s\""),
    )
    .await;
    // A token EMP issued (through a browser login), used by an API client
    // without the cookie.
    let mut b = Browser::new();
    assert_eq!(b.login(&sc.url("/app/echo"), "alice").await.status(), 302);
    let echo = b.echo(&sc.url("/app/echo")).await;
    let token = seen(&echo, "x-forwarded-access-token")[0].clone();
    let profiles = || {
        emp.requests()
            .into_iter()
            .filter(|r| r.path == "/profile")
            .count()
    };
    let before = profiles();
    for _ in 0..3 {
        let resp = call(&sc, &token, "application/json").await;
        assert_eq!(resp.status(), 200);
        let echo: Value = resp.json().await.unwrap();
        assert_eq!(seen(&echo, "x-auth-request-user"), ["alice"]);
    }
    assert_eq!(profiles(), before + 1, "one /profile call, then the cache");
    // A token EMP does not know: 401, and asked about once.
    let before = profiles();
    for _ in 0..3 {
        assert_invalid_token(
            &call(&sc, "emp-at-revoked", "application/json").await,
            "revoked",
        );
    }
    assert_eq!(profiles(), before + 1, "a refusal is cached too");
    sc.shutdown().await;
}
