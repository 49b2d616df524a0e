//! The proxy core against a real upstream, with the sidecar in-process:
//! header hygiene, forwarding headers, request ids, WebSocket, HTTP/2, TLS,
//! error statuses, timeouts, routing and metrics.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::Value;
use support::{Conf, Sidecar, http_client, raw_exchange, seen, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url())).await;
    let req = "GET /public/echo HTTP/1.1\r\nHost: app.test\r\n\
        Connection: close, X-Client-Private\r\nX-Client-Private: secret\r\n\
        Keep-Alive: timeout=9\r\nTE: trailers\r\nTrailer: X-Sum\r\n\
        Proxy-Authorization: Basic Zm9v\r\nProxy-Connection: keep-alive\r\n\
        Upgrade: h2c\r\nX-End-To-End: yes\r\n\r\n";
    let resp = raw_exchange(sc.addr, req.as_bytes(), Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    let echo: Value = serde_json::from_str(body).unwrap();
    for gone in [
        "x-client-private",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(seen(&echo, gone).is_empty(), "{gone} reached the upstream");
    }
    assert_eq!(seen(&echo, "x-end-to-end"), ["yes"]);
    assert!(
        !seen(&echo, "connection")
            .iter()
            .any(|v| v.contains("private"))
    );

    let resp = http_client()
        .get(sc.url("/public/hop"))
        .send()
        .await
        .unwrap();
    let h = resp.headers();
    assert!(h.get("x-upstream-private").is_none());
    assert!(h.get("keep-alive").is_none());
    assert!(h.get("proxy-authenticate").is_none());
    assert_eq!(h["x-end-to-end"], "visible");
    sc.shutdown().await;
}

#[tokio::test]
async fn forwarded_headers_are_set_and_client_values_replaced() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url())).await;
    let echo: Value = http_client()
        .get(sc.url("/public/echo?x=1"))
        .header("host", "app.example:8443")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen(&echo, "x-forwarded-proto"), ["http"]);
    assert_eq!(seen(&echo, "x-forwarded-host"), ["app.example:8443"]);
    // host_header = "client" (the default) passes the client's Host on.
    assert_eq!(seen(&echo, "host"), ["app.example:8443"]);
    assert_eq!(echo["uri"], "/public/echo?x=1");
    assert_eq!(echo["version"], "HTTP/1.1");
    sc.shutdown().await;
}

#[tokio::test]
async fn host_header_upstream_mode_sends_the_upstream_host() {
    let up = upstream::start(None).await;
    let conf = Conf::new(&up.url())
        .upstream("host_header = \"upstream\"")
        .server("trust_forwarded_headers = true");
    let sc = Sidecar::start(&conf).await;
    let echo: Value = http_client()
        .get(sc.url("/public/echo"))
        .header("host", "app.example")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen(&echo, "host"), [up.addr.to_string()]);
    assert_eq!(seen(&echo, "x-forwarded-host"), ["app.example"]);
    // Trusted: the chain is appended to and the proto kept.
    assert_eq!(seen(&echo, "x-forwarded-for"), ["10.0.0.1, 127.0.0.1"]);
    assert_eq!(seen(&echo, "x-forwarded-proto"), ["https"]);
    sc.shutdown().await;
}

#[tokio::test]
async fn request_id_is_kept_or_generated_and_forwarded() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url())).await;
    let client = http_client();
    let resp = client
        .get(sc.url("/public/echo"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-abc-123");
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(seen(&echo, "x-request-id"), ["trace-abc-123"]);

    let resp = client.get(sc.url("/public/echo")).send().await.unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 32);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(
        seen(&echo, "x-request-id"),
        std::slice::from_ref(&generated)
    );

    let other = client.get(sc.url("/public/echo")).send().await.unwrap();
    assert_ne!(other.headers()["x-request-id"].to_str().unwrap(), generated);
    sc.shutdown().await;
}

