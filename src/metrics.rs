//! Every metric the sidecar exports, registered on a registry this struct owns
//! (no process globals, so tests can run many sidecars in one process).
//! Label values come from closed enums, never from request data, so label
//! cardinality is fixed and no token, path or cookie can reach a label.
//! Children for every label combination are resolved once at start, keeping
//! the per-request cost to a few atomic adds.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// What kind of route served a request (the `route` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// Authenticated reverse proxy.
    Proxy,
    /// Reverse proxy on a `routes.skip_auth` path.
    Public,
    /// `/oauth2/start`, the callback, `/oauth2/sign_out`, `/oauth2/userinfo`.
    OAuth2,
    /// `/oauth2/auth` (nginx auth_request).
    AuthRequest,
    /// `/ping`, `/ready`.
    Health,
    /// `/metrics`.
    Metrics,
}

impl RouteClass {
    pub const ALL: [RouteClass; 6] = [
        RouteClass::Proxy,
        RouteClass::Public,
        RouteClass::OAuth2,
        RouteClass::AuthRequest,
        RouteClass::Health,
        RouteClass::Metrics,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Proxy => "proxy",
            RouteClass::Public => "public",
            RouteClass::OAuth2 => "oauth2",
            RouteClass::AuthRequest => "auth_request",
            RouteClass::Health => "health",
            RouteClass::Metrics => "metrics",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// Why a request to the upstream failed (the `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Connection refused, reset or DNS failure: 502.
    Connect,
    /// No connection within `upstream.connect_timeout`: 504.
    ConnectTimeout,
    /// No response head within `upstream.response_header_timeout`: 504.
    ResponseTimeout,
    /// A malformed or truncated response, a failed TLS handshake: 502.
    Protocol,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 4] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::ConnectTimeout,
        UpstreamErrorKind::ResponseTimeout,
        UpstreamErrorKind::Protocol,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::ConnectTimeout => "connect_timeout",
            UpstreamErrorKind::ResponseTimeout => "response_timeout",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}

/// Which call an IdP error came from (the `endpoint` metric label too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Refresh,
    /// EMP's `/profile` (DR services).
    Profile,
    /// The OIDC userinfo endpoint.
    Userinfo,
    /// `/.well-known/openid-configuration`.
    Discovery,
    /// The provider's signing keys (`jwks_uri`).
    Jwks,
}

impl Endpoint {
    pub const ALL: [Endpoint; 6] = [
        Endpoint::Token,
        Endpoint::Refresh,
        Endpoint::Profile,
        Endpoint::Userinfo,
        Endpoint::Discovery,
        Endpoint::Jwks,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Token => "token",
            Endpoint::Refresh => "refresh",
            Endpoint::Profile => "profile",
            Endpoint::Userinfo => "userinfo",
            Endpoint::Discovery => "discovery",
            Endpoint::Jwks => "jwks",
        }
    }
}

/// Why an id_token was not trusted (the `reason` label of
/// `emp_sidecar_id_token_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenFailure {
    /// The token answer had no id_token.
    Missing,
    /// Not a JWS, or required claims (`iss`, `sub`, `aud`, `exp`, `iat`) missing or mistyped.
    Malformed,
    /// `alg` is not an accepted asymmetric algorithm (`none` and HMAC never are).
    Algorithm,
    /// No key of the provider's JWKS has the token's `kid`, even after re-fetching it.
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// `iss` is not the provider's issuer.
    Issuer,
    /// `aud` does not contain this client.
    Audience,
    /// Several audiences and `azp` is not this client (or `azp` names another client).
    AuthorizedParty,
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `iat` or `nbf` lies in the future (beyond the leeway).
    NotYetValid,
    /// `nonce` is not the one this login sent.
    Nonce,
    /// A refreshed id_token names another subject than the session's.
    Subject,
}

