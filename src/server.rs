//! Listeners, connections and shutdown. [`run`] is handed bound listeners and
//! a shutdown future (it binds nothing and reads no environment), so tests run
//! the real server in-process on port 0. Each connection speaks HTTP/1.1 or
//! HTTP/2 (h2c prior knowledge, or ALPN h2 under TLS). On shutdown the
//! listeners close at once, every connection is asked to finish its
//! in-flight requests, and `run` returns when all are done or
//! `server.shutdown_timeout` has passed.

mod activity;
pub mod tls;

pub use activity::ConnActivity;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Problem, Problems};
use crate::metrics::Metrics;
use crate::proxy::Upstream;
use crate::router::{App, Conn, Listener};

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
    upstream: Upstream,
}

pub fn prepare(config: &Config) -> Result<Prepared, Problems> {
    let mut problems: Vec<Problem> = Vec::new();
    let tls = match &config.server.tls {
        Some(files) => tls::acceptor(files).map_err(|p| problems.push(p)).ok(),
        None => None,
    };
    let upstream = Upstream::new(config).map_err(|p| problems.push(p)).ok();
    match upstream {
        Some(upstream) if problems.is_empty() => Ok(Prepared { tls, upstream }),
        _ => Err(Problems(problems)),
    }
}

/// Serves until `shutdown` resolves, then drains. Returns `false` when the
/// drain hit `server.shutdown_timeout` with requests still in flight.
pub async fn run(
    config: Config,
    prepared: Prepared,
    listeners: Listeners,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let config = Arc::new(config);
    let app = Arc::new(App::new(config.clone(), metrics, prepared.upstream));
    let builder = Arc::new(http_builder(&config));
    let (stop_tx, stop_rx) = watch::channel(false);
    let conns = TaskTracker::new();

    let mut accept_loops = Vec::new();
    let main = (listeners.main, Listener::Main, prepared.tls.clone());
    let metrics_listener = listeners.metrics.map(|l| (l, Listener::Metrics, None));
    for (listener, kind, tls) in std::iter::once(main).chain(metrics_listener) {
        let ctx = AcceptCtx {
            app: app.clone(),
            builder: builder.clone(),
            tls,
            kind,
            stop: stop_rx.clone(),
            conns: conns.clone(),
        };
        accept_loops.push(tokio::spawn(accept_loop(listener, ctx)));
    }

    shutdown.await;
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    let _ = stop_tx.send(true);
    for l in accept_loops {
        // The loops end on the stop signal and drop their listeners, so new
        // connections are refused from here on.
        let _ = l.await;
    }
    conns.close();
    app.tasks.close();
    let drained = tokio::time::timeout(config.server.shutdown_timeout, async {
        conns.wait().await;
        app.tasks.wait().await;
    })
    .await
    .is_ok();
    if drained {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!(
            timeout = ?config.server.shutdown_timeout,
            "shutdown timeout reached with requests still in flight"
        );
    }
    drained
}

fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let max_header = config.server.max_header_bytes;
    let mut b = auto::Builder::new(TokioExecutor::new());
    // The request path answers 431 with a body once the head exceeds
    // `max_header_bytes`; hyper's own (bodiless) 431 is the backstop for
    // heads too large to buffer at all.
    let hard_limit = (2 * max_header + 4096).max(8192);
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.server.header_read_timeout)
        .max_buf_size(hard_limit)
        .max_headers(512)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(hard_limit).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

struct AcceptCtx {
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
    kind: Listener,
    stop: watch::Receiver<bool>,
    conns: TaskTracker,
}

async fn accept_loop(listener: TcpListener, ctx: AcceptCtx) {
    let ctx = Arc::new(ctx);
    let mut stop = ctx.stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    ctx.conns.spawn(serve_connection(ctx.clone(), stream, peer));
                }
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

async fn serve_connection(ctx: Arc<AcceptCtx>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let header_timeout = ctx.app.config.server.header_read_timeout;
    let activity = Arc::new(ConnActivity::default());
    match &ctx.tls {
        Some(acceptor) => {
            match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let io = activity::Tracked::new(tls, activity.clone());
                    serve_io(&ctx, io, peer, true, activity).await
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
        None => {
            // hyper starts its header timer only after sniffing the protocol,
            // so bound the wait for the first byte here.
            let mut first = [0u8; 1];
            match tokio::time::timeout(header_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {
                    let io = activity::Tracked::new(stream, activity.clone());
                    serve_io(&ctx, io, peer, false, activity).await
                }
                _ => {}
            }
        }
    }
}

async fn serve_io<I>(
    ctx: &AcceptCtx,
    io: I,
    peer: SocketAddr,
    tls: bool,
    activity: Arc<ConnActivity>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(Conn {
        peer,
        tls,
        activity: activity.clone(),
        listener: ctx.kind,
    });
    let app = ctx.app.clone();
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let app = app.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(app.handle(&conn, req).await) }
    });
    let connection = ctx
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let idle = activity::idle(activity, ctx.app.config.server.idle_timeout);
    tokio::pin!(idle);
    let mut stop = ctx.stop.clone();
    let mut closing = *stop.borrow();
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
            () = &mut idle, if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
