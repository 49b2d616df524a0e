//! Per-connection activity, for the keep-alive idle timeout and the request
//! head timeout: the socket counts its reads and writes, the request path
//! counts requests in flight, and one watchdog per connection checks them
//! with a coarse tick (a quarter of the shortest timeout), the way nginx
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
//! - Late upstream: an HTTP/1 request (served in the connection's task) has
//!   waited `upstream.response_header_timeout` for its response head
//!   ([`UpstreamWait`]); the watchdog flags it and the request answers 504.
//!   HTTP/2 streams run in tasks of their own and keep a timer.
//!
//! hyper's own `header_read_timeout` did the head part before, but it boxed a
//! fresh timer for every request on a keep-alive connection (1 400
//! instructions a request, benches/README.md) and also cut idle keep-alive
//! connections at the head timeout.

use std::io;
use std::os::fd::RawFd;
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
    /// Bytes were handed to the socket and not flushed since.
    unflushed: AtomicBool,
    /// A request served in the connection's own task waits for its
    /// upstream's response head, timed by the watchdog ([`UpstreamWait`]).
    awaiting_upstream: AtomicBool,
    /// The watchdog found that wait longer than the response-head timeout.
    upstream_late: AtomicBool,
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
    /// Nothing in flight, no head being read, everything written: the
    /// connection holds no request state but its buffers.
    pub fn parkable(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && !self.reading_head.load(Ordering::Relaxed)
            && !self.unflushed.load(Ordering::Relaxed)
    }
    /// Starts the watchdog's response-head clock for an HTTP/1 request:
    /// its connection's task polls both the request and the watchdog, so
    /// the request needs no timer of its own (a timer registered and
    /// removed every request, ~500 instructions, benches/README.md). The
    /// clock stops when the guard is dropped.
    pub fn upstream_wait(&self) -> UpstreamWait<'_> {
        self.upstream_late.store(false, Ordering::Relaxed);
        self.awaiting_upstream.store(true, Ordering::Relaxed);
        UpstreamWait(self)
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

/// A request's wait for its upstream's response head, timed by its
/// connection's watchdog ([`ConnActivity::upstream_wait`]).
pub struct UpstreamWait<'a>(&'a ConnActivity);