impl IdTokenFailure {
    pub const ALL: [IdTokenFailure; 12] = [
        IdTokenFailure::Missing,
        IdTokenFailure::Malformed,
        IdTokenFailure::Algorithm,
        IdTokenFailure::UnknownKey,
        IdTokenFailure::Signature,
        IdTokenFailure::Issuer,
        IdTokenFailure::Audience,
        IdTokenFailure::AuthorizedParty,
        IdTokenFailure::Expired,
        IdTokenFailure::NotYetValid,
        IdTokenFailure::Nonce,
        IdTokenFailure::Subject,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            IdTokenFailure::Missing => "missing",
            IdTokenFailure::Malformed => "malformed",
            IdTokenFailure::Algorithm => "algorithm",
            IdTokenFailure::UnknownKey => "unknown_key",
            IdTokenFailure::Signature => "signature",
            IdTokenFailure::Issuer => "issuer",
            IdTokenFailure::Audience => "audience",
            IdTokenFailure::AuthorizedParty => "azp",
            IdTokenFailure::Expired => "expired",
            IdTokenFailure::NotYetValid => "not_yet_valid",
            IdTokenFailure::Nonce => "nonce",
            IdTokenFailure::Subject => "subject",
        }
    }
    /// For the error page.
    pub fn describe(self) -> &'static str {
        match self {
            IdTokenFailure::Missing => "the provider sent no ID token",
            IdTokenFailure::Malformed => "the ID token is malformed or lacks required claims",
            IdTokenFailure::Algorithm => {
                "the ID token is signed with an algorithm that is not accepted"
            }
            IdTokenFailure::UnknownKey => {
                "the ID token is signed with a key the provider does not publish"
            }
            IdTokenFailure::Signature => "the ID token's signature is not valid",
            IdTokenFailure::Issuer => "the ID token was issued by another issuer",
            IdTokenFailure::Audience => "the ID token was issued for another application",
            IdTokenFailure::AuthorizedParty => {
                "the ID token was issued to another application (azp)"
            }
            IdTokenFailure::Expired => "the ID token has expired",
            IdTokenFailure::NotYetValid => "the ID token is dated in the future",
            IdTokenFailure::Nonce => "the ID token belongs to another sign-in (nonce)",
            IdTokenFailure::Subject => "the refreshed ID token names another user",
        }
    }
}

/// Why a request was the client's fault (the `kind` label of
/// `emp_sidecar_client_errors_total`); each is a `4xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientErrorKind {
    /// A path that is not canonical (`routes.path_normalization = "reject"`),
    /// has an invalid escape, or is not a path.
    Path,
    /// HTTP/1.1 without `Host`, or with several.
    Host,
    /// A malformed request body (bad chunk framing).
    Body,
    /// The request body stalled for `server.body_read_timeout`: `408`.
    BodyTimeout,
    /// Any other malformed request (`CONNECT`, an unusable target).
    Request,
}

impl ClientErrorKind {
    pub const ALL: [ClientErrorKind; 5] = [
        ClientErrorKind::Path,
        ClientErrorKind::Host,
        ClientErrorKind::Body,
        ClientErrorKind::BodyTimeout,
        ClientErrorKind::Request,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            ClientErrorKind::Path => "path",
            ClientErrorKind::Host => "host",
            ClientErrorKind::Body => "body",
            ClientErrorKind::BodyTimeout => "body_timeout",
            ClientErrorKind::Request => "request",
        }
    }
}

/// A call to the shared session store (the `operation` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Get,
    Insert,
    Remove,
    Touch,
    ConsumeState,
    Save,
    Lease,
    Publish,
    Ping,
}

impl StoreOp {
    pub const ALL: [StoreOp; 9] = [
        StoreOp::Get,
        StoreOp::Insert,
        StoreOp::Remove,
        StoreOp::Touch,
        StoreOp::ConsumeState,
        StoreOp::Save,
        StoreOp::Lease,
        StoreOp::Publish,
        StoreOp::Ping,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Get => "get",
            StoreOp::Insert => "insert",
            StoreOp::Remove => "remove",
            StoreOp::Touch => "touch",
            StoreOp::ConsumeState => "consume_state",
            StoreOp::Save => "save",
            StoreOp::Lease => "lease",
            StoreOp::Publish => "publish",
            StoreOp::Ping => "ping",
        }
    }
}

/// Hits a thread counts before adding them to the shared counter.
pub const HIT_BATCH: u64 = 64;

/// Why the shared store failed us (the `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Unreachable, or an error from Redis.
    Unavailable,
    /// No answer within `session.redis.timeout`.
    Timeout,
    /// A record that does not open or decode (another key, another
    /// format, garbage): treated as no session.
    Corrupt,
}

impl StoreErrorKind {
    pub const ALL: [StoreErrorKind; 3] = [
        StoreErrorKind::Unavailable,
        StoreErrorKind::Timeout,
        StoreErrorKind::Corrupt,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            StoreErrorKind::Unavailable => "unavailable",
            StoreErrorKind::Timeout => "timeout",
            StoreErrorKind::Corrupt => "corrupt",
        }
    }
}

