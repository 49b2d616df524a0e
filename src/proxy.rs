//! Forwarding to the upstream app: filter the request headers, send it on a
//! pooled connection (the exchange runs in the request's own task), bound
//! the wait for the response head, filter the response headers, and relay
//! protocol upgrades (WebSocket) as a two-way byte copy.
//! Bodies stream in both directions and are never buffered whole.

pub mod h1;
pub mod headers;
pub mod pool;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

use crate::activity::ConnActivity;
use crate::body::Body;
use crate::config::{Config, HostHeader, Problem};
use crate::error::ProxyError;
use crate::metrics::ClientErrorKind;
use pool::{Pool, PoolError};
use upstream::{ClientBodyError, SentBody};

/// The upstream app and how to reach it; built once at start.
pub struct Upstream {
    pool: Arc<Pool>,
    /// The upstream URL's path without its trailing `/`, prefixed to every request path.
    base_path: String,
    host: HeaderValue,
    host_header: HostHeader,
    response_header_timeout: Duration,
    body_read_timeout: Duration,
    allowed_upgrades: Vec<String>,
    trust_forwarded: bool,
    cookie_name: String,
    claim_headers: Vec<HeaderName>,
}

/// Headers the sidecar adds to a forwarded request (the identity of the
/// session or bearer token), written straight into the upstream head after
/// the request's own, whose versions of these names never pass
/// ([`headers::UpstreamHead`]; `Authorization` when replaced). The token's
/// and the claims' lines come rendered (`name: value\r\n` each), once per
/// token and per login, and are copied as they are.
#[derive(Clone, Copy, Default)]
pub struct Added<'a> {
    /// `Authorization: Bearer` and/or `X-Forwarded-Access-Token`
    /// ([`crate::session::TokenHeaders::lines`]).
    pub token_lines: &'a [u8],
    /// `token_lines` carries `Authorization`: the client's does not pass.
    pub authorization: bool,
    /// `[headers.claims]` ([`crate::session::Identity::claim_lines`]).
    pub claim_lines: &'a [u8],
    pub backend_url: Option<(&'a HeaderName, &'a HeaderValue)>,
}

/// What the proxy needs to know about the client's connection.
pub struct ClientInfo<'a> {
    /// The client's IP address, as header text (`X-Forwarded-For`).
    pub ip: &'a HeaderValue,
    pub tls: bool,
    pub request_id: &'a HeaderValue,
    /// The connection's activity, when its watchdog times the response
    /// head (an HTTP/1 request, polled in the connection's task).
    pub watched: Option<&'a ConnActivity>,
}

impl Upstream {
    pub fn new(config: &Config) -> Result<Self, Problem> {
        let cfg = &config.upstream;
        let problem = |message: String| Problem {
            key: "upstream.url".into(),
            message,
            source: None,
        };
        let url = &cfg.url;
        let host = url.host_str().unwrap_or_default();
        let authority_text = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let host = HeaderValue::from_str(&authority_text)
            .map_err(|e| problem(format!("invalid host: {e}")))?;
        Ok(Self {
            pool: upstream::pool(cfg)?,
            base_path: url.path().trim_end_matches('/').to_string(),
            host,
            host_header: cfg.host_header,
            response_header_timeout: cfg.response_header_timeout,
            body_read_timeout: config.server.body_read_timeout,
            allowed_upgrades: cfg.allowed_upgrades.clone(),
            trust_forwarded: config.server.trust_forwarded_headers,
            cookie_name: config.session.cookie_name.clone(),
            // The backend URL header is injected too: as spoofable as a claim.
            claim_headers: config
                .headers
                .claims
                .iter()
                .map(|(h, _)| h.clone())
                .chain(config.headers.backend_url.clone())
                .collect(),
        })
    }

    /// Background upkeep of the connection pool; spawn it on the worker that
    /// owns this upstream.
    pub fn maintenance(&self) -> impl std::future::Future<Output = ()> + use<> {
        self.pool.clone().reap_idle()
    }

