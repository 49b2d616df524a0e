//! Per-connection activity, for the keep-alive idle timeout and the request
//! head timeout: the socket counts its reads and writes, the request path
//! counts requests in flight, and one watchdog per connection checks both
//! with a coarse tick (a quarter of the shorter timeout), the way nginx
//! keeps lazy timers. Nothing on the request path arms a timer.
//!
//! - Idle: no request in flight and none started for a full
//!   `server.idle_timeout`. Only requests count: HTTP/2 PING, SETTINGS and
//!   WINDOW_UPDATE frames (the sidecar's own keep-alive PINGs among them)
//!   keep bytes flowing on a connection nobody uses. A slow upstream (no
//!   bytes, one request in flight) never counts as idle.
//! - Head: bytes arrived while no request was in flight (a request head is
//!   being read) and no request has started for `server.header_read_timeout`
//!   (slowloris). HTTP/2 connections are exempt once their first request has
//!   started: between requests they read PING, SETTINGS and WINDOW_UPDATE
//!   frames, which are not request heads.
//!
//! hyper's own `header_read_timeout` did the head part before, but it boxed a
//! fresh timer for every request on a keep-alive connection (1 400
//! instructions a request, benches/README.md) and also cut idle keep-alive
//! connections at the head timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug, Default)]
pub struct ConnActivity {
    in_flight: AtomicUsize,
    /// Requests started so far.
    started: AtomicU64,
    /// Bytes arrived with no request in flight, and no request started since.
    reading_head: AtomicBool,
    /// An HTTP/2 request has been seen: heads are frames, not the socket's.
    h2: AtomicBool,
}

impl ConnActivity {
    pub fn request_started(&self, h2: bool) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        self.reading_head.store(false, Ordering::Relaxed);
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
    }
    pub fn request_done(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && !self.h2.load(Ordering::Relaxed)
            && !self.reading_head.load(Ordering::Relaxed)
        {
            self.reading_head.store(true, Ordering::Relaxed);
        }
    }
}

/// Why the watchdog gave up on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Idle for `idle_timeout`: close gracefully.
    Idle,
    /// A request head took longer than `header_timeout`: no request is in
    /// flight, so the connection can simply be dropped (as nginx does).
    Head,
}

/// Resolves when the connection has been idle for `idle` or has been reading
/// one request head for `head`; each fires between 1× and 1.25× its timeout
/// (the shorter one; the longer one is rounded up to whole ticks).
pub async fn watchdog(activity: Arc<ConnActivity>, idle: Duration, head: Duration) -> Expired {
    const CHECKS: u32 = 4;
    let tick = (idle.min(head) / CHECKS).max(Duration::from_millis(1));
    let ticks_for = |t: Duration| t.as_nanos().div_ceil(tick.as_nanos()).max(1);
    let (idle_ticks, head_ticks) = (ticks_for(idle), ticks_for(head));
    let mut last_started = activity.started.load(Ordering::Relaxed);
    let (mut quiet, mut heading) = (0u128, 0u128);
    loop {
        tokio::time::sleep(tick).await;
        let started = activity.started.load(Ordering::Relaxed);
        let busy = activity.in_flight.load(Ordering::Relaxed) > 0;
        if started != last_started || busy {
            quiet = 0;
        } else {
            quiet += 1;
        }
        // `heading` is 1 at the first tick that sees a head being read (it
        // began at most one tick before), so firing only above `head_ticks`
        // means at least the full timeout has passed.
        if !busy && started == last_started && activity.reading_head.load(Ordering::Relaxed) {
            heading += 1;
        } else {
            heading = 0;
        }
        last_started = started;
        if heading > head_ticks {
            return Expired::Head;
        }
        if quiet >= idle_ticks {
            return Expired::Idle;
        }
    }
}

pin_project_lite::pin_project! {
    /// A socket that reports the bytes it reads to its [`ConnActivity`] (a
/// request head in the making).
    pub struct Tracked<T> {
        #[pin]
        inner: T,
        activity: Arc<ConnActivity>,
    }
}

impl<T> Tracked<T> {
    pub fn new(inner: T, activity: Arc<ConnActivity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if polled.is_ready() && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
