//! The path the sidecar authorizes is the path the app receives (issue 12,
//! the skip_auth bypass). A real Express 5 app keeps a secret under
//! `/private` and routes on the raw path, as Express does; requests go out
//! raw (`--path-as-is`), since HTTP clients would resolve the dot segments
//! themselves. Every wait is bounded.

mod support;

use std::time::Duration;

use support::browser::Browser;
use support::express::ExpressApp;
use support::{Conf, Sidecar, raw_exchange};

/// `^/public/` and `\.png$` open paths; everything else needs a session.
fn conf(app: &ExpressApp) -> Conf {
    Conf::new(&app.url()).routes(r#"skip_auth = ["^/public/", "\\.png$"]"#)
}

/// A raw `GET path` as an API client (no login redirect): status and body.
async fn get(sc: &Sidecar, path: &str, cookie: Option<&str>) -> (u16, String) {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: app.test\r\nAccept: application/json\r\n\
         Connection: close\r\n{cookie}\r\n"
    );
    let resp = raw_exchange(sc.addr, req.as_bytes(), Duration::from_secs(10)).await;
    let status = resp
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {path}: {resp:?}"));
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The URLs the app routed on, once it has served `n` requests.
fn served(app: &mut ExpressApp, n: usize) -> Vec<String> {
    let urls: Vec<String> = app
        .wait_for_requests(n)
        .iter()
        .map(|r| r["url"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(urls.len(), n, "the app served more than expected: {urls:?}");
    urls
}

/// The attack run's four commands and the variants found since (a lone
/// `;x` segment that Tomcat folds, an escaped `;`, backslashes): the first
/// four resolve to `/public/x`, the others to `/private`.
const BYPASSES: [&str; 7] = [
    "/private/../public/x",
    "/private/%2e%2e/public/x",
    "/private/..%2Fpublic/x",
    "/private\\..\\public\\x",
    "/public/..;/private",
    "/public/;/../private",
    "/public/%3B/../private",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_auth_bypass_paths_are_refused_before_they_reach_the_app() {
    let mut app = ExpressApp::start();
    let sc = Sidecar::start(&conf(&app)).await;
    // The app itself serves its secret to the first three (it routes on
    // the raw path): the sidecar is all that stands in front of it.
    for path in BYPASSES {
        let (status, body) = get(&sc, path, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("\"bad_request\""), "{path}: {body}");
        assert!(!body.contains("SECRET"), "{path}: {body}");
    }
    // The reverse direction, and paths that cannot be read at all.
    for path in [
        "/public/../private/x",
        "/public/%2E%2E/private",
        "/a/%zz",
        "/a%00",
    ] {
        assert_eq!(get(&sc, path, None).await.0, 400, "{path}");
    }
    let (status, body) = get(&sc, "/private/x", None).await;
    assert_eq!(status, 401, "{body}");
    // Only the one request that was let through reached the app.
    assert_eq!(
        get(&sc, "/public/ok", None).await,
        (200, "public page".into())
    );
    assert_eq!(served(&mut app, 1), ["/public/ok"]);
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_and_escaped_delimiters_cannot_widen_a_skip_auth_rule() {
    let mut app = ExpressApp::start();
    let sc = Sidecar::start(&conf(&app)).await;
    // `\.png$` matches the whole decoded path of each, but not the path
    // an app that strips `;x` or stops at a decoded `?`/`#` would serve.
    for path in [
        "/private/x;.png",
        "/private/x%3F.png",
        "/private/x%3f.png",
        "/private/x%23.png",
    ] {
        let (status, body) = get(&sc, path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    // Where every reading matches, the rule holds as written.
    assert_eq!(get(&sc, "/public/x;v=1", None).await.0, 200);
    let (status, body) = get(&sc, "/private/logo.png", None).await;
    assert_eq!((status, body.as_str()), (200, "SECRET-PAGE for nobody"));
    assert_eq!(served(&mut app, 2), ["/public/x;v=1", "/private/logo.png"]);
    sc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_mode_forwards_exactly_the_path_it_authorized() {
    let mut app = ExpressApp::start();
    let emp = support::mock_emp(Duration::from_secs(3600)).await;
    let sc = Sidecar::start(
        &conf(&app)
            .emp(&emp.base_url())
            .routes(r#"path_normalization = "rewrite""#),
    )
    .await;
    // Bypass paths become the public page they name, and the app gets
    // that page's canonical path, not the raw one.
    for path in &BYPASSES[..4] {
        assert_eq!(
            get(&sc, path, None).await,
            (200, "public page".into()),
            "{path}"
        );
    }
    assert_eq!(
        get(&sc, "/public/x/..//y?q=/../%2e%2e", None).await.0,
        200,
        "the query is left alone"
    );
    // Paths that resolve to /private need a session.
    for path in &BYPASSES[4..] {
        assert_eq!(get(&sc, path, None).await.0, 401, "{path}");
    }
    assert_eq!(get(&sc, "/public/../private/x", None).await.0, 401);
    assert_eq!(
        served(&mut app, 5),
        [
            "/public/x",
            "/public/x",
            "/public/x",
            "/public/x",
            "/public/y?q=/../%2e%2e"
        ]
    );

    // With a session, the reverse direction reaches the page it resolves to.
    let mut b = Browser::new();
    let resp = b.login(&sc.url("/private/home"), "alice").await;
    assert_eq!(Browser::location(&resp), "/private/home");
    let cookie = b.cookie_header();
    let (status, body) = get(&sc, "/public/%2e%2e/private/x", Some(&cookie)).await;
    assert_eq!((status, body.as_str()), (200, "SECRET-PAGE for alice"));
    assert_eq!(served(&mut app, 6)[5], "/private/x");
    sc.shutdown().await;
}
