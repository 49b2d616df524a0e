//! One request, start to finish: give it a request id, check its size, pick
//! the route (operations endpoints, `/oauth2/*`, skip-auth proxy, or the
//! authenticated proxy), run it, and turn any error into its response. The
//! handler is split in two: `route` uses `?` freely, `handle` renders errors
//! and attaches the record that logs the request once its body is done.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Auth, Decision};
use crate::authz::Policy;
use crate::body::{self, Body, LoggedPath, Recorded, RequestRecord};
use crate::config::{Config, PathNormalization};
use crate::error::{ProxyError, chain};
use crate::metrics::{ClientErrorKind, Metrics, RouteClass};
use crate::path;
use crate::proxy::headers::X_REQUEST_ID;
use crate::proxy::{Added, ClientInfo, Upstream};
use crate::session::Profile;

/// Which socket a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `server.listen`: everything.
    Main,
    /// `server.metrics_listen`: `/metrics`, `/ping`, `/ready` only.
    Metrics,
}

/// One client connection, as the request path sees it.
pub struct Conn {
    pub peer: SocketAddr,
    /// `peer`'s IP as header text, formatted once per connection.
    pub peer_ip: HeaderValue,
    pub tls: bool,
    pub activity: Arc<crate::activity::ConnActivity>,
    pub listener: Listener,
}

/// The request rules a reload replaces (`SIGHUP`), shared by every worker.
pub struct Rules {
    /// `routes.skip_auth`.
    pub skip_auth: regex::RegexSet,
    /// `[authorization]`.
    pub authz: Policy,
}

impl Rules {
    pub fn new(config: &Config) -> Rules {
        Rules {
            skip_auth: config.routes.skip_auth.clone(),
            authz: Policy::new(config),
        }
    }
}

/// Shared state of the running sidecar.
pub struct App {
    pub config: Arc<Config>,
    rules: Arc<ArcSwap<Rules>>,
    pub metrics: Arc<Metrics>,
    upstream: Upstream,
    auth: Arc<Auth>,
    /// Background work that outlives a request (upgraded connections); the
    /// drain waits for it.
    pub tasks: TaskTracker,
}

