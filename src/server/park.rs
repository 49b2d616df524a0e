//! HTTP/1 connections give their memory back while idle, as nginx's do.
//!
//! hyper keeps an 8 KiB read buffer, an 8 KiB buffer for response heads and
//! its dispatcher state (about 6 KB) for as long as a connection is open,
//! idle or not: about 30 KiB per idle keep-alive connection once allocator
//! overhead is counted, against nginx's 0.6 (benches/README.md, "Memory per
//! connection"). Here an HTTP/1 connection that has been quiet for
//! [`PARK_AFTER`](crate::activity::PARK_AFTER) (its watchdog's next tick
//! after that) with every response written is taken apart
//! (`into_parts`): hyper's state and buffers are dropped, and the socket
//! waits for readability on its own. The next request builds a fresh hyper
//! connection on the same socket, with the same service. A busy connection
//! is never parked, so the request path costs nothing more.
//!
//! The first bytes of a plain-text connection are read here to tell HTTP/1
//! from HTTP/2 prior knowledge (whose connections stay with hyper-util's
//! auto builder); [`Rewind`] hands them to hyper again.

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{Worker, stopping};
use crate::activity::{self, ConnActivity, Tracked};
use crate::router::Conn;

/// The HTTP/2 connection preface (RFC 9113 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a plain-text connection say.
pub(super) enum Sniffed {
    /// The client closed before sending anything.
    Closed,
    Http1(Bytes),
    Http2(Bytes),
}

/// Reads until the bytes differ from the HTTP/2 preface or complete it.
pub(super) async fn sniff(stream: &mut TcpStream) -> io::Result<Sniffed> {
    let mut buf = [0u8; PREFACE.len()];
    let mut n = 0;
    loop {
        let read = stream.read(&mut buf[n..]).await?;
        if read == 0 {
            // A partial head then EOF is hyper's to answer.
            return Ok(match n {
                0 => Sniffed::Closed,
                _ => Sniffed::Http1(Bytes::copy_from_slice(&buf[..n])),
            });
        }
        n += read;
        if buf[..n] != PREFACE[..n] {
            return Ok(Sniffed::Http1(Bytes::copy_from_slice(&buf[..n])));
        }
        if n == PREFACE.len() {
            return Ok(Sniffed::Http2(Bytes::copy_from_slice(&buf)));
        }
    }
}

