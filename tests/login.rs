//! The EMP login end to end: the sidecar in-process, the mock EMP and a real
//! upstream on loopback, a browser stand-in that keeps cookies. Every wait
//! is bounded.

mod support;

use std::time::Duration;

use emp_sidecar::mock_emp::MockEmp;
use serde_json::Value;
use support::browser::Browser;
use support::{Conf, Sidecar, http_client, seen, upstream};

struct World {
    emp: MockEmp,
    sc: Sidecar,
}

async fn world(lifetime: Duration, adjust: impl FnOnce(Conf) -> Conf) -> World {
    let up = upstream::start(None).await;
    let emp = support::mock_emp(lifetime).await;
    let sc = Sidecar::start(&adjust(Conf::new(&up.url()).emp(&emp.base_url()))).await;
    World { emp, sc }
}

fn bearer(echo: &Value) -> String {
    seen(echo, "authorization")[0]
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string()
}

/// A logged-in browser (user `alice`).
async fn logged_in(w: &World) -> Browser {
    let mut b = Browser::new();
    let resp = b.login(&w.sc.url("/app/echo"), "alice").await;
    assert_eq!(Browser::location(&resp), "/app/echo");
    b
}

/// The login cookies (`_emp_sidecar_csrf_*`) the browser holds.
fn login_cookies(b: &Browser) -> Vec<(String, String)> {
    b.cookies
        .iter()
        .filter(|(k, _)| k.starts_with("_emp_sidecar_csrf_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

async fn metrics(w: &World) -> String {
    support::get_text(&w.sc.url("/metrics")).await
}

#[tokio::test]
async fn full_login_speaks_emps_wire_format_and_returns_to_the_original_url() {
    let w = world(Duration::from_secs(3600), |c| c).await;
    let mut b = Browser::new();
    let start = w.sc.url("/app/echo?x=1&y=two%20words");

    // 1. Unauthenticated navigation: 302 to EMP's authorize with exactly
    //    response_type, client_id, redirect_uri (encoded) and state.
    let authorize = b.open_login_page(&start).await;
    let url = url::Url::parse(&authorize).unwrap();
    assert_eq!(url.path(), "/authorize");
    let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let keys: Vec<&str> = q.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["response_type", "client_id", "redirect_uri", "state"]
    );
    assert_eq!(q[0].1, "code");
    assert_eq!(q[1].1, "demo-app-key");
    assert_eq!(q[2].1, format!("http://{}/oauth2/callback", w.sc.addr));
    assert!(
        authorize.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A"),
        "redirect_uri not encoded: {authorize}"
    );
    let state = q[3].1.clone();
    assert_eq!(state.len(), 43, "256-bit state, base64url");
    let login_cookie = b.set_cookies.last().unwrap().clone();
    assert!(login_cookie.starts_with("_emp_sidecar_csrf_"));
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=600"] {
        assert!(
            login_cookie.contains(flag),
            "{flag} missing: {login_cookie}"
        );
    }

    // 2. EMP sends the browser back with code, state and backend_url.
    let callback = b.submit_login(&authorize, "alice").await;
    let cb = url::Url::parse(&callback).unwrap();
    let cbq: std::collections::HashMap<String, String> = cb.query_pairs().into_owned().collect();
    assert_eq!(cbq["state"], state);
    let code = cbq["code"].clone();
    let backend = cbq["backend_url"].clone();

    // 3. The callback exchanges the code and goes straight back.
    let resp = b.get(&callback).await;
    assert_eq!(Browser::location(&resp), "/app/echo?x=1&y=two%20words");
    let session_cookie = b
        .set_cookies
        .iter()
        .find(|c| c.starts_with("_emp_sidecar="))
        .expect("session cookie set")
        .clone();
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=43200"] {
        assert!(
            session_cookie.contains(flag),
            "{flag} missing: {session_cookie}"
        );
    }
    assert!(login_cookies(&b).is_empty(), "login cookie not cleared");

    // The token request: POST, every parameter in the query string, none in the body.
    let token_reqs: Vec<_> = w
        .emp
        .requests()
        .into_iter()
        .filter(|r| r.path == "/token")
        .collect();
    assert_eq!(token_reqs.len(), 1);
    let t = &token_reqs[0];
    assert_eq!(t.method, "POST");
    assert_eq!(t.body, "");
    let expected = vec![
        ("grant_type".to_string(), "authorization_code".to_string()),
        ("code".to_string(), code),
        ("client_id".to_string(), "demo-app-key".to_string()),
        (
            "redirect_uri".to_string(),
            format!("http://{}/oauth2/callback", w.sc.addr),
        ),
        ("backend_url".to_string(), backend.clone()),
    ];
    assert_eq!(t.query, expected);
    // DR profile with the Bearer token.
    let profile: Vec<_> = w
        .emp
        .requests()
        .into_iter()
        .filter(|r| r.path == "/profile")
        .collect();
    assert_eq!(profile.len(), 1);
    assert!(
        profile[0]
            .authorization
            .as_deref()
            .unwrap()
            .starts_with("Bearer emp-at-")
    );

    // 4. Back at the app: the upstream gets the token and the claims, not our cookie.
    let resp = b.get(&w.sc.url("/app/echo?x=1&y=two%20words")).await;
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["uri"], "/app/echo?x=1&y=two%20words");
    let token = bearer(&echo);
    assert!(w.emp.access_token_valid(&token));
    assert_eq!(
        seen(&echo, "x-forwarded-access-token"),
        std::slice::from_ref(&token)
    );
    assert_eq!(seen(&echo, "x-auth-request-user"), ["alice"]);
    // EMP's oauth2_backend_url (the mock echoes the callback's backend_url).
    assert_eq!(seen(&echo, "x-emp-backend-url"), [backend]);
    assert!(
        seen(&echo, "cookie")
            .iter()
            .all(|c| !c.contains("_emp_sidecar"))
    );

    let m = metrics(&w).await;
    for line in [
        r#"emp_sidecar_logins_total{result="success"} 1"#,
        r#"emp_sidecar_idp_request_duration_seconds_count{endpoint="token"} 1"#,
        r#"emp_sidecar_idp_request_duration_seconds_count{endpoint="profile"} 1"#,
        "emp_sidecar_sessions_active 1",
    ] {
        assert!(m.contains(line), "missing {line}");
    }
}

