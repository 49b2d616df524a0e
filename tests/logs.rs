//! Nothing secret reaches the logs: the real binary at `RUST_LOG=trace`
//! (every crate, every level) through a full login and a token refresh.

mod support;

use std::time::Duration;

use support::browser::Browser;
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
