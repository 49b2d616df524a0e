//! A keep-alive pool of HTTP/1.1 connections to the upstream, one per worker
//! thread (so its lock is never contended), and the exchange on them: the
//! request's own task writes the request and reads the answer
//! ([`super::h1`]); no connection has a task of its own.
//!
//! A connection goes back when its response body ends, from the body
//! itself, and checkout is LIFO so the warmest connection serves next. An
//! idle connection the upstream closed (or wrote to) is seen at checkout
//! from the socket's readiness, without a system call in the usual case.
//! benches/README.md has the figures.

use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub use super::h1::Outgoing;
use super::h1::{self, BodyReader, Conn, Io, Upload};
use super::upstream::SentBody;
use crate::body::BoxError;

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to the upstream")]
    Connect(#[source] io::Error),
    #[error("no connection to the upstream within the connect timeout")]
    ConnectTimeout,
    #[error("TLS handshake with the upstream failed")]
    Tls(#[source] io::Error),
    #[error("the upstream connection failed during the exchange")]
    Exchange(#[source] h1::Error),
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
    conn: Conn,
    since: Instant,
}

impl Idle {
    /// Idle for less than `timeout` at `now`, and still usable.
    fn is_good(&self, now: Instant, timeout: Duration) -> bool {
        now.saturating_duration_since(self.since) < timeout && self.conn.is_usable_when_idle()
    }
}

pub struct Pool {
    connector: Connector,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

/// An answer from the upstream: the response (its body streaming off the
/// connection), and for a `101` the connection itself, to relay the new
/// protocol on (with any bytes already read after the head).
pub struct Answer {
    pub response: Response<PooledBody>,
    pub switched: Option<Conn>,
    /// When the head came in: the one clock read of the exchange.
    pub answered: Instant,
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

    /// Sends `req` on an idle connection, or a new one, and reads the
    /// response head. A reused connection found closed before anything
    /// came back is dropped and the request sent on another, as long as
    /// no part of its body was taken from the client.
    /// `now` is the time the request set out.
    pub async fn send(
        self: &Arc<Self>,
        req: Outgoing<'_>,
        body: SentBody,
        now: Instant,
    ) -> Result<Answer, PoolError> {
        let mut upload = Upload::new(req, body);
        loop {
            let (mut conn, reused) = match self.checkout(now) {
                Some(conn) => (conn, true),
                // Boxed: connecting (TCP, TLS) is a large future, and
                // inline it would be copied with every request's.
                None => (Box::pin(self.connect()).await?, false),
            };
            let head = match h1::exchange(&mut conn, &mut upload, req.method).await {
                Ok(head) => head,
                Err(e) if reused && h1::may_retry(&e, &upload, req.method) => {
                    upload.rewind(req);
                    continue;
                }
                Err(e) => return Err(PoolError::Exchange(e)),
            };
            let answered = Instant::now();
            let mut response = Response::new(());
            *response.status_mut() = head.status;
            *response.version_mut() = head.version;
            *response.headers_mut() = head.headers;
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                // The connection belongs to the protocol switch now.
                let body = PooledBody::new(
                    None,
                    BodyReader::new(h1::Framing::Empty),
                    upload,
                    false,
                    (Weak::new(), answered),
                );
                return Ok(Answer {
                    response: response.map(|()| body),
                    switched: Some(conn),
                    answered,
                });
            }
            let body = PooledBody::new(
                Some(conn),
                BodyReader::new(head.framing),
                upload,
                head.keep_alive,
                (Arc::downgrade(self), answered),
            );
            return Ok(Answer {
                response: response.map(|()| body),
                switched: None,
                answered,
            });
        }
    }

    /// Closes connections idle for longer than the idle timeout or closed
    /// by the upstream; run it periodically on the worker that owns the pool.
    pub async fn reap_idle(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        let period = (self.idle_timeout / 2).max(Duration::from_millis(100));
        drop(self);
        loop {
            tokio::time::sleep(period).await;
            let Some(pool) = weak.upgrade() else { return };
            let (now, timeout) = (Instant::now(), pool.idle_timeout);
            if let Ok(mut idle) = pool.idle.lock() {
                idle.retain(|c| c.is_good(now, timeout));
            }
        }
    }

    /// The most recently used idle connection that is still good (LIFO:
    /// the warmest serves next).
    fn checkout(&self, now: Instant) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(c) = idle.pop() {
            if c.is_good(now, self.idle_timeout) {
                return Some(c.conn);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Conn, PoolError> {
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
            None => Ok(Conn::new(Io::Plain(tcp))),
            Some((connector, name)) => {
                let tls =
                    tokio::time::timeout(c.connect_timeout, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| PoolError::ConnectTimeout)?
                        .map_err(PoolError::Tls)?;
                Ok(Conn::new(Io::Tls(Box::new(tls))))
            }
        }
    }
}

/// Puts a connection whose exchange ended cleanly back, if the pool is
/// still there and has room, idle since `since`.
fn checkin(pool: &Weak<Pool>, conn: Conn, since: Instant) {
    let Some(pool) = pool.upgrade() else { return };
    if let Ok(mut idle) = pool.idle.lock()
        && idle.len() < pool.max_idle
    {
        idle.push(Idle { conn, since });
    }
}

/// The response body: data read straight off the connection, and the rest
/// of an upload still going when the head came.
pub struct PooledBody {
    conn: Option<Conn>,
    reader: BodyReader,
    upload: Option<Upload>,
    /// Both messages may end cleanly and leave the connection reusable.
    keep_alive: bool,
    /// Where the connection goes when its exchange is over.
    pool: Weak<Pool>,
    /// When the answer began, which counts as the start of the
    /// connection's idle time: not read again at the end (a clock read
    /// under a hypervisor costs as much as a hash, benches/README.md);
    /// after a long response that makes the connection look older than
    /// it is, so it is retired early, never kept too long.
    answered: Instant,
}

impl PooledBody {
    fn new(
        conn: Option<Conn>,
        reader: BodyReader,
        upload: Upload,
        keep_alive: bool,
        (pool, answered): (Weak<Pool>, Instant),
    ) -> PooledBody {
        let mut body = PooledBody {
            conn,
            reader,
            upload: (!upload.is_done()).then_some(upload),
            keep_alive,
            pool,
            answered,
        };
        body.release_if_done();
        body
    }

    /// Hands the connection back once the response is read and the upload
    /// is out; a connection that cannot be reused is just closed.
    fn release_if_done(&mut self) {
        if !self.reader.is_done() {
            return;
        }
        if self.upload.is_some() {
            // An answer before the upload ended: the upstream did not
            // wait for it, so the connection's state is unknown.
            self.keep_alive = false;
            self.upload = None;
        }
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            checkin(&self.pool, conn, self.answered);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        // An upload the upstream still reads (an echo, say) goes on while
        // the answer streams back.
        if let Some(upload) = this.upload.as_mut() {
            match upload.poll_send(&mut conn.io, cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => this.upload = None,
                Poll::Ready(Err(_)) => {
                    this.upload = None;
                    this.keep_alive = false;
                }
            }
        }
        match this.reader.poll_data(conn, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(data))) => {
                this.release_if_done();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => {
                this.conn = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.release_if_done();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.reader.size_hint()
    }
}