#[tokio::test]
async fn spoofed_identity_headers_and_own_cookies_never_reach_the_upstream() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url()).claim("\"X-User-Group\" = \"/group\"")).await;
    let echo: Value = http_client()
        .get(sc.url("/public/echo"))
        .header("x-auth-request-user", "mallory")
        .header("x_auth_request_email", "mallory@evil")
        .header("x-forwarded-access-token", "forged")
        .header("x-user-group", "admin")
        .header("x_user_group", "admin")
        .header("authorization", "Bearer client-own")
        .header(
            "cookie",
            "_emp_sidecar=sess; theme=dark; _emp_sidecar_csrf=s",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for gone in [
        "x-auth-request-user",
        "x_auth_request_email",
        "x-forwarded-access-token",
        "x-user-group",
        "x_user_group",
    ] {
        assert!(seen(&echo, gone).is_empty(), "{gone} reached the upstream");
    }
    // Skip-auth routes leave Authorization as the client sent it.
    assert_eq!(seen(&echo, "authorization"), ["Bearer client-own"]);
    assert_eq!(seen(&echo, "cookie"), ["theme=dark"]);
    sc.shutdown().await;
}

#[tokio::test]
async fn websocket_echo_passes_through() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url())).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", sc.addr))
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    for text in ["hello", "second message", &"x".repeat(100_000)] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo in time")
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
    // The close handshake completes through the proxy, then the stream ends.
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(rest.is_ok(), "close handshake did not complete");
    drop(ws);
    assert!(
        sc.shutdown().await,
        "upgraded connection kept the drain waiting"
    );
}

#[tokio::test]
async fn http2_prior_knowledge_client_is_served_and_upstream_gets_http1() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url())).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = client
        .get(sc.url("/public/echo?h2=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["uri"], "/public/echo?h2=1");
    // The :authority becomes Host and X-Forwarded-Host upstream.
    assert_eq!(seen(&echo, "host"), [sc.addr.to_string()]);
    assert_eq!(seen(&echo, "x-forwarded-host"), [sc.addr.to_string()]);
    sc.shutdown().await;
}

/// A self-signed certificate for `localhost`, written as PEM files.
fn test_cert(dir: &std::path::Path) -> (String, String, reqwest::Certificate) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let ca = reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap();
    (
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
        ca,
    )
}

#[tokio::test]
async fn tls_termination_serves_h2_by_alpn_and_http1() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = test_cert(dir.path());
    let up = upstream::start(None).await;
    let conf = Conf::new(&up.url())
        .server(&format!("tls_cert = {cert:?}"))
        .server(&format!("tls_key = {key:?}"))
        .upstream("response_header_timeout = \"300ms\"");
    let sc = Sidecar::start(&conf).await;
    let url = format!("https://localhost:{}/public/echo", sc.addr.port());
    let slow = format!("https://localhost:{}/public/slow?ms=5000", sc.addr.port());
    for (h1_only, version) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([ca.clone()])
            .resolve("localhost", sc.addr);
        if h1_only {
            b = b.http1_only();
        }
        let client = b.build().unwrap();
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.version(), version);
        let echo: Value = resp.json().await.unwrap();
        assert_eq!(seen(&echo, "x-forwarded-proto"), ["https"]);
        // The response-head timeout holds on both (HTTP/1: the TLS
        // connection's watchdog; HTTP/2: the stream's timer).
        let resp = client.get(&slow).send().await.unwrap();
        assert_eq!((resp.version(), resp.status().as_u16()), (version, 504));
    }
    // Plain HTTP on the TLS port is refused, not served.
    let plain = http_client()
        .get(format!("http://{}/public/echo", sc.addr))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    sc.shutdown().await;
}

