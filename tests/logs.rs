//! Nothing secret reaches the logs: the real binary at `RUST_LOG=trace`
//! (every crate, every level) through a full login and a token refresh.

mod support;

use std::time::Duration;

use support::browser::Browser;
use support::upbond::{CLIENT_ID, Fault, Upbond};
use support::{COOKIE_SECRET, Conf, Process, upstream, write_binary_config};

const CLIENT_SECRET: &str = "client-secret-value-do-not-log";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_code_cookie_or_secret_in_any_log_line() {
    let up = upstream::start(None).await;
    let emp = support::mock_emp(Duration::from_secs(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = Conf::new(&up.url())
        .emp(&emp.base_url())
        .provider(&format!("client_secret = {CLIENT_SECRET:?}"))
        .log("format = \"json\"");
    let mut sc = Process::spawn(
        &write_binary_config(dir.path(), &conf),
        &[("RUST_LOG", "trace")],
    );

    // A full login, requests through the proxy, then a refresh.
    let mut b = Browser::new();
    let resp = b.login(&sc.url("/app/echo?q=1"), "alice").await;
    assert_eq!(resp.status(), 302);
    support::browse_until_refresh(&sc.url("/app/echo"), &b.cookie_header(), &emp).await;
    // An IdP that echoes the refresh token in its refusal: the session ends
    // and the WARN line names the refusal with the token cut out.
    emp.queue_token_error(
        400,
        r#"{"error":"invalid_grant","error_description":"refresh token {refresh_token} is revoked"}"#,
    );
    let mut ended = false;
    for _ in 0..100 {
        if b.api(&sc.url("/app/echo")).await.status() == 401 {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ended, "the refused refresh did not end the session");
    let resp = b.get(&sc.url("/oauth2/sign_out")).await;
    assert_eq!(resp.status(), 302);

    sc.signal("TERM");
    let code = tokio::task::spawn_blocking(move || {
        let code = sc.wait_exit(Duration::from_secs(20));
        (code, sc)
    })
    .await
    .unwrap();
    let (exit, sc) = code;
    assert_eq!(exit, Some(0));
    // Give the reader threads their last lines (bounded).
    std::thread::sleep(Duration::from_millis(100));
    let mut output = sc.log_lines();
    output.extend(sc.stderr.lock().unwrap().iter().cloned());
    assert!(
        output.len() > 20,
        "expected a trace-level log, got {} lines",
        output.len()
    );
    assert!(output.iter().any(|l| l.contains("login succeeded")));
    assert!(
        output
            .iter()
            .any(|l| l.contains("refresh token [redacted] is revoked")),
        "the refusal is logged, redacted"
    );

    let mut secrets: Vec<String> = emp.issued_secrets();
    assert!(secrets.len() >= 4, "code, access tokens, refresh token");
    secrets.extend(b.set_cookies.iter().filter_map(|c| {
        let value = c.split(';').next()?.split_once('=')?.1;
        (!value.is_empty()).then(|| value.to_string())
    }));
    secrets.push(COOKIE_SECRET.to_string());
    secrets.push(CLIENT_SECRET.to_string());
    for secret in &secrets {
        // Session ids and states are the part of a cookie before the MAC.
        let probe = secret.split('.').next().unwrap();
        for line in &output {
            assert!(!line.contains(probe), "a secret reached the log: {line}");
        }
    }
}

/// The same for UPBOND (the OpenID code path): a login, a refresh, and a
/// login refused for a bad id_token; no code, token, id_token, nonce, PKCE
/// verifier, cookie or secret in any line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_id_token_nonce_verifier_or_secret_in_any_log_line_with_upbond() {
    let up = upstream::start(None).await;
    let mock = Upbond::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = Conf::new(&up.url())
        .provider("kind = \"upbond\"")
        .provider(&format!("base_url = {:?}", mock.issuer()))
        .provider(&format!("client_id = {CLIENT_ID:?}"))
        .provider(&format!(
            "client_secret = {:?}",
            support::upbond::CLIENT_SECRET
        ))
        .token("refresh_margin = \"1s\"")
        .log("format = \"json\"");
    let mut sc = Process::spawn(
        &write_binary_config(dir.path(), &conf),
        &[("RUST_LOG", "trace")],
    );
    let mut b = Browser::new();
    let authorize = Browser::location(&b.get(&sc.url("/app/echo")).await);
    let callback = Browser::location(&b.get(&authorize).await);
    assert_eq!(b.get(&callback).await.status(), 302);
    // Until the refresh: the mock has issued a second access token.
    for i in 0.. {
        assert!(i < 100, "no refresh within 10 s");
        assert_eq!(b.api(&sc.url("/app/echo")).await.status(), 200);
        if mock.count("/oauth/token") >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mock.set_fault(Fault::Nonce);
    let mut b2 = Browser::new();
    let authorize = Browser::location(&b2.get(&sc.url("/app/echo")).await);
    let callback = Browser::location(&b2.get(&authorize).await);
    assert_eq!(b2.get(&callback).await.status(), 502);

    sc.signal("TERM");
    let (exit, sc) = tokio::task::spawn_blocking(move || {
        let code = sc.wait_exit(Duration::from_secs(20));
        (code, sc)
    })
    .await
    .unwrap();
    assert_eq!(exit, Some(0));
    std::thread::sleep(Duration::from_millis(100));
    let mut output = sc.log_lines();
    output.extend(sc.stderr.lock().unwrap().iter().cloned());
    assert!(output.iter().any(|l| l.contains("login succeeded")));
    assert!(
        output.iter().any(|l| l.contains("nonce")),
        "the refusal is logged with its reason"
    );

    let mut secrets = mock.secrets();
    assert!(
        secrets.len() >= 10,
        "codes, tokens, id_tokens, nonces, verifiers"
    );
    secrets.extend(b.set_cookies.iter().chain(&b2.set_cookies).filter_map(|c| {
        let value = c.split(';').next()?.split_once('=')?.1;
        (!value.is_empty()).then(|| value.to_string())
    }));
    secrets.push(COOKIE_SECRET.to_string());
    // Every part of a JWT or of a signed cookie value (id, MAC) is probed.
    for probe in secrets
        .iter()
        .flat_map(|s| s.split('.'))
        .filter(|p| p.len() >= 8)
    {
        for line in &output {
            assert!(!line.contains(probe), "a secret reached the log: {line}");
        }
    }
}