#[tokio::test]
async fn auth_request_and_userinfo_answer_from_the_session_and_never_redirect() {
    let w = world(Duration::from_secs(3600), |c| {
        c.claim("\"X-Country\" = \"/country\"")
    })
    .await;
    // Without a session: 401, also for a browser.
    let mut anon = Browser::new();
    assert_eq!(anon.get(&w.sc.url("/oauth2/auth")).await.status(), 401);
    assert_eq!(anon.get(&w.sc.url("/oauth2/userinfo")).await.status(), 401);

    let b = logged_in(&w).await;
    let resp = b.api(&w.sc.url("/oauth2/auth")).await;
    assert_eq!(resp.status(), 202);
    let h = resp.headers();
    assert_eq!(h["x-auth-request-user"], "alice");
    assert_eq!(h["x-auth-request-email"], "alice@example.com");
    assert!(
        w.emp
            .access_token_valid(h["x-auth-request-access-token"].to_str().unwrap())
    );
    assert_eq!(h["x-country"], "KR");
    let backend = h["x-emp-backend-url"].to_str().unwrap().to_string();
    assert!(backend.starts_with("http"), "{backend}");
    let info: Value = b
        .api(&w.sc.url("/oauth2/userinfo"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], "alice");
    assert_eq!(info["email"], "alice@example.com");
    assert_eq!(info["oauth2_backend_url"], backend);
}

#[tokio::test]
async fn the_backend_url_header_can_be_renamed_or_turned_off() {
    let w = world(Duration::from_secs(3600), |c| {
        c.headers("backend_url = \"X-Lg-Backend\"")
    })
    .await;
    let b = logged_in(&w).await;
    let echo = b.echo(&w.sc.url("/app/echo")).await;
    assert_eq!(seen(&echo, "x-lg-backend").len(), 1);
    assert!(seen(&echo, "x-emp-backend-url").is_empty());
    let w = world(Duration::from_secs(3600), |c| {
        c.headers("backend_url = \"\"")
    })
    .await;
    let b = logged_in(&w).await;
    let echo = b.echo(&w.sc.url("/app/echo")).await;
    assert!(seen(&echo, "x-emp-backend-url").is_empty());
    let resp = b.api(&w.sc.url("/oauth2/auth")).await;
    assert_eq!(resp.status(), 202);
    assert!(resp.headers().get("x-emp-backend-url").is_none());
}

