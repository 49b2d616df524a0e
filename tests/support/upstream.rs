//! A real HTTP/1.1 upstream app for the tests, on hyper. Routes are picked by
//! the last path segment, so `/public/echo` and `/echo` are the same:
//! - `echo`: JSON of what arrived (method, URI, version, headers in order,
//!   and the port of the connection it came on).
//! - `slow?ms=N`: answers after N ms.
//! - `download?bytes=N`: streams N bytes in 64 KiB chunks.
//! - `upload`: reads the whole body, answers with its length.
//! - `hop`: answers with hop-by-hop headers the proxy must remove.
//! - `bye`: answers its connection's client port, then closes the connection.
//! - `ws`: a WebSocket echo.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

type Body = BoxBody<Bytes, Infallible>;

pub struct Upstream {
    pub addr: SocketAddr,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts the upstream on 127.0.0.1:0; with `tls`, it serves HTTPS.
pub async fn start(tls: Option<TlsAcceptor>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = tls.map(Arc::new);
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let svc = service_fn(move |req| handle(req, peer));
                match tls {
                    Some(acc) => {
                        if let Ok(s) = acc.accept(stream).await {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(s), svc)
                                .await;
                        }
                    }
                    None => {
                        let _ = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                            .await;
                    }
                }
            });
        }
    });
    Upstream { addr }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn query_num(req: &Request<Incoming>, key: &str) -> u64 {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn handle(
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let last = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string();
    let resp = match last.as_str() {
        "slow" => {
            tokio::time::sleep(Duration::from_millis(query_num(&req, "ms"))).await;
            Response::new(full("slow done"))
        }
        "download" => {
            let total = query_num(&req, "bytes");
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(total, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let n = left.min(chunk.len() as u64);
                    Some((
                        Ok::<_, Infallible>(Frame::data(chunk.slice(..n as usize))),
                        left - n,
                    ))
                }
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
        "upload" => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            Response::new(full(n.to_string()))
        }
        "hop" => Response::builder()
            .header("connection", "x-upstream-private")
            .header("x-upstream-private", "hidden")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic")
            .header("x-end-to-end", "visible")
            .body(full("hop"))
            .unwrap(),
        "ws" => websocket(&mut req),
        "bye" => Response::builder()
            .header("connection", "close")
            .body(full(peer.port().to_string()))
            .unwrap(),
        _ => {
            let headers: Vec<(String, String)> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let json = serde_json::json!({
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "version": format!("{:?}", req.version()),
                "headers": headers,
                "peer_port": peer.port(),
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(full(json.to_string()))
                .unwrap()
        }
    };
    Ok(resp)
}

/// Accepts a WebSocket handshake and echoes every message back.
fn websocket(req: &mut Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::builder()
            .status(400)
            .body(full("no key"))
            .unwrap();
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header(
            "sec-websocket-accept",
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .body(full(""))
        .unwrap()
}