#[tokio::test]
async fn https_upstream_is_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ck.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let up = upstream::start(Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
        tls,
    ))))
    .await;
    let url = format!("https://localhost:{}", up.addr.port());

    let trusted = Sidecar::start(
        &Conf::new(&url).upstream(&format!("ca_file = {:?}", ca_path.to_str().unwrap())),
    )
    .await;
    let resp = http_client()
        .get(trusted.url("/public/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    trusted.shutdown().await;

    // Without the CA the certificate is not trusted: 502, never a silent pass.
    let untrusted = Sidecar::start(&Conf::new(&url)).await;
    let resp = http_client()
        .get(untrusted.url("/public/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    untrusted.shutdown().await;
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url()).server("workers = 1")).await;
    let client = http_client();
    let mut ports = std::collections::HashSet::new();
    for _ in 0..10 {
        let echo: Value = client
            .get(sc.url("/public/echo"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ports.insert(echo["peer_port"].as_u64().unwrap());
    }
    assert_eq!(
        ports.len(),
        1,
        "sequential requests used {} upstream connections",
        ports.len()
    );
    sc.shutdown().await;
}

#[tokio::test]
async fn a_connection_closed_by_the_upstream_is_replaced_transparently() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url()).server("workers = 1")).await;
    let client = http_client();
    let mut closed_ports = Vec::new();
    for _ in 0..20 {
        // The upstream closes the connection after `bye`; the next request
        // must still succeed, on a new connection.
        let resp = client.get(sc.url("/public/bye")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        closed_ports.push(resp.text().await.unwrap());
        let echo = client.get(sc.url("/public/echo")).send().await.unwrap();
        assert_eq!(echo.status(), 200);
        let echo: Value = echo.json().await.unwrap();
        assert_ne!(
            echo["peer_port"].as_u64().unwrap().to_string(),
            *closed_ports.last().unwrap()
        );
    }
    sc.shutdown().await;
}

#[tokio::test]
async fn bad_gateway_when_upstream_refuses() {
    // A port that was free a moment ago and has no listener now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sc = Sidecar::start(&Conf::new(&format!("http://127.0.0.1:{port}"))).await;
    let resp = http_client()
        .get(sc.url("/public/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "bad_gateway");
    assert_eq!(body["request_id"], rid.as_str());
    let metrics = support::get_text(&sc.url("/metrics")).await;
    assert!(
        metrics.contains(r#"emp_sidecar_upstream_errors_total{kind="connect"} 1"#),
        "{metrics}"
    );
    sc.shutdown().await;
}

#[tokio::test]
async fn gateway_timeout_when_upstream_is_too_slow() {
    let up = upstream::start(None).await;
    let sc =
        Sidecar::start(&Conf::new(&up.url()).upstream("response_header_timeout = \"300ms\"")).await;
    let client = http_client();
    let resp = client
        .get(sc.url("/public/slow?ms=5000"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "gateway_timeout");
    // HTTP/2 streams run in tasks of their own, with a timer of their own.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(sc.url("/public/slow?ms=5000")).send().await.unwrap();
    assert_eq!(
        (resp.version(), resp.status().as_u16()),
        (reqwest::Version::HTTP_2, 504)
    );
    // Within the limit the same route answers.
    let resp = client
        .get(sc.url("/public/slow?ms=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let metrics = support::get_text(&sc.url("/metrics")).await;
    assert!(metrics.contains(r#"emp_sidecar_upstream_errors_total{kind="response_timeout"} 2"#));
    sc.shutdown().await;
}

#[tokio::test]
async fn response_head_timeout_runs_from_the_end_of_the_upload_and_anew_for_each_request() {
    let up = upstream::start(None).await;
    let sc =
        Sidecar::start(&Conf::new(&up.url()).upstream("response_header_timeout = \"600ms\"")).await;
    // One kept-alive connection, each request with its own deadline: the
    // first request's (at ~610 ms) must not cut the second one (answered at
    // ~760 ms, 450 ms after it was sent).
    let client = http_client();
    let get = |p: &str| client.get(sc.url(p)).send();
    assert_eq!(get("/public/slow?ms=10").await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = get("/public/slow?ms=450").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "slow done");
    // An upload taking ~1 s (longer than the timeout) is not a slow app: the
    // clock starts once the body has been sent.
    let chunks = futures_util::stream::unfold(0u32, |i| async move {
        if i == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok::<_, std::io::Error>(vec![b'u'; 1024]), i + 1))
    });
    let resp = client
        .post(sc.url("/public/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "10240");
    // And a slow app still gets its 504 on the same connection.
    let started = std::time::Instant::now();
    assert_eq!(get("/public/slow?ms=5000").await.unwrap().status(), 504);
    assert!(started.elapsed() >= Duration::from_millis(600));
    sc.shutdown().await;
}

#[tokio::test]
async fn oversized_request_headers_get_431() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url()).server("max_header_bytes = 8192")).await;
    let client = http_client();
    let ok = client
        .get(sc.url("/public/echo"))
        .header("x-big", "a".repeat(6000))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // Over the limit: 431 with a body saying why.
    let resp = client
        .get(sc.url("/public/echo"))
        .header("x-big", "a".repeat(9000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "request_header_fields_too_large");
    // Far over it (more than hyper buffers): still 431, never a hang or 500.
    let req = format!(
        "GET /public/echo HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let resp = raw_exchange(sc.addr, req.as_bytes(), Duration::from_secs(10)).await;
    assert!(
        resp.starts_with("HTTP/1.1 431"),
        "{}",
        &resp[..resp.len().min(200)]
    );
    // At most 100 header fields (hyper's, Envoy's and HAProxy's default
    // count), well under the byte limit here: 431 for the 101st.
    let fields = |n: usize| {
        let extra: String = (1..n).map(|i| format!("X-F{i}: v\r\n")).collect();
        format!("GET /ping HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n")
    };
    let resp = raw_exchange(sc.addr, fields(99).as_bytes(), Duration::from_secs(10)).await;
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "{}",
        &resp[..resp.len().min(200)]
    );
    let resp = raw_exchange(sc.addr, fields(100).as_bytes(), Duration::from_secs(10)).await;
    assert!(
        resp.starts_with("HTTP/1.1 431"),
        "{}",
        &resp[..resp.len().min(200)]
    );
    // Over HTTP/2 too.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .get(sc.url("/public/echo"))
        .header("x-big", "a".repeat(9000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    sc.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url()).server("idle_timeout = \"400ms\"")).await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The server closes the idle connection: read sees EOF well before 10 s.
    let started = std::time::Instant::now();
    let eof = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("idle connection closed in time");
    assert_eq!(eof.unwrap(), 0);
    assert!(started.elapsed() >= Duration::from_millis(300));
    sc.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_does_not_trip_the_idle_timeout() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url()).server("idle_timeout = \"200ms\"")).await;
    let resp = http_client()
        .get(sc.url("/public/slow?ms=1000"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "slow done");
    sc.shutdown().await;
}

#[tokio::test]
async fn incomplete_request_head_is_cut_off_after_header_read_timeout() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(
        &Conf::new(&up.url()).server("header_read_timeout = \"400ms\"\nidle_timeout = \"30s\""),
    )
    .await;
    // Connected, sent nothing.
    let mut silent = TcpStream::connect(sc.addr).await.unwrap();
    // Sent half a head.
    let mut partial = TcpStream::connect(sc.addr).await.unwrap();
    partial
        .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    for s in [&mut silent, &mut partial] {
        // Closed (EOF) or reset: either way the read ends, and within the bound.
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .expect("connection closed in time");
    }
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    // Slowloris: a head dribbled a byte every 50 ms keeps the socket busy
    // (so the idle timeout never fires) but never completes.
    let slow = TcpStream::connect(sc.addr).await.unwrap();
    let (mut rd, mut wr) = slow.into_split();
    let started = std::time::Instant::now();
    let dribble = tokio::spawn(async move {
        wr.write_all(b"GET /ping HTTP/1.1\r\n").await.unwrap();
        for _ in 0..200 {
            if wr.write_all(b"X").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut buf))
        .await
        .expect("slow head cut off in time");
    let elapsed = started.elapsed();
    dribble.abort();
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    // Not before the timeout, and well before the dribble's 10 s would end.
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    sc.shutdown().await;
}

#[tokio::test]
async fn header_read_timeout_spares_idle_keep_alive_and_http2_connections() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(
        &Conf::new(&up.url()).server("header_read_timeout = \"300ms\"\nidle_timeout = \"30s\""),
    )
    .await;
    // HTTP/1.1: quiet between two requests for longer than the head timeout.
    // Waiting for the next request is the idle timeout's business.
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    for round in 0..2 {
        s.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("answered in time")
            .unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "round {round}: {}",
            String::from_utf8_lossy(&buf[..n])
        );
        if round == 0 {
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
    }

    // HTTP/2: the client pings every 50 ms between requests; those frames are
    // read with no request in flight and must not count as a slow head.
    let tcp = TcpStream::connect(sc.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(50))
        .keep_alive_while_idle(true)
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    for round in 0..2 {
        let req = hyper::Request::get(sc.url("/public/echo"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), tx.send_request(req))
            .await
            .expect("answered in time")
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(resp.status(), 200, "round {round}");
        if round == 0 {
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
    }
    assert!(!driver.is_finished(), "the HTTP/2 connection was closed");
    driver.abort();
    sc.shutdown().await;
}

#[tokio::test]
async fn routes_public_protected_and_operations() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url())).await;
    let client = http_client();
    let get = |p: &str| client.get(sc.url(p)).send();
    assert_eq!(get("/ping").await.unwrap().status(), 200);
    assert_eq!(get("/ready").await.unwrap().status(), 200);
    assert_eq!(get("/public/echo").await.unwrap().status(), 200);
    // Without a session, protected paths are refused, also through dot
    // segments that a skip-auth regex would otherwise match (the client
    // resolves these; tests/paths.rs sends them raw).
    for p in [
        "/private",
        "/public/../private",
        "/public/%2e%2e/private",
        "/private?x=/public/",
        "/oauth2/auth",
        "/oauth2/userinfo",
    ] {
        let resp = get(p).await.unwrap();
        assert_eq!(resp.status(), 401, "{p}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
    }
    let text = get("/metrics").await.unwrap().text().await.unwrap();
    for name in [
        "emp_sidecar_http_requests_total{route=\"public\",status=\"2xx\"} 1",
        "emp_sidecar_http_requests_total{route=\"proxy\",status=\"4xx\"} 4",
        "emp_sidecar_http_requests_total{route=\"auth_request\",status=\"4xx\"} 1",
        "emp_sidecar_http_requests_total{route=\"health\",status=\"2xx\"} 2",
        "emp_sidecar_http_request_duration_seconds_bucket",
        "emp_sidecar_http_requests_in_flight 1",
        "emp_sidecar_upstream_response_duration_seconds_count 1",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    sc.shutdown().await;
}

#[tokio::test]
async fn metrics_listen_serves_metrics_apart_from_the_proxy() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url()).server("metrics_listen = \"127.0.0.1:0\"")).await;
    let maddr = sc.metrics_addr.unwrap();
    let client = http_client();
    let resp = client
        .get(format!("http://{maddr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("emp_sidecar_http_requests_in_flight")
    );
    assert_eq!(
        client
            .get(format!("http://{maddr}/public/echo"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // On the main port /metrics is now just a (protected) app path.
    assert_eq!(
        client
            .get(sc.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    sc.shutdown().await;
}

#[tokio::test]
async fn drain_lets_in_flight_requests_finish() {
    let up = upstream::start(None).await;
    let sc = Sidecar::start(&Conf::new(&up.url())).await;
    let url = sc.url("/public/slow?ms=800");
    let slow = tokio::spawn(async move { support::get_text(&url).await });
    // Wait (bounded) until the slow request is in flight at the sidecar.
    let in_flight = support::wait_in_flight(&sc.url("/metrics"), 2).await;
    assert!(in_flight, "slow request never reached the sidecar");
    let drained = sc.shutdown().await;
    assert!(drained);
    assert_eq!(slow.await.unwrap(), "slow done");
}