    /// Forwards `req` and returns the upstream's response (body streaming)
    /// and the time the upstream took to send its response head.
    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        client: ClientInfo<'_>,
        added: Added<'_>,
        tasks: &TaskTracker,
    ) -> Result<(Response<Body>, Duration), ProxyError> {
        if req.method() == Method::CONNECT {
            return Err(ProxyError::BadRequest(
                ClientErrorKind::Request,
                "CONNECT is not supported",
            ));
        }
        // Only the protocols `upstream.allowed_upgrades` names are relayed;
        // any other `Upgrade` is dropped and the request goes on as a plain
        // one, as nginx does unless told to pass `Upgrade`.
        let upgrading = req.version() == Version::HTTP_11
            && headers::is_upgrade_request(req.headers())
            && headers::upgrade_allowed(req.headers(), &self.allowed_upgrades);
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        // HTTP/2 clients name the host in :authority, HTTP/1.1 in Host.
        let authority;
        let client_host = match parts.headers.get(header::HOST) {
            Some(host) => Some(host),
            None => {
                authority = client_uri_authority(&parts.uri);
                authority.as_ref()
            }
        };
        let target = self.upstream_uri(&parts.uri)?;
        let head = headers::UpstreamHead {
            headers: &parts.headers,
            upgrading,
            claim_headers: &self.claim_headers,
            cookie_name: &self.cookie_name,
            trust_forwarded: self.trust_forwarded,
            host: match (self.host_header, client_host) {
                (HostHeader::Client, Some(client_host)) => client_host,
                _ => &self.host,
            },
            client_ip: client.ip,
            proto: if client.tls { "https" } else { "http" },
            client_host,
            request_id: client.request_id,
            added,
        };
        let write_head = |out: &mut Vec<u8>| head.write(out);
        let (body, sent) = SentBody::new(body, self.body_read_timeout);
        let started = Instant::now();
        let request = self.pool.send(
            pool::Outgoing {
                method: &parts.method,
                target: &target,
                has_length: parts.headers.contains_key(header::CONTENT_LENGTH),
                headers: &write_head,
            },
            body,
            started,
        );
        // The response-head timeout runs from the moment the request body has
        // been sent in full, so a long upload is not mistaken for a slow app.
        let timeout = self.response_header_timeout;
        // Nothing to upload on an HTTP/1 connection (the usual case): its
        // watchdog keeps the clock, and no timer is armed.
        let watched = match (&sent, client.watched) {
            (None, Some(activity)) => Some(activity.upstream_wait()),
            _ => None,
        };
        let deadline = async {
            match (sent, &watched) {
                (_, Some(wait)) => wait.late().await,
                (Some(sent), None) => {
                    sent.notified().await;
                    tokio::time::sleep(timeout).await;
                }
                // Nothing to upload: the clock runs from now (read once).
                (None, None) => tokio::time::sleep_until((started + timeout).into()).await,
            }
        };
        let answer = tokio::select! {
            res = request => res.map_err(classify)?,
            () = deadline => return Err(ProxyError::UpstreamResponseTimeout),
        };
        drop(watched);
        // The head is out for good: the client's header map can hold the
        // next response head parsed on this thread.
        h1::recycle_headers(std::mem::take(&mut parts.headers));
        let latency = answer.answered.saturating_duration_since(started);
        let mut resp = answer.response;

        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            let (Some(client_upgrade), Some(upstream)) = (client_upgrade, answer.switched) else {
                return Err(ProxyError::UpstreamProtocol(
                    "101 Switching Protocols without an upgrade request".into(),
                ));
            };
            tasks.spawn(relay_upgraded(client_upgrade, upstream));
        }
        headers::strip_hop_by_hop(resp.headers_mut(), switching);
        Ok((resp.map(|b| b.boxed_unsync()), latency))
    }

    /// The request target sent upstream, in origin form (`/path?query`),
    /// under the upstream URL's path prefix when it has one.
    fn upstream_uri(&self, client_uri: &Uri) -> Result<PathAndQuery, ProxyError> {
        let pq = client_uri.path_and_query().ok_or(ProxyError::BadRequest(
            ClientErrorKind::Request,
            "the request target must be a path",
        ))?;
        let pq = if self.base_path.is_empty() {
            pq.clone()
        } else {
            PathAndQuery::try_from(format!("{}{}", self.base_path, pq.as_str())).map_err(|_| {
                ProxyError::BadRequest(ClientErrorKind::Request, "invalid request target")
            })?
        };
        Ok(pq)
    }
}

/// The host an HTTP/2 client addressed (its `:authority`), which hyper keeps
/// in the request URI rather than in a `Host` header.
fn client_uri_authority(uri: &Uri) -> Option<HeaderValue> {
    uri.authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

/// Relays a switched protocol (WebSocket) both ways once the client's side
/// is handed over: first what the upstream sent right after its `101`.
async fn relay_upgraded(client: hyper::upgrade::OnUpgrade, upstream: h1::Conn) {
    use tokio::io::AsyncWriteExt;
    let mut client = match client.await {
        Ok(c) => TokioIo::new(c),
        Err(e) => {
            tracing::debug!(error = %e, "protocol upgrade failed");
            return;
        }
    };
    let h1::Conn { io: mut up, buf } = upstream;
    if !buf.is_empty() && client.write_all(&buf).await.is_err() {
        return;
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut up).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

/// Sorts a pool error by cause: refused or failed connections are 502, a
/// connect timeout is 504, anything after the connection is a bad response.
fn classify(e: PoolError) -> ProxyError {
    match e {
        PoolError::ConnectTimeout => ProxyError::UpstreamConnectTimeout,
        PoolError::Connect(_) | PoolError::Tls(_) => ProxyError::UpstreamConnect(e.into()),
        PoolError::Exchange(ref cause) => match client_body_fault(cause) {
            Some(ClientBodyError::Timeout) => ProxyError::ClientBodyTimeout,
            Some(ClientBodyError::Malformed(_)) => ProxyError::ClientBody(e.into()),
            None => ProxyError::UpstreamProtocol(e.into()),
        },
    }
}

/// The client's body fault behind a failed exchange, if that is what it was.
fn client_body_fault(e: &h1::Error) -> Option<&ClientBodyError> {
    match e {
        h1::Error::Upload(cause) => cause.downcast_ref::<ClientBodyError>(),
        _ => None,
    }
}
