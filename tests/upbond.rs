//! `provider.kind = "upbond"` against a mock that follows UPBOND's Login 3.0
//! document (tests/support/upbond.rs): the exact authorize and token
//! requests, refresh, and every id_token check, each with a token built to
//! fail that one check. Every wait is bounded.

mod support;

use std::time::{Duration, Instant};

use support::browser::Browser;
use support::upbond::{AUDIENCE, CLIENT_ID, CLIENT_SECRET, Discovery, Fault, Upbond};
use support::{Conf, Sidecar, metric, seen, upstream};

fn conf(up: &str, mock: &Upbond) -> Conf {
    Conf::new(up)
        .provider("kind = \"upbond\"")
        .provider(&format!("base_url = {:?}", mock.issuer()))
        .provider(&format!("client_id = {CLIENT_ID:?}"))
        .provider(&format!("client_secret = {CLIENT_SECRET:?}"))
        .provider(&format!("audience = {AUDIENCE:?}"))
        .claim("\"X-Auth-Request-User\" = \"/sub\"")
        .claim("\"X-Wallet\" = \"/wallet_address\"")
}

fn keys(pairs: &[(String, String)]) -> Vec<&str> {
    pairs.iter().map(|(k, _)| k.as_str()).collect()
}

fn value<'a>(pairs: &'a [(String, String)], key: &str) -> &'a str {
    &pairs.iter().find(|(k, _)| k == key).unwrap().1
}

/// Browser to the callback; returns the callback's response.
async fn through_callback(b: &mut Browser, start: &str) -> reqwest::Response {
    let authorize = Browser::location(&b.get(start).await);
    let callback = Browser::location(&b.get(&authorize).await);
    b.get(&callback).await
}

#[tokio::test]
async fn upbond_login_and_refresh_speak_the_documented_wire_format() {
    let mock = Upbond::start(4).await;
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&conf(&up.url(), &mock).token("refresh_margin = \"1s\"")).await;
    let mut b = Browser::new();

    // Authorize: the documented parameters, then nonce and PKCE S256.
    let resp = b.get(&sc.url("/app/echo")).await;
    let authorize = url::Url::parse(&Browser::location(&resp)).unwrap();
    assert_eq!(
        authorize.origin(),
        url::Url::parse(&mock.issuer()).unwrap().origin()
    );
    assert_eq!(authorize.path(), "/authorize");
    let q: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    assert_eq!(
        keys(&q),
        [
            "audience",
            "scope",
            "response_type",
            "client_id",
            "redirect_uri",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method"
        ]
    );
    assert_eq!(value(&q, "audience"), AUDIENCE);
    assert_eq!(value(&q, "scope"), "openid profile email offline_access");
    assert_eq!(value(&q, "response_type"), "code");
    assert_eq!(value(&q, "client_id"), CLIENT_ID);
    assert_eq!(
        value(&q, "redirect_uri"),
        format!("http://{}/oauth2/callback", sc.addr)
    );
    assert_eq!(value(&q, "code_challenge_method"), "S256");

    let callback = Browser::location(&b.get(authorize.as_str()).await);
    let done = b.get(&callback).await;
    assert_eq!(Browser::location(&done), "/app/echo");

    // The sidecar asked for discovery (404 here) and used the documented endpoints.
    let seen_reqs = mock.seen();
    assert!(
        seen_reqs
            .iter()
            .any(|s| s.path == "/.well-known/openid-configuration")
    );
    let token: Vec<_> = seen_reqs
        .iter()
        .filter(|s| s.path == "/oauth/token")
        .collect();
    assert_eq!(token.len(), 1);
    let t = token[0];
    assert_eq!(t.method, "POST");
    assert_eq!(
        t.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(t.authorization, None);
    assert!(t.query.is_empty(), "nothing in the query string");
    assert_eq!(
        keys(&t.form),
        [
            "grant_type",
            "code",
            "redirect_uri",
            "code_verifier",
            "client_id",
            "client_secret"
        ]
    );
    assert_eq!(value(&t.form, "grant_type"), "authorization_code");
    assert_eq!(value(&t.form, "client_secret"), CLIENT_SECRET);
    assert_eq!(value(&t.form, "redirect_uri"), value(&q, "redirect_uri"));

    let e = b.echo(&sc.url("/app/echo")).await;
    assert_eq!(seen(&e, "authorization"), ["Bearer upbond-at-1"]);
    assert_eq!(seen(&e, "x-auth-request-user"), ["upbond|user-42"]);
    assert_eq!(seen(&e, "x-wallet"), ["0x42"]);

    // Refresh (numeric expires_in of 4 s, 1 s ahead): the standard grant, form-encoded.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let e = b.echo(&sc.url("/app/echo")).await;
        if seen(&e, "authorization") == ["Bearer upbond-at-2"] {
            break;
        }
        assert!(Instant::now() < deadline, "no refresh");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refresh = mock
        .seen()
        .into_iter()
        .filter(|s| s.path == "/oauth/token")
        .nth(1)
        .unwrap();
    assert_eq!(
        keys(&refresh.form),
        ["grant_type", "refresh_token", "client_id", "client_secret"]
    );
    assert_eq!(value(&refresh.form, "grant_type"), "refresh_token");
    assert_eq!(value(&refresh.form, "refresh_token"), "upbond-rt-1");

    // ES256-signed id_tokens verify as well.
    mock.sign_es256(true);
    let mut b2 = Browser::new();
    let done = through_callback(&mut b2, &sc.url("/app/echo")).await;
    assert_eq!(Browser::location(&done), "/app/echo");
    assert_eq!(
        seen(&b2.echo(&sc.url("/app/echo")).await, "x-auth-request-user"),
        ["upbond|user-42"]
    );
    sc.shutdown().await;
}

