//! Listeners, connections and shutdown. [`run`] is handed bound listeners and
//! a shutdown future (it binds nothing and reads no environment), so tests run
//! the real server in-process on port 0. Each connection speaks HTTP/1.1 or
//! HTTP/2 (h2c prior knowledge, or ALPN h2 under TLS). On shutdown the
//! listeners close at once, every connection is asked to finish its
//! in-flight requests, and `run` returns when all are done or
//! `server.shutdown_timeout` has passed.

mod park;
mod reload;
mod sched;
pub mod tls;

pub use reload::Reloader;

use crate::activity::{self, ConnActivity};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::{Config, Problem, Problems, StoreKind, WorkerScheduling};
use crate::metrics::Metrics;
use crate::proxy::Upstream;
use crate::router::{App, Conn, Listener, Rules};
use crate::session::memory::MemoryStore;
use crate::session::redis::RedisStore;
use crate::session::{IdentityRules, SessionStore};

/// Sockets the server serves; bound by the caller.
pub struct Listeners {
    pub main: TcpListener,
    /// Serves `/metrics` (and `/ping`, `/ready`) only, when `server.metrics_listen` is set.
    pub metrics: Option<TcpListener>,
}

/// What is built from the configuration before serving: anything here that
/// fails is a configuration problem (exit 2), found by `check-config` too.
pub struct Prepared {
    tls: Option<TlsAcceptor>,
    /// Login flow and sessions, shared by every worker.
    auth: Arc<Auth>,
    /// One upstream client (and so one connection pool) per worker.
    upstreams: Vec<Upstream>,
    /// The request rules every worker reads, replaced by a reload.
    rules: Arc<ArcSwap<Rules>>,
}

impl Prepared {
    /// What applies a reloaded configuration to this server (`SIGHUP`);
    /// `running` is the configuration it was prepared from.
    pub fn reloader(
        &self,
        path: &std::path::Path,
        running: &Config,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        Reloader::new(
            path,
            running,
            self.auth.clone(),
            self.rules.clone(),
            metrics,
        )
    }
}

/// How many worker threads `server.workers` asks for (0: one per CPU, as
/// nginx's `worker_processes auto`). One more than that was tried and left
/// out: it filled idle CPU at 128 connections on some runs and left more of
/// it idle at 16 (benches/README.md, "Idle CPU and the number of workers").
pub fn worker_count(config: &Config) -> usize {
    match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
}

pub fn prepare(config: &Config, metrics: Arc<Metrics>) -> Result<Prepared, Problems> {
    let mut problems: Vec<Problem> = Vec::new();
    let provider = crate::provider::build(config, metrics.clone()).map_err(|message| {
        problems.push(Problem {
            key: "provider".into(),
            message,
            source: None,
        })
    });
    let tls = match &config.server.tls {
        Some(files) => tls::acceptor(files).map_err(|p| problems.push(p)).ok(),
        None => None,
    };
    let mut upstreams = Vec::new();
    for _ in 0..worker_count(config) {
        match Upstream::new(config) {
            Ok(u) => upstreams.push(u),
            Err(p) => {
                problems.push(p);
                break;
            }
        }
    }
    let store: Option<Arc<dyn SessionStore>> = match &config.session.store {
        StoreKind::Memory => Some(Arc::new(MemoryStore::new(
            config.session.max_sessions,
            config.session.lifetime,
            config.session.idle_timeout,
        ))),
        StoreKind::Redis(redis) => RedisStore::new(
            redis,
            &config.session,
            IdentityRules::new(config),
            config.token.refresh_margin,
            metrics.clone(),
        )
        .map(|s| Arc::new(s) as Arc<dyn SessionStore>)
        .map_err(|p| problems.push(p))
        .ok(),
    };
    let bearer = match (&provider, config.bearer.enabled) {
        (Ok(p), true) => {
            match crate::provider::bearer_issuers(config, p.clone(), metrics.clone()) {
                Ok(issuers) => Some(crate::auth::bearer::Bearer::new(
                    config,
                    issuers,
                    metrics.clone(),
                )),
                Err(message) => {
                    problems.push(Problem {
                        key: "bearer.extra_issuers".into(),
                        message,
                        source: None,
                    });
                    None
                }
            }
        }
        _ => None,
    };
    match (provider, store) {
        (Ok(provider), Some(store)) if problems.is_empty() => {
            let auth = Arc::new(Auth::new(config, provider, store, bearer, metrics));
            Ok(Prepared {
                tls,
                auth,
                upstreams,
                rules: Arc::new(ArcSwap::from_pointee(Rules::new(config))),
            })
        }
        _ => Err(Problems(problems)),
    }
}

