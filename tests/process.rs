//! The `emp-sidecar` binary as users run it: streaming with bounded memory,
//! SIGTERM during a slow response, configuration errors and exit codes, and
//! the access log.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use support::{Conf, Process, check_config, http_client, upstream};

const MB: u64 = 1024 * 1024;

fn write_config(dir: &std::path::Path, conf: &Conf) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, conf.toml().replace("{SIDECAR}", "127.0.0.1:4180")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_stream_both_ways_with_bounded_memory() {
    let up = upstream::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let sc = Process::spawn(&write_config(dir.path(), &Conf::new(&up.url())), &[]);
    let client = http_client();
    let baseline = sc.peak_rss_kib();

    // Upload: 100 MiB generated on the fly, never held by the test either.
    let total = 100 * MB;
    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let chunks = total / chunk.len() as u64;
    let stream =
        futures_util::stream::iter(0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
    let resp = client
        .post(sc.url("/public/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), total.to_string());

    // Download: 100 MiB counted chunk by chunk.
    let resp = client
        .get(sc.url(&format!("/public/download?bytes={total}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut received = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        received += chunk.unwrap().len() as u64;
    }
    assert_eq!(received, total);

    let peak = sc.peak_rss_kib();
    eprintln!("sidecar peak RSS: baseline {baseline} KiB, after 2 x 100 MiB {peak} KiB");
    // A proxy that buffered either body would need over 100 MiB.
    assert!(
        peak < 48 * 1024,
        "peak RSS {peak} KiB: bodies are being buffered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_slow_response_completes_it_and_exits_zero() {
    let up = upstream::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = Conf::new(&up.url()).upstream("response_header_timeout = \"3s\"");
    let mut sc = Process::spawn(&write_config(dir.path(), &conf), &[]);
    let get = |path: &str| {
        let url = sc.url(path);
        tokio::spawn(async move {
            let resp = http_client().get(url).send().await.unwrap();
            (resp.status(), resp.text().await.unwrap())
        })
    };
    let slow = get("/public/slow?ms=1500");
    // An upstream that would answer after the drain limit (30 s): the
    // response-head timeout still holds while draining.
    let hung = get("/public/slow?ms=60000");
    // Bounded wait until both requests are in flight at the sidecar.
    let in_flight = support::wait_in_flight(&sc.url("/metrics"), 3).await;
    assert!(in_flight, "slow requests never reached the sidecar");

    sc.signal("TERM");
    // New connections are refused once the listener is closed (bounded poll).
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(sc.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "listener still accepting after SIGTERM");

    let (status, body) = tokio::time::timeout(Duration::from_secs(20), slow)
        .await
        .expect("slow response finished")
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "slow done");
    let (status, _) = tokio::time::timeout(Duration::from_secs(20), hung)
        .await
        .expect("the hung upstream's request was cut at the response-head timeout")
        .unwrap();
    assert_eq!(status, 504);
    let code = tokio::task::spawn_blocking(move || sc.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[test]
fn each_invalid_key_exits_2_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = Conf::new("http://127.0.0.1:8080");
    let cases: &[(&str, &str, &str)] = &[
        ("server", "listen = \"localhost\"", "server.listen"),
        ("server", "max_header_bytes = 10", "server.max_header_bytes"),
        (
            "server",
            "tls_cert = \"/nonexistent.pem\"",
            "server.tls_key",
        ),
        (
            "server",
            "shutdown_timeout = \"later\"",
            "server.shutdown_timeout",
        ),
        ("upstream", "url = \"not a url\"", "upstream.url"),
        ("upstream", "host_header = \"both\"", "upstream.host_header"),
        (
            "upstream",
            "ca_file = \"/nonexistent-ca.pem\"",
            "upstream.ca_file",
        ),
        ("log", "format = \"xml\"", "log.format"),
        ("log", "level = \"loud\"", "log.level"),
        ("server", "colour = \"blue\"", "server.colour"),
        (
            "server",
            "worker_scheduling = \"fifo\"",
            "server.worker_scheduling",
        ),
        (
            "routes",
            "path_normalization = \"loose\"",
            "routes.path_normalization",
        ),
    ];
    for (section, line, key) in cases {
        let conf = match *section {
            "server" => good.clone().server(line),
            "upstream" => good.clone().upstream(line),
            "routes" => good.clone().routes(line),
            _ => good.clone().log(line),
        };
        let path = write_config(dir.path(), &conf);
        let (code, out) = check_config(&path, &[]);
        assert_eq!(code, 2, "{line}: {out}");
        assert!(
            out.contains(key),
            "{line}: output does not name {key}: {out}"
        );

        // The proxy itself refuses to start on the same problem.
        let run = std::process::Command::new(support::binary())
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(2), "{line}");
    }
    let (code, out) = check_config(&write_config(dir.path(), &good), &[]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = check_config(&dir.path().join("missing.toml"), &[]);
    assert_eq!(code, 2);
    assert!(out.contains("not found"), "{out}");
}

#[test]
fn several_problems_are_all_listed() {
    let dir = tempfile::tempdir().unwrap();
    let conf = Conf::new("ftp://nope")
        .server("listen = \"x\"")
        .log("format = \"xml\"");
    let (code, out) = check_config(&write_config(dir.path(), &conf), &[]);
    assert_eq!(code, 2);
    for key in ["server.listen", "upstream.url", "log.format"] {
        assert!(out.contains(key), "{key} missing: {out}");
    }
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &Conf::new("http://127.0.0.1:8080"));
    // A bad value from the environment wins over the good file value, and the
    // message names the variable.
    let (code, out) = check_config(&path, &[("EMP_SIDECAR_UPSTREAM__URL", "gopher://x")]);
    assert_eq!(code, 2);
    assert!(out.contains("upstream.url"), "{out}");
    assert!(out.contains("EMP_SIDECAR_UPSTREAM__URL"), "{out}");
    // A good value from the environment fixes a bad file value.
    let bad = write_config(dir.path(), &Conf::new("gopher://x"));
    let (code, out) = check_config(&bad, &[("EMP_SIDECAR_UPSTREAM__URL", "http://127.0.0.1:1")]);
    assert_eq!(code, 0, "{out}");
    // EMP_SIDECAR_CONFIG names the file when --config is not given.
    let out = std::process::Command::new(support::binary())
        .arg("check-config")
        .env("EMP_SIDECAR_CONFIG", &bad)
        .env("EMP_SIDECAR_UPSTREAM__URL", "http://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_access_log_line_per_request_without_the_query() {
    let up = upstream::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let sc = Process::spawn(&write_config(dir.path(), &Conf::new(&up.url())), &[]);
    let client = http_client();
    let resp = client
        .get(sc.url("/public/echo?code=SECRET-CODE-123&state=s"))
        .header("x-request-id", "log-test-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    // The line is written when the response body is done; wait (bounded).
    let mut line = None;
    for _ in 0..300 {
        line = sc
            .log_lines()
            .into_iter()
            .find(|l| l.contains("log-test-1"));
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let line = line.expect("access log line written");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/public/echo");
    assert_eq!(v["status"], 200);
    assert_eq!(v["route"], "public");
    assert!(v["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(v["upstream_ms"].as_f64().unwrap() > 0.0);
    assert!(
        !sc.log_lines().iter().any(|l| l.contains("SECRET-CODE-123")),
        "the query string reached the log"
    );
}

/// Busy workers batch their access lines. Every line still arrives whole
/// (two workers' writes never interleave on the stdout pipe), exactly once,
/// and with no traffic after the burst to push the last ones out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_of_a_concurrent_burst_arrive_whole_once_and_without_later_traffic() {
    const N: usize = 2000;
    let up = upstream::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = Conf::new(&up.url()).server("workers = 2");
    let sc = Process::spawn(&write_config(dir.path(), &conf), &[]);
    let client = http_client();
    let url = sc.url("/public/echo");
    let statuses: Vec<_> = futures_util::stream::iter(0..N)
        .map(|i| {
            let req = client
                .get(&url)
                .header("x-request-id", format!("burst-{i}"));
            async move {
                let resp = req.send().await?;
                let status = resp.status();
                resp.bytes().await?;
                Ok::<_, reqwest::Error>(status)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| matches!(s, Ok(s) if *s == 200)));

    // No request from here on; wait (bounded) for the lines.
    let mut ids = std::collections::HashMap::<String, usize>::new();
    for _ in 0..500 {
        ids.clear();
        for line in sc.log_lines().iter().filter(|l| l.contains("burst-")) {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a torn access line ({e}): {line}"));
            *ids.entry(v["request_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        if ids.len() == N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ids.len(), N, "an access line per request");
    assert!(ids.values().all(|n| *n == 1), "no line written twice");
}

/// The scheduling policy of each thread of `pid` named `emp-worker-*`
/// (`/proc/PID/task/TID/stat`, field 41: 0 SCHED_OTHER, 3 SCHED_BATCH).
fn worker_policies(pid: u32) -> Vec<u32> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap();
        if comm.starts_with("emp-worker-") {
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            let after_comm = stat.rsplit_once(')').unwrap().1;
            // Field 3 (state) is the first after the name; 41 is the policy.
            let policy = after_comm.split_whitespace().nth(41 - 3).unwrap();
            policies.push(policy.parse().unwrap());
        }
    }
    policies
}

/// The workers' policies once they are `expected`, or after 5 s: the
/// process logs that it listens while its worker threads may still be
/// starting and setting their policy.
async fn settled_worker_policies(pid: u32, expected: &[u32]) -> Vec<u32> {
    let mut policies = worker_policies(pid);
    for _ in 0..500 {
        if policies == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        policies = worker_policies(pid);
    }
    policies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_under_sched_batch_unless_told_otherwise() {
    let up = upstream::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = Conf::new(&up.url()).server("workers = 3");
    let sc = Process::spawn(&write_config(dir.path(), &conf), &[]);
    assert_eq!(
        settled_worker_policies(sc.pid(), &[3, 3, 3]).await,
        [3, 3, 3],
        "SCHED_BATCH"
    );
    // Serving is unchanged.
    let resp = http_client()
        .get(sc.url("/public/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let dir = tempfile::tempdir().unwrap();
    let conf = Conf::new(&up.url()).server("workers = 2\nworker_scheduling = \"normal\"");
    let sc = Process::spawn(&write_config(dir.path(), &conf), &[]);
    assert_eq!(
        settled_worker_policies(sc.pid(), &[0, 0]).await,
        [0, 0],
        "SCHED_OTHER"
    );
}

#[test]
fn the_example_config_toml_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let (code, out) = check_config(&path, &[]);
    assert_eq!(code, 0, "{out}");
}

/// Runs a command of the binary that prints a line containing `marker`,
/// waits (bounded) for it, and returns the child and that line.
fn spawn_until(args: &[&str], marker: &str) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(support::binary())
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = marker.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains(&wanted) {
                let _ = tx.send(line);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(line) => (child, line),
        Err(_) => {
            let _ = child.kill();
            panic!("{args:?} never printed {marker:?}");
        }
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_its_url_and_logs_a_user_in_to_the_app() {
    let addr = free_addr();
    let (mut child, line) = spawn_until(&["demo", "--listen", &addr], "in your browser");
    assert_eq!(line, format!("Open http://{addr}/ in your browser"));
    let mut b = support::browser::Browser::new();
    let resp = b.login(&format!("http://{addr}/"), "demo-user").await;
    assert_eq!(support::browser::Browser::location(&resp), "/");
    let page = b.get(&format!("http://{addr}/")).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"<span id="user">demo-user</span>"#),
        "{html}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_emp_command_serves_the_login_form() {
    let addr = free_addr();
    let (mut child, line) = spawn_until(
        &["mock-emp", "--listen", &addr, "--client-id", "app-1"],
        "listening",
    );
    assert!(line.contains(&addr), "{line}");
    let url = format!(
        "http://{addr}/authorize?response_type=code&client_id=app-1&redirect_uri=http%3A%2F%2Fapp%2Fcb&state=s1"
    );
    let resp = http_client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains(r#"<form method="post" action="/login">"#));
    assert!(html.contains(r#"name="user_id""#));
    // A wrong app key is refused as EMP documents it.
    let resp = http_client()
        .get(url.replace("app-1", "app-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("app_id is incorrect"));
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_login_starts_holds_no_server_memory_and_evicts_no_login() {
    let up = upstream::start(None).await;
    let emp = support::mock_emp(Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = Conf::new(&up.url()).emp(&emp.base_url());
    let sc = Process::spawn(&support::write_binary_config(dir.path(), &conf), &[]);
    // A real user starts logging in before the flood.
    let mut user = support::browser::Browser::new();
    let authorize = user.open_login_page(&sc.url("/before/flood")).await;

    const FLOOD: usize = 200_000;
    const CLIENTS: usize = 16;
    const BATCH: usize = 100;
    // Each client pipelines its requests in batches on one keep-alive
    // connection: the flood costs the test little, the sidecar all of it.
    let flood = |n: usize| {
        let addr = sc.addr;
        async move {
            let mut tasks = Vec::new();
            for _ in 0..CLIENTS {
                tasks.push(tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                    let req = "GET /oauth2/start?rd=/somewhere HTTP/1.1\r\nHost: app.test\r\n\
                               Accept: text/html\r\n\r\n";
                    let batch = req.repeat(BATCH);
                    let mut buf = vec![0u8; 1 << 16];
                    for _ in 0..n / CLIENTS / BATCH {
                        s.write_all(batch.as_bytes()).await.unwrap();
                        let (mut answered, mut text) = (0, String::new());
                        while answered < BATCH {
                            let got =
                                tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
                                    .await
                                    .expect("the sidecar answers the flood")
                                    .unwrap();
                            assert!(got > 0, "connection closed mid-flood");
                            text.push_str(&String::from_utf8_lossy(&buf[..got]));
                            // Every answer is a bodiless 302: count the
                            // complete heads, keep a partial one for later.
                            let Some(end) = text.rfind("\r\n\r\n") else {
                                continue;
                            };
                            let (done, rest) = text.split_at(end + 4);
                            let heads = done.matches("\r\n\r\n").count();
                            assert_eq!(done.matches("HTTP/1.1 302 ").count(), heads, "{done}");
                            answered += heads;
                            text = rest.to_string();
                        }
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    // Warm up (allocator arenas, connection buffers), then measure.
    flood(CLIENTS * 200).await;
    let before = sc.rss_kib();
    let started = std::time::Instant::now();
    flood(FLOOD).await;
    let took = started.elapsed();
    let after = sc.rss_kib();
    eprintln!("{FLOOD} /oauth2/start in {took:?}: RSS {before} KiB before, {after} KiB after");
    // No per-login server state: memory does not grow with the flood
    // (a server-side store would hold 200 000 entries, tens of MiB).
    assert!(
        after <= before + 4 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    // And the login started before it still completes.
    let callback = user.submit_login(&authorize, "alice").await;
    let resp = user.get(&callback).await;
    assert_eq!(support::browser::Browser::location(&resp), "/before/flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_held_by_a_burst_of_connections_is_given_back_after_it() {
    let up = upstream::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = Conf::new(&up.url()).server("idle_timeout = \"600s\"");
    let sc = Process::spawn(&support::write_binary_config(dir.path(), &conf), &[]);
    let before = sc.rss_kib();
    let mut held = Vec::new();
    for _ in 0..2000 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
        s.write_all(b"GET /ping HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        held.push(s);
    }
    let peak = sc.rss_kib();
    assert!(
        peak > before + 20 * 1024,
        "2000 connections cost {} KiB",
        peak - before
    );
    drop(held);
    // The sidecar looks every 2 s whether a burst is over (bounded: 15 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut now = peak;
    while now > before + (peak - before) / 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "RSS {before} KiB before, {peak} with the connections, still {now} after"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        now = sc.rss_kib();
    }
    eprintln!("2000 idle connections: RSS {before} -> {peak} -> {now} KiB");
}