impl UpstreamWait<'_> {
    /// Resolves once the watchdog has found the wait longer than the
    /// response-head timeout. Registers no waker: the watchdog runs in the
    /// same task (the connection's) and wakes it when it sets the flag.
    pub fn late(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|_| {
            if self.0.upstream_late.load(Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

impl Drop for UpstreamWait<'_> {
    fn drop(&mut self) {
        self.0.awaiting_upstream.store(false, Ordering::Relaxed);
    }
}

/// What the watchdog saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Idle for `idle_timeout`: close gracefully.
    Idle,
    /// A request head took longer than `header_timeout`: no request is in
    /// flight, so the connection can simply be dropped (as nginx does).
    Head,
    /// Quiet for a while (at least [`PARK_AFTER`]) with every response
    /// written: an HTTP/1 connection can give its buffers back
    /// (`server/park.rs`). Reported once per quiet spell.
    Quiet,
    /// The client hung up (or shut its side) while a request was in
    /// flight: drop the connection, and with it the upstream request, as
    /// nginx does unless told `proxy_ignore_client_abort`. Only for
    /// connections whose socket the watchdog was given
    /// ([`Watchdog::watch_peer`]).
    ClientGone,
}

/// How long an HTTP/1 connection stays quiet before its buffers are freed.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// One per connection: checks its [`ConnActivity`] with a coarse tick (a
/// quarter of the shortest timeout, at most [`PARK_AFTER`]). Each `Idle`,
/// `Head` or late upstream fires between 1× and 1.25× its timeout (the
/// shortest one; the longer ones are rounded up to whole ticks, so at
/// most a tick, 1 s, late). A parked connection does not tick: it sleeps
/// until [`Watchdog::idle_left`] has passed.
pub struct Watchdog {
    activity: Arc<ConnActivity>,
    tick: Duration,
    idle_ticks: u128,
    head_ticks: u128,
    response_ticks: u128,
    park_ticks: u128,
    last_started: u64,
    quiet: u128,
    heading: u128,
    /// Ticks a request has waited for its upstream's response head.
    waiting: u128,
    /// `Quiet` was reported in this quiet spell.
    reported: bool,
    /// The client's socket, peeked at each tick while a request is in flight.
    peer: Option<RawFd>,
}

impl Watchdog {
    /// `idle`, `head`: the server's keep-alive and request-head timeouts;
    /// `response`: the upstream's response-head timeout, for the requests
    /// that wait for it in the connection's task ([`UpstreamWait`]).
    pub fn new(
        activity: Arc<ConnActivity>,
        idle: Duration,
        head: Duration,
        response: Duration,
    ) -> Watchdog {
        const CHECKS: u32 = 4;
        let tick = (idle.min(head).min(response) / CHECKS)
            .min(PARK_AFTER)
            .max(Duration::from_millis(1));
        let ticks_for = |t: Duration| t.as_nanos().div_ceil(tick.as_nanos()).max(1);
        let last_started = activity.started.load(Ordering::Relaxed);
        Watchdog {
            activity,
            tick,
            idle_ticks: ticks_for(idle),
            head_ticks: ticks_for(head),
            response_ticks: ticks_for(response),
            park_ticks: ticks_for(PARK_AFTER),
            last_started,
            quiet: 0,
            heading: 0,
            waiting: 0,
            reported: false,
            peer: None,
        }
    }

    /// Checks at each tick whether the client behind `fd` hung up while a
    /// request is in flight ([`Expired::ClientGone`]). For plain HTTP/1
    /// connections served with hyper's `half_close`: hyper then does not
    /// read the socket while a request is in flight, which spares it a new
    /// read buffer for every request (benches/README.md, issue 15), and the
    /// watchdog notices a client that left, at most a tick late. `fd` must
    /// stay open as long as this watchdog is polled.
    pub fn watch_peer(&mut self, fd: RawFd) {
        self.peer = Some(fd);
    }

    /// How long the connection may stay idle from now: what a parked
    /// connection sleeps (nothing can happen on it but a new request).
    pub fn idle_left(&self) -> Duration {
        let ticks = self.idle_ticks.saturating_sub(self.quiet);
        self.tick
            .saturating_mul(u32::try_from(ticks).unwrap_or(u32::MAX))
    }

    /// The next event. Cancel-safe: the counts live in `self`, a cancelled
    /// call only loses the tick it was waiting for.
    pub async fn next(&mut self) -> Expired {
        loop {
            tokio::time::sleep(self.tick).await;
            let activity = &self.activity;
            let started = activity.started.load(Ordering::Relaxed);
            let busy = activity.in_flight.load(Ordering::Relaxed) > 0;
            if busy && self.peer.is_some_and(peer_hung_up) {
                return Expired::ClientGone;
            }
            if started != self.last_started || busy {
                self.quiet = 0;
                self.reported = false;
            } else {
                self.quiet += 1;
            }
            // `heading` is 1 at the first tick that sees a head being read (it
            // began at most one tick before), so firing only above `head_ticks`
            // means at least the full timeout has passed.
            if !busy
                && started == self.last_started
                && activity.reading_head.load(Ordering::Relaxed)
            {
                self.heading += 1;
            } else {
                self.heading = 0;
            }
            // Counted like `heading`; a new request restarts the count.
            self.waiting = match activity.awaiting_upstream.load(Ordering::Relaxed) {
                false => 0,
                true if busy && started == self.last_started => self.waiting + 1,
                true => 1,
            };
            self.last_started = started;
            if self.heading > self.head_ticks {
                return Expired::Head;
            }
            if self.waiting > self.response_ticks
                && !activity.upstream_late.swap(true, Ordering::Relaxed)
            {
                // The request checks the flag when its task is polled next:
                // this task (`UpstreamWait::late`).
                tokio::task::yield_now().await;
            }
            if self.quiet >= self.idle_ticks {
                return Expired::Idle;
            }
            if self.quiet >= self.park_ticks && !self.reported && activity.parkable() {
                self.reported = true;
                return Expired::Quiet;
            }
        }
    }
}

/// Whether the peer of the socket `fd` has closed or shut its sending side
/// (a read would see the end of the stream) or reset the connection.
/// Bytes waiting to be read (a pipelined request) are not a hang-up.
#[cfg(target_os = "linux")]
fn peer_hung_up(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `recv` writes at most one byte into `byte`, which outlives the
    // call; `fd` is a socket its connection keeps open (`watch_peer`).
    let n = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => !matches!(
            io::Error::last_os_error().kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ),
    }
}