#[tokio::test]
async fn each_failed_id_token_check_refuses_the_login_and_creates_no_session() {
    let mock = Upbond::start(3600).await;
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&conf(&up.url(), &mock)).await;
    let cases = [
        // First: the key cache is empty, is read once, and the kid is not there.
        (Fault::UnknownKey, "unknown_key"),
        (Fault::Signature, "signature"),
        (Fault::Audience, "audience"),
        (Fault::Issuer, "issuer"),
        (Fault::Expired, "expired"),
        (Fault::Nonce, "nonce"),
        (Fault::AuthorizedParty, "azp"),
        (Fault::NotYetValid, "not_yet_valid"),
        (Fault::AlgorithmNone, "algorithm"),
        (Fault::AlgorithmHmac, "algorithm"),
        (Fault::Missing, "missing"),
    ];
    for (fault, reason) in cases {
        mock.set_fault(fault);
        let mut b = Browser::new();
        let resp = through_callback(&mut b, &sc.url("/app/echo")).await;
        assert_eq!(resp.status(), 502, "{fault:?}");
        let page = resp.text().await.unwrap();
        assert!(
            page.contains(reason),
            "{fault:?}: the page names {reason}: {page}"
        );
        assert!(
            !b.cookies.contains_key("_emp_sidecar"),
            "{fault:?}: a session cookie was set"
        );
        let info = b.api(&sc.url("/oauth2/userinfo")).await;
        assert_eq!(info.status(), 401, "{fault:?}");
        let m = support::get_text(&sc.url("/metrics")).await;
        let want = if fault == Fault::AlgorithmHmac {
            2.0
        } else {
            1.0
        };
        assert_eq!(
            metric(
                &m,
                &format!("emp_sidecar_id_token_failures_total{{reason=\"{reason}\"}}")
            ),
            want,
            "{fault:?}"
        );
    }
    let m = support::get_text(&sc.url("/metrics")).await;
    assert_eq!(
        metric(&m, "emp_sidecar_logins_total{result=\"invalid_id_token\"}"),
        cases.len() as f64
    );
    assert_eq!(
        metric(&m, "emp_sidecar_logins_total{result=\"success\"}"),
        0.0
    );
    assert_eq!(metric(&m, "emp_sidecar_sessions_active"), 0.0);
    // Unknown kids did not make the sidecar hammer the JWKS: read once.
    assert_eq!(mock.count("/.well-known/jwks.json"), 1);

    // The same setup with an honest token logs in.
    mock.set_fault(Fault::None);
    let mut b = Browser::new();
    let resp = through_callback(&mut b, &sc.url("/app/echo")).await;
    assert_eq!(Browser::location(&resp), "/app/echo");
    assert!(b.cookies.contains_key("_emp_sidecar"));
    sc.shutdown().await;
}

#[tokio::test]
async fn a_failing_discovery_keeps_the_last_good_document_and_is_retried_later() {
    let mock = Upbond::start(3600).await;
    mock.set_discovery(Discovery::Served);
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&conf(&up.url(), &mock).provider("discovery_refresh = \"1s\"")).await;
    let discovery = "/.well-known/openid-configuration";
    let login = || async {
        let mut b = Browser::new();
        let resp = through_callback(&mut b, &sc.url("/app/echo")).await;
        assert_eq!(Browser::location(&resp), "/app/echo");
    };
    login().await;
    assert_eq!(mock.count(discovery), 1);

    // Past discovery_refresh the document is due again, and the provider fails it:
    // the login still works on the last good copy.
    mock.set_discovery(Discovery::Failing);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    login().await;
    assert_eq!(mock.count(discovery), 2, "one attempt to re-read it");
    // The next attempt waits (10 s after a failure), the logins do not.
    login().await;
    assert_eq!(mock.count(discovery), 2);
    sc.shutdown().await;
}
