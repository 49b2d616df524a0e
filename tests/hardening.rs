//! Bounds on what a client can hold or smuggle (issue 12, point 2): Host
//! rules, which upgrades are relayed, a malformed or stalled request body,
//! and idle HTTP/2 connections. The sidecar runs in-process against real
//! upstreams on loopback; every wait is bounded.

mod support;

use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::Value;
use support::{Conf, Sidecar, metric, raw_exchange, seen, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn metrics(sc: &Sidecar) -> String {
    support::get_text(&sc.url("/metrics")).await
}

fn client_errors(text: &str, kind: &str) -> f64 {
    metric(
        text,
        &format!("emp_sidecar_client_errors_total{{kind=\"{kind}\"}}"),
    )
}

/// A client's fault must not be counted as the upstream's.
fn upstream_protocol_errors(text: &str) -> f64 {
    metric(text, "emp_sidecar_upstream_errors_total{kind=\"protocol\"}")
}

fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn status_of(resp: &str) -> &str {
    resp.get(9..12).unwrap_or("")
}

/// Sends one request on a fresh connection and reads its response (a head,
/// then `Content-Length` bytes of body), without waiting for the close.
async fn exchange(sc: &Sidecar, req: &str) -> String {
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return text;
                }
            }
            let n = s.read(&mut chunk).await.unwrap();
            if n == 0 {
                return String::from_utf8_lossy(&buf).into_owned();
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("answered in time")
}

#[tokio::test]
async fn http11_without_host_or_with_two_hosts_is_400_and_not_forwarded() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url())).await;
    let limit = Duration::from_secs(10);
    for req in [
        "GET /public/echo HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /public/echo HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
        "GET /public/echo HTTP/1.0\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
    ] {
        let resp = raw_exchange(sc.addr, req.as_bytes(), limit).await;
        assert_eq!(status_of(&resp), "400", "{req:?}: {resp}");
        assert!(body_of(&resp).contains("Host"), "{resp}");
    }
    // HTTP/1.0 may leave Host out.
    let resp = raw_exchange(sc.addr, b"GET /public/echo HTTP/1.0\r\n\r\n", limit).await;
    assert_eq!(status_of(&resp), "200", "{resp}");
    let text = metrics(&sc).await;
    assert_eq!(client_errors(&text, "host"), 3.0);
    assert!(text.contains("emp_sidecar_upstream_response_duration_seconds_count 1"));
    sc.shutdown().await;
}

#[tokio::test]
async fn only_websocket_upgrades_are_relayed_never_h2c() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url())).await;
    let limit = Duration::from_secs(10);
    // h2c to an app route: forwarded as a plain request, the upgrade gone.
    let req = "GET /public/echo HTTP/1.1\r\nHost: a.test\r\n\
        Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
        HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    let resp = exchange(&sc, req).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let echo: Value = serde_json::from_str(body_of(&resp)).unwrap();
    assert!(seen(&echo, "upgrade").is_empty(), "{echo}");
    assert!(seen(&echo, "http2-settings").is_empty(), "{echo}");
    assert!(
        !seen(&echo, "connection")
            .iter()
            .any(|c| c.contains("pgrade")),
        "{echo}"
    );

    // An app that would switch to anything it is asked for (the test app's
    // /ws answers 101 to any handshake key) cannot be turned into a tunnel
    // by another protocol name: the sidecar did not ask for a switch, so a
    // 101 is a broken response.
    for protocol in ["h2c", "websocket, h2c", "tls/1.3"] {
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\n\
             Upgrade: {protocol}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        let resp = exchange(&sc, &req).await;
        assert!(resp.starts_with("HTTP/1.1 502"), "{protocol}: {resp}");
    }
    // WebSocket itself still passes.
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", sc.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    use futures_util::{SinkExt, StreamExt};
    ws.send("ping".into()).await.unwrap();
    let echoed = tokio::time::timeout(limit, ws.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed.unwrap().into_text().unwrap(), "ping");
    ws.close(None).await.unwrap();
    drop(ws);
    sc.shutdown().await;
}

#[tokio::test]
async fn a_malformed_request_body_is_the_clients_fault() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url())).await;
    let limit = Duration::from_secs(10);
    for body in [
        // A chunk size that is not hex.
        "zz\r\nhello\r\n0\r\n\r\n",
        // Chunk lines ended by a bare LF.
        "5\nhello\n0\n\n",
    ] {
        let req = format!(
            "POST /public/upload HTTP/1.1\r\nHost: a.test\r\n\
             Transfer-Encoding: chunked\r\n\r\n{body}"
        );
        let resp = raw_exchange(sc.addr, req.as_bytes(), limit).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{body:?}: {resp}");
        assert!(body_of(&resp).contains("bad_request"), "{resp}");
    }
    let text = metrics(&sc).await;
    assert_eq!(client_errors(&text, "body"), 2.0);
    assert_eq!(upstream_protocol_errors(&text), 0.0);
    sc.shutdown().await;
}

