//! Several sidecar processes (the real binary) sharing one real
//! redis-server, as replicas behind a Service: any replica serves any
//! session, a login may finish on another replica than it started on, a
//! sign-out on one ends the session on all. Every wait is bounded.

mod support;

use std::time::{Duration, Instant};

use support::browser::Browser;
use support::redis::Redis;
use support::{Conf, Process, seen, upstream, write_binary_config};

/// `n` replicas of one configuration, each on its own port. They share
/// one public callback URL, as replicas behind one Service do (the
/// first's address stands for it; tests move callbacks between replicas).
fn replicas(conf: &Conf, n: usize) -> (Vec<Process>, Vec<tempfile::TempDir>) {
    let mut procs = Vec::new();
    let mut dirs = Vec::new();
    let mut conf = conf.clone();
    for i in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let path = write_binary_config(dir.path(), &conf);
        let p = Process::spawn(&path, &[]);
        if i == 0 {
            conf = conf.provider(&format!(
                "redirect_url = \"http://{}/oauth2/callback\"",
                p.addr
            ));
        }
        procs.push(p);
        dirs.push(dir);
    }
    (procs, dirs)
}

/// The same URL on another replica.
fn on(p: &Process, url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    let rest = &url[u.origin().ascii_serialization().len()..];
    p.url(rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_serves_a_session_and_a_sign_out_reaches_all_of_them() {
    let redis = Redis::start();
    let up = upstream::start(None).await;
    let emp = support::mock_emp(Duration::from_secs(3600)).await;
    let conf = Conf::new(&up.url())
        .emp(&emp.base_url())
        .redis_store(&redis.url());
    let (r, _dirs) = replicas(&conf, 3);

    // The login starts on A and its callback lands on B.
    let mut b = Browser::new();
    let authorize = b.open_login_page(&r[0].url("/app/echo")).await;
    let callback = b.submit_login(&authorize, "alice").await;
    let resp = b.get(&on(&r[1], &callback)).await;
    assert_eq!(Browser::location(&resp), "/app/echo");

    // Every replica serves the session with the same token upstream.
    let mut tokens = Vec::new();
    for p in &r {
        let echo = b.echo(&p.url("/app/echo")).await;
        assert_eq!(seen(&echo, "x-auth-request-user"), ["alice"]);
        tokens.push(seen(&echo, "authorization"));
    }
    assert!(tokens.windows(2).all(|w| w[0] == w[1]), "{tokens:?}");

    // Sign-out on B: A and C refuse the cookie within a second.
    let cookie = b.cookie_header();
    let out = b.get(&r[1].url("/oauth2/sign_out")).await;
    assert_eq!(out.status(), 302);
    let signed_out = Instant::now();
    for p in [&r[0], &r[2]] {
        loop {
            let status = support::http_client()
                .get(p.url("/app/echo"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap()
                .status();
            if status == 401 {
                break;
            }
            assert!(
                signed_out.elapsed() < Duration::from_secs(1),
                "still signed in on {} after a second",
                p.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_log_in_at_once_across_replicas_and_a_restart_logs_nobody_out() {
    let redis = Redis::start();
    let up = upstream::start(None).await;
    let emp = support::mock_emp(Duration::from_secs(3600)).await;
    let conf = Conf::new(&up.url())
        .emp(&emp.base_url())
        .redis_store(&redis.url());
    let (mut r, dirs) = replicas(&conf, 2);

    // Two tabs start on A and B; both come back, crossed over.
    let mut b = Browser::new();
    let first = b.open_login_page(&r[0].url("/one")).await;
    let second = b.open_login_page(&r[1].url("/two")).await;
    let cb2 = b.submit_login(&second, "alice").await;
    assert_eq!(Browser::location(&b.get(&on(&r[0], &cb2)).await), "/two");
    let cb1 = b.submit_login(&first, "alice").await;
    assert_eq!(Browser::location(&b.get(&on(&r[1], &cb1)).await), "/one");
    // A replayed callback is refused on the other replica too.
    let replay = support::http_client()
        .get(on(&r[0], &cb1))
        .header("cookie", b.cookie_header())
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 403);

    // Both replicas restart (SIGTERM, then start again on the same
    // port): the session lives on in Redis.
    for i in 0..2 {
        r[i].signal("TERM");
        assert_eq!(r[i].wait_exit(Duration::from_secs(20)), Some(0));
        let path = dirs[i].path().join("config.toml");
        r[i] = Process::spawn(&path, &[]);
    }
    for p in &r {
        let echo = b.echo(&p.url("/app/echo")).await;
        assert_eq!(seen(&echo, "x-auth-request-user"), ["alice"]);
    }
}