/// What a request is checked against (`App::allowed`).
enum Check<'a> {
    /// A proxied request: the rule for its canonical path.
    Path(&'a str),
    /// `/oauth2/auth`: the top-level lists and its query's rule.
    AuthRequest(&'a http::Uri),
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Ping,
    Ready,
    Metrics,
    /// `/oauth2/auth`: nginx auth_request.
    AuthRequest,
    /// `/oauth2/userinfo`.
    Userinfo,
    /// `/oauth2/start`.
    Start,
    /// The callback route (the path of `provider.redirect_url`).
    Callback,
    /// `/oauth2/sign_out`.
    SignOut,
    /// `/oauth2/backchannel_logout`.
    BackchannelLogout,
    /// Any other `/oauth2/` path.
    OAuth2Other,
    /// A `routes.skip_auth` path: proxied without a session.
    Public,
    /// Everything else: proxied with a session.
    Protected,
    /// Not served on this listener.
    NotFound,
}

impl Route {
    fn class(self) -> RouteClass {
        match self {
            Route::Ping | Route::Ready => RouteClass::Health,
            Route::Metrics | Route::NotFound => RouteClass::Metrics,
            Route::AuthRequest => RouteClass::AuthRequest,
            Route::Userinfo
            | Route::Start
            | Route::Callback
            | Route::SignOut
            | Route::BackchannelLogout
            | Route::OAuth2Other => RouteClass::OAuth2,
            Route::Public => RouteClass::Public,
            Route::Protected => RouteClass::Proxy,
        }
    }
}

impl App {
    pub fn new(
        config: Arc<Config>,
        rules: Arc<ArcSwap<Rules>>,
        metrics: Arc<Metrics>,
        upstream: Upstream,
        auth: Arc<Auth>,
    ) -> Self {
        Self {
            config,
            rules,
            metrics,
            upstream,
            auth,
            tasks: TaskTracker::new(),
        }
    }

    /// Background upkeep for this worker (idle upstream connections).
    pub fn maintenance(&self) -> impl std::future::Future<Output = ()> + use<> {
        self.upstream.maintenance()
    }

    /// The route of a canonical path ([`path::canonical`]).
    fn route(&self, listener: Listener, path: &str) -> Route {
        match (listener, path) {
            (_, "/ping") => Route::Ping,
            (_, "/ready") => Route::Ready,
            (Listener::Metrics, "/metrics") => Route::Metrics,
            (Listener::Metrics, _) => Route::NotFound,
            (Listener::Main, "/metrics") if self.config.server.metrics_listen.is_none() => {
                Route::Metrics
            }
            (Listener::Main, p) if p == self.config.provider.callback_path() => Route::Callback,
            (Listener::Main, "/oauth2/auth") => Route::AuthRequest,
            (Listener::Main, "/oauth2/userinfo") => Route::Userinfo,
            (Listener::Main, "/oauth2/start") => Route::Start,
            (Listener::Main, "/oauth2/sign_out") => Route::SignOut,
            (Listener::Main, "/oauth2/backchannel_logout") => Route::BackchannelLogout,
            (Listener::Main, p) if p.starts_with("/oauth2/") => Route::OAuth2Other,
            // Public only when every reading of the path is: a `;`
            // parameter or an escaped `?` cannot widen a rule.
            (Listener::Main, p) => {
                let rules = self.rules.load();
                if path::for_each_form(p, |form| rules.skip_auth.is_match(form)) {
                    Route::Public
                } else {
                    Route::Protected
                }
            }
        }
    }

    /// Serves one request. It owns its handles on the app and the
    /// connection and answers hyper's service contract itself, so hyper
    /// holds this future as it is, with no wrapper around it.
    pub async fn handle(
        self: Arc<Self>,
        conn: Arc<Conn>,
        mut req: Request<Incoming>,
    ) -> Result<Response<Recorded>, Infallible> {
        let conn = &*conn;
        let start = Instant::now();
        self.metrics.in_flight.inc();
        conn.activity
            .request_started(req.version() == http::Version::HTTP_2);
        let request_id = request_id(req.headers());
        // Routes are chosen on the canonical path, and the upstream gets
        // that same path: never one the app could resolve another way.
        let checked = self.check_path(req.uri().path());
        let route = match &checked {
            Ok(None) => self.route(conn.listener, req.uri().path()),
            Ok(Some(canonical)) => self.route(conn.listener, canonical),
            Err(_) => Route::Protected,
        };
        let mut record = RequestRecord {
            start,
            method: req.method().clone(),
            path: LoggedPath::new(req.uri().path()),
            request_id: request_id.clone(),
            route: route.class(),
            status: 0,
            upstream: None,
            metrics: self.metrics.clone(),
            conn: Some(conn.activity.clone()),
        };
        let result = if head_size(&req) > self.config.server.max_header_bytes {
            Err(ProxyError::HeadersTooLarge)
        } else {
            match checked
                .and_then(|c| rewrite_path(&mut req, c))
                .and_then(|()| check_host(&req))
            {
                Ok(()) => self.dispatch(route, conn, req, &request_id, start).await,
                Err(e) => Err(e),
            }
        };
        let mut resp = match result {
            Ok((resp, upstream)) => {
                record.upstream = upstream;
                resp
            }
            Err(e) => {
                if let Some(kind) = e.client_kind() {
                    self.metrics.client_error(kind);
                }
                if let Some(kind) = e.upstream_kind() {
                    self.metrics.upstream_error(kind);
                    tracing::warn!(
                        request_id = record.request_id.to_str().unwrap_or_default(),
                        error = %chain(&e),
                        "upstream request failed"
                    );
                }
                e.into_response(record.request_id.to_str().unwrap_or_default())
            }
        };
        resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
        record.status = resp.status().as_u16();
        Ok(resp.map(|b| Recorded::new(b, record)))
    }

    /// The canonical form of a request path when it differs from the raw
    /// one and `routes.path_normalization` says to rewrite it; `None` when
    /// the raw path is canonical; an error for a path refused.
    fn check_path(&self, raw: &str) -> Result<Option<String>, ProxyError> {
        match path::canonical(raw) {
            Ok(Cow::Borrowed(_)) => Ok(None),
            Ok(Cow::Owned(canonical)) => match self.config.routes.path_normalization {
                PathNormalization::Rewrite => Ok(Some(canonical)),
                PathNormalization::Reject => Err(ProxyError::BadRequest(
                    ClientErrorKind::Path,
                    "ambiguous request path: dot segments, backslashes, empty segments \
                     and encoded '/', '\\' or unreserved characters are refused",
                )),
            },
            Err(path::PathError::NotAPath) => Err(ProxyError::BadRequest(
                ClientErrorKind::Path,
                "the request target must be a path starting with '/'",
            )),
            Err(path::PathError::InvalidEscape) => Err(ProxyError::BadRequest(
                ClientErrorKind::Path,
                "the request path has an invalid percent-escape",
            )),
        }
    }

    /// The login flow's futures (start, callback, sign-out: IdP calls through
    /// reqwest) are boxed: they are several kilobytes, and inline they would
    /// make every request's future that size, copied as it is built and
    /// handed to hyper. The proxied path's own future is about 2 KB; the
    /// session check (`decide`, under 600 bytes) stays inline, as it runs on
    /// every authenticated request.
    async fn dispatch(
        &self,
        route: Route,
        conn: &Conn,
        req: Request<Incoming>,
        request_id: &HeaderValue,
        start: Instant,
    ) -> Result<(Response<Body>, Option<Duration>), ProxyError> {
        let local = |status, content_type, text: Vec<u8>| {
            Ok((body::response(status, content_type, text), None))
        };
        match route {
            Route::Ping => local(StatusCode::OK, "text/plain", b"OK".to_vec()),
            // Not ready while the session store cannot be reached: a load
            // balancer sends traffic to replicas that can serve it.
            Route::Ready => match Box::pin(self.auth.store_ready()).await {
                true => local(StatusCode::OK, "text/plain", b"OK".to_vec()),
                false => local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    b"session store unreachable".to_vec(),
                ),
            },
            Route::Metrics => {
                self.metrics
                    .sessions_active
                    .set(self.auth.sessions_active() as i64);
                local(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.render(),
                )
            }
            Route::NotFound | Route::OAuth2Other => {
                local(StatusCode::NOT_FOUND, "text/plain", b"not found".to_vec())
            }
            // Reached by API calls too when nginx turns a 401 from
            // /oauth2/auth into /oauth2/start: only browsers are sent to log in.
            Route::Start if !auth::is_browser_navigation(req.method(), req.headers()) => {
                Err(ProxyError::Unauthenticated)
            }
            Route::Start => {
                let rd = auth::start_return_to(req.uri(), req.headers());
                let rid = request_id.to_str().unwrap_or_default();
                let start = self.auth.start(req.headers(), rd.as_deref(), rid);
                Ok((Box::pin(start).await, None))
            }
            Route::Callback => {
                let rid = request_id.to_str().unwrap_or_default();
                let callback = Box::pin(self.auth.callback(req.uri(), req.headers(), rid));
                Ok((callback.await, None))
            }
            Route::SignOut => {
                let rd = auth::rd_param(req.uri());
                Ok((
                    Box::pin(self.auth.sign_out(req.headers(), rd.as_deref())).await,
                    None,
                ))
            }
            Route::BackchannelLogout => {
                if req.method() != http::Method::POST {
                    return local(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "text/plain",
                        b"POST a logout_token".to_vec(),
                    );
                }
                let body = http_body_util::Limited::new(req.into_body(), 64 * 1024);
                let read = tokio::time::timeout(
                    self.config.server.body_read_timeout,
                    http_body_util::BodyExt::collect(body),
                )
                .await;
                let Ok(Ok(body)) = read else {
                    return Err(ProxyError::BadRequest(
                        ClientErrorKind::Request,
                        "the logout request body is unreadable or larger than 64 KiB",
                    ));
                };
                let logout = self.auth.backchannel_logout(body.to_bytes());
                Ok((Box::pin(logout).await, None))
            }
            Route::AuthRequest | Route::Userinfo => {
                match self.auth.decide(req.headers(), start).await {
                    Decision::Authenticated { session, tokens } => {
                        let resp = if route == Route::AuthRequest {
                            if !self.allowed(&session.profile(), Check::AuthRequest(req.uri())) {
                                return Err(ProxyError::Forbidden);
                            }
                            self.auth.auth_request_response(&session, &tokens)
                        } else {
                            self.auth.userinfo_response(&session, &tokens)
                        };
                        Ok((resp, None))
                    }
                    // An API client's own token (`[bearer]`), through nginx too.
                    Decision::NeedsLogin
                        if route == Route::AuthRequest && self.auth.has_bearer(req.headers()) =>
                    {
                        match self.auth.bearer(req.headers()).await {
                            Ok(verified) => {
                                if !self.allowed(&verified.profile, Check::AuthRequest(req.uri())) {
                                    return Err(ProxyError::Forbidden);
                                }
                                Ok((self.auth.bearer_auth_response(&verified), None))
                            }
                            Err(crate::provider::BearerRefusal::Invalid(_)) => {
                                Err(ProxyError::InvalidToken)
                            }
                            Err(crate::provider::BearerRefusal::Unavailable(e)) => {
                                Err(ProxyError::IdpUnavailable(e))
                            }
                        }
                    }
                    // nginx auth_request understands 2xx, 401 and 403 only:
                    // an expired session the IdP cannot refresh is "not signed in".
                    Decision::NeedsLogin | Decision::IdpUnavailable(_) => {
                        Err(ProxyError::Unauthenticated)
                    }
                    // Not "signed out" (that would send users round a login that
                    // cannot finish either): an error, which nginx shows as 500.
                    Decision::StoreUnavailable(e) => Err(ProxyError::StoreUnavailable(e)),
                }
            }
            Route::Protected => match self.auth.decide(req.headers(), start).await {
                Decision::Authenticated { session, tokens } => {
                    let profile = arc_swap::Guard::into_inner(session.profile());
                    if !self.allowed(&profile, Check::Path(req.uri().path())) {
                        let rid = request_id.to_str().unwrap_or_default();
                        return Ok((self.auth.forbidden(&req, &session, rid), None));
                    }
                    let added = self.auth.added(&profile, &tokens);
                    self.proxy(conn, req, request_id, added).await
                }
                // An API client's own token (`[bearer]`): checked, never
                // stored as a session; a bad one is 401, never a login.
                Decision::NeedsLogin if self.auth.has_bearer(req.headers()) => {
                    let verified = match self.auth.bearer(req.headers()).await {
                        Ok(v) => v,
                        Err(crate::provider::BearerRefusal::Invalid(_)) => {
                            return Err(ProxyError::InvalidToken);
                        }
                        Err(crate::provider::BearerRefusal::Unavailable(e)) => {
                            return Err(ProxyError::IdpUnavailable(e));
                        }
                    };
                    if !self.allowed(&verified.profile, Check::Path(req.uri().path())) {
                        return Err(ProxyError::Forbidden);
                    }
                    let added = self.auth.added_bearer(&verified);
                    self.proxy(conn, req, request_id, added).await
                }
                Decision::NeedsLogin
                    if auth::is_browser_navigation(req.method(), req.headers()) =>
                {
                    let here = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let rid = request_id.to_str().unwrap_or_default();
                    let start = self.auth.start(req.headers(), Some(here), rid);
                    Ok((Box::pin(start).await, None))
                }
                Decision::NeedsLogin => Err(ProxyError::Unauthenticated),
                Decision::IdpUnavailable(e) => Err(ProxyError::IdpUnavailable(e)),
                Decision::StoreUnavailable(e) => Err(ProxyError::StoreUnavailable(e)),
            },
            Route::Public => self.proxy(conn, req, request_id, Added::default()).await,
        }
    }

    /// Whether `[authorization]` lets this user in; a refusal is counted
    /// by rule.
    fn allowed(&self, profile: &Profile, check: Check<'_>) -> bool {
        let rules = self.rules.load();
        let authz = &rules.authz;
        let checked = match check {
            Check::Path(_) if authz.is_open() => return true,
            Check::Path(path) => {
                authz.check(authz.rule_for(path), None, &profile.authz, &profile.claims)
            }
            // The top-level lists, and the rule the nginx location asks
            // for in the query.
            Check::AuthRequest(uri) => {
                let also = uri.query().and_then(Policy::query_rule);
                authz.check(
                    authz.default_rule(),
                    also.as_ref(),
                    &profile.authz,
                    &profile.claims,
                )
            }
        };
        match checked {
            Ok(()) => true,
            Err(rule) => {
                self.metrics.authorization_denied(&rule);
                false
            }
        }
    }

    /// Not an `async fn`: the forwarding future is returned as it is, one
    /// level fewer to build and copy on every proxied request.
    fn proxy<'a>(
        &'a self,
        conn: &'a Conn,
        req: Request<Incoming>,
        request_id: &'a HeaderValue,
        added: Added<'a>,
    ) -> impl Future<Output = Result<(Response<Body>, Option<Duration>), ProxyError>> + 'a {
        let client = ClientInfo {
            ip: &conn.peer_ip,
            tls: conn.tls,
            request_id,
            // HTTP/1 requests run in their connection's task, with its
            // watchdog; HTTP/2 streams in tasks of their own.
            watched: (req.version() != http::Version::HTTP_2).then_some(&*conn.activity),
        };
        self.upstream
            .forward(req, client, added, &self.tasks)
            .map(|res| {
                let (resp, upstream) = res?;
                self.metrics.observe_upstream(upstream.as_secs_f64());
                Ok((resp, Some(upstream)))
            })
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`; no request
/// has two. A second one could name another virtual host than the one a
/// proxy in front checked, so the request is refused rather than guessed at.
fn check_host<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    match (first, second, req.version()) {
        (Some(_), Some(_), _) => Err(ProxyError::BadRequest(
            ClientErrorKind::Host,
            "a request may carry only one Host header",
        )),
        (None, _, http::Version::HTTP_11) => Err(ProxyError::BadRequest(
            ClientErrorKind::Host,
            "an HTTP/1.1 request must carry a Host header",
        )),
        _ => Ok(()),
    }
}

/// Bytes of the request head, counted as on the wire in HTTP/1.1.
fn head_size<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + "  HTTP/1.1\r\n".len();
    req.headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
}

/// The client's `X-Request-Id` when it is a sane token (visible ASCII, at
/// most 128 bytes), else a fresh random one.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| (0x21..=0x7e).contains(c)) {
            return v.clone();
        }
    }
    new_request_id()
}

/// Request IDs a thread makes in one go: one buffer for 64 of them.
const IDS_PER_BATCH: usize = 64;
const ID_LEN: usize = 32;

thread_local! {
    /// This thread's batch of fresh IDs, and how far it is used.
    static IDS: std::cell::RefCell<(bytes::Bytes, usize)> =
        const { std::cell::RefCell::new((bytes::Bytes::new(), 0)) };
}

/// A new random ID, 32 hex digits. The IDs are cut from a shared buffer
/// made 64 at a time, so an ID costs no allocation of its own and its
/// copies (the response header, the upstream header, the access line)
/// only count references: one made alone was two allocations a request,
/// its buffer and the shared count of its first copy (callgrind,
/// benches/README.md, issue 15).
fn new_request_id() -> HeaderValue {
    let id = IDS.with(|cell| {
        let mut ids = cell.borrow_mut();
        if ids.1 + ID_LEN > ids.0.len() {
            *ids = (id_batch(), 0);
        }
        let start = ids.1;
        ids.1 += ID_LEN;
        ids.0.slice(start..start + ID_LEN)
    });
    // Hex digits are always a valid header value.
    HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn id_batch() -> bytes::Bytes {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = vec![0u8; IDS_PER_BATCH * ID_LEN];
    for id in buf.chunks_exact_mut(ID_LEN) {
        let bits = rand::random::<u128>().to_be_bytes();
        for (pair, b) in id.chunks_exact_mut(2).zip(bits) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0xf)];
        }
    }
    // Its first slice makes the buffer shared (one allocation a batch);
    // later slices and their clones only count references.
    bytes::Bytes::from(buf)
}

/// Puts the canonical path (with the client's query) into the request, so
/// that what is forwarded, saved as a return URL or logged downstream is the
/// path the route was chosen on.
fn rewrite_path<B>(req: &mut Request<B>, canonical: Option<String>) -> Result<(), ProxyError> {
    let Some(canonical) = canonical else {
        return Ok(());
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{canonical}?{q}"),
        None => canonical,
    };
    let mut parts = req.uri().clone().into_parts();
    let invalid = || ProxyError::BadRequest(ClientErrorKind::Path, "invalid request target");
    parts.path_and_query = Some(http::uri::PathAndQuery::try_from(pq).map_err(|_| invalid())?);
    *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| invalid())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_request_ids_are_distinct_hex_across_batches() {
        let ids: Vec<HeaderValue> = (0..3 * IDS_PER_BATCH + 5)
            .map(|_| new_request_id())
            .collect();
        let distinct: std::collections::HashSet<&[u8]> = ids.iter().map(|v| v.as_bytes()).collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            assert_eq!(id.len(), ID_LEN);
            assert!(
                id.as_bytes()
                    .iter()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
    }

    #[test]
    fn request_id_is_kept_when_sane_and_replaced_when_not() {
        let mut h = http::HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        let generated = request_id(&h);
        assert_eq!(generated.len(), 32);
        assert!(
            generated
                .to_str()
                .unwrap()
                .bytes()
                .all(|c| c.is_ascii_hexdigit())
        );
        h.insert(
            &X_REQUEST_ID,
            HeaderValue::from_str(&"x".repeat(129)).unwrap(),
        );
        assert_eq!(request_id(&h).len(), 32);
    }

    #[test]
    fn head_size_counts_request_line_and_headers() {
        let req = Request::builder()
            .uri("/abc?q=1")
            .header("x-a", "12345")
            .body(())
            .unwrap();
        // "GET" + "/abc?q=1" + "  HTTP/1.1\r\n" + "x-a" + "12345" + 4
        assert_eq!(head_size(&req), 3 + 8 + 12 + 3 + 5 + 4);
    }
}