/// What this replica's session cache did for a request (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Served from the cache, no store call.
    Hit,
    /// Read from the store.
    Miss,
    /// The cached copy was old enough to check again and the store could
    /// not be reached: served as it was.
    Stale,
}

impl CacheResult {
    pub const ALL: [CacheResult; 3] = [CacheResult::Hit, CacheResult::Miss, CacheResult::Stale];
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
        }
    }
}

/// How a replica got a refresh of a shared session done (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockResult {
    /// Took the lease and called the IdP.
    Acquired,
    /// Another replica held it: waited for its result.
    Waited,
    /// The holder's lease ran out (it died or stalled): took over.
    TakenOver,
}

impl LockResult {
    pub const ALL: [LockResult; 3] = [
        LockResult::Acquired,
        LockResult::Waited,
        LockResult::TakenOver,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            LockResult::Acquired => "acquired",
            LockResult::Waited => "waited",
            LockResult::TakenOver => "taken_over",
        }
    }
}

/// How a login ended (the `result` label of `emp_sidecar_logins_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginResult {
    /// A session was created.
    Success,
    /// The callback's `state` was missing, unknown, replayed or not this browser's.
    InvalidState,
    /// The IdP sent the user back with an error (refused consent, …).
    Denied,
    /// The IdP refused the code exchange or the profile (4xx).
    Rejected,
    /// The IdP failed or could not be reached.
    IdpError,
    /// The id_token failed verification (see `emp_sidecar_id_token_failures_total`).
    InvalidIdToken,
}

impl LoginResult {
    pub const ALL: [LoginResult; 6] = [
        LoginResult::Success,
        LoginResult::InvalidState,
        LoginResult::Denied,
        LoginResult::Rejected,
        LoginResult::IdpError,
        LoginResult::InvalidIdToken,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            LoginResult::Success => "success",
            LoginResult::InvalidState => "invalid_state",
            LoginResult::Denied => "denied",
            LoginResult::Rejected => "rejected",
            LoginResult::IdpError => "idp_error",
            LoginResult::InvalidIdToken => "invalid_id_token",
        }
    }
}

/// How a token refresh ended (the `result` label of `emp_sidecar_token_refreshes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshResult {
    Success,
    /// The IdP refused the refresh token: the session ends.
    Rejected,
    /// The IdP failed or was unreachable: the current token stays in use.
    Failed,
}

impl RefreshResult {
    pub const ALL: [RefreshResult; 3] = [
        RefreshResult::Success,
        RefreshResult::Rejected,
        RefreshResult::Failed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshResult::Success => "success",
            RefreshResult::Rejected => "rejected",
            RefreshResult::Failed => "failed",
        }
    }
}

/// What became of a back-channel logout request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackchannelResult {
    Accepted,
    Invalid,
    Replayed,
    Unavailable,
}

impl BackchannelResult {
    pub const ALL: [BackchannelResult; 4] = [
        BackchannelResult::Accepted,
        BackchannelResult::Invalid,
        BackchannelResult::Replayed,
        BackchannelResult::Unavailable,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            BackchannelResult::Accepted => "accepted",
            BackchannelResult::Invalid => "invalid",
            BackchannelResult::Replayed => "replayed",
            BackchannelResult::Unavailable => "unavailable",
        }
    }
}

/// What became of a bearer token (`emp_sidecar_bearer_tokens_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerResult {
    Accepted,
    Cached,
    Invalid,
    Unavailable,
}