/// An accepted connection on its way to a worker.
/// The permit it holds counts it against `server.max_connections` until the
/// connection ends.
type Handoff = (
    std::net::TcpStream,
    SocketAddr,
    Listener,
    tokio::sync::OwnedSemaphorePermit,
);

/// Connections the metrics listener serves at once, apart from the main
/// listener's limit, so Prometheus can scrape a saturated sidecar.
const METRICS_CONNECTIONS: usize = 64;

/// Serves until `shutdown` resolves, then drains. Returns `false` when the
/// drain hit `server.shutdown_timeout` with requests still in flight.
///
/// Connections are served by worker threads, one per CPU by default, each a
/// single-threaded runtime with its own upstream pool: a request never
/// crosses threads (nginx's worker model). Cross-thread wake-ups cost more
/// than the proxying itself on small requests; `benches/README.md` has the
/// figures. The accept loops run on the caller's runtime and hand each new
/// connection to the next worker in turn.
pub async fn run(
    config: Config,
    prepared: Prepared,
    listeners: Listeners,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let config = Arc::new(config);
    // Store connections and subscriptions live on this runtime, for as
    // long as the server runs.
    prepared.auth.start_store();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (release_tx, release_rx) = watch::channel(0u64);
    let mut senders = Vec::new();
    let mut drained = Vec::new();
    for (i, upstream) in prepared.upstreams.into_iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel::<Handoff>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let worker = Worker {
            app: Arc::new(App::new(
                config.clone(),
                prepared.rules.clone(),
                metrics.clone(),
                upstream,
                prepared.auth.clone(),
            )),
            builder: http_builder(&config),
            h1: http1_builder(&config),
            tls: prepared.tls.clone(),
            stop: stop_rx.clone(),
            scheduling: config.server.worker_scheduling,
            release: release_rx.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("emp-worker-{i}"))
            .spawn(move || worker.run(rx, done_tx));
        match spawned {
            Ok(_) => {
                senders.push(tx);
                drained.push(done_rx);
            }
            Err(e) => tracing::error!(error = %e, "cannot start a worker thread"),
        }
    }
    if senders.is_empty() {
        tracing::error!("no worker thread could be started");
        return false;
    }
    let dispatch = Arc::new(Dispatch {
        senders,
        next: AtomicUsize::new(0),
    });

    let mut accept_loops = Vec::new();
    let main = (listeners.main, Listener::Main);
    let metrics_listener = listeners.metrics.map(|l| (l, Listener::Metrics));
    for (listener, kind) in std::iter::once(main).chain(metrics_listener) {
        let limit = match kind {
            Listener::Main => config.server.max_connections,
            Listener::Metrics => METRICS_CONNECTIONS,
        };
        accept_loops.push(tokio::spawn(accept_loop(
            listener,
            kind,
            Arc::new(tokio::sync::Semaphore::new(limit)),
            dispatch.clone(),
            stop_rx.clone(),
            metrics.clone(),
        )));
    }

    let trimmer = tokio::spawn(return_memory_after_bursts(metrics.clone(), release_tx));
    shutdown.await;
    trimmer.abort();
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    let _ = stop_tx.send(true);
    for l in accept_loops {
        // The loops end on the stop signal and drop their listeners, so new
        // connections are refused from here on.
        let _ = l.await;
    }
    // The last handle on the senders: workers see their channel close, stop
    // taking connections and wait for the ones they have.
    drop(dispatch);
    let all_drained = tokio::time::timeout(config.server.shutdown_timeout, async {
        for d in drained {
            let _ = d.await;
        }
    })
    .await
    .is_ok();
    if all_drained {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!(
            timeout = ?config.server.shutdown_timeout,
            "shutdown timeout reached with requests still in flight"
        );
    }
    all_drained
}