#[tokio::test]
async fn a_stalled_upload_gets_408_and_frees_its_upstream_connection() {
    // The upstream is a bare socket, so the test sees the sidecar close it.
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_url = format!("http://{}", app.local_addr().unwrap());
    let sc = Sidecar::start(&Conf::new(&app_url).server("body_read_timeout = \"500ms\"")).await;
    let mut client = TcpStream::connect(sc.addr).await.unwrap();
    client
        .write_all(
            b"POST /public/upload HTTP/1.1\r\nHost: a.test\r\n\
              Content-Length: 1000000\r\n\r\nfirst bytes",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let (mut upstream, _) = tokio::time::timeout(Duration::from_secs(10), app.accept())
        .await
        .expect("the sidecar connects to the app")
        .unwrap();
    // The app reads what was relayed until the sidecar closes the connection.
    let relayed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match upstream.read(&mut buf).await {
                Ok(0) | Err(_) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the sidecar closed its upstream connection");
    assert!(String::from_utf8_lossy(&relayed).ends_with("first bytes"));
    let mut resp = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut resp))
        .await
        .expect("the client is answered")
        .unwrap();
    let resp = String::from_utf8_lossy(&resp[..n]);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(450), "{waited:?}");
    let text = metrics(&sc).await;
    assert_eq!(client_errors(&text, "body_timeout"), 1.0);
    assert_eq!(upstream_protocol_errors(&text), 0.0);
    sc.shutdown().await;
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_request_ends_its_upstream_request() {
    // The app never answers; the client leaves. The sidecar notices (its
    // connection watchdog, within a tick) and closes the upstream
    // connection, long before the response-head timeout would.
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_url = format!("http://{}", app.local_addr().unwrap());
    let sc =
        Sidecar::start(&Conf::new(&app_url).upstream("response_header_timeout = \"60s\"")).await;
    let mut client = TcpStream::connect(sc.addr).await.unwrap();
    client
        .write_all(b"GET /public/slow HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let (mut upstream, _) = tokio::time::timeout(Duration::from_secs(10), app.accept())
        .await
        .expect("the sidecar connects to the app")
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), upstream.read(&mut buf))
            .await
            .expect("the request head is relayed")
            .unwrap();
        assert!(n > 0, "the sidecar closed before relaying the head");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"GET /public/slow HTTP/1.1\r\n"));
    drop(client);
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), upstream.read(&mut buf))
        .await
        .expect("the upstream request ends once the client has gone");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    sc.shutdown().await;
}

#[tokio::test]
async fn a_slow_app_reading_the_upload_is_not_a_stalled_client() {
    // The body timeout runs only while the sidecar waits for the client:
    // an upload the app reads slowly, through backpressure, passes.
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url()).server("body_read_timeout = \"300ms\"")).await;
    let chunk = bytes::Bytes::from(vec![b'x'; 256 * 1024]);
    let stream = futures_util::stream::iter(0..16).then(move |i| {
        let chunk = chunk.clone();
        async move {
            if i % 4 == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, std::io::Error>(chunk)
        }
    });
    use futures_util::StreamExt;
    let resp = support::http_client()
        .post(sc.url("/public/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), (16 * 256 * 1024).to_string());
    sc.shutdown().await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_although_pings_keep_flowing() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url()).server("idle_timeout = \"1s\"")).await;
    let tcp = TcpStream::connect(sc.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true)
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get(sc.url("/public/echo"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), tx.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let idle_from = Instant::now();
    // The client pings every 100 ms; only requests are activity, so the
    // sidecar sends GOAWAY once it has been idle for 1-1.25 s.
    tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("the idle HTTP/2 connection was closed")
        .unwrap()
        .unwrap();
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(900), "{idle:?}");
    sc.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_never_sent_a_byte_does_not_hold_the_drain() {
    // Clients open spare connections they may never use; one of those used
    // to hold shutdown for the whole header_read_timeout (30 s here).
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url()).server("header_read_timeout = \"30s\"")).await;
    let silent = TcpStream::connect(sc.addr).await.unwrap();
    // The connection reaches its worker before the drain starts.
    assert_eq!(
        support::http_client()
            .get(sc.url("/ping"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let started = Instant::now();
    assert!(sc.shutdown().await, "drained");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
}

#[tokio::test]
async fn past_max_connections_new_connections_wait_until_one_ends() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url()).server("max_connections = 2")).await;
    let ping = b"GET /ping HTTP/1.1\r\nHost: a.test\r\n\r\n";
    // Two kept-alive connections hold the two places.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(sc.addr).await.unwrap();
        s.write_all(ping).await.unwrap();
        assert!(answered(&mut s).await);
        held.push(s);
    }
    // A third connects (the kernel's backlog takes it) but is not served...
    let mut third = TcpStream::connect(sc.addr).await.unwrap();
    third.write_all(ping).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), answered(&mut third)).await;
    assert!(early.is_err(), "served past max_connections");
    // ...until one of the two ends.
    drop(held.pop());
    let later = tokio::time::timeout(Duration::from_secs(5), answered(&mut third))
        .await
        .expect("served once a place was free");
    assert!(later);
    drop((held, third));
    let text = metrics_on(&sc).await;
    assert!(metric(&text, "emp_sidecar_connection_limit_reached_total") >= 1.0);
    sc.shutdown().await;
}

