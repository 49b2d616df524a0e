//! `provider.kind = "oidc"` against a real third-party OpenID provider
//! (oauth2-mock-server from npm, run by Node.js on loopback): discovery,
//! PKCE, nonce, verified id_tokens, claims to the upstream, refresh, the
//! provider rotating its signing key mid-session, both client
//! authentication methods, userinfo, and discovery recovering after the
//! provider was down. Every wait is bounded.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::browser::Browser;
use support::openid::OpenIdProvider;
use support::{Conf, Sidecar, http_client, idp_calls, metric, seen, upstream};

const SECRET: &str = "oidc-secret with spaces&symbols";

fn conf(up: &str, issuer: &str) -> Conf {
    Conf::new(up)
        .provider("kind = \"oidc\"")
        .provider(&format!("base_url = {issuer:?}"))
        .provider("client_id = \"sidecar-client\"")
        .provider(&format!("client_secret = {SECRET:?}"))
        .claim("\"X-Auth-Request-User\" = \"/sub\"")
        .claim("\"X-User-Email\" = \"/email\"")
        .claim("\"X-User-Groups\" = \"/groups\"")
}

/// Runs a browser login from `start`; returns the authorize URL's query.
async fn login(b: &mut Browser, start: &str) -> HashMap<String, String> {
    let resp = b.get(start).await;
    let authorize = Browser::location(&resp);
    let q: HashMap<String, String> = url::Url::parse(&authorize)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let to_callback = b.get(&authorize).await;
    let callback = Browser::location(&to_callback);
    let done = b.get(&callback).await;
    assert_eq!(done.status(), 302, "{}", done.text().await.unwrap());
    let back = Browser::location(&done);
    assert!(start.ends_with(&back), "returned to {back}, not {start}");
    q
}

#[tokio::test]
async fn sign_out_ends_the_session_at_the_provider_and_comes_back_to_a_safe_place() {
    let up = upstream::start(None).await;
    let op = OpenIdProvider::start(0, Duration::from_secs(3600));
    let sc = Sidecar::start(&conf(&up.url(), &op.issuer)).await;
    let here = format!("http://{}", sc.addr);
    for (rd, back) in [
        ("/after?x=1", format!("{here}/after?x=1")),
        // Not a safe return URL: the site's root instead.
        ("https://evil.example/", format!("{here}/")),
    ] {
        let mut b = Browser::new();
        login(&mut b, &sc.url("/app/echo")).await;
        let resp = b
            .get(&sc.url(&format!(
                "/oauth2/sign_out?rd={}",
                url::form_urlencoded::byte_serialize(rd.as_bytes()).collect::<String>()
            )))
            .await;
        let to_provider = url::Url::parse(&Browser::location(&resp)).unwrap();
        assert_eq!(
            to_provider.as_str().split('?').next().unwrap(),
            format!("{}/endsession", op.issuer)
        );
        let q: HashMap<String, String> = to_provider.query_pairs().into_owned().collect();
        assert_eq!(q["post_logout_redirect_uri"], back);
        assert_eq!(q["client_id"], "sidecar-client");
        let hint = &q["id_token_hint"];
        assert_eq!(hint.split('.').count(), 3, "a JWT: {hint}");
        // The session is over here already, whatever the provider does.
        assert_eq!(b.api(&sc.url("/app/echo")).await.status(), 401);
        // The provider ends its own and sends the browser back.
        let resp = b.get(to_provider.as_str()).await;
        assert_eq!(Browser::location(&resp), back);
    }
    sc.shutdown().await;
}