/// A socket that first yields bytes already read from it.
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Rewind { prefix, inner }
    }

    /// Puts `bytes` back in front of what is still to be read.
    fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if self.prefix.is_empty() {
            self.prefix = bytes;
        } else {
            let mut joined = BytesMut::with_capacity(bytes.len() + self.prefix.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&self.prefix);
            self.prefix = joined.freeze();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves a plain-text HTTP/1 connection, parking it whenever it is quiet.
pub(super) async fn serve_h1(
    worker: &Worker,
    mut io: Tracked<Rewind<TcpStream>>,
    conn: Arc<Conn>,
    activity: Arc<ConnActivity>,
) {
    let app = worker.app.clone();
    let mut service =
        service_fn(move |req: hyper::Request<Incoming>| app.clone().handle(conn.clone(), req));
    let server = &worker.app.config.server;
    let mut watchdog = activity::Watchdog::new(
        activity,
        server.idle_timeout,
        server.header_read_timeout,
        worker.app.config.upstream.response_header_timeout,
    );
    // hyper serves these with `half_close`: the watchdog notices a client
    // that leaves mid-request. The socket lives as long as this function.
    watchdog.watch_peer(io.get_ref().inner.as_raw_fd());
    let mut stop = worker.stop.clone();
    let side_waker = SideWaker::new();
    loop {
        // Serving: hyper has the socket.
        let mut connection = Box::new(
            worker
                .h1
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        );
        let mut closing = *stop.borrow();
        if closing {
            Pin::new(&mut *connection).graceful_shutdown();
        }
        let parts = loop {
            if closing {
                // The watchdog still times the last request's upstream
                // (`activity::UpstreamWait`); its other events wait no more.
                let watch = async {
                    loop {
                        watchdog.next().await;
                    }
                };
                if let Either::Main(Err(e)) =
                    race(Pin::new(&mut *connection), watch, &side_waker).await
                {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            let side = async {
                tokio::select! {
                    biased;
                    _ = stop.changed() => None,
                    event = watchdog.next() => Some(event),
                }
            };
            match race(Pin::new(&mut *connection), side, &side_waker).await {
                Either::Main(res) => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                // Stopping.
                Either::Side(None) | Either::Side(Some(activity::Expired::Idle)) => {
                    Pin::new(&mut *connection).graceful_shutdown();
                    closing = true;
                }
                Either::Side(Some(activity::Expired::ClientGone)) => {
                    tracing::debug!("the client hung up while its request was in flight");
                    return;
                }
                // No request in flight: drop the connection, mid-head.
                Either::Side(Some(activity::Expired::Head)) => {
                    tracing::debug!("request head not complete within header_read_timeout");
                    return;
                }
                Either::Side(Some(activity::Expired::Quiet)) => {
                    // Upgraded connections are not handed back (None).
                    match connection.into_parts() {
                        Some(parts) => break parts,
                        None => return,
                    }
                }
            }
        };
        // Parked: only the socket is held.
        io = parts.io.into_inner();
        io.get_mut().unread(parts.read_buf);
        service = parts.service;
        let metrics = &worker.app.metrics;
        metrics.connections_parked.inc();
        let socket = io.get_ref();
        // Bytes already read (pipelined) serve at once; otherwise one timer
        // to the idle deadline, not a tick a second.
        let woken = !socket.prefix.is_empty()
            || tokio::select! {
                ready = socket.inner.readable() => ready.is_ok(),
                () = stopping(&mut stop) => false,
                () = tokio::time::sleep(watchdog.idle_left()) => false,
            };
        metrics.connections_parked.dec();
        if !woken {
            return;
        }
    }
}

/// What [`race`] saw first.
enum Either<A, B> {
    Main(A),
    Side(B),
}

/// The waker of [`race`]'s side future: notes that the side future has
/// something to say, then wakes the task.
struct SideWaker {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl SideWaker {
    /// The flag and wakers' shared state, and the waker `side` is polled with.
    fn new() -> (Arc<SideWaker>, Waker) {
        let side = Arc::new(SideWaker {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(side.clone());
        (side, waker)
    }
}

impl Wake for SideWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Polls `main` at every wake-up of the task and `side` only when its own
/// waker fired (and once at the start). A connection is woken a few times
/// a request, its watchdog once a tick and its stop signal once:
/// `tokio::select!` polled all three at every wake-up, the watchdog's timer
/// and the stop signal's `changed()` future each time (about 600
/// instructions a request, benches/README.md, issue 15). `side` must be
/// woken through the waker it is polled with, as every future is.
async fn race<A, B>(
    mut main: Pin<&mut impl Future<Output = A>>,
    side: impl Future<Output = B>,
    (side_state, side_waker): &(Arc<SideWaker>, Waker),
) -> Either<A, B> {
    let mut side = std::pin::pin!(side);
    side_state.woken.store(true, Ordering::Release);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(a) = main.as_mut().poll(cx) {
            return Poll::Ready(Either::Main(a));
        }
        side_state.task.register(cx.waker());
        if side_state.woken.swap(false, Ordering::AcqRel)
            && let Poll::Ready(b) = side.as_mut().poll(&mut Context::from_waker(side_waker))
        {
            return Poll::Ready(Either::Side(b));
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test]
    async fn race_polls_the_side_future_only_when_its_waker_fired() {
        let side_waker = SideWaker::new();
        let side_polls = Cell::new(0);
        let (tx, mut rx) = tokio::sync::oneshot::channel::<u8>();
        // The main future wakes itself five times, then ends: the side
        // future, never woken, is polled once (at the start) in all.
        let mut main_polls = 0;
        let main = std::future::poll_fn(|cx| {
            main_polls += 1;
            if main_polls < 6 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(main_polls)
            }
        });
        let side = std::future::poll_fn(|cx| {
            side_polls.set(side_polls.get() + 1);
            Pin::new(&mut rx).poll(cx)
        });
        let main = std::pin::pin!(main);
        assert!(matches!(
            race(main, side, &side_waker).await,
            Either::Main(6)
        ));
        assert_eq!(side_polls.get(), 1);
        // Woken through its own waker, the side future is polled and wins.
        let side = std::future::poll_fn(|cx| {
            side_polls.set(side_polls.get() + 1);
            Pin::new(&mut rx).poll(cx)
        });
        let main = std::pin::pin!(std::future::pending::<()>());
        let (won, ()) = tokio::join!(race(main, side, &side_waker), async {
            tokio::task::yield_now().await;
            tx.send(7).unwrap();
        });
        assert!(matches!(won, Either::Side(Ok(7))));
        assert_eq!(side_polls.get(), 3);
    }
}