/// Whether the next thing read on `s` is a 200 response.
async fn answered(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200")
}

/// `/metrics` on a connection of its own once a place is free.
async fn metrics_on(sc: &Sidecar) -> String {
    let resp = raw_exchange(
        sc.addr,
        b"GET /metrics HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    body_of(&resp).to_string()
}

/// `emp_sidecar_connections_parked` now.
async fn parked(sc: &Sidecar) -> f64 {
    metric(&metrics_on(sc).await, "emp_sidecar_connections_parked")
}

/// Waits (at most 5 s) until `n` connections are parked.
async fn until_parked(sc: &Sidecar, n: f64) {
    for _ in 0..100 {
        if parked(sc).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never {n} parked connections");
}

/// Reads one response with a `Content-Length` body from `s`.
async fn response_on(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n")
                && let Some(len) = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                && body.len() >= len
            {
                return text;
            }
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before a whole response: {text:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("answered in time")
}

fn quick_idle(up: &str) -> Conf {
    Conf::new(up)
        .server("idle_timeout = \"4s\"")
        .server("header_read_timeout = \"2s\"")
}

#[tokio::test]
async fn a_quiet_http1_connection_gives_its_buffers_back_and_serves_again() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&quick_idle(&up.url())).await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n");
    s.write_all(get("/public/one").as_bytes()).await.unwrap();
    let first = response_on(&mut s).await;
    assert_eq!(status_of(&first), "200", "{first}");
    // Quiet for a second or so: parked (hyper's state and buffers dropped).
    until_parked(&sc, 1.0).await;
    // The same socket serves again: one request, then two pipelined in one
    // write, then an upload; each answered whole, by the upstream.
    s.write_all(get("/public/two").as_bytes()).await.unwrap();
    let second = response_on(&mut s).await;
    assert_eq!(status_of(&second), "200", "{second}");
    assert_eq!(
        serde_json::from_str::<Value>(body_of(&second)).unwrap()["uri"],
        "/public/two"
    );
    until_parked(&sc, 1.0).await;
    s.write_all(format!("{}{}", get("/public/three"), get("/public/four")).as_bytes())
        .await
        .unwrap();
    for path in ["/public/three", "/public/four"] {
        let resp = response_on(&mut s).await;
        let echo: Value = serde_json::from_str(body_of(&resp)).unwrap();
        assert_eq!(echo["uri"], path);
    }
    until_parked(&sc, 1.0).await;
    s.write_all(b"POST /public/upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let upload = response_on(&mut s).await;
    assert_eq!(status_of(&upload), "200", "{upload}");
    // Parked connections still end at idle_timeout (4 s): EOF within 8 s.
    until_parked(&sc, 1.0).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?} {rest:?}");
    assert_eq!(parked(&sc).await, 0.0);
    sc.shutdown().await;
}

#[tokio::test]
async fn a_response_the_client_has_not_read_yet_is_never_cut_by_parking() {
    // The client stops reading a 4 MB download for 3 s (three times the
    // quiet spell); hyper still holds unwritten bytes, so the connection
    // must not be parked. Every byte arrives.
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&quick_idle(&up.url())).await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(b"GET /public/download?bytes=4000000 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let read = async {
        while !got.ends_with(b"\r\n0\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {} bytes", got.len());
            got.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the whole body in time");
    let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let xs = got[body_at..].iter().filter(|b| **b == b'x').count();
    assert_eq!(xs, 4_000_000);
    // The connection lives on and serves the next request.
    s.write_all(b"GET /public/after HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&response_on(&mut s).await), "200");
    sc.shutdown().await;
}

#[tokio::test]
async fn a_parked_connection_does_not_hold_the_drain() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&quick_idle(&up.url()).server("idle_timeout = \"60s\"")).await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    assert!(answered(&mut s).await);
    until_parked(&sc, 1.0).await;
    let started = Instant::now();
    assert!(sc.shutdown().await, "drained");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
}
