//! Who may enter once logged in (`[authorization]`), against the real
//! OpenID provider (oauth2-mock-server: john.doe@example.com, groups staff
//! and admins, name John Doe) and the mock EMP: email domains, emails,
//! groups, per-path rules with claim values, `email_verified = false`, the
//! `/oauth2/auth` query parameters; a refused user gets 403 (a page for a
//! browser, JSON for an API call), never a login redirect.

mod support;

use serde_json::{Value, json};
use support::browser::Browser;
use support::openid::OpenIdProvider;
use support::{Conf, Sidecar, metric, upstream};

use support::openid::sidecar_conf as conf;

/// Logs a browser in through the provider, starting at `/app/start`.
async fn logged_in(sc: &Sidecar) -> Browser {
    let mut b = Browser::new();
    let authorize = Browser::location(&b.get(&sc.url("/app/start")).await);
    let callback = Browser::location(&b.get(&authorize).await);
    let done = b.get(&callback).await;
    assert_eq!(done.status(), 302, "login failed");
    b
}

async fn denied(sc: &Sidecar, rule: &str) -> f64 {
    let text = support::get_text(&sc.url("/metrics")).await;
    metric(
        &text,
        &format!("emp_sidecar_authorization_denied_total{{rule=\"{rule}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_admits_and_refuses_on_its_paths() {
    let up = upstream::start(None).await;
    let op = OpenIdProvider::start(0, std::time::Duration::from_secs(3600));
    let sc = Sidecar::start(&conf(&up.url(), &op.issuer).append(
        r#"
[authorization]
allowed_email_domains = ["example.com"]

[[authorization.rules]]
path = "^/app/admins/"
allowed_groups = ["admins"]

[[authorization.rules]]
path = "^/app/finance/"
allowed_groups = ["finance"]

[[authorization.rules]]
path = "^/app/named/"
claims = { "/name" = ["John Doe", "Jane Roe"], "/email" = ["john.doe@example.com"] }

[[authorization.rules]]
path = "^/app/jane/"
claims = { "/name" = ["Jane Roe"] }

[[authorization.rules]]
path = "^/app/listed/"
allowed_emails = ["someone@else.example"]

[[authorization.rules]]
path = "^/app/elsewhere/"
allowed_email_domains = [".example.org"]
"#,
    ))
    .await;
    let b = logged_in(&sc).await;
    for (path, status) in [
        ("/app/x", 200),
        ("/app/admins/x", 200),
        ("/app/finance/x", 403),
        ("/app/named/x", 200),
        ("/app/jane/x", 403),
        ("/app/listed/x", 403),
        ("/app/elsewhere/x", 403),
    ] {
        let resp = b.api(&sc.url(path)).await;
        assert_eq!(resp.status(), status, "{path}");
        if status == 403 {
            assert!(resp.headers().get("location").is_none());
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"], "forbidden");
            assert!(
                !body.to_string().contains("finance"),
                "no internals: {body}"
            );
        }
    }
    assert_eq!(denied(&sc, "rules[2]").await, 1.0);
    assert_eq!(denied(&sc, "rules[4]").await, 1.0);
    // A browser gets a page naming the account and offering sign-out; no
    // redirect, so no loop.
    let mut nav = b;
    let resp = nav.get(&sc.url("/app/finance/report")).await;
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("location").is_none());
    let html = resp.text().await.unwrap();
    assert!(html.contains("john.doe@example.com"), "{html}");
    assert!(html.contains("/oauth2/sign_out"), "{html}");
    assert!(!html.contains("finance"), "no internals: {html}");
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_domain_and_an_unverified_email_get_403_and_auth_request_too() {
    let up = upstream::start(None).await;
    let mut op = OpenIdProvider::start(0, std::time::Duration::from_secs(3600));
    let sc = Sidecar::start(
        &conf(&up.url(), &op.issuer)
            .append("[authorization]\nallowed_email_domains = [\"example.com\"]"),
    )
    .await;
    let b = logged_in(&sc).await;
    assert_eq!(b.api(&sc.url("/app/x")).await.status(), 200);
    assert_eq!(b.api(&sc.url("/oauth2/auth")).await.status(), 202);
    // The same address, said to be unverified: it counts for nothing.
    op.set_claims(&json!({"email_verified": false}));
    let unverified = logged_in(&sc).await;
    assert_eq!(unverified.api(&sc.url("/app/x")).await.status(), 403);
    assert_eq!(unverified.api(&sc.url("/oauth2/auth")).await.status(), 403);
    // Userinfo still answers: it is the user's own data.
    assert_eq!(
        unverified.api(&sc.url("/oauth2/userinfo")).await.status(),
        200
    );
    assert_eq!(denied(&sc, "default").await, 2.0);
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_request_query_parameters_ask_for_a_rule_per_location() {
    let up = upstream::start(None).await;
    let op = OpenIdProvider::start(0, std::time::Duration::from_secs(3600));
    let sc = Sidecar::start(&conf(&up.url(), &op.issuer)).await;
    let b = logged_in(&sc).await;
    for (query, status) in [
        ("", 202),
        ("?allowed_groups=admins", 202),
        ("?allowed_groups=finance,ops", 403),
        ("?allowed_email_domains=example.com", 202),
        ("?allowed_email_domains=example.org", 403),
        ("?allowed_emails=john.doe@example.com", 202),
        (
            "?allowed_emails=jane@example.com&allowed_groups=admins",
            403,
        ),
    ] {
        let resp = b.api(&sc.url(&format!("/oauth2/auth{query}"))).await;
        assert_eq!(resp.status(), status, "{query}");
    }
    assert_eq!(denied(&sc, "auth_request").await, 3.0);
    sc.shutdown().await;
}

#[tokio::test]
async fn emp_profiles_are_checked_like_the_others() {
    // The mock EMP's profile: alice@example.com, country KR; no
    // email_verified flag in EMP's dialect.
    let up = upstream::start(None).await;
    let emp = support::mock_emp(std::time::Duration::from_secs(3600)).await;
    let sc = Sidecar::start(&Conf::new(&up.url()).emp(&emp.base_url()).append(
        r#"
[authorization]
allowed_email_domains = ["example.com"]
[[authorization.rules]]
path = "^/app/us/"
claims = { "/country" = ["US"] }
"#,
    ))
    .await;
    let mut b = Browser::new();
    assert_eq!(b.login(&sc.url("/app/echo"), "alice").await.status(), 302);
    assert_eq!(b.api(&sc.url("/app/echo")).await.status(), 200);
    assert_eq!(b.api(&sc.url("/app/us/echo")).await.status(), 403);
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_id_token_drops_a_group_takes_access_away() {
    // 4-second tokens: refreshed after 2 s (the margin is capped at half).
    let up = upstream::start(None).await;
    let mut op = OpenIdProvider::start(0, std::time::Duration::from_secs(4));
    let sc = Sidecar::start(
        &conf(&up.url(), &op.issuer)
            .claim("\"X-User-Groups\" = \"/groups\"")
            .append(
                "[[authorization.rules]]\npath = \"^/app/admin/\"\nallowed_groups = [\"admins\"]",
            ),
    )
    .await;
    let b = logged_in(&sc).await;
    let echo = b.echo(&sc.url("/app/admin/echo")).await;
    assert_eq!(support::seen(&echo, "x-user-groups"), ["staff,admins"]);
    // The provider takes the group away; the next refresh's id_token says so.
    op.set_claims(&json!({"groups": ["staff"]}));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = b.api(&sc.url("/app/admin/echo")).await.status();
        if status == 403 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            std::time::Instant::now() < deadline,
            "still admitted after 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The identity headers follow too, and the rest of the site still serves.
    let echo = b.echo(&sc.url("/app/echo")).await;
    assert_eq!(support::seen(&echo, "x-user-groups"), ["staff"]);
    let info: Value = b
        .api(&sc.url("/oauth2/userinfo"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(info["groups"], json!(["staff"]));
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_from_a_refresh_on_one_replica_take_access_away_on_the_other() {
    // Two sidecars sharing a real redis-server; 4-second tokens.
    let redis = support::redis::Redis::start();
    let up = upstream::start(None).await;
    let mut op = OpenIdProvider::start(0, std::time::Duration::from_secs(4));
    let replica = |c: Conf| {
        c.redis_store(&redis.url()).append(
            "[[authorization.rules]]\npath = \"^/app/admin/\"\nallowed_groups = [\"admins\"]",
        )
    };
    let a = Sidecar::start(&replica(conf(&up.url(), &op.issuer))).await;
    // The callback and the login start are on `a`: its redirect_url.
    let b = Sidecar::start(&replica(conf(&up.url(), &op.issuer).provider(&format!(
        "redirect_url = \"http://{}/oauth2/callback\"",
        a.addr
    ))))
    .await;
    let browser = logged_in(&a).await;
    for sc in [&a, &b] {
        assert_eq!(browser.api(&sc.url("/app/admin/x")).await.status(), 200);
    }
    op.set_claims(&json!({"groups": ["staff"]}));
    // Only `a` is used until it has refreshed...
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while browser.api(&a.url("/app/admin/x")).await.status() != 403 {
        assert!(std::time::Instant::now() < deadline, "a never refreshed");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // ...and `b`, which has the session cached from before, follows (the
    // change message drops its copy; at most its 10 s re-check otherwise).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(12);
    loop {
        let status = browser.api(&b.url("/app/admin/x")).await.status();
        if status == 403 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            std::time::Instant::now() < deadline,
            "b still admits after 12 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}
