//! The shipped nginx site (`deploy/nginx/emp-sidecar.conf`) with a real
//! nginx: `auth_request` to the sidecar, login through nginx, identity
//! headers to the app, sign-out, and 401 for API calls. Only the addresses
//! in the file are changed for the test. `scripts/test` installs Debian's
//! nginx when it is missing.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::browser::Browser;
use support::{Conf, Sidecar, http_client, seen, upstream};

fn start_nginx(dir: &Path, port: u16, sidecar: &str, app: &str) -> support::nginx::Nginx {
    let site = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/nginx/emp-sidecar.conf"
    ))
    .unwrap();
    for needle in ["127.0.0.1:4180", "127.0.0.1:8080", "listen 80;"] {
        assert!(
            site.contains(needle),
            "the shipped site no longer has {needle:?}"
        );
    }
    let site = site
        .replace("127.0.0.1:4180", sidecar)
        .replace("127.0.0.1:8080", app)
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    support::nginx::start(dir, port, &site)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_through_nginx_auth_request_reaches_the_app_with_identity_headers() {
    let version = Command::new(support::nginx::binary())
        .arg("-v")
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&version.stderr).trim());

    let up = upstream::start(None).await;
    let emp = support::mock_emp(std::time::Duration::from_secs(3600)).await;
    let port = support::free_port();
    let site = format!("http://127.0.0.1:{port}");
    let sc = Sidecar::start(
        &Conf::new(&up.url())
            .emp(&emp.base_url())
            .provider(&format!("redirect_url = \"{site}/oauth2/callback\"")),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let nginx = start_nginx(dir.path(), port, &sc.addr.to_string(), &up.addr.to_string());
    // The master listens before it forks its workers: wait (bounded) for them.
    let mut workers = Vec::new();
    for _ in 0..200 {
        workers = support::nginx::children(nginx.child.id());
        if !workers.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(!workers.is_empty(), "no nginx worker found");

    // An API call without a session: 401 through nginx, not a redirect.
    let resp = http_client()
        .get(format!("{site}/app/echo"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // A browser: auth_request says 401, error_page sends it to /oauth2/start,
    // the sidecar to the (mock) EMP; the callback comes back through nginx.
    let mut b = Browser::new();
    let start = format!("{site}/app/echo?x=1&y=2");
    let resp = b.login(&start, "alice").await;
    // The whole original URI survives (X-Auth-Request-Redirect), query included.
    assert_eq!(Browser::location(&resp), "/app/echo?x=1&y=2");

    // Signed in: nginx passes the identity the sidecar vouched for, and
    // overrides what the client claims.
    let resp = http_client()
        .get(format!("{site}/app/echo?x=1&y=2"))
        .header("cookie", b.cookie_header())
        .header("x-auth-request-user", "mallory")
        .header("authorization", "Bearer forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["uri"], "/app/echo?x=1&y=2");
    assert_eq!(seen(&echo, "x-auth-request-user"), ["alice"]);
    assert_eq!(seen(&echo, "x-auth-request-email"), ["alice@example.com"]);
    let token = seen(&echo, "x-forwarded-access-token")[0].clone();
    assert!(emp.access_token_valid(&token));
    assert_eq!(seen(&echo, "authorization"), [format!("Bearer {token}")]);

    // The shipped /app/admin/ location asks /oauth2/auth for its own rule
    // (groups admins and root@example.com): alice is refused there, 403,
    // for a browser too (no login loop); /app/ still serves her.
    let resp = b.get(&format!("{site}/app/admin/echo")).await;
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("location").is_none());
    assert_eq!(b.get(&format!("{site}/app/echo")).await.status(), 200);
    let metrics = support::get_text(&sc.url("/metrics")).await;
    assert_eq!(
        support::metric(
            &metrics,
            "emp_sidecar_authorization_denied_total{rule=\"auth_request\"}"
        ),
        1.0
    );

    // Sign out through nginx: the session ends; the browser is sent to log in again.
    let resp = b.get(&format!("{site}/oauth2/sign_out")).await;
    assert_eq!(Browser::location(&resp), "/");
    let resp = b.get(&format!("{site}/app/echo")).await;
    assert!(Browser::location(&resp).starts_with(&format!("{}/authorize?", emp.base_url())));
    let resp = http_client()
        .get(format!("{site}/app/echo"))
        .header("accept", "application/json")
        .header("cookie", b.cookie_header())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    sc.shutdown().await;

    // Regression: stopping nginx must stop its workers too (a SIGKILL to
    // the master once left them running after every test run).
    drop(nginx);
    let mut gone = false;
    for _ in 0..200 {
        if !workers.iter().any(|w| support::nginx::alive(*w)) {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(gone, "nginx workers {workers:?} outlived their master");
}
