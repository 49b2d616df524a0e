//! What the sidecar's upstream client must do on the wire, pinned against a
//! scripted upstream that answers with exact bytes: bodiless answers (HEAD,
//! 204, 304) and interim ones (1xx), chunked and close-delimited bodies,
//! HTTP/1.0 answers, request bodies with their framing, malformed answers,
//! and which of these leave the connection fit to be used again.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Conf, Sidecar, get_text, http_client, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the upstream read it: its head (request line and
/// headers, as sent) and its body, unframed.
#[derive(Debug, Clone)]
struct Seen {
    connection: usize,
    head: String,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// What the script answers: the bytes to write, and whether to close the
/// connection after them.
type Script = fn(&Seen) -> (Vec<u8>, bool);

/// A raw HTTP/1.1 upstream that answers every request by `script`.
struct Scripted {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(script: Script) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, c) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(serve(stream, n, script, s.clone()));
            }
        });
        Scripted {
            url,
            seen,
            connections,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

async fn serve(
    mut stream: TcpStream,
    connection: usize,
    script: Script,
    log: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(seen) = read_request(&mut stream, &mut buf, connection).await else {
            return;
        };
        log.lock().unwrap().push(seen.clone());
        let (answer, close) = script(&seen);
        if stream.write_all(&answer).await.is_err() || close {
            return;
        }
    }
}

/// Reads one request (head, then a Content-Length or chunked body).
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>, connection: usize) -> Option<Seen> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        fill(s, buf).await?;
    };
    let head = String::from_utf8(buf[..end].to_vec()).ok()?;
    buf.drain(..end + 4);
    let mut seen = Seen {
        connection,
        head,
        body: Vec::new(),
    };
    if seen
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let line = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(s, buf).await?;
            };
            let size_text = String::from_utf8(buf[..line].to_vec()).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            buf.drain(..line + 2);
            while buf.len() < size + 2 {
                fill(s, buf).await?;
            }
            if size == 0 {
                // No trailers are sent to the scripted upstream.
                buf.drain(..2);
                break;
            }
            seen.body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    } else if let Some(len) = seen.header("content-length") {
        let len: usize = len.parse().ok()?;
        while buf.len() < len {
            fill(s, buf).await?;
        }
        seen.body = buf.drain(..len).collect();
    }
    Some(seen)
}

async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn path(seen: &Seen) -> &str {
    seen.head.split(' ').nth(1).unwrap_or("")
}

fn answers(seen: &Seen) -> (Vec<u8>, bool) {
    let text: &str = match path(seen) {
        "/public/head" => {
            "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n"
        }
        "/public/no-content" => "HTTP/1.1 204 No Content\r\nX-Was: 204\r\n\r\n",
        "/public/not-modified" => {
            "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 50\r\n\r\n"
        }
        "/public/hints" => {
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
             HTTP/1.1 100 Continue\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        }
        "/public/chunked" => {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        }
        "/public/trailers" => {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"
        }
        "/public/close" => {
            return (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end".to_vec(),
                true,
            );
        }
        "/public/http10" => "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold",
        "/public/closing" => {
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nlast"
        }
        "/public/bad-head" => "HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok",
        "/public/bad-chunk" => {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\nnope\r\n0\r\n\r\n"
        }
        "/public/early" => {
            // Answers before reading the upload, then goes away.
            return (
                b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo long"
                    .to_vec(),
                true,
            );
        }
        _ => {
            let body = format!("{} bytes", seen.body.len());
            return (
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
                false,
            );
        }
    };
    (text.as_bytes().to_vec(), false)
}