impl BearerResult {
    pub const ALL: [BearerResult; 4] = [
        BearerResult::Accepted,
        BearerResult::Cached,
        BearerResult::Invalid,
        BearerResult::Unavailable,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            BearerResult::Accepted => "accepted",
            BearerResult::Cached => "cached",
            BearerResult::Invalid => "invalid",
            BearerResult::Unavailable => "unavailable",
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Latency buckets from 0.5 ms (the proxy's own overhead) to 60 s (slow upstreams).
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

pub struct Metrics {
    registry: Registry,
    requests: Vec<[IntCounter; 5]>,
    durations: Vec<Histogram>,
    upstream_durations: Histogram,
    upstream_errors: Vec<IntCounter>,
    client_errors: Vec<IntCounter>,
    store_durations: Vec<Histogram>,
    store_errors: Vec<IntCounter>,
    cache: Vec<IntCounter>,
    pub invalidations: IntCounter,
    refresh_locks: Vec<IntCounter>,
    pub in_flight: IntGauge,
    pub connections_open: IntGauge,
    pub connections_parked: IntGauge,
    /// The most connections open at once since the server last looked
    /// (`server.rs`, giving memory back after bursts).
    pub connections_high: std::sync::atomic::AtomicI64,
    connection_limits: IntCounter,
    bearer: Vec<IntCounter>,
    /// Back-channel logout requests: accepted, invalid, replayed, unavailable.
    backchannel: [IntCounter; 4],
    /// `SIGHUP` reloads: applied, failed.
    config_reloads: [IntCounter; 2],
    /// Requests refused by the authorization rules, by rule (labels from
    /// the configuration: `default`, `rules[N]`, `auth_request`).
    authorization_denied: IntCounterVec,
    logins: Vec<IntCounter>,
    refreshes: Vec<IntCounter>,
    idp_durations: Vec<Histogram>,
    id_token_failures: Vec<IntCounter>,
    pub sessions_active: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests_vec = IntCounterVec::new(
            Opts::new(
                "emp_sidecar_http_requests_total",
                "HTTP requests answered, by route class and status class",
            ),
            &["route", "status"],
        )?;
        let durations_vec = HistogramVec::new(
            HistogramOpts::new(
                "emp_sidecar_http_request_duration_seconds",
                "Time from request head received to response body finished, by route class",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route"],
        )?;
        let upstream_durations = Histogram::with_opts(
            HistogramOpts::new(
                "emp_sidecar_upstream_response_duration_seconds",
                "Time from forwarding a request to the upstream's response head",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        let errors_vec = IntCounterVec::new(
            Opts::new(
                "emp_sidecar_upstream_errors_total",
                "Requests the upstream could not answer, by kind of failure",
            ),
            &["kind"],
        )?;
        let client_errors_vec = IntCounterVec::new(
            Opts::new(
                "emp_sidecar_client_errors_total",
                "Requests refused as the client's fault, by kind",
            ),
            &["kind"],
        )?;
        let store_vec = HistogramVec::new(
            HistogramOpts::new(
                "emp_sidecar_store_duration_seconds",
                "Duration of calls to the shared session store (Redis), by operation",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["operation"],
        )?;
        let store_errors_vec = IntCounterVec::new(
            Opts::new(
                "emp_sidecar_store_errors_total",
                "Failed calls to the shared session store and records refused as corrupt, by kind",
            ),
            &["kind"],
        )?;
        let cache_vec = IntCounterVec::new(
            Opts::new(
                "emp_sidecar_session_cache_total",
                "Session lookups in this replica's cache in front of the shared store, by result",
            ),
            &["result"],
        )?;
        let invalidations = IntCounter::new(
            "emp_sidecar_session_invalidations_total",
            "Cached sessions dropped because another replica changed or ended them",
        )?;
        let locks_vec = IntCounterVec::new(
            Opts::new(
                "emp_sidecar_refresh_locks_total",
                "Refreshes of shared sessions, by how this replica got the refresh lock",
            ),
            &["result"],
        )?;
        let connections_open = IntGauge::new(
            "emp_sidecar_connections_open",
            "Client connections open (both listeners)",
        )?;
        let connections_parked = IntGauge::new(
            "emp_sidecar_connections_parked",
            "Idle HTTP/1 client connections holding no buffers (freed after a quiet second)",
        )?;
        let connection_limits = IntCounter::new(
            "emp_sidecar_connection_limit_reached_total",
            "Times server.max_connections was reached and new connections had to wait",
        )?;
        let reloads_vec = IntCounterVec::new(
            Opts::new(
                "emp_sidecar_config_reloads_total",
                "Configuration reloads on SIGHUP, by result (failed: the previous configuration stays)",
            ),
            &["result"],
        )?;
        let backchannel_vec = IntCounterVec::new(
            Opts::new(
                "emp_sidecar_backchannel_logouts_total",
                "Back-channel logout requests from the provider, by result",
            ),
            &["result"],
        )?;
        let bearer_vec = IntCounterVec::new(
            Opts::new(
                "emp_sidecar_bearer_tokens_total",
                "Bearer tokens of API clients, by result (cached: verified before)",
            ),
            &["result"],
        )?;
        let authorization_denied = IntCounterVec::new(
            Opts::new(
                "emp_sidecar_authorization_denied_total",
                "Logged-in requests refused by the authorization rules, by rule",
            ),
            &["rule"],
        )?;
        let in_flight = IntGauge::new(
            "emp_sidecar_http_requests_in_flight",
            "Requests received whose response has not finished yet",
        )?;
        let logins_vec = IntCounterVec::new(
            Opts::new(
                "emp_sidecar_logins_total",
                "Completed or failed logins, by result",
            ),
            &["result"],
        )?;
        let refreshes_vec = IntCounterVec::new(
            Opts::new(
                "emp_sidecar_token_refreshes_total",
                "Access-token refreshes with the identity provider, by result",
            ),
            &["result"],
        )?;
        let idp_vec = HistogramVec::new(
            HistogramOpts::new(
                "emp_sidecar_idp_request_duration_seconds",
                "Duration of calls to the identity provider, by endpoint",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["endpoint"],
        )?;
        let id_token_vec = IntCounterVec::new(
            Opts::new(
                "emp_sidecar_id_token_failures_total",
                "id_tokens refused at login or refresh (OIDC, UPBOND), by reason",
            ),
            &["reason"],
        )?;
        let sessions_active = IntGauge::new(
            "emp_sidecar_sessions_active",
            "Sessions in the session store",
        )?;
        registry.register(Box::new(logins_vec.clone()))?;
        registry.register(Box::new(refreshes_vec.clone()))?;
        registry.register(Box::new(idp_vec.clone()))?;
        registry.register(Box::new(id_token_vec.clone()))?;
        registry.register(Box::new(sessions_active.clone()))?;
        registry.register(Box::new(requests_vec.clone()))?;
        registry.register(Box::new(durations_vec.clone()))?;
        registry.register(Box::new(upstream_durations.clone()))?;
        registry.register(Box::new(errors_vec.clone()))?;
        registry.register(Box::new(client_errors_vec.clone()))?;
        registry.register(Box::new(store_vec.clone()))?;
        registry.register(Box::new(store_errors_vec.clone()))?;
        registry.register(Box::new(cache_vec.clone()))?;
        registry.register(Box::new(invalidations.clone()))?;
        registry.register(Box::new(locks_vec.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_parked.clone()))?;
        registry.register(Box::new(connection_limits.clone()))?;
        registry.register(Box::new(reloads_vec.clone()))?;
        registry.register(Box::new(authorization_denied.clone()))?;
        registry.register(Box::new(bearer_vec.clone()))?;
        registry.register(Box::new(backchannel_vec.clone()))?;
        // Shown from the start, before any refusal.
        authorization_denied.with_label_values(&["default"]);

        let requests = RouteClass::ALL
            .iter()
            .map(|r| STATUS_CLASSES.map(|s| requests_vec.with_label_values(&[r.as_str(), s])))
            .collect();
        let durations = RouteClass::ALL
            .iter()
            .map(|r| durations_vec.with_label_values(&[r.as_str()]))
            .collect();
        let upstream_errors = UpstreamErrorKind::ALL
            .iter()
            .map(|k| errors_vec.with_label_values(&[k.as_str()]))
            .collect();
        let client_errors = ClientErrorKind::ALL
            .iter()
            .map(|k| client_errors_vec.with_label_values(&[k.as_str()]))
            .collect();
        let by = |vec: &IntCounterVec, labels: &[&str]| {
            labels
                .iter()
                .map(|l| vec.with_label_values(&[*l]))
                .collect::<Vec<_>>()
        };
        let store_durations = StoreOp::ALL
            .iter()
            .map(|o| store_vec.with_label_values(&[o.as_str()]))
            .collect();
        let store_errors = by(
            &store_errors_vec,
            &StoreErrorKind::ALL.map(StoreErrorKind::as_str),
        );
        let cache = by(&cache_vec, &CacheResult::ALL.map(CacheResult::as_str));
        let refresh_locks = by(&locks_vec, &LockResult::ALL.map(LockResult::as_str));
        let logins = LoginResult::ALL
            .iter()
            .map(|r| logins_vec.with_label_values(&[r.as_str()]))
            .collect();
        let refreshes = RefreshResult::ALL
            .iter()
            .map(|r| refreshes_vec.with_label_values(&[r.as_str()]))
            .collect();
        let idp_durations = Endpoint::ALL
            .iter()
            .map(|e| idp_vec.with_label_values(&[e.as_str()]))
            .collect();
        let id_token_failures = IdTokenFailure::ALL
            .iter()
            .map(|r| id_token_vec.with_label_values(&[r.as_str()]))
            .collect();
        Ok(Self {
            id_token_failures,
            logins,
            refreshes,
            idp_durations,
            sessions_active,
            registry,
            requests,
            durations,
            upstream_durations,
            upstream_errors,
            client_errors,
            store_durations,
            store_errors,
            cache,
            invalidations,
            refresh_locks,
            in_flight,
            connections_open,
            connections_parked,
            connections_high: std::sync::atomic::AtomicI64::new(0),
            connection_limits,
            config_reloads: ["applied", "failed"].map(|r| reloads_vec.with_label_values(&[r])),
            authorization_denied,
            backchannel: BackchannelResult::ALL
                .map(|r| backchannel_vec.with_label_values(&[r.as_str()])),
            bearer: BearerResult::ALL
                .iter()
                .map(|r| bearer_vec.with_label_values(&[r.as_str()]))
                .collect(),
        })
    }

    /// The registry, for metrics that later modules register themselves.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn observe_request(&self, route: RouteClass, status: u16, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[route.index()][class].inc();
        self.durations[route.index()].observe(seconds);
    }

    pub fn observe_upstream(&self, seconds: f64) {
        self.upstream_durations.observe(seconds);
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].inc();
    }

    /// `server.max_connections` was reached (counted for the main listener).
    pub fn connection_limit_reached(&self, main: bool) {
        if main {
            self.connection_limits.inc();
        }
    }

    pub fn backchannel(&self, result: BackchannelResult) {
        self.backchannel[result as usize].inc();
    }

    pub fn bearer(&self, result: BearerResult) {
        self.bearer[result as usize].inc();
    }

    pub fn authorization_denied(&self, rule: &str) {
        self.authorization_denied.with_label_values(&[rule]).inc();
    }

    /// A `SIGHUP` reload was applied (`true`) or refused (`false`).
    pub fn config_reload(&self, applied: bool) {
        self.config_reloads[usize::from(!applied)].inc();
    }

    pub fn client_error(&self, kind: ClientErrorKind) {
        self.client_errors[kind as usize].inc();
    }

    pub fn observe_store(&self, op: StoreOp, seconds: f64) {
        self.store_durations[op as usize].observe(seconds);
    }

    pub fn store_error(&self, kind: StoreErrorKind) {
        self.store_errors[kind as usize].inc();
    }

    pub fn cache(&self, result: CacheResult) {
        self.cache[result as usize].inc();
    }

    /// A cache hit, on the path of every request: counted per thread and
    /// added to the shared counter every [`HIT_BATCH`] hits, so workers do
    /// not contend for one atomic on each request (the exported figure
    /// lags by fewer than `HIT_BATCH` hits a worker).
    pub fn cache_hit(&self) {
        thread_local! {
            static HITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        }
        HITS.with(|hits| {
            let n = hits.get() + 1;
            if n >= HIT_BATCH {
                self.cache[CacheResult::Hit as usize].inc_by(n);
                hits.set(0);
            } else {
                hits.set(n);
            }
        });
    }

    pub fn refresh_lock(&self, result: LockResult) {
        self.refresh_locks[result as usize].inc();
    }

    pub fn login(&self, result: LoginResult) {
        self.logins[result as usize].inc();
    }

    pub fn refresh(&self, result: RefreshResult) {
        self.refreshes[result as usize].inc();
    }

    pub fn observe_idp(&self, endpoint: Endpoint, seconds: f64) {
        self.idp_durations[endpoint as usize].observe(seconds);
    }

    pub fn id_token_failure(&self, reason: IdTokenFailure) {
        self.id_token_failures[reason as usize].inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec cannot fail for I/O reasons; an encoder error
        // would mean a broken metric family, and an empty scrape says so.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_and_routes_are_counted_apart() {
        let m = Metrics::new().unwrap();
        m.observe_request(RouteClass::Public, 204, 0.001);
        m.observe_request(RouteClass::Public, 502, 0.001);
        m.observe_request(RouteClass::Health, 200, 0.001);
        m.upstream_error(UpstreamErrorKind::ResponseTimeout);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(r#"emp_sidecar_http_requests_total{route="public",status="2xx"} 1"#));
        assert!(text.contains(r#"emp_sidecar_http_requests_total{route="public",status="5xx"} 1"#));
        assert!(text.contains(r#"emp_sidecar_http_requests_total{route="health",status="2xx"} 1"#));
        assert!(text.contains(r#"emp_sidecar_upstream_errors_total{kind="response_timeout"} 1"#));
        assert!(
            text.contains(r#"emp_sidecar_http_request_duration_seconds_count{route="public"} 2"#)
        );
    }
}