#[tokio::test]
async fn login_with_discovery_pkce_and_nonce_puts_verified_claims_upstream() {
    let mut op = OpenIdProvider::start(0, Duration::from_secs(3600));
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&conf(&up.url(), &op.issuer)).await;
    let mut b = Browser::new();
    let q = login(&mut b, &sc.url("/app/echo?q=1")).await;

    // The authorize request came from discovery and carries everything.
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "sidecar-client");
    assert_eq!(q["scope"], "openid profile email");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert_eq!(q["nonce"].len(), 43);
    assert_ne!(q["nonce"], q["state"]);

    // The token request: client_secret_basic (the OIDC default), with the PKCE verifier.
    let tokens = op.events_at_least("token", 1);
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["grant_type"], "authorization_code");
    assert_eq!(tokens[0]["auth"], "basic");
    // RFC 6749 2.3.1: id and secret form-urlencoded inside Basic.
    let encoded: String = url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
    assert_eq!(tokens[0]["basic"], format!("sidecar-client:{encoded}"));
    assert_eq!(tokens[0]["client_secret"], Value::Null);
    assert_eq!(tokens[0]["code_verifier"], true);

    // The upstream gets the access token and the id_token's claims.
    let e = b.echo(&sc.url("/app/echo?q=1")).await;
    let bearer = &seen(&e, "authorization")[0];
    assert!(bearer.starts_with("Bearer ey"), "{bearer}");
    assert_eq!(seen(&e, "x-auth-request-user"), ["johndoe"]);
    assert_eq!(seen(&e, "x-user-email"), ["john.doe@example.com"]);
    assert_eq!(seen(&e, "x-user-groups"), ["staff,admins"]);

    // /oauth2/userinfo and /oauth2/auth answer from the same claims.
    let info: Value = b.echo(&sc.url("/oauth2/userinfo")).await;
    assert_eq!(info["sub"], "johndoe");
    assert_eq!(info["iss"], op.issuer.as_str());
    assert_eq!(info["aud"], "sidecar-client");
    assert_eq!(info["name"], "John Doe");
    let auth = b.api(&sc.url("/oauth2/auth")).await;
    assert_eq!(auth.status(), 202);
    assert_eq!(auth.headers()["x-auth-request-user"], "johndoe");
    assert_eq!(
        auth.headers()["x-auth-request-email"],
        "john.doe@example.com"
    );

    let m = support::get_text(&sc.url("/metrics")).await;
    assert_eq!(
        metric(&m, "emp_sidecar_logins_total{result=\"success\"}"),
        1.0
    );
    assert_eq!(idp_calls(&m, "discovery"), 1.0);
    assert_eq!(idp_calls(&m, "jwks"), 1.0);
    assert!(
        !m.lines()
            .any(|l| l.starts_with("emp_sidecar_id_token_failures_total") && !l.ends_with(" 0"))
    );

    // A second login reuses the cached discovery document and keys.
    let mut b2 = Browser::new();
    login(&mut b2, &sc.url("/app/echo")).await;
    let m = support::get_text(&sc.url("/metrics")).await;
    assert_eq!(idp_calls(&m, "discovery"), 1.0);
    assert_eq!(idp_calls(&m, "jwks"), 1.0);
    sc.shutdown().await;
}