#[tokio::test]
async fn head_204_304_and_interim_answers_carry_no_body_and_keep_the_connection() {
    let up = Scripted::start(answers).await;
    let sc = Sidecar::start(&Conf::new(&up.url).server("workers = 1")).await;
    let client = http_client();

    let resp = client.head(sc.url("/public/head")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "1000");
    assert_eq!(resp.bytes().await.unwrap().len(), 0);
    assert!(up.last().head.starts_with("HEAD /public/head "));

    let resp = client
        .get(sc.url("/public/no-content"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["x-was"], "204");
    assert!(resp.bytes().await.unwrap().is_empty());

    let resp = client
        .get(sc.url("/public/not-modified"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    assert_eq!(resp.headers()["etag"], "\"v1\"");
    assert!(resp.bytes().await.unwrap().is_empty());

    // 1xx answers before the final one are not relayed (as nginx).
    let resp = client.get(sc.url("/public/hints")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");

    // After each, the upstream connection was whole and used again.
    assert_eq!(get_text(&sc.url("/public/after")).await, "0 bytes");
    assert_eq!(up.connections(), 1, "one upstream connection for all");
    assert!(up.seen.lock().unwrap().iter().all(|s| s.connection == 1));
    sc.shutdown().await;
}

#[tokio::test]
async fn chunked_close_delimited_and_http10_answers_arrive_whole() {
    let up = Scripted::start(answers).await;
    let sc = Sidecar::start(&Conf::new(&up.url).server("workers = 1")).await;
    let client = http_client();

    // Chunk extensions do not reach the body; the connection is used again.
    let body = client.get(sc.url("/public/chunked")).send().await.unwrap();
    assert_eq!(body.text().await.unwrap(), "hello world");
    assert_eq!(get_text(&sc.url("/public/x")).await, "0 bytes");
    assert_eq!(up.connections(), 1);
    // Nor do trailers (HTTP/1.1 clients get none), and the connection is
    // used again after them too.
    let body = client.get(sc.url("/public/trailers")).send().await.unwrap();
    assert_eq!(body.text().await.unwrap(), "hello");
    assert_eq!(get_text(&sc.url("/public/x")).await, "0 bytes");
    assert_eq!(up.connections(), 1);
    let before = up.connections();

    // A body without length ends when the upstream closes; the next
    // request needs a new connection.
    let body = client.get(sc.url("/public/close")).send().await.unwrap();
    assert_eq!(body.text().await.unwrap(), "until the end");
    assert_eq!(get_text(&sc.url("/public/x")).await, "0 bytes");
    assert_eq!(up.connections(), before + 1);

    // HTTP/1.0 without keep-alive, and Connection: close, are not reused.
    let body = client.get(sc.url("/public/http10")).send().await.unwrap();
    assert_eq!(body.text().await.unwrap(), "old");
    assert_eq!(get_text(&sc.url("/public/x")).await, "0 bytes");
    assert_eq!(up.connections(), before + 2);
    let body = client.get(sc.url("/public/closing")).send().await.unwrap();
    assert_eq!(body.text().await.unwrap(), "last");
    assert_eq!(get_text(&sc.url("/public/x")).await, "0 bytes");
    assert_eq!(up.connections(), before + 3);
    sc.shutdown().await;
}

#[tokio::test]
async fn request_bodies_reach_the_upstream_whole_with_their_framing() {
    let up = Scripted::start(answers).await;
    let sc = Sidecar::start(&Conf::new(&up.url).server("workers = 1")).await;
    let client = http_client();

    // A body of known length keeps it.
    let fixed = vec![b'f'; 100_000];
    let resp = client
        .post(sc.url("/public/upload"))
        .body(fixed.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "100000 bytes");
    let seen = up.last();
    assert_eq!(seen.header("content-length").as_deref(), Some("100000"));
    assert_eq!(seen.header("transfer-encoding"), None);
    assert_eq!(seen.body, fixed);

    // A streamed body of unknown length goes chunked.
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20u8).map(|i| Ok(vec![b'a' + i; 5_000])).collect();
    let resp = client
        .post(sc.url("/public/stream"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "100000 bytes");
    let seen = up.last();
    assert_eq!(seen.header("transfer-encoding").as_deref(), Some("chunked"));
    assert_eq!(seen.header("content-length"), None);
    let expected: Vec<u8> = (0..20u8).flat_map(|i| vec![b'a' + i; 5_000]).collect();
    assert_eq!(seen.body, expected);

    // An empty POST says so.
    let resp = client.post(sc.url("/public/empty")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "0 bytes");
    let seen = up.last();
    assert!(seen.body.is_empty());
    assert_ne!(seen.header("transfer-encoding").as_deref(), Some("chunked"));

    // All on one connection.
    assert_eq!(up.connections(), 1);
    sc.shutdown().await;
}

#[tokio::test]
async fn a_malformed_answer_is_a_502_or_a_cut_body_and_its_connection_is_dropped() {
    let up = Scripted::start(answers).await;
    let sc = Sidecar::start(
        &Conf::new(&up.url)
            .server("workers = 1")
            .server("metrics_listen = \"127.0.0.1:0\""),
    )
    .await;
    let client = http_client();

    let resp = client.get(sc.url("/public/bad-head")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let metrics = get_text(&format!("http://{}/metrics", sc.metrics_addr.unwrap())).await;
    assert_eq!(
        metric(
            &metrics,
            r#"emp_sidecar_upstream_errors_total{kind="protocol"}"#
        ),
        1.0
    );
    assert_eq!(get_text(&sc.url("/public/x")).await, "0 bytes");
    assert_eq!(up.connections(), 2, "the bad connection was not used again");

    // A bad chunk after the head: the answer is cut, never ended cleanly
    // (before or after the head reached the client, as the bytes came).
    match client.get(sc.url("/public/bad-chunk")).send().await {
        Ok(resp) => {
            assert_eq!(resp.status(), 200);
            let read = tokio::time::timeout(Duration::from_secs(10), resp.bytes()).await;
            assert!(
                matches!(read, Ok(Err(_))),
                "the body ended cleanly: {read:?}"
            );
        }
        Err(e) => assert!(e.is_request(), "{e:?}"),
    }
    assert_eq!(get_text(&sc.url("/public/x")).await, "0 bytes");
    assert_eq!(up.connections(), 3);
    sc.shutdown().await;
}

#[tokio::test]
async fn an_answer_before_the_upload_ends_reaches_the_client() {
    let up = Scripted::start(answers).await;
    let sc = Sidecar::start(&Conf::new(&up.url).server("workers = 1")).await;
    // The upload is larger than the socket buffers hold, so it cannot be
    // sent before the upstream reads it, which it never does.
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..64).map(|_| Ok(vec![b'u'; 64 * 1024])).collect();
    let resp = http_client()
        .post(sc.url("/public/early"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await;
    match resp {
        Ok(resp) => {
            assert_eq!(resp.status(), 413);
            assert_eq!(resp.text().await.unwrap_or_default(), "too long");
        }
        // The client may also see the connection end while it still sends.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e:?}"),
    }
    assert_eq!(get_text(&sc.url("/public/x")).await, "0 bytes");
    sc.shutdown().await;
}