#[cfg(not(target_os = "linux"))]
fn peer_hung_up(_fd: RawFd) -> bool {
    false
}

/// Resolves when the connection has been idle for `idle` or has been
/// reading one request head for `head` ([`Watchdog`] without parking); an
/// upstream later than `response` is flagged on the way.
pub async fn watchdog(
    activity: Arc<ConnActivity>,
    idle: Duration,
    head: Duration,
    response: Duration,
) -> Expired {
    let mut w = Watchdog::new(activity, idle, head, response);
    loop {
        match w.next().await {
            Expired::Quiet => {}
            other => return other,
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
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
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
        let this = self.project();
        this.activity.unflushed.store(true, Ordering::Relaxed);
        this.inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        this.activity.unflushed.store(true, Ordering::Relaxed);
        this.inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let polled = this.inner.poll_flush(cx);
        if let Poll::Ready(Ok(())) = polled {
            this.activity.unflushed.store(false, Ordering::Relaxed);
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    /// Runs `requests` one after another on a connection, each waiting
    /// for its upstream for its given time (`None`: until flagged late),
    /// polled in one task with the watchdog, as a connection is. Returns
    /// how long the last one waited until the watchdog flagged it.
    async fn last_flagged_after(
        activity: &ConnActivity,
        w: &mut Watchdog,
        requests: &[Option<Duration>],
    ) -> Duration {
        let requests = async {
            // Mid-tick, so a bound off by a tick shows.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut took = Duration::ZERO;
            for waits in requests {
                activity.request_started(false);
                let wait = activity.upstream_wait();
                let from = tokio::time::Instant::now();
                match waits {
                    Some(d) => tokio::select! {
                        () = wait.late() => panic!("flagged after {:?}", from.elapsed()),
                        () = tokio::time::sleep(*d) => {}
                    },
                    None => wait.late().await,
                }
                took = from.elapsed();
                drop(wait);
                activity.request_done();
            }
            took
        };
        tokio::select! {
            took = requests => took,
            e = w.next() => panic!("the watchdog reported {e:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_flags_an_upstream_later_than_the_response_head_timeout() {
        let activity = Arc::new(ConnActivity::default());
        let second = Duration::from_secs(1);
        // A 250 ms tick.
        let mut w = Watchdog::new(activity.clone(), 60 * second, 30 * second, second);
        let within = |took: Duration| took >= second && took <= second * 5 / 4;
        // Flagged between 1× and 1.25× the timeout.
        let took = last_flagged_after(&activity, &mut w, &[None]).await;
        assert!(within(took), "{took:?}");
        // Each request on the connection gets a clock of its own: waits
        // that ended in time (together longer than the timeout) leave
        // nothing behind.
        let ms = Duration::from_millis;
        let took =
            last_flagged_after(&activity, &mut w, &[Some(ms(800)), Some(ms(700)), None]).await;
        assert!(within(took), "{took:?}");
    }

    #[tokio::test]
    async fn a_write_not_yet_flushed_keeps_a_connection_from_parking() {
        let activity = Arc::new(ConnActivity::default());
        let (client, _server) = tokio::io::duplex(8);
        let mut io = Tracked::new(client, activity.clone());
        assert!(activity.parkable());
        // The peer reads nothing: 8 bytes fit, the rest waits.
        let written = io.write(b"0123456789abcdef").await.unwrap();
        assert_eq!(written, 8);
        assert!(!activity.parkable(), "bytes handed over and not flushed");
        let more = tokio::time::timeout(Duration::from_millis(50), io.write(b"x")).await;
        assert!(more.is_err(), "the pipe is full");
        assert!(!activity.parkable());
        io.flush().await.unwrap();
        assert!(activity.parkable(), "flushed");
        activity.request_started(false);
        assert!(!activity.parkable(), "a request in flight");
        activity.request_done();
        assert!(activity.parkable());
    }
}