#[tokio::test]
async fn refresh_keeps_working_when_the_provider_rotates_its_key_mid_session() {
    // Tokens live 14 s and are refreshed 2 s ahead: the refresh comes after
    // the 10 s during which the sidecar will not re-read the JWKS again.
    let mut op = OpenIdProvider::start(0, Duration::from_secs(14));
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&conf(&up.url(), &op.issuer).token("refresh_margin = \"2s\"")).await;
    let mut b = Browser::new();
    login(&mut b, &sc.url("/app/echo")).await;
    let first = seen(&b.echo(&sc.url("/app/echo")).await, "authorization")[0].clone();

    // The provider rotates to a new key. (RS256: its discovery document
    // announces only RS256, and the sidecar accepts only what is announced.)
    let kid = op.rotate("RS256");
    assert_eq!(kid, "key-2");

    // Browse until the refreshed token reaches the upstream; every request is served.
    let deadline = Instant::now() + Duration::from_secs(30);
    let refreshed = loop {
        let e = b.echo(&sc.url("/app/echo")).await;
        let now = seen(&e, "authorization")[0].clone();
        if now != first {
            break now;
        }
        assert!(Instant::now() < deadline, "no refresh within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(refreshed.starts_with("Bearer ey"));
    let tokens = op.events_at_least("token", 2);
    let refresh = tokens
        .iter()
        .find(|t| t["grant_type"] == "refresh_token")
        .expect("a refresh request");
    assert_eq!(
        refresh["kid"], "key-2",
        "the refresh answer was signed with the new key"
    );

    let m = support::get_text(&sc.url("/metrics")).await;
    assert_eq!(
        metric(&m, "emp_sidecar_token_refreshes_total{result=\"success\"}"),
        1.0
    );
    // The unknown kid made the sidecar re-read the JWKS exactly once.
    assert_eq!(idp_calls(&m, "jwks"), 2.0);
    assert!(
        !m.lines()
            .any(|l| l.starts_with("emp_sidecar_id_token_failures_total") && !l.ends_with(" 0"))
    );

    // A new login now verifies with the cached new key.
    let mut b2 = Browser::new();
    login(&mut b2, &sc.url("/app/echo")).await;
    assert_eq!(
        seen(&b2.echo(&sc.url("/app/echo")).await, "x-auth-request-user"),
        ["johndoe"]
    );
    sc.shutdown().await;
}

#[tokio::test]
async fn client_secret_post_and_userinfo_claims() {
    let mut op = OpenIdProvider::start(0, Duration::from_secs(3600));
    let up = upstream::start(None).await;
    let c = conf(&up.url(), &op.issuer)
        .provider("token_auth_method = \"client_secret_post\"")
        .provider("userinfo = true")
        .provider("scope = \"email groups\"")
        .provider("discovery_refresh = \"1s\"")
        .claim("\"X-User-Nick\" = \"/nickname\"");
    let sc = Sidecar::start(&c).await;
    let mut b = Browser::new();
    let q = login(&mut b, &sc.url("/app/echo")).await;
    assert_eq!(
        q["scope"], "openid email groups",
        "openid is always asked for"
    );

    let tokens = op.events_at_least("token", 1);
    assert_eq!(tokens[0]["auth"], "post");
    assert_eq!(tokens[0]["client_id"], "sidecar-client");
    assert_eq!(tokens[0]["client_secret"], SECRET);
    let userinfo = op.events_at_least("userinfo", 1);
    assert_eq!(userinfo.len(), 1);
    assert_eq!(userinfo[0]["bearer"], true);

    let e = b.echo(&sc.url("/app/echo")).await;
    assert_eq!(
        seen(&e, "x-user-nick"),
        ["johnny"],
        "a userinfo claim reaches the upstream"
    );
    assert_eq!(seen(&e, "x-auth-request-user"), ["johndoe"]);
    sc.shutdown().await;
}

#[tokio::test]
async fn a_provider_down_at_first_gives_a_clear_502_and_discovery_recovers() {
    let port = support::free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&conf(&up.url(), &issuer)).await;
    let mut b = Browser::new();
    let resp = b.get(&sc.url("/app/echo")).await;
    assert_eq!(resp.status(), 502);
    let page = resp.text().await.unwrap();
    assert!(page.contains("Sign-in unavailable"), "{page}");
    // API clients still get their 401, not an IdP error.
    let api = http_client().get(sc.url("/app/echo")).send().await.unwrap();
    assert_eq!(api.status(), 401);

    // The provider comes up: the next login reads discovery and works.
    let _op = OpenIdProvider::start(port, Duration::from_secs(3600));
    login(&mut b, &sc.url("/app/echo")).await;
    assert_eq!(
        seen(&b.echo(&sc.url("/app/echo")).await, "x-auth-request-user"),
        ["johndoe"]
    );
    sc.shutdown().await;
}