/// Gives memory back to the system once a burst of connections is over.
/// Each connection's buffers and state (about 23 KiB just after a
/// request, mostly hyper's read and write buffers) go back to the
/// allocator when it closes or is parked, and the allocator keeps them
/// (with glibc's, RSS stayed at 326 MiB after 10 000 idle connections
/// closed). Every 2 s, when at least 256 connections fewer are open than
/// at the last look, or at least 256 more are parked (`park.rs`), every
/// worker is told through `release` to give its free pages back
/// ([`crate::memory`]; benches/README.md, "Memory per connection").
async fn return_memory_after_bursts(metrics: Arc<Metrics>, release: watch::Sender<u64>) {
    const EVERY: Duration = Duration::from_secs(2);
    const DROP: i64 = 256;
    let mut parked_before = 0;
    loop {
        tokio::time::sleep(EVERY).await;
        let open = metrics.connections_open.get();
        // The most connections open at once since the last look, however
        // short the burst was.
        let high = metrics.connections_high.swap(open, Ordering::Relaxed);
        // Connections parked since the last look freed their buffers too.
        let parked = metrics.connections_parked.get();
        let newly_parked = parked - parked_before;
        parked_before = parked;
        if high - open >= DROP || newly_parked >= DROP {
            release.send_modify(|n| *n += 1);
            crate::memory::release_this_thread();
            crate::memory::release_c_heap();
            tracing::debug!("asked the workers to return free memory to the system");
        }
    }
}

/// A worker's side of [`return_memory_after_bursts`].
async fn release_memory_when_told(mut told: watch::Receiver<u64>) {
    while told.changed().await.is_ok() {
        crate::memory::release_this_thread();
    }
}

/// Hands accepted connections to the workers, round robin.
struct Dispatch {
    senders: Vec<mpsc::UnboundedSender<Handoff>>,
    next: AtomicUsize,
}

impl Dispatch {
    fn send(&self, handoff: Handoff) {
        let n = self.senders.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut handoff = handoff;
        // A worker whose thread died is skipped; the connection goes to the next.
        for i in 0..n {
            match self.senders[(first + i) % n].send(handoff) {
                Ok(()) => return,
                Err(mpsc::error::SendError(h)) => handoff = h,
            }
        }
        tracing::error!("no worker left to serve a connection");
    }
}

/// The HTTP/1 settings, on hyper's builder and hyper-util's alike.
macro_rules! http1_settings {
    ($builder:expr, $config:expr) => {
        $builder
            // The request-head timeout is the connection watchdog's
            // (`activity.rs`); hyper's would arm a timer per request.
            .header_read_timeout(None)
            .max_buf_size(hard_limit($config))
            // hyper's default count, as Envoy's and HAProxy's: within it the
            // parser's tables sit on the stack; a larger count (this was
            // 512) allocates two, about 36 KiB, for every request
            // (callgrind, benches/README.md, issue 15).
            .max_headers(100)
            .keep_alive(true)
    };
}

/// The request path answers 431 with a body once the head exceeds
/// `max_header_bytes`; hyper's own (bodiless) 431 is the backstop for heads
/// too large to buffer at all.
fn hard_limit(config: &Config) -> usize {
    (2 * config.server.max_header_bytes + 4096).max(8192)
}

