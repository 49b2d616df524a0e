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

/// A Redis, a mock EMP issuing tokens that live `token_lifetime`, and the
/// configuration replicas share: the test upstream, that EMP, that Redis.
async fn world(token_lifetime: Duration) -> (Redis, emp_sidecar::mock_emp::MockEmp, Conf) {
    let redis = Redis::start();
    let up = upstream::start(None).await;
    let emp = support::mock_emp(token_lifetime).await;
    let conf = Conf::new(&up.url())
        .emp(&emp.base_url())
        .redis_store(&redis.url());
    (redis, emp, conf)
}

/// The same URL on another replica.
fn on(p: &Process, url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    let rest = &url[u.origin().ascii_serialization().len()..];
    p.url(rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_serves_a_session_and_a_sign_out_reaches_all_of_them() {
    let (_redis, _emp, conf) = world(Duration::from_secs(3600)).await;
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
    let (_redis, _emp, conf) = world(Duration::from_secs(3600)).await;
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

/// The refresh requests the mock EMP received: (refresh token, answered).
fn refresh_requests(emp: &emp_sidecar::mock_emp::MockEmp) -> Vec<String> {
    emp.requests()
        .into_iter()
        .filter(|r| r.path == "/token")
        .filter_map(|r| {
            let q: std::collections::HashMap<_, _> = r.query.into_iter().collect();
            (q.get("grant_type").map(String::as_str) == Some("refresh_token"))
                .then(|| q["refresh_token"].clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refresh_window_sees_one_refresh_across_replicas_with_rotating_tokens() {
    // 2 s tokens: a refresh is due 1 s after each is issued.
    let (redis, emp, conf) = world(Duration::from_secs(2)).await;
    emp.set_rotate_refresh_tokens(true);
    let (r, _dirs) = replicas(&conf, 3);
    let mut b = Browser::new();
    let resp = b.login(&r[0].url("/app/echo"), "alice").await;
    assert_eq!(Browser::location(&resp), "/app/echo");
    let cookie = b.cookie_header();

    // Rounds of 300 concurrent requests, 100 per replica, until three
    // refresh windows have passed (bounded: 20 s).
    let started = Instant::now();
    let mut tokens_seen = std::collections::HashSet::new();
    let mut requests = 0;
    while emp.refreshes() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "fewer than 3 refreshes in 20 s"
        );
        let mut tasks = Vec::new();
        for i in 0..300 {
            let url = r[i % 3].url("/app/echo");
            let cookie = cookie.clone();
            tasks.push(tokio::spawn(async move {
                let resp = support::http_client()
                    .get(url)
                    .header("cookie", cookie)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                if status != 200 {
                    return (status, Vec::new());
                }
                let echo: serde_json::Value = resp.json().await.unwrap();
                (status, seen(&echo, "authorization"))
            }));
        }
        for t in tasks {
            let (status, auth) = t.await.unwrap();
            assert_eq!(status, 200, "a request failed: the session was lost");
            let token = auth[0].strip_prefix("Bearer ").unwrap().to_string();
            tokens_seen.insert(token);
            requests += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every token the upstream saw was one the IdP issued, and no refresh
    // token was ever presented twice (a second use would have ended the
    // session: the mock rotates them).
    let presented = refresh_requests(&emp);
    let distinct: std::collections::HashSet<_> = presented.iter().collect();
    assert_eq!(
        distinct.len(),
        presented.len(),
        "a refresh token was used twice"
    );
    assert_eq!(emp.refreshes(), presented.len(), "a refresh was refused");
    // After a login and these refreshes, Redis holds no access token,
    // refresh token or cookie value, in any key or value.
    let mut secrets: Vec<String> = emp.issued_secrets();
    secrets.extend(tokens_seen.iter().cloned());
    secrets.extend(presented.iter().cloned());
    secrets.extend(cookie.split("; ").filter_map(|c| {
        c.split_once('=')
            .map(|(_, v)| v.split('.').next().unwrap().to_string())
    }));
    let dump = redis.dump();
    assert!(dump.len() >= 2, "{dump:?}");
    for (k, v) in &dump {
        let text = format!("{k} {}", String::from_utf8_lossy(v));
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a secret is readable in Redis: {k}"
            );
        }
    }
    // The upstream saw the login's token and refreshed ones, nothing else
    // (the last refresh may land after the last round).
    assert!(
        (2..=presented.len() + 1).contains(&tokens_seen.len()),
        "{} tokens upstream for {} refreshes over {requests} requests",
        tokens_seen.len(),
        presented.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_refreshing_is_taken_over_and_the_session_survives() {
    let (_redis, emp, conf) = world(Duration::from_secs(3)).await;
    emp.set_rotate_refresh_tokens(true);
    let (mut r, _dirs) = replicas(&conf, 2);
    let mut b = Browser::new();
    b.login(&r[0].url("/app/echo"), "alice").await;
    let first = seen(&b.echo(&r[1].url("/app/echo")).await, "authorization");

    // Replica A starts the refresh (due after 1.5 s) and the IdP takes 2 s
    // to answer; A is killed in the middle of it.
    emp.set_refresh_delay(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    b.echo(&r[0].url("/app/echo")).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while refresh_requests(&emp).is_empty() {
        assert!(Instant::now() < deadline, "A never started the refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r[0].signal("KILL");
    r[0].wait_exit(Duration::from_secs(10));

    // B keeps being asked; once A's lease has run out (5 s) it refreshes
    // with the same, unused refresh token, and the session goes on.
    let cookie = b.cookie_header();
    let deadline = Instant::now() + Duration::from_secs(20);
    let renewed = loop {
        let resp = support::http_client()
            .get(r[1].url("/app/echo"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_ne!(resp.status(), 401, "the session was lost");
        if resp.status() == 200 {
            let auth = seen(&resp.json().await.unwrap(), "authorization");
            if auth != first {
                break auth;
            }
        }
        assert!(Instant::now() < deadline, "B never took the refresh over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let token = renewed[0].strip_prefix("Bearer ").unwrap();
    assert!(emp.access_token_valid(token));
    let presented = refresh_requests(&emp);
    assert_eq!(presented.len(), 2, "A's refresh, then B's: {presented:?}");
    assert_eq!(
        presented[0], presented[1],
        "B used the token A never got to rotate"
    );
    let metrics = support::get_text(&r[1].url("/metrics")).await;
    assert!(
        metrics.contains("emp_sidecar_refresh_locks_total{result=\"taken_over\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_nginx_loses_no_request_and_no_session() {
    let (_redis, _emp, conf) = world(Duration::from_secs(3600)).await;
    let front = support::free_port();
    // The replicas' public callback is nginx's.
    let conf = conf.provider(&format!(
        "redirect_url = \"http://127.0.0.1:{front}/oauth2/callback\""
    ));
    let mut r = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        r.push(Process::spawn(&write_binary_config(dir.path(), &conf), &[]));
        dirs.push(dir);
    }
    // Round robin over the three, as a Service would; a replica that
    // refuses the connection (stopping, not up yet) is skipped.
    let servers: String = r
        .iter()
        .map(|p| format!("  server {} max_fails=0;\n", p.addr))
        .collect();
    let site = format!(
        "upstream sidecars {{\n{servers}  keepalive 16;\n}}\n\
         server {{\n  listen 127.0.0.1:{front};\n  location / {{\n\
             proxy_pass http://sidecars;\n    proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n    proxy_set_header Host $http_host;\n\
             proxy_next_upstream error timeout http_503;\n  }}\n}}\n"
    );
    let nginx_dir = tempfile::tempdir().unwrap();
    let _nginx = support::nginx::start(nginx_dir.path(), front, &site);
    let front_url = |path: &str| format!("http://127.0.0.1:{front}{path}");

    let mut b = Browser::new();
    let resp = b.login(&front_url("/app/echo"), "alice").await;
    assert_eq!(Browser::location(&resp), "/app/echo");
    let cookie = b.cookie_header();

    // Four clients keep asking while each replica in turn is stopped
    // (SIGTERM, drained) and started again on its port.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, cookie, url) = (stop.clone(), cookie.clone(), front_url("/app/echo"));
        clients.push(tokio::spawn(async move {
            let client = support::http_client();
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let status = match client.get(&url).header("cookie", &cookie).send().await {
                    Ok(resp) => resp.status().as_u16(),
                    Err(_) => 0,
                };
                *statuses.entry(status).or_default() += 1;
            }
            statuses
        }));
    }
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        r[i].signal("TERM");
        assert_eq!(r[i].wait_exit(Duration::from_secs(20)), Some(0));
        tokio::time::sleep(Duration::from_millis(300)).await;
        r[i] = Process::spawn(&dirs[i].path().join("config.toml"), &[]);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = std::collections::BTreeMap::<u16, usize>::new();
    for c in clients {
        for (status, n) in c.await.unwrap() {
            *all.entry(status).or_default() += n;
        }
    }
    let answered: usize = all.values().sum();
    eprintln!("rolling restart of 3 replicas: statuses {all:?}");
    assert!(answered > 100, "{all:?}");
    assert_eq!(all.keys().copied().collect::<Vec<_>>(), [200], "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_keeps_cached_sessions_answers_503_elsewhere_and_recovers() {
    let (mut redis, _emp, conf) = world(Duration::from_secs(3600)).await;
    let a = support::Sidecar::start(&conf).await;
    let b = support::Sidecar::start(&conf).await;
    let client = support::http_client();
    let get = |url: String, cookie: Option<String>| {
        let client = client.clone();
        async move {
            let mut req = client.get(url);
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            let started = Instant::now();
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap(), started.elapsed())
        }
    };
    let mut browser = Browser::new();
    browser.login(&a.url("/app/echo"), "alice").await;
    let cookie = Some(browser.cookie_header());
    assert_eq!(get(a.url("/app/echo"), cookie.clone()).await.0, 200);

    redis.stop();
    // Not ready, on both, within the command timeout (1 s).
    for sc in [&a, &b] {
        let (status, body, took) = get(sc.url("/ready"), None).await;
        assert_eq!((status, body.as_str()), (503, "session store unreachable"));
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
    // A has the session cached: it keeps serving it.
    for _ in 0..20 {
        assert_eq!(get(a.url("/app/echo"), cookie.clone()).await.0, 200);
    }
    // B would need Redis: a clear 503 in bounded time, never a hang or 500.
    let (status, body, took) = get(b.url("/app/echo"), cookie.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("session_store_unavailable"), "{body}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    eprintln!("Redis down: 503 from the replica without a copy after {took:?}");
    // A login can start (cookies only) but not finish: a 503 page.
    let mut other = Browser::new();
    let authorize = other.open_login_page(&a.url("/x")).await;
    let callback = other.submit_login(&authorize, "bob").await;
    let resp = other.get(&callback).await;
    assert_eq!(resp.status(), 503);

    // Redis comes back, empty: both recover without a restart, and the
    // session it no longer has sends its user to log in again.
    redis.spawn(&[]);
    for sc in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(sc.url("/ready"), None).await.0 != 200 {
            assert!(Instant::now() < deadline, "not ready again");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for sc in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = get(sc.url("/app/echo"), cookie.clone()).await.0;
            if status == 401 {
                break;
            }
            assert_eq!(status, 200, "neither served nor sent to log in");
            assert!(
                Instant::now() < deadline,
                "the lost session is still served"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let resp = browser.login(&b.url("/app/echo"), "alice").await;
    assert_eq!(Browser::location(&resp), "/app/echo");
    assert_eq!(
        get(a.url("/app/echo"), Some(browser.cookie_header()))
            .await
            .0,
        200
    );
}