#[tokio::test]
async fn api_requests_without_a_session_get_401_json_and_browsers_go_to_login() {
    let w = world(Duration::from_secs(3600), |c| c).await;
    let resp = http_client()
        .post(w.sc.url("/app/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    let mut b = Browser::new();
    let resp = b.get(&w.sc.url("/app/echo")).await;
    assert!(Browser::location(&resp).starts_with(&format!("{}/authorize?", w.emp.base_url())));
}

#[tokio::test]
async fn tokens_are_refreshed_ahead_so_the_upstream_never_sees_an_expired_one() {
    // 2 s tokens: refresh due after 1 s (the 60 s margin is capped at half).
    let w = world(Duration::from_secs(2), |c| c).await;
    let b = logged_in(&w).await;
    let mut tokens = std::collections::HashSet::new();
    for _ in 0..70 {
        let resp = b.api(&w.sc.url("/app/echo")).await;
        assert_eq!(resp.status(), 200);
        let token = bearer(&resp.json().await.unwrap());
        assert!(
            w.emp.access_token_valid(&token),
            "the upstream got an expired token"
        );
        tokens.insert(token);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 3.5 s of traffic with 2 s tokens: at least two refreshes happened.
    assert!(w.emp.refreshes() >= 2, "refreshes: {}", w.emp.refreshes());
    assert!(tokens.len() >= 3);
    // The refresh requests: query string only, no refresh_token expected back.
    let refresh = w
        .emp
        .requests()
        .into_iter()
        .find(|r| {
            r.path == "/token"
                && r.query
                    .iter()
                    .any(|(k, v)| k == "grant_type" && v == "refresh_token")
        })
        .unwrap();
    let keys: Vec<&str> = refresh.query.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["client_id", "refresh_token", "grant_type"]);
    assert_eq!(refresh.body, "");
    let m = metrics(&w).await;
    assert!(m.contains(r#"emp_sidecar_idp_request_duration_seconds_count{endpoint="refresh"}"#));
}

#[tokio::test]
async fn requests_do_not_wait_while_a_slow_refresh_runs() {
    let w = world(Duration::from_secs(4), |c| c).await;
    let b = logged_in(&w).await;
    let first = bearer(&b.api(&w.sc.url("/app/echo")).await.json().await.unwrap());
    // Refresh is due after 2 s; the IdP takes 1.5 s to answer it.
    w.emp.set_refresh_delay(Duration::from_millis(1500));
    let refresh_started = || {
        w.emp.requests().iter().any(|r| {
            r.query
                .iter()
                .any(|(k, v)| k == "grant_type" && v == "refresh_token")
        })
    };
    let mut during = 0;
    for _ in 0..80 {
        let resp = b.api(&w.sc.url("/app/echo")).await;
        let token = bearer(&resp.json().await.unwrap());
        if refresh_started() && w.emp.refreshes() == 0 {
            // The refresh is in flight at the IdP: this request was answered
            // with the old, still-valid token instead of waiting for it.
            assert_eq!(token, first);
            during += 1;
        }
        if w.emp.refreshes() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        during >= 5,
        "only {during} requests answered during the refresh"
    );
    assert_eq!(w.emp.refreshes(), 1);
}

#[tokio::test]
async fn two_hundred_concurrent_requests_on_an_expired_session_cause_one_refresh() {
    let w = world(Duration::from_secs(1), |c| c).await;
    let b = logged_in(&w).await;
    let token = bearer(&b.api(&w.sc.url("/app/echo")).await.json().await.unwrap());
    // Wait (bounded) until the token has expired at the IdP.
    for _ in 0..100 {
        if !w.emp.access_token_valid(&token) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!w.emp.access_token_valid(&token));
    let before = w.emp.refreshes();
    w.emp.set_refresh_delay(Duration::from_millis(300));
    // The refreshed token lives long: a slow machine answering the 200
    // requests must not reach that token's own refresh window.
    w.emp.set_token_lifetime(Duration::from_secs(3600));
    let cookie = b.cookie_header();
    let url = w.sc.url("/app/echo");
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (cookie, url) = (cookie.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            bearer(&support::echo_with(&cookie, &url).await)
        }));
    }
    let mut seen_tokens = std::collections::HashSet::new();
    for t in tasks {
        seen_tokens.insert(t.await.unwrap());
    }
    assert_eq!(
        w.emp.refreshes() - before,
        1,
        "exactly one refresh for 200 requests"
    );
    assert_eq!(seen_tokens.len(), 1);
    assert!(!seen_tokens.contains(&token));
}

#[tokio::test]
async fn a_revoked_refresh_token_ends_the_session() {
    let w = world(Duration::from_secs(1), |c| c).await;
    let mut b = logged_in(&w).await;
    w.emp.revoke_refresh_tokens();
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the 1 s lifetime
    let resp = b.api(&w.sc.url("/app/echo")).await;
    assert_eq!(resp.status(), 401);
    // The session is gone: a browser is sent to log in again.
    let resp = b.get(&w.sc.url("/app/echo")).await;
    assert!(Browser::location(&resp).contains("/authorize?"));
    let m = metrics(&w).await;
    assert!(
        m.contains(r#"emp_sidecar_token_refreshes_total{result="rejected"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn an_idp_outage_keeps_sessions_on_their_token_then_answers_503() {
    let w = world(Duration::from_secs(3), |c| c).await;
    let b = logged_in(&w).await;
    let first = bearer(&b.api(&w.sc.url("/app/echo")).await.json().await.unwrap());
    w.emp.set_down(true);
    // Inside the refresh window the refresh fails; the valid token stays in use.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let resp = b.api(&w.sc.url("/app/echo")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(bearer(&resp.json().await.unwrap()), first);
    // Expired with the IdP still down: 503, never the expired token.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let resp = b.api(&w.sc.url("/app/echo")).await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "identity_provider_unavailable");
    // The IdP is back: once the 5 s cool-down after the last failure is
    // over (503 at once until then), the same session goes on.
    w.emp.set_down(false);
    let back = std::time::Instant::now();
    let resp = loop {
        let resp = b.api(&w.sc.url("/app/echo")).await;
        if resp.status() != 503 || back.elapsed() > Duration::from_secs(8) {
            break resp;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(resp.status(), 200);
    assert!(
        w.emp
            .access_token_valid(&bearer(&resp.json().await.unwrap()))
    );
    let m = metrics(&w).await;
    assert!(m.contains(r#"emp_sidecar_token_refreshes_total{result="failed"}"#));
}

#[tokio::test]
async fn idp_errors_show_an_escaped_page_naming_the_emp_code_and_message() {
    let w = world(Duration::from_secs(3600), |c| c).await;
    /// A user logs in; the token endpoint answers `queued` (or as the mock
    /// does for that user); the 502 page must show `expected`.
    struct Case {
        user: &'static str,
        queued: Option<(u16, &'static str)>,
        expected: &'static [&'static str],
    }
    let huge_answer: &'static str = Box::leak(
        format!(
            r#"{{"access_token":"{}","expires_in":3600}}"#,
            "a".repeat(2 << 20)
        )
        .into_boxed_str(),
    );
    let cases = [
        Case {
            user: "alice",
            queued: Some((400, "App_id Fail")),
            expected: &["App_id Fail"],
        },
        Case {
            user: "alice",
            queued: Some((
                400,
                r#"{"code":"LG.OAUTH.EC.4001","message":"OAuth2 processing error"}"#,
            )),
            expected: &["LG.OAUTH.EC.4001", "OAuth2 processing error"],
        },
        Case {
            user: "alice",
            queued: Some((
                400,
                r#"{"error":"Mismatching Redirect URI","message":"<script>alert(1)</script>"}"#,
            )),
            expected: &[
                "Mismatching Redirect URI",
                "&lt;script&gt;alert(1)&lt;/script&gt;",
            ],
        },
        Case {
            user: "country-blocked",
            queued: None,
            expected: &["not currently supported in your country"],
        },
        Case {
            user: "no-agreement",
            queued: None,
            expected: &["third party agreement"],
        },
        Case {
            user: "alice",
            queued: Some((503, "busy")),
            expected: &["could not be reached"],
        },
        // An IdP that echoes the code: the page names the error, not the code.
        Case {
            user: "alice",
            queued: Some((
                400,
                r#"{"error":"invalid_grant","error_description":"code {code} was already used"}"#,
            )),
            expected: &["invalid_grant", "code [redacted] was already used"],
        },
        // An answer too large to read is refused as it streams in.
        Case {
            user: "alice",
            queued: Some((200, huge_answer)),
            expected: &["gave an unusable answer"],
        },
    ];
    for Case {
        user,
        queued,
        expected,
    } in cases
    {
        let status = 502;
        let mut b = Browser::new();
        let authorize = b.open_login_page(&w.sc.url("/app")).await;
        let callback = b.submit_login(&authorize, user).await;
        if let Some((s, body)) = queued {
            w.emp.queue_token_error(s, body);
        }
        let code = url::Url::parse(&callback)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        let resp = b.get(&callback).await;
        assert_eq!(resp.status().as_u16(), status, "{user}");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let html = resp.text().await.unwrap();
        for e in expected {
            assert!(html.contains(e), "{e:?} not on the page:\n{html}");
        }
        assert!(!html.contains("<script>"), "unescaped markup");
        assert!(!html.contains(&code), "the code is on the page");
        assert!(
            !b.cookies.contains_key("_emp_sidecar"),
            "a session was created"
        );
    }
    // The user refused at the IdP: the callback carries an error instead of a code.
    let mut b = Browser::new();
    let authorize = b.open_login_page(&w.sc.url("/app")).await;
    let state = url::Url::parse(&authorize)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let resp = b
        .get(&w.sc.url(&format!(
            "/oauth2/callback?error=access_denied&error_description=User+said+no&state={state}"
        )))
        .await;
    assert_eq!(resp.status(), 403);
    let html = resp.text().await.unwrap();
    assert!(html.contains("access_denied") && html.contains("User said no"));
    let m = metrics(&w).await;
    assert!(
        m.contains(r#"emp_sidecar_logins_total{result="rejected"} 6"#),
        "{m}"
    );
    assert!(m.contains(r#"emp_sidecar_logins_total{result="idp_error"} 2"#));
    assert!(m.contains(r#"emp_sidecar_logins_total{result="denied"} 1"#));
}

#[tokio::test]
async fn login_during_an_idp_outage_is_a_clear_502() {
    let w = world(Duration::from_secs(3600), |c| c).await;
    let mut b = Browser::new();
    let authorize = b.open_login_page(&w.sc.url("/app")).await;
    let callback = b.submit_login(&authorize, "alice").await;
    w.emp.set_down(true);
    let resp = b.get(&callback).await;
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.unwrap().contains("Sign-in failed"));
}

#[tokio::test]
async fn state_mismatch_replay_and_missing_login_cookie_are_403() {
    let w = world(Duration::from_secs(3600), |c| c).await;
    // Replay: the same callback URL twice.
    let mut b = Browser::new();
    let authorize = b.open_login_page(&w.sc.url("/app")).await;
    let callback = b.submit_login(&authorize, "alice").await;
    let [(name, value)] = login_cookies(&b).try_into().unwrap();
    assert_eq!(b.get(&callback).await.status(), 302);
    let token_calls = |w: &World| {
        w.emp
            .requests()
            .iter()
            .filter(|r| r.path == "/token")
            .count()
    };
    let calls = token_calls(&w);
    b.cookies.insert(name, value);
    assert_eq!(
        b.get(&callback).await.status(),
        403,
        "replayed callback accepted"
    );
    assert_eq!(
        token_calls(&w),
        calls,
        "a replay reached the token endpoint"
    );

    // Another browser's callback (its state), with this browser's login cookie.
    let mut victim = Browser::new();
    let authorize = victim.open_login_page(&w.sc.url("/app")).await;
    let mut attacker = Browser::new();
    let attacker_authorize = attacker.open_login_page(&w.sc.url("/app")).await;
    let attacker_callback = attacker.submit_login(&attacker_authorize, "mallory").await;
    assert_eq!(
        victim.get(&attacker_callback).await.status(),
        403,
        "login CSRF accepted"
    );
    // No login cookie at all.
    let mut bare = Browser::new();
    let callback = victim.submit_login(&authorize, "alice").await;
    assert_eq!(bare.get(&callback).await.status(), 403);
    // A forged state with a forged cookie.
    let mut forger = Browser::new();
    forger
        .cookies
        .insert("_emp_sidecar_csrf_AAAAAAAAAAAA".into(), "forged".into());
    assert_eq!(
        forger
            .get(&w.sc.url("/oauth2/callback?code=x&state=forged"))
            .await
            .status(),
        403
    );
    let m = metrics(&w).await;
    assert!(
        m.contains(r#"emp_sidecar_logins_total{result="invalid_state"} 4"#),
        "{m}"
    );
}

#[tokio::test]
async fn logins_in_several_tabs_at_once_all_succeed_and_at_most_five_are_kept() {
    let w = world(Duration::from_secs(3600), |c| c).await;
    let mut b = Browser::new();
    // Three tabs start logging in before any comes back.
    let mut authorizes = Vec::new();
    for tab in ["/one", "/two", "/three"] {
        authorizes.push((tab, b.open_login_page(&w.sc.url(tab)).await));
    }
    assert_eq!(login_cookies(&b).len(), 3);
    // They come back in another order; each lands where it started.
    for (tab, authorize) in authorizes.into_iter().rev() {
        let callback = b.submit_login(&authorize, "alice").await;
        assert_eq!(Browser::location(&b.get(&callback).await), tab);
    }
    assert!(login_cookies(&b).is_empty());
    assert_eq!(b.api(&w.sc.url("/app/echo")).await.status(), 200);

    // Seven logins started: the browser keeps the five newest.
    let mut c = Browser::new();
    let mut started = Vec::new();
    for i in 0..7 {
        started.push(c.open_login_page(&w.sc.url(&format!("/tab{i}"))).await);
        // Issue times are milliseconds: keep the order unambiguous.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert_eq!(login_cookies(&c).len(), 5);
    let callback = c.submit_login(&started[0], "alice").await;
    assert_eq!(
        c.get(&callback).await.status(),
        403,
        "the oldest was dropped"
    );
    let callback = c.submit_login(&started[6], "alice").await;
    assert_eq!(Browser::location(&c.get(&callback).await), "/tab6");
}

#[tokio::test]
async fn tampered_foreign_and_ended_session_cookies_are_simply_no_session() {
    let w = world(Duration::from_secs(3600), |c| c).await;
    let b = logged_in(&w).await;
    let good = b.cookies["_emp_sidecar"].clone();
    let (id, tag) = good.rsplit_once('.').unwrap();
    let mut flipped = id.to_string().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let other_secret = {
        // A cookie signed with another deployment's secret.
        let other = Sidecar::start(
            &Conf::new("http://127.0.0.1:9")
                .emp(&w.emp.base_url())
                .session("cookie_secret = \"b3RoZXItZGVwbG95bWVudC1zZWNyZXQtMzItYnl0ZXMh\""),
        )
        .await;
        let mut ob = Browser::new();
        ob.login(&other.url("/app"), "alice").await;
        let c = ob.cookies["_emp_sidecar"].clone();
        other.shutdown().await;
        c
    };
    for cookie in [
        format!("{}.{tag}", String::from_utf8(flipped).unwrap()),
        format!("{id}.{}", "A".repeat(tag.len())),
        id.to_string(),
        format!("{good}x"),
        other_secret,
        "%%%".to_string(),
        String::new(),
    ] {
        let resp = http_client()
            .get(w.sc.url("/app/echo"))
            .header("cookie", format!("_emp_sidecar={cookie}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "cookie {cookie:?}");
    }
}

#[tokio::test]
async fn sign_out_ends_the_session_on_the_server_too() {
    let w = world(Duration::from_secs(3600), |c| c).await;
    let mut b = logged_in(&w).await;
    let stolen = b.cookie_header();
    assert_eq!(b.api(&w.sc.url("/app/echo")).await.status(), 200);
    let resp = b.get(&w.sc.url("/oauth2/sign_out?rd=/goodbye")).await;
    assert_eq!(Browser::location(&resp), "/goodbye");
    assert!(
        b.set_cookies
            .iter()
            .any(|c| c.starts_with("_emp_sidecar=;") && c.contains("Max-Age=0"))
    );
    assert!(!b.cookies.contains_key("_emp_sidecar"));
    // The old cookie, replayed, no longer works: the session is gone server-side.
    let resp = http_client()
        .get(w.sc.url("/app/echo"))
        .header("cookie", stolen)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // POST works too, and an unsafe rd falls back to /.
    let mut b = logged_in(&w).await;
    let resp = b
        .send(
            reqwest::Method::POST,
            &w.sc.url("/oauth2/sign_out?rd=//evil.com"),
            None,
        )
        .await;
    assert_eq!(Browser::location(&resp), "/");
    assert_eq!(b.api(&w.sc.url("/app/echo")).await.status(), 401);
}

#[tokio::test]
async fn spoofed_identity_headers_are_replaced_on_authenticated_and_stripped_on_skip_auth_routes() {
    let w = world(Duration::from_secs(3600), |c| c).await;
    let b = logged_in(&w).await;
    let spoof = |rb: reqwest::RequestBuilder| {
        rb.header("x-auth-request-user", "mallory")
            .header("x_auth_request_user", "mallory")
            .header("x-auth-request-email", "m@evil")
            .header("x-forwarded-access-token", "forged")
            .header("x_forwarded_access_token", "forged")
            .header("authorization", "Bearer forged")
            .header("x-emp-backend-url", "https://evil.example/")
            .header("x_emp_backend_url", "https://evil.example/")
    };
    let echo: Value = spoof(http_client().get(w.sc.url("/app/echo")))
        .header("cookie", b.cookie_header())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen(&echo, "x-auth-request-user"), ["alice"]);
    assert!(seen(&echo, "x_auth_request_user").is_empty());
    assert!(seen(&echo, "x-auth-request-email").is_empty());
    assert!(seen(&echo, "x_forwarded_access_token").is_empty());
    assert!(seen(&echo, "x_emp_backend_url").is_empty());
    assert_ne!(seen(&echo, "x-emp-backend-url"), ["https://evil.example/"]);
    let token = bearer(&echo);
    assert_ne!(token, "forged");
    // The client's Authorization is replaced, not joined by the session's.
    assert_eq!(seen(&echo, "authorization"), [format!("Bearer {token}")]);
    assert_eq!(seen(&echo, "x-forwarded-access-token"), [token]);

    let echo: Value = spoof(http_client().get(w.sc.url("/public/echo")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for h in [
        "x-auth-request-user",
        "x_auth_request_user",
        "x-auth-request-email",
        "x-forwarded-access-token",
        "x_forwarded_access_token",
        "x-emp-backend-url",
        "x_emp_backend_url",
    ] {
        assert!(
            seen(&echo, h).is_empty(),
            "{h} reached the upstream on a skip-auth route"
        );
    }
    assert_eq!(
        seen(&echo, "authorization"),
        ["Bearer forged"],
        "skip-auth keeps the client's Authorization"
    );
}

#[tokio::test]
async fn open_redirect_payloads_never_leave_the_site_after_login() {
    let w = world(Duration::from_secs(3600), |c| c).await;
    let corpus = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/open-redirects-oauth2-proxy.txt"
    ))
    .unwrap();
    let mut payloads: Vec<String> = vec![
        "//evil.com".into(),
        "/\\evil.com".into(),
        "/%2F%2Fevil.com".into(),
        "/%5Cevil.com".into(),
        "https://evil.com/".into(),
        "/\t/evil.com".into(),
        "javascript:alert(1)".into(),
    ];
    payloads.extend(
        corpus
            .lines()
            .filter(|l| !l.is_empty())
            .step_by(40)
            .map(String::from),
    );
    assert!(payloads.len() >= 15);
    let site = url::Url::parse(&w.sc.url("/")).unwrap();
    for p in &payloads {
        let mut b = Browser::new();
        let start = format!(
            "{}?rd={}",
            w.sc.url("/oauth2/start"),
            url::form_urlencoded::byte_serialize(p.as_bytes()).collect::<String>()
        );
        let authorize = Browser::location(&b.get(&start).await);
        let callback = b.submit_login(&authorize, "alice").await;
        let back = Browser::location(&b.get(&callback).await);
        let resolved = site.join(&back).unwrap();
        assert_eq!(
            resolved.host_str(),
            site.host_str(),
            "{p:?} sent the browser to {back:?}"
        );
        assert_eq!(
            resolved.port(),
            site.port(),
            "{p:?} sent the browser to {back:?}"
        );
    }
}
