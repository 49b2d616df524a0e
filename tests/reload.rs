//! `SIGHUP` reloads the configuration, as nginx's does: cookie secrets,
//! the client secret, `log.level` and `routes.skip_auth` change while the
//! process serves; a file with a problem changes nothing and stops nothing;
//! changed keys that need a restart are named in the log.

mod support;

use std::path::Path;
use std::time::Duration;

use support::browser::Browser;
use support::upbond::{CLIENT_ID, Upbond};
use support::{COOKIE_SECRET, Conf, Process, http_client, upstream, write_binary_config};

/// Another 32-byte secret, base64.
const NEW_SECRET: &str = "bmV3LWNvb2tpZS1zZWNyZXQtZm9yLXJvdGF0aW9uLTMyYg==";

/// Writes `text` as the configuration, sends SIGHUP and waits (bounded) for
/// a new log line containing `marker`.
async fn reload(sc: &Process, path: &Path, text: &str, marker: &str) {
    std::fs::write(path, text).unwrap();
    let seen = || sc.log_lines().iter().filter(|l| l.contains(marker)).count();
    let before = seen();
    send_hup(sc);
    for _ in 0..200 {
        if seen() > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no {marker:?} within 5 s: {:?}", sc.log_lines());
}

/// SIGHUP by `emp-sidecar reload --pid` (as in a container) or by kill.
fn send_hup(sc: &Process) {
    static TURN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if TURN
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .is_multiple_of(2)
    {
        let out = std::process::Command::new(support::binary())
            .args(["reload", "--pid", &sc.pid().to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("SIGHUP sent"));
    } else {
        sc.signal("HUP");
    }
}

async fn status(url: &str) -> u16 {
    http_client()
        .get(url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits (bounded) for an access line of `path`.
async fn access_line_for(sc: &Process, path: &str) -> bool {
    let needle = format!("\"path\":\"{path}\"");
    for _ in 0..200 {
        if sc.log_lines().iter().any(|l| l.contains(&needle)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_cookie_secrets_and_applies_rules_and_level_live() {
    let up = upstream::start(None).await;
    let emp = support::mock_emp(Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = Conf::new(&up.url())
        .emp(&emp.base_url())
        .routes("skip_auth = []")
        .log("format = \"json\"")
        .log("level = \"info\"");
    let path = write_binary_config(dir.path(), &conf);
    let original = std::fs::read_to_string(&path).unwrap();
    let mut sc = Process::spawn(&path, &[]);

    let mut alice = Browser::new();
    assert_eq!(
        alice.login(&sc.url("/app/echo"), "alice").await.status(),
        302
    );
    assert_eq!(alice.api(&sc.url("/app/echo")).await.status(), 200);
    assert_eq!(status(&sc.url("/public/before")).await, 401);
    assert!(access_line_for(&sc, "/public/before").await);

    // 1. Rotation (new secret first, the old one second), a public route,
    // a quieter level, and a key that only a restart applies.
    let old_line = format!("cookie_secret = {COOKIE_SECRET:?}");
    let rotated = original
        .replace(
            &old_line,
            &format!("cookie_secret = [{NEW_SECRET:?}, {COOKIE_SECRET:?}]"),
        )
        .replace("skip_auth = []", r#"skip_auth = ["^/public/"]"#)
        .replace("level = \"info\"", "level = \"warn\"")
        .replace("[server]\n", "[server]\nmax_header_bytes = 16384\n");
    assert_ne!(rotated, original);
    reload(&sc, &path, &rotated, "configuration reloaded").await;
    let restart: Vec<String> = sc
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("need a restart"))
        .collect();
    assert_eq!(restart.len(), 1, "{restart:?}");
    assert!(
        restart[0].contains("\"keys\":\"server.max_header_bytes\""),
        "only the restart-only key is named: {}",
        restart[0]
    );
    // The new rule holds, the session signed by the old secret lives on, and
    // a new login is signed by the new secret.
    assert_eq!(status(&sc.url("/public/quiet")).await, 200);
    assert_eq!(alice.api(&sc.url("/app/echo")).await.status(), 200);
    let mut bob = Browser::new();
    assert_eq!(bob.login(&sc.url("/app/echo"), "bob").await.status(), 302);
    assert_eq!(bob.api(&sc.url("/app/echo")).await.status(), 200);

    // 2. The old secret dropped: alice's cookie is no session any more,
    // bob's (signed by the new one) still is; the level is back to info;
    // an authorization rule now guards /app/admin/.
    let only_new = rotated
        .replace(
            &format!("cookie_secret = [{NEW_SECRET:?}, {COOKIE_SECRET:?}]"),
            &format!("cookie_secret = {NEW_SECRET:?}"),
        )
        .replace("level = \"warn\"", "level = \"info\"")
        + "\n[[authorization.rules]]\npath = \"^/app/admin/\"\nallowed_emails = [\"root@example.com\"]\n";
    assert_eq!(bob.api(&sc.url("/app/admin/echo")).await.status(), 200);
    // The reload's own info line is not written at `warn`: its warning is.
    reload(&sc, &path, &only_new, "cookie secrets dropped").await;
    assert!(
        sc.log_lines()
            .iter()
            .any(|l| l.contains("cookie secrets dropped") && l.contains("\"dropped\":1")),
        "the dropped secret is counted"
    );
    assert_eq!(alice.api(&sc.url("/app/echo")).await.status(), 401);
    assert_eq!(bob.api(&sc.url("/app/echo")).await.status(), 200);
    assert_eq!(bob.api(&sc.url("/app/admin/echo")).await.status(), 403);
    let last_restart = sc
        .log_lines()
        .into_iter()
        .rfind(|l| l.contains("need a restart"))
        .unwrap();
    assert!(
        !last_restart.contains("authorization"),
        "authorization applies live: {last_restart}"
    );
    // At `warn`, no access line was written for /public/quiet; at `info`
    // again, they are.
    assert_eq!(status(&sc.url("/public/loud")).await, 200);
    assert!(access_line_for(&sc, "/public/loud").await);
    assert!(
        !sc.log_lines().iter().any(|l| l.contains("/public/quiet")),
        "an access line was written at level warn"
    );

    // 3. A file with a problem: logged with its key, nothing applied,
    // nothing stopped.
    let broken = only_new
        .replace(r#"skip_auth = ["^/public/"]"#, r#"skip_auth = ["("]"#)
        .replace(
            &format!("cookie_secret = {NEW_SECRET:?}"),
            &format!("cookie_secret = {COOKIE_SECRET:?}"),
        );
    reload(&sc, &path, &broken, "configuration reload failed").await;
    assert!(
        sc.log_lines()
            .iter()
            .any(|l| l.contains("configuration problem") && l.contains("routes.skip_auth")),
        "the problem names its key"
    );
    assert_eq!(status(&sc.url("/public/still")).await, 200);
    assert_eq!(bob.api(&sc.url("/app/echo")).await.status(), 200);
    assert_eq!(bob.api(&sc.url("/app/admin/echo")).await.status(), 403);
    assert_eq!(alice.api(&sc.url("/app/echo")).await.status(), 401);
    let metrics = support::get_text(&sc.url("/metrics")).await;
    assert_eq!(
        support::metric(
            &metrics,
            "emp_sidecar_config_reloads_total{result=\"applied\"}"
        ),
        2.0
    );
    assert_eq!(
        support::metric(
            &metrics,
            "emp_sidecar_config_reloads_total{result=\"failed\"}"
        ),
        1.0
    );

    // Three reloads later the process still drains and exits cleanly.
    sc.signal("TERM");
    let exit = tokio::task::spawn_blocking(move || sc.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(exit, Some(0));
}

/// The client secret is read again from its file: a login refused with a
/// stale secret succeeds after the file is fixed and SIGHUP sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_rotated_client_secret_file() {
    let up = upstream::start(None).await;
    let mock = Upbond::start(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("client_secret");
    std::fs::write(&secret_file, "stale-secret\n").unwrap();
    let conf = Conf::new(&up.url())
        .provider("kind = \"upbond\"")
        .provider(&format!("base_url = {:?}", mock.issuer()))
        .provider(&format!("client_id = {CLIENT_ID:?}"))
        .provider(&format!("client_secret_file = {secret_file:?}"))
        .log("format = \"json\"");
    let path = write_binary_config(dir.path(), &conf);
    let text = std::fs::read_to_string(&path).unwrap();
    let sc = Process::spawn(&path, &[]);

    let login = |sc: &Process| {
        let url = sc.url("/app/echo");
        async move {
            let mut b = Browser::new();
            let authorize = Browser::location(&b.get(&url).await);
            let callback = Browser::location(&b.get(&authorize).await);
            b.get(&callback).await.status().as_u16()
        }
    };
    assert_eq!(login(&sc).await, 502, "the IdP refuses the stale secret");

    std::fs::write(
        &secret_file,
        format!("{}\n", support::upbond::CLIENT_SECRET),
    )
    .unwrap();
    reload(&sc, &path, &text, "configuration reloaded").await;
    assert!(
        !sc.log_lines().iter().any(|l| l.contains("need a restart")),
        "a secret file's content needs no restart"
    );
    assert_eq!(login(&sc).await, 302, "the new secret is used");
}
