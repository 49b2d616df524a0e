//! Per-connection activity, for the keep-alive idle timeout: the socket counts
//! its reads and writes, the request path counts requests in flight, and a
//! watchdog closes the connection once it has seen neither for a full
//! `server.idle_timeout`. A slow upstream (no bytes, one request in flight)
//! therefore never counts as idle.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug, Default)]
pub struct ConnActivity {
    io_ops: AtomicU64,
    in_flight: AtomicUsize,
}

impl ConnActivity {
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }
    pub fn request_done(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
    fn touch(&self) {
        self.io_ops.fetch_add(1, Ordering::Relaxed);
    }
}

/// Resolves once the connection has been idle for at least `timeout` (and at
/// most 1.25 × `timeout`): checked four times per period to keep timers few.
pub async fn idle(activity: Arc<ConnActivity>, timeout: Duration) {
    const CHECKS: u32 = 4;
    let tick = timeout / CHECKS;
    let mut last = activity.io_ops.load(Ordering::Relaxed);
    let mut quiet = 0;
    loop {
        tokio::time::sleep(tick).await;
        let now = activity.io_ops.load(Ordering::Relaxed);
        if now != last || activity.in_flight.load(Ordering::Relaxed) > 0 {
            last = now;
            quiet = 0;
            continue;
        }
        quiet += 1;
        if quiet >= CHECKS {
            return;
        }
    }
}

pin_project_lite::pin_project! {
    /// A socket that reports each read and write to its [`ConnActivity`].
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
        let polled = this.inner.poll_read(cx, buf);
        if polled.is_ready() {
            this.activity.touch();
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
        let this = self.project();
        let polled = this.inner.poll_write(cx, buf);
        if polled.is_ready() {
            this.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        if polled.is_ready() {
            this.activity.touch();
        }
        polled
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