/// Plain-text HTTP/1 connections (parked when quiet, `park.rs`).
fn http1_builder(config: &Config) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    http1_settings!(b, config);
    // Without it, hyper reads the socket while a request is in flight to
    // see the client leave, and so reserves a fresh read buffer for every
    // request (the request still holds the old one): 1 300 instructions and
    // an 8 KiB allocation a request (benches/README.md, issue 15). The
    // connection's watchdog watches for the client leaving instead
    // (`activity::Expired::ClientGone`).
    b.half_close(true);
    b
}

/// TLS connections and HTTP/2.
fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let hard_limit = hard_limit(config);
    let mut b = auto::Builder::new(TokioExecutor::new());
    http1_settings!(b.http1(), config);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(hard_limit).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

async fn accept_loop(
    listener: TcpListener,
    kind: Listener,
    limit: Arc<tokio::sync::Semaphore>,
    dispatch: Arc<Dispatch>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let mut warned: Option<std::time::Instant> = None;
    loop {
        // At the limit, new connections wait in the kernel's backlog (as
        // nginx's do past worker_connections) until one ends.
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                metrics.connection_limit_reached(kind == Listener::Main);
                if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    warned = Some(std::time::Instant::now());
                    tracing::warn!(
                        listener = ?kind,
                        "server.max_connections reached: new connections wait"
                    );
                }
                tokio::select! {
                    p = limit.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    _ = stop.changed() => return,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match stream.into_std() {
                    Ok(std_stream) => dispatch.send((std_stream, peer, kind, permit)),
                    Err(e) => tracing::warn!(error = %e, "cannot hand a connection over"),
                },
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// One worker thread: a single-threaded runtime serving the connections
/// handed to it, with its own upstream pool.
struct Worker {
    app: Arc<App>,
    builder: auto::Builder<TokioExecutor>,
    h1: hyper::server::conn::http1::Builder,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
    scheduling: WorkerScheduling,
    /// Told when a burst of connections is over ([`return_memory_after_bursts`]).
    release: watch::Receiver<u64>,
}

impl Worker {
    fn run(self, mut conns_in: mpsc::UnboundedReceiver<Handoff>, drained: oneshot::Sender<()>) {
        if let Err(e) = sched::apply(self.scheduling) {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                tracing::warn!(
                    error = %e,
                    "cannot set server.worker_scheduling; the workers keep the normal policy"
                );
            });
        }
        crate::access_log::batch_on_this_thread();
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Access lines wait in a buffer while there is work, and are
            // written before the worker waits for more.
            .on_thread_park(crate::access_log::flush)
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a worker runtime");
                return;
            }
        };
        let worker = Arc::new(self);
        runtime.block_on(async {
            let maintenance = tokio::spawn(worker.app.maintenance());
            let release = tokio::spawn(release_memory_when_told(worker.release.clone()));
            let conns = TaskTracker::new();
            while let Some((stream, peer, kind, permit)) = conns_in.recv().await {
                match TcpStream::from_std(stream) {
                    Ok(stream) => {
                        let serve = serve_connection(worker.clone(), stream, peer, kind);
                        let metrics = worker.app.metrics.clone();
                        conns.spawn(async move {
                            metrics.connections_open.inc();
                            metrics
                                .connections_high
                                .fetch_max(metrics.connections_open.get(), Ordering::Relaxed);
                            serve.await;
                            metrics.connections_open.dec();
                            drop(permit);
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot register a connection"),
                }
            }
            conns.close();
            conns.wait().await;
            worker.app.tasks.close();
            worker.app.tasks.wait().await;
            maintenance.abort();
            release.abort();
        });
        crate::access_log::flush();
        let _ = drained.send(());
    }
}

async fn serve_connection(
    worker: Arc<Worker>,
    stream: TcpStream,
    peer: SocketAddr,
    kind: Listener,
) {
    let _ = stream.set_nodelay(true);
    let header_timeout = worker.app.config.server.header_read_timeout;
    let activity = Arc::new(ConnActivity::default());
    let tls = match kind {
        Listener::Main => worker.tls.as_ref(),
        Listener::Metrics => None,
    };
    // Until the first byte (or the TLS handshake) the connection holds no
    // request: on shutdown it is closed at once instead of holding the
    // drain for the head timeout (clients open spare connections they may
    // never use).
    let mut stop = worker.stop.clone();
    match tls {
        // Boxed, like the HTTP/2 branch below: they are several kilobytes,
        // and the connection's task should not carry them for every
        // plain-text HTTP/1 connection.
        Some(acceptor) => {
            Box::pin(async {
                let handshake = tokio::time::timeout(header_timeout, acceptor.accept(stream));
                let handshake = tokio::select! {
                    h = handshake => h,
                    () = stopping(&mut stop) => return,
                };
                match handshake {
                    Ok(Ok(tls)) => {
                        let io = activity::Tracked::new(tls, activity.clone());
                        serve_io(&worker, io, peer, true, kind, activity).await
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            })
            .await
        }
        None => {
            // The first bytes tell HTTP/1 from HTTP/2 prior knowledge; the
            // wait for them is bounded here (hyper's watchdog starts after).
            let mut stream = stream;
            let sniffed = tokio::select! {
                s = tokio::time::timeout(header_timeout, park::sniff(&mut stream)) => s,
                () = stopping(&mut stop) => return,
            };
            match sniffed {
                Ok(Ok(park::Sniffed::Http1(prefix))) => {
                    let io =
                        activity::Tracked::new(park::Rewind::new(prefix, stream), activity.clone());
                    let conn = new_conn(peer, false, kind, activity.clone());
                    park::serve_h1(&worker, io, conn, activity).await
                }
                Ok(Ok(park::Sniffed::Http2(prefix))) => {
                    let io =
                        activity::Tracked::new(park::Rewind::new(prefix, stream), activity.clone());
                    Box::pin(serve_io(&worker, io, peer, false, kind, activity)).await
                }
                _ => {}
            }
        }
    }
}

fn new_conn(peer: SocketAddr, tls: bool, kind: Listener, activity: Arc<ConnActivity>) -> Arc<Conn> {
    Arc::new(Conn {
        peer,
        peer_ip: crate::proxy::headers::ip_header(peer.ip()),
        tls,
        activity,
        listener: kind,
    })
}

/// Resolves once shutdown has begun (at once if it has already).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

async fn serve_io<I>(
    ctx: &Worker,
    io: I,
    peer: SocketAddr,
    tls: bool,
    kind: Listener,
    activity: Arc<ConnActivity>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = new_conn(peer, tls, kind, activity.clone());
    let app = ctx.app.clone();
    let service =
        service_fn(move |req: hyper::Request<Incoming>| app.clone().handle(conn.clone(), req));
    let connection = ctx
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let server = &ctx.app.config.server;
    let watchdog = activity::watchdog(
        activity,
        server.idle_timeout,
        server.header_read_timeout,
        ctx.app.config.upstream.response_header_timeout,
    );
    tokio::pin!(watchdog);
    let mut stop = ctx.stop.clone();
    let mut closing = *stop.borrow();
    let mut watching = true;
    if closing {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            res = connection.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            // Polled while closing too: it times the last request's upstream
            // (`activity::UpstreamWait`). It resolves at most once.
            expired = &mut watchdog, if watching => {
                watching = false;
                match expired {
                    _ if closing => {}
                    activity::Expired::Idle => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    // No request in flight: drop the connection, mid-head.
                    activity::Expired::Head => {
                        tracing::debug!("request head not complete within header_read_timeout");
                        return;
                    }
                    // `activity::watchdog` never reports these: TLS and HTTP/2
                    // connections are not parked, and hyper watches their
                    // clients itself.
                    activity::Expired::Quiet | activity::Expired::ClientGone => {}
                }
            }
        }
    }
}
