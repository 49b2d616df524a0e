//! A keep-alive pool of HTTP/1.1 connections to the upstream, one per worker
//! thread (so its lock is never contended and a connection's task never
//! leaves the thread that uses it).
//!
//! Why not hyper-util's pooled client: for every HTTP/1 request whose body
//! streams, it spawns a task that waits to put the connection back, and it
//! races a speculative connect against each checkout. Here a connection goes
//! back when its response body ends, from the body itself, and checkout is
//! LIFO so the warmest connection serves next. benches/README.md has the
//! figures.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::upstream::SentBody;

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to the upstream")]
    Connect(#[source] io::Error),
    #[error("no connection to the upstream within the connect timeout")]
    ConnectTimeout,
    #[error("TLS handshake with the upstream failed")]
    Tls(#[source] io::Error),
    #[error("HTTP/1.1 handshake with the upstream failed")]
    Handshake(#[source] hyper::Error),
    #[error("the upstream connection failed during the exchange")]
    Exchange(#[source] hyper::Error),
}

/// How to open a new connection.
pub struct Connector {
    pub host: String,
    pub port: u16,
    /// Set for an `https://` upstream.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    pub connect_timeout: Duration,
}

struct Idle {
    tx: SendRequest<SentBody>,
    since: Instant,
}

pub struct Pool {
    connector: Connector,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(connector: Connector, max_idle: usize, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            connector,
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
        })
    }

    /// Sends `req` on an idle connection, or a new one. A reused connection
    /// that turns out closed before the request was written is skipped and
    /// the request tried on the next (nothing was sent, so this is safe for
    /// any method).
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<SentBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        while let Some(mut tx) = self.checkout() {
            if tx.ready().await.is_err() {
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, tx)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(PoolError::Exchange(e.into_error())),
                },
            }
        }
        // Boxed: connecting (TCP, TLS, handshake) is a large future, and
        // inline it would be copied with every request's.
        let mut tx = Box::pin(self.connect()).await?;
        match tx.try_send_request(req).await {
            Ok(resp) => Ok(self.wrap(resp, tx)),
            Err(e) => Err(PoolError::Exchange(e.into_error())),
        }
    }

    /// Closes connections idle for longer than the idle timeout; run it
    /// periodically on the worker that owns the pool.
    pub async fn reap_idle(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        let period = (self.idle_timeout / 2).max(Duration::from_millis(100));
        drop(self);
        loop {
            tokio::time::sleep(period).await;
            let Some(pool) = weak.upgrade() else { return };
            let timeout = pool.idle_timeout;
            if let Ok(mut idle) = pool.idle.lock() {
                idle.retain(|c| c.since.elapsed() < timeout && !c.tx.is_closed());
            }
        }
    }

    fn checkout(&self) -> Option<SendRequest<SentBody>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < self.idle_timeout && !c.tx.is_closed() {
                return Some(c.tx);
            }
        }
        None
    }

    fn checkin(&self, tx: SendRequest<SentBody>) {
        if tx.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<SendRequest<SentBody>, PoolError> {
        let c = &self.connector;
        let tcp = tokio::time::timeout(
            c.connect_timeout,
            TcpStream::connect((c.host.as_str(), c.port)),
        )
        .await
        .map_err(|_| PoolError::ConnectTimeout)?
        .map_err(PoolError::Connect)?;
        let _ = tcp.set_nodelay(true);
        match &c.tls {
            None => handshake(tcp).await,
            Some((connector, name)) => {
                let tls =
                    tokio::time::timeout(c.connect_timeout, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| PoolError::ConnectTimeout)?
                        .map_err(PoolError::Tls)?;
                handshake(tls).await
            }
        }
    }

    fn wrap(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        tx: SendRequest<SentBody>,
    ) -> Response<PooledBody> {
        // An upgraded connection belongs to the upgrade now.
        let back = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| GiveBack {
            tx,
            pool: Arc::downgrade(self),
        });
        resp.map(|inner| {
            let mut body = PooledBody { inner, back };
            if body.inner.is_end_stream() {
                body.release();
            }
            body
        })
    }
}

/// HTTP/1.1 over an established (plain or TLS) connection, its driver spawned.
async fn handshake<T>(io: T) -> Result<SendRequest<SentBody>, PoolError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(PoolError::Handshake)?;
    tokio::spawn(drive(conn));
    Ok(tx)
}

/// Runs one connection until it closes; upgrades (WebSocket) stay possible.
async fn drive<T>(conn: http1::Connection<T, SentBody>)
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if let Err(e) = conn.with_upgrades().await {
        tracing::debug!(error = %e, "upstream connection ended with an error");
    }
}

struct GiveBack {
    tx: SendRequest<SentBody>,
    pool: Weak<Pool>,
}

pin_project_lite::pin_project! {
    /// The upstream's response body; when it ends, its connection goes back
    /// to the pool. Dropped early (the client went away), the connection is
    /// closed instead, since it has unread bytes on it.
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        back: Option<GiveBack>,
    }
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(GiveBack { tx, pool }) = self.back.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.checkin(tx);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = self.as_mut().project().inner.poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => {
                self.back.take();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
