//! Typed configuration. Layers (later wins): the embedded defaults
//! (`config/defaults.toml`), the TOML file, then `EMP_SIDECAR_<SECTION>__<KEY>`
//! environment variables. [`Config::load`] reads every key, validates it and
//! returns either a complete [`Config`] or the list of every problem found,
//! each naming its key; nothing half-valid is ever returned.

mod loader;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use figment::value::Value;
use http::HeaderName;
use regex::RegexSet;
use url::Url;

use loader::{Loader, SecretSource};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "EMP_SIDECAR_";
const DEFAULTS: &str = include_str!("config/defaults.toml");
/// The smallest decoded cookie secret accepted (256 bits).
const MIN_COOKIE_SECRET_BYTES: usize = 32;
/// UPBOND Login 3.0's issuer when `provider.base_url` is left empty.
pub const UPBOND_DEFAULT_BASE_URL: &str = "https://auth3.upbond.io";

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub upstream: UpstreamConfig,
    pub provider: ProviderConfig,
    pub session: SessionConfig,
    pub token: TokenConfig,
    pub headers: HeadersConfig,
    pub authorization: AuthorizationConfig,
    pub bearer: BearerConfig,
    pub routes: RoutesConfig,
    /// The merged layers the values came from, for [`Config::changed_keys`].
    layers: Layers,
}

/// The merged layers as figment read them. They hold secrets inline, so
/// `Debug` shows nothing of them.
#[derive(Clone, Default)]
struct Layers(figment::value::Dict);

impl fmt::Debug for Layers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Layers({} sections)", self.0.len())
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub max_header_bytes: usize,
    pub tls: Option<TlsFiles>,
    /// Time a client has to send a complete request head (from its first byte,
    /// or from connection start for the first request).
    pub header_read_timeout: Duration,
    /// Longest wait between two reads of a request body (nginx
    /// `client_body_timeout`); a body that stalls longer gets `408`.
    pub body_read_timeout: Duration,
    /// An idle keep-alive connection is closed after this long.
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// Keep client-sent `X-Forwarded-*` (append to `X-Forwarded-For`) instead
    /// of replacing them; only behind a proxy you trust.
    pub trust_forwarded_headers: bool,
    /// Client connections served at once; beyond it new ones wait.
    pub max_connections: usize,
    /// Worker threads serving connections; 0 means one per CPU.
    pub workers: usize,
    /// The Linux scheduling policy of the worker threads.
    pub worker_scheduling: WorkerScheduling,
}

/// How the kernel schedules the worker threads (`server.worker_scheduling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerScheduling {
    /// `SCHED_BATCH`: a worker woken by network traffic does not preempt the
    /// thread running on its CPU (the app, the client), but waits for the
    /// CPU's next scheduling decision, or runs at once on an idle CPU.
    Batch,
    /// `SCHED_OTHER`, the kernel's default.
    Normal,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: Url,
    pub host_header: HostHeader,
    /// Protocols a client may switch to through the proxy (`Upgrade`
    /// tokens, lower case); `h2c` never.
    pub allowed_upgrades: Vec<String>,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub ca_file: Option<PathBuf>,
}

/// Which `Host` the upstream sees: the client's (oauth2-proxy's
/// `pass_host_header`, nginx `proxy_set_header Host $host`) or the upstream
/// URL's (nginx `proxy_pass` default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostHeader {
    Client,
    Upstream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Emp,
    Upbond,
    Oidc,
}

/// How the client authenticates at the token endpoint (OIDC, UPBOND).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAuthMethod {
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// HTTP Basic with the form-urlencoded id and secret (RFC 6749 2.3.1).
    ClientSecretBasic,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub base_url: Url,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub redirect_url: Url,
    pub scope: String,
    pub audience: String,
    pub profile: bool,
    /// Limit for each call to the identity provider.
    pub timeout: Duration,
    /// OIDC / UPBOND: token endpoint client authentication. Empty in the
    /// file means the provider's default: `client_secret_post` for UPBOND
    /// (as its document shows), `client_secret_basic` for OIDC (the OpenID
    /// Connect default).
    pub token_auth_method: TokenAuthMethod,
    /// OIDC / UPBOND: also read the userinfo endpoint after login.
    pub userinfo: bool,
    /// OIDC / UPBOND: clock skew tolerated on the id_token's `exp`, `iat`, `nbf`.
    pub leeway: Duration,
    /// OIDC / UPBOND: how long the discovery document is used before it is read again.
    pub discovery_refresh: Duration,
}

impl ProviderConfig {
    /// The callback route: the path of `redirect_url`.
    pub fn callback_path(&self) -> &str {
        self.redirect_url.path()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    /// Redis or Valkey, shared by every replica.
    Redis(RedisConfig),
}

/// `[session.redis]`: where the shared store is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub topology: RedisTopology,
    /// Overrides a password inside the URLs when set.
    pub password: Option<Secret>,
    /// Extra CA bundle for `rediss://`.
    pub ca_file: Option<PathBuf>,
    /// Every key the sidecar writes starts with this.
    pub key_prefix: String,
    /// Limit for each Redis command; a slower answer is "unavailable".
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// `url`: one server (`redis://` or `rediss://`).
    Standalone(Url),
    /// `cluster_urls`: seed nodes of a Redis Cluster.
    Cluster(Vec<Url>),
    /// `sentinel_urls` + `sentinel_master`.
    Sentinel { sentinels: Vec<Url>, master: String },
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub cookie_name: String,
    /// The first signs, all verify (rotation).
    pub cookie_secrets: Vec<Secret>,
    pub cookie_secure: bool,
    pub store: StoreKind,
    pub lifetime: Duration,
    /// A session unused for this long ends (at most `lifetime`).
    pub idle_timeout: Duration,
    /// Sessions kept at most; the least recently used go first.
    pub max_sessions: u64,
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub refresh_margin: Duration,
}

#[derive(Debug, Clone)]
pub struct HeadersConfig {
    pub authorization: bool,
    pub access_token: bool,
    /// JSON Pointer to the user id claim (`X-Auth-Request-User`).
    pub user_claim: String,
    /// JSON Pointer to the e-mail claim (`X-Auth-Request-Email`).
    pub email_claim: String,
    /// Upstream header → RFC 6901 JSON Pointer into the claims.
    pub claims: Vec<(HeaderName, String)>,
    /// EMP: the header that carries the session's `oauth2_backend_url`
    /// upstream and on `/oauth2/auth` (`None`: off).
    pub backend_url: Option<HeaderName>,
}

/// API clients with their own tokens (`[bearer]`).
#[derive(Debug, Clone)]
pub struct BearerConfig {
    pub enabled: bool,
    /// Accepted `aud` values (empty in the file: `provider.client_id`).
    pub audiences: Vec<String>,
    /// More issuers: each with its discovery, JWKS and audience.
    pub extra_issuers: Vec<(Url, String)>,
    /// EMP: how long a token `/profile` accepted is trusted without asking
    /// again (and a refused one refused).
    pub opaque_cache: Duration,
}

/// Who may enter once logged in (`[authorization]`): empty lists let
/// anyone in who can log in.
#[derive(Debug, Clone, Default)]
pub struct AuthorizationConfig {
    pub allowed_email_domains: Vec<String>,
    /// `allowed_emails` and the lines of `allowed_emails_file`, lower case.
    pub allowed_emails: Vec<String>,
    pub allowed_groups: Vec<String>,
    /// JSON Pointer to the groups claim (an array, or a space-separated string).
    pub groups_claim: String,
    /// `[[authorization.rules]]`: per path, first match wins.
    pub rules: Vec<AuthorizationRule>,
}

/// One `[[authorization.rules]]`: it replaces the lists above for the
/// paths it matches; every condition it sets must hold.
#[derive(Debug, Clone)]
pub struct AuthorizationRule {
    /// A regex on the canonical path.
    pub path: regex::Regex,
    pub allowed_email_domains: Vec<String>,
    pub allowed_emails: Vec<String>,
    pub allowed_groups: Vec<String>,
    /// JSON Pointer → allowed values (as text).
    pub claims: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone)]
pub struct RoutesConfig {
    pub skip_auth: RegexSet,
    /// What happens to a request whose path is not in canonical form.
    pub path_normalization: PathNormalization,
    /// Hosts an absolute `rd` may point at: `app.example.com`, or
    /// `.example.com` for the domain and every subdomain.
    pub allowed_redirect_domains: Vec<String>,
}

/// What the proxy does with a request path that is not canonical (dot
/// segments, `\` or an encoded `/` or `\`, escaped unreserved characters, empty
/// segments): see [`crate::path`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathNormalization {
    /// `400`: the app never sees a path it could read another way.
    Reject,
    /// Route and forward the canonical path, as nginx does.
    Rewrite,
}

/// Bytes that must never be printed; `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `server.listen`.
    pub key: String,
    pub message: String,
    /// The file or environment variable the value came from, when known.
    pub source: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)?;
        if let Some(source) = &self.source {
            write!(f, " (from {source})")?;
        }
        Ok(())
    }
}

/// Every problem found, in key order of discovery.
#[derive(Debug)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

impl Config {
    /// Loads defaults, then `path` (which must exist), then the environment.
    pub fn load(path: &Path) -> Result<Config, Problems> {
        if !path.is_file() {
            return Err(Problems(vec![Problem {
                key: "config".into(),
                message: format!("configuration file {} not found", path.display()),
                source: None,
            }]));
        }
        Self::from_figment(Self::figment(Toml::file_exact(path)))
    }

    /// Loads defaults, then the given TOML text, then the environment.
    pub fn from_toml_str(toml: &str) -> Result<Config, Problems> {
        Self::from_figment(Self::figment(Toml::string(toml)))
    }

    fn figment(file: figment::providers::Data<Toml>) -> Figment {
        Figment::new()
            .merge(Toml::string(DEFAULTS))
            .merge(file)
            .merge(Env::prefixed(ENV_PREFIX).split("__").ignore(&["config"]))
    }

    fn from_figment(figment: Figment) -> Result<Config, Problems> {
        // A syntax error in the file makes every key unreadable: report it alone.
        if let Err(e) = figment.find_value("") {
            let source = e.metadata.as_ref().map(|m| m.name.to_string());
            return Err(Problems(vec![Problem {
                key: "config".into(),
                message: e.kind.to_string(),
                source,
            }]));
        }
        let mut l = Loader::new(&figment);
        let known = Figment::from(Toml::string(DEFAULTS))
            .find_value("")
            .ok()
            .and_then(|v| v.into_dict())
            .unwrap_or_default();
        l.check_unknown_keys(&known);

        let server = server(&mut l);
        let log = log(&mut l);
        let upstream = upstream(&mut l);
        let provider = provider(&mut l);
        let session = session(&mut l);
        let refresh_margin = l.duration("token.refresh_margin");
        let headers = headers(&mut l);
        let authorization = authorization(&mut l);
        let bearer = bearer(&mut l, provider.as_ref());
        let routes = routes(&mut l);

        if !l.problems.is_empty() {
            return Err(Problems(l.problems));
        }
        // Every `None` above recorded a problem, so all are `Some` here.
        match (
            server,
            log,
            upstream,
            provider,
            session,
            refresh_margin,
            headers,
            authorization,
            bearer,
            routes,
        ) {
            (
                Some(server),
                Some(log),
                Some(upstream),
                Some(provider),
                Some(session),
                Some(refresh_margin),
                Some(headers),
                Some(authorization),
                Some(bearer),
                Some(routes),
            ) => Ok(Config {
                server,
                log,
                upstream,
                provider,
                session,
                token: TokenConfig { refresh_margin },
                headers,
                authorization,
                bearer,
                routes,
                layers: Layers(
                    figment
                        .find_value("")
                        .ok()
                        .and_then(Value::into_dict)
                        .unwrap_or_default(),
                ),
            }),
            _ => Err(Problems(vec![Problem {
                key: "config".into(),
                message: "incomplete configuration".into(),
                source: None,
            }])),
        }
    }
}

impl Config {
    /// The dotted keys whose value differs between `self` and `newer`, as
    /// written in the layers (a key set in one and absent from the other
    /// counts). A secret read from a `_file` key is compared by its path
    /// only; the reload applies the live secrets whatever their files say.
    pub fn changed_keys(&self, newer: &Config) -> Vec<String> {
        let mut out = Vec::new();
        diff_dicts("", &self.layers.0, &newer.layers.0, &mut out);
        out.sort();
        out
    }
}

fn diff_dicts(
    prefix: &str,
    a: &figment::value::Dict,
    b: &figment::value::Dict,
    out: &mut Vec<String>,
) {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (a.get(k), b.get(k)) {
            (Some(Value::Dict(_, x)), Some(Value::Dict(_, y))) => diff_dicts(&key, x, y, out),
            // figment's `Value` equality ignores where a value came from.
            (x, y) if x == y => {}
            _ => out.push(key),
        }
    }
}

fn socket_addr(l: &mut Loader, key: &str, required: bool) -> Option<Option<SocketAddr>> {
    let s = l.string(key);
    if s.is_empty() {
        if required {
            l.problem(key, "required: an address such as \"0.0.0.0:4180\"");
            return None;
        }
        return Some(None);
    }
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(Some(a)),
        Err(_) => {
            l.problem(
                key,
                format!("{s:?} is not an address such as \"0.0.0.0:4180\" or \"[::1]:4180\""),
            );
            None
        }
    }
}

fn positive(l: &mut Loader, key: &str) -> Option<Duration> {
    let d = l.duration(key)?;
    if d.is_zero() {
        l.problem(key, "must be longer than zero");
        return None;
    }
    Some(d)
}

fn server(l: &mut Loader) -> Option<ServerConfig> {
    let listen = socket_addr(l, "server.listen", true);
    let metrics_listen = socket_addr(l, "server.metrics_listen", false);
    let max_header_bytes = l.get::<u64>("server.max_header_bytes").and_then(|n| {
        if (1024..=1 << 20).contains(&n) {
            Some(n as usize)
        } else {
            l.problem(
                "server.max_header_bytes",
                "must be between 1024 and 1048576",
            );
            None
        }
    });
    let cert = l.path("server.tls_cert");
    let key = l.path("server.tls_key");
    let tls = match (cert, key) {
        (None, None) => Some(None),
        (Some(cert), Some(key)) => {
            let mut ok = true;
            for (k, p) in [("server.tls_cert", &cert), ("server.tls_key", &key)] {
                if !p.is_file() {
                    l.problem(k, format!("file {} not found", p.display()));
                    ok = false;
                }
            }
            ok.then_some(Some(TlsFiles { cert, key }))
        }
        (Some(_), None) => {
            l.problem("server.tls_key", "required when server.tls_cert is set");
            None
        }
        (None, Some(_)) => {
            l.problem("server.tls_cert", "required when server.tls_key is set");
            None
        }
    };
    let header_read_timeout = positive(l, "server.header_read_timeout");
    let body_read_timeout = positive(l, "server.body_read_timeout");
    let idle_timeout = positive(l, "server.idle_timeout");
    let shutdown_timeout = l.duration("server.shutdown_timeout");
    let trust = l.get::<bool>("server.trust_forwarded_headers");
    let max_connections = l.get::<u32>("server.max_connections").and_then(|n| {
        if (1..=1_000_000).contains(&n) {
            Some(n as usize)
        } else {
            l.problem("server.max_connections", "must be between 1 and 1000000");
            None
        }
    });
    let workers = l.get::<u16>("server.workers").and_then(|n| {
        if n <= 256 {
            Some(usize::from(n))
        } else {
            l.problem("server.workers", "must be between 0 (one per CPU) and 256");
            None
        }
    });
    let worker_scheduling = match l.string("server.worker_scheduling").as_str() {
        "batch" => Some(WorkerScheduling::Batch),
        "normal" => Some(WorkerScheduling::Normal),
        other => {
            l.problem(
                "server.worker_scheduling",
                format!("{other:?}: expected \"batch\" or \"normal\""),
            );
            None
        }
    };
    Some(ServerConfig {
        listen: listen??,
        metrics_listen: metrics_listen?,
        max_header_bytes: max_header_bytes?,
        tls: tls?,
        header_read_timeout: header_read_timeout?,
        body_read_timeout: body_read_timeout?,
        idle_timeout: idle_timeout?,
        shutdown_timeout: shutdown_timeout?,
        trust_forwarded_headers: trust?,
        max_connections: max_connections?,
        workers: workers?,
        worker_scheduling: worker_scheduling?,
    })
}

fn log(l: &mut Loader) -> Option<LogConfig> {
    let level = l.string("log.level");
    // EnvFilter would read a bare word such as "loud" as a target name and
    // accept it; every directive must name a level: `info`, `emp_sidecar=debug`.
    let is_level = |s: &str| {
        ["trace", "debug", "info", "warn", "error", "off"]
            .contains(&s.trim().to_ascii_lowercase().as_str())
    };
    let level_ok = !level.trim().is_empty()
        && level.split(',').all(|d| match d.rsplit_once('=') {
            Some((target, lvl)) => !target.trim().is_empty() && is_level(lvl),
            None => is_level(d),
        })
        && tracing_subscriber::EnvFilter::builder()
            .parse(&level)
            .is_ok();
    if !level_ok {
        l.problem(
            "log.level",
            format!("{level:?}: expected a level (trace, debug, info, warn, error, off) or directives such as \"info,emp_sidecar=debug\""),
        );
    }
    let format = match l.string("log.format").as_str() {
        "json" => Some(LogFormat::Json),
        "pretty" => Some(LogFormat::Pretty),
        other => {
            l.problem(
                "log.format",
                format!("{other:?}: expected \"json\" or \"pretty\""),
            );
            None
        }
    };
    Some(LogConfig {
        level: level_ok.then_some(level)?,
        format: format?,
    })
}

/// An absolute http(s) URL.
fn http_url(l: &mut Loader, key: &str, value: &str) -> Option<Url> {
    if value.is_empty() {
        l.problem(key, "required: an http:// or https:// URL");
        return None;
    }
    match Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
        Ok(_) => {
            l.problem(
                key,
                format!("{value:?} is not an http:// or https:// URL with a host"),
            );
            None
        }
        Err(e) => {
            l.problem(key, format!("{value:?} is not a URL: {e}"));
            None
        }
    }
}

fn upstream(l: &mut Loader) -> Option<UpstreamConfig> {
    let url_text = l.string("upstream.url");
    let url = http_url(l, "upstream.url", &url_text).and_then(|u| {
        if u.query().is_some() || u.fragment().is_some() {
            l.problem("upstream.url", "must not carry a query or fragment");
            None
        } else {
            Some(u)
        }
    });
    let host_header = match l.string("upstream.host_header").as_str() {
        "client" => Some(HostHeader::Client),
        "upstream" => Some(HostHeader::Upstream),
        other => {
            l.problem(
                "upstream.host_header",
                format!("{other:?}: expected \"client\" or \"upstream\""),
            );
            None
        }
    };
    let allowed_upgrades = l
        .get::<Vec<String>>("upstream.allowed_upgrades")
        .and_then(|list| {
            let list: Vec<String> = list.iter().map(|p| p.trim().to_ascii_lowercase()).collect();
            // h2c through a proxy that speaks HTTP/1.1 to the app would be an
            // unfiltered tunnel past every header rule (and a smuggling
            // vector); other tokens must be protocol names.
            let bad = list.iter().find(|p| {
                p.is_empty()
                    || *p == "h2c"
                    || !p.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&c))
            });
            match bad {
                Some(p) => {
                    l.problem(
                        "upstream.allowed_upgrades",
                        format!("{p:?} cannot be relayed: protocol names such as \"websocket\", never \"h2c\""),
                    );
                    None
                }
                None => Some(list),
            }
        });
    let connect_timeout = positive(l, "upstream.connect_timeout");
    let response_header_timeout = positive(l, "upstream.response_header_timeout");
    let pool_idle_timeout = l.duration("upstream.pool_idle_timeout");
    let pool_max_idle = l.get::<u32>("upstream.pool_max_idle_per_host");
    let ca_file = l.path("upstream.ca_file");
    if let Some(p) = &ca_file
        && !p.is_file()
    {
        l.problem(
            "upstream.ca_file",
            format!("file {} not found", p.display()),
        );
    }
    Some(UpstreamConfig {
        url: url?,
        host_header: host_header?,
        allowed_upgrades: allowed_upgrades?,
        connect_timeout: connect_timeout?,
        response_header_timeout: response_header_timeout?,
        pool_idle_timeout: pool_idle_timeout?,
        pool_max_idle_per_host: pool_max_idle? as usize,
        ca_file,
    })
}

fn provider(l: &mut Loader) -> Option<ProviderConfig> {
    let kind_text = l.string("provider.kind");
    let kind = match kind_text.as_str() {
        "emp" => Some(ProviderKind::Emp),
        "upbond" => Some(ProviderKind::Upbond),
        "oidc" => Some(ProviderKind::Oidc),
        other => {
            l.problem(
                "provider.kind",
                format!("{other:?}: expected \"emp\", \"upbond\" or \"oidc\""),
            );
            None
        }
    };
    let mut base = l.string("provider.base_url");
    if base.is_empty() && kind == Some(ProviderKind::Upbond) {
        base = UPBOND_DEFAULT_BASE_URL.to_string();
    }
    let base_url = http_url(l, "provider.base_url", &base);
    let client_id = l.string("provider.client_id");
    if client_id.is_empty() {
        l.problem(
            "provider.client_id",
            "required: the app key / client id issued by the provider",
        );
    }
    let client_secret = match l.secret_source("provider.client_secret") {
        SecretSource::Unset => None,
        SecretSource::Inline(Value::String(_, s)) => Some(Secret::new(s)),
        SecretSource::Inline(_) => {
            l.problem("provider.client_secret", "expected a string");
            None
        }
        SecretSource::File(text) => Some(Secret::new(text.trim_end_matches(['\r', '\n']))),
    };
    if client_secret.is_none() && matches!(kind, Some(ProviderKind::Upbond | ProviderKind::Oidc)) {
        l.problem(
            "provider.client_secret",
            "required for upbond and oidc (or set provider.client_secret_file)",
        );
    }
    let redirect_text = l.string("provider.redirect_url");
    let redirect_url = http_url(l, "provider.redirect_url", &redirect_text);
    let scope = l.string("provider.scope");
    let audience = l.string("provider.audience");
    let profile = l.get::<bool>("provider.profile");
    let timeout = positive(l, "provider.timeout");
    let token_auth_method = match l.string("provider.token_auth_method").as_str() {
        "" if kind == Some(ProviderKind::Oidc) => Some(TokenAuthMethod::ClientSecretBasic),
        "" | "client_secret_post" => Some(TokenAuthMethod::ClientSecretPost),
        "client_secret_basic" => Some(TokenAuthMethod::ClientSecretBasic),
        other => {
            l.problem(
                "provider.token_auth_method",
                format!("{other:?}: expected \"client_secret_post\" or \"client_secret_basic\""),
            );
            None
        }
    };
    let userinfo = l.get::<bool>("provider.userinfo");
    let leeway = l.duration("provider.leeway").and_then(|d| {
        if d > Duration::from_secs(300) {
            l.problem(
                "provider.leeway",
                "at most 5m: a larger leeway would accept tokens long expired",
            );
            return None;
        }
        Some(d)
    });
    let discovery_refresh = positive(l, "provider.discovery_refresh");
    Some(ProviderConfig {
        kind: kind?,
        base_url: base_url?,
        client_id: (!client_id.is_empty()).then_some(client_id)?,
        client_secret,
        redirect_url: redirect_url?,
        scope,
        audience,
        profile: profile?,
        timeout: timeout?,
        token_auth_method: token_auth_method?,
        userinfo: userinfo?,
        leeway: leeway?,
        discovery_refresh: discovery_refresh?,
    })
}

/// Decodes one cookie secret: base64 standard or URL-safe, padding optional.
pub fn decode_cookie_secret(text: &str) -> Result<Secret, String> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let t = text.trim().trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(t)
        .or_else(|_| URL_SAFE_NO_PAD.decode(t))
        .map_err(|_| "is not base64 (standard or URL-safe)".to_string())?;
    if bytes.len() < MIN_COOKIE_SECRET_BYTES {
        return Err(format!(
            "decodes to {} bytes; at least {MIN_COOKIE_SECRET_BYTES} are required (e.g. `openssl rand -base64 32`)",
            bytes.len()
        ));
    }
    Ok(Secret::new(bytes))
}

fn session(l: &mut Loader) -> Option<SessionConfig> {
    let cookie_name = l.string("session.cookie_name");
    let name_ok = !cookie_name.is_empty()
        && cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !name_ok {
        l.problem(
            "session.cookie_name",
            format!("{cookie_name:?} is not a valid cookie name"),
        );
    }
    let key = "session.cookie_secret";
    let texts: Vec<String> = match l.secret_source(key) {
        SecretSource::Unset => {
            l.problem(
                key,
                "required: base64 of at least 32 random bytes (or set session.cookie_secret_file)",
            );
            Vec::new()
        }
        SecretSource::Inline(Value::String(_, s)) => vec![s],
        SecretSource::Inline(Value::Array(_, items)) => items
            .into_iter()
            .filter_map(|v| match v {
                Value::String(_, s) => Some(s),
                _ => {
                    l.problem(key, "a list of secrets must hold strings only");
                    None
                }
            })
            .collect(),
        SecretSource::Inline(_) => {
            l.problem(key, "expected a string or a list of strings");
            Vec::new()
        }
        SecretSource::File(text) => text
            .lines()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    };
    let mut secrets = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        match decode_cookie_secret(t) {
            Ok(s) => secrets.push(s),
            // The message names the position, never the secret itself.
            Err(e) => l.problem(key, format!("secret #{} {e}", i + 1)),
        }
    }
    let cookie_secure = l.get::<bool>("session.cookie_secure");
    // Browsers accept a `__Host-` cookie only with Secure, `Path=/` and no
    // Domain (the sidecar always sets the last two), a `__Secure-` one only
    // with Secure: a name that promises it must not be set without it.
    let prefixed = ["__Host-", "__Secure-"]
        .into_iter()
        .find(|p| cookie_name.starts_with(p));
    if let (Some(prefix), Some(false)) = (prefixed, cookie_secure) {
        l.problem(
            "session.cookie_secure",
            format!("must be true with a cookie name starting with {prefix:?}: browsers drop such a cookie otherwise"),
        );
    }
    let store = match l.string("session.store").as_str() {
        "memory" => Some(StoreKind::Memory),
        "redis" => redis(l).map(StoreKind::Redis),
        other => {
            l.problem(
                "session.store",
                format!("{other:?}: expected \"memory\" or \"redis\""),
            );
            None
        }
    };
    let lifetime = positive(l, "session.lifetime");
    let idle_timeout = if l.string("session.idle_timeout").is_empty() {
        lifetime
    } else {
        positive(l, "session.idle_timeout")
    };
    let max_sessions = l.get::<u64>("session.max_sessions").and_then(|n| {
        if n >= 1 {
            Some(n)
        } else {
            l.problem("session.max_sessions", "must be at least 1");
            None
        }
    });
    Some(SessionConfig {
        cookie_name: name_ok.then_some(cookie_name)?,
        cookie_secrets: (!secrets.is_empty() && secrets.len() == texts.len()).then_some(secrets)?,
        cookie_secure: cookie_secure?,
        store: store?,
        lifetime: lifetime?,
        idle_timeout: idle_timeout?,
        max_sessions: max_sessions?,
    })
}

/// `[session.redis]`, read only when `session.store = "redis"`.
fn redis(l: &mut Loader) -> Option<RedisConfig> {
    let redis_url = |l: &mut Loader, key: &str, text: &str| -> Option<Url> {
        match Url::parse(text) {
            Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some() => Some(u),
            Ok(_) => {
                l.problem(
                    key,
                    format!("{text:?}: expected redis://host:port or rediss://host:port"),
                );
                None
            }
            Err(e) => {
                l.problem(key, format!("{text:?}: {e}"));
                None
            }
        }
    };
    let url = l.string("session.redis.url");
    let cluster = l
        .get::<Vec<String>>("session.redis.cluster_urls")
        .unwrap_or_default();
    let sentinels = l
        .get::<Vec<String>>("session.redis.sentinel_urls")
        .unwrap_or_default();
    let master = l.string("session.redis.sentinel_master");
    let set = [!url.is_empty(), !cluster.is_empty(), !sentinels.is_empty()];
    let topology = match set {
        [true, false, false] => {
            redis_url(l, "session.redis.url", &url).map(RedisTopology::Standalone)
        }
        [false, true, false] => {
            let urls: Vec<Option<Url>> = cluster
                .iter()
                .map(|u| redis_url(l, "session.redis.cluster_urls", u))
                .collect();
            urls.into_iter()
                .collect::<Option<Vec<_>>>()
                .map(RedisTopology::Cluster)
        }
        [false, false, true] => {
            let urls: Vec<Option<Url>> = sentinels
                .iter()
                .map(|u| redis_url(l, "session.redis.sentinel_urls", u))
                .collect();
            if master.is_empty() {
                l.problem(
                    "session.redis.sentinel_master",
                    "required with sentinel_urls: the name the sentinels monitor",
                );
            }
            match urls.into_iter().collect::<Option<Vec<_>>>() {
                Some(sentinels) if !master.is_empty() => Some(RedisTopology::Sentinel {
                    sentinels,
                    master: master.clone(),
                }),
                _ => None,
            }
        }
        _ => {
            l.problem(
                "session.redis",
                "session.store = \"redis\" needs exactly one of url, cluster_urls, sentinel_urls",
            );
            None
        }
    };
    let password = match l.secret_source("session.redis.password") {
        SecretSource::Unset => Some(None),
        SecretSource::Inline(Value::String(_, s)) => Some(Some(Secret::new(s))),
        SecretSource::Inline(_) => {
            l.problem("session.redis.password", "expected a string");
            None
        }
        SecretSource::File(text) => Some(Some(Secret::new(text.trim_end_matches(['\r', '\n'])))),
    };
    let ca_file = l.path("session.redis.ca_file");
    if let Some(p) = &ca_file
        && !p.is_file()
    {
        l.problem(
            "session.redis.ca_file",
            format!("file {} not found", p.display()),
        );
    }
    let key_prefix = l.string("session.redis.key_prefix");
    if key_prefix.contains(['{', '}']) {
        l.problem(
            "session.redis.key_prefix",
            "must not contain { or } (they pick Redis Cluster hash slots)",
        );
    }
    let timeout = positive(l, "session.redis.timeout");
    Some(RedisConfig {
        topology: topology?,
        password: password?,
        ca_file,
        key_prefix: (!key_prefix.contains(['{', '}'])).then_some(key_prefix)?,
        timeout: timeout?,
    })
}

/// `p` if it is an RFC 6901 JSON Pointer (empty, or starting with `/`).
fn json_pointer(l: &mut Loader, key: &str, p: String) -> Option<String> {
    if p.is_empty() || p.starts_with('/') {
        return Some(p);
    }
    l.problem(
        key,
        format!("{p:?} is not a JSON Pointer (RFC 6901): it must start with '/'"),
    );
    None
}

fn headers(l: &mut Loader) -> Option<HeadersConfig> {
    let authorization = l.get::<bool>("headers.authorization");
    let access_token = l.get::<bool>("headers.access_token");
    let [user_claim, email_claim] = ["headers.user_claim", "headers.email_claim"].map(|key| {
        let p = l.string(key);
        json_pointer(l, key, p)
    });
    let raw = l
        .get::<std::collections::BTreeMap<String, String>>("headers.claims")
        .unwrap_or_default();
    let mut claims = Vec::new();
    let mut ok = true;
    for (name, pointer) in raw {
        let key = format!("headers.claims.{name}");
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) if !crate::proxy::headers::is_reserved(&h) => {
                match json_pointer(l, &key, pointer) {
                    Some(pointer) => claims.push((h, pointer)),
                    None => ok = false,
                }
            }
            Ok(_) => {
                l.problem(
                    &key,
                    "this header is managed by the proxy and cannot carry a claim",
                );
                ok = false;
            }
            Err(_) => {
                l.problem(&key, format!("{name:?} is not a valid header name"));
                ok = false;
            }
        }
    }
    let backend_text = l.string("headers.backend_url");
    let backend_url = match backend_text.trim() {
        "" => Some(None),
        name => match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) if crate::proxy::headers::is_reserved(&h) => {
                l.problem(
                    "headers.backend_url",
                    "this header is managed by the proxy and cannot carry the backend URL",
                );
                None
            }
            Ok(h) if claims.iter().any(|(c, _)| *c == h) => {
                l.problem(
                    "headers.backend_url",
                    format!("{name:?} already carries a claim (headers.claims)"),
                );
                None
            }
            Ok(h) => Some(Some(h)),
            Err(_) => {
                l.problem(
                    "headers.backend_url",
                    format!("{name:?} is not a valid header name (\"\" turns it off)"),
                );
                None
            }
        },
    };
    Some(HeadersConfig {
        backend_url: backend_url?,
        authorization: authorization?,
        access_token: access_token?,
        user_claim: user_claim?,
        email_claim: email_claim?,
        claims: ok.then_some(claims)?,
    })
}

/// A `[[authorization.rules]]` entry as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    path: String,
    #[serde(default)]
    allowed_email_domains: Vec<String>,
    #[serde(default)]
    allowed_emails: Vec<String>,
    #[serde(default)]
    allowed_groups: Vec<String>,
    #[serde(default)]
    claims: std::collections::BTreeMap<String, Vec<toml_scalar::Scalar>>,
}

mod toml_scalar {
    /// A claim value as written in the file: text, a number or a boolean,
    /// compared with the claim as text.
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    pub(super) enum Scalar {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }

    impl Scalar {
        pub(super) fn text(self) -> String {
            match self {
                Scalar::Text(s) => s,
                Scalar::Int(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Bool(b) => b.to_string(),
            }
        }
    }
}

/// Email domains as written: `example.com`, or `.example.com` /
/// `*.example.com` for the domain and its subdomains; lower case.
fn email_domains(l: &mut Loader, key: &str, domains: Vec<String>) -> Option<Vec<String>> {
    let mut ok = true;
    let mut out = Vec::new();
    for d in domains {
        let d = d.trim().to_ascii_lowercase();
        let host = d.trim_start_matches("*.").trim_start_matches('.');
        if host.is_empty() || url::Host::parse(host).is_err() || host.contains(['/', ':', '*', '@'])
        {
            l.problem(
                key,
                format!("{d:?} is not a domain such as \"example.com\" or \".example.com\""),
            );
            ok = false;
        }
        out.push(match d.strip_prefix("*.") {
            Some(rest) => format!(".{rest}"),
            None => d,
        });
    }
    ok.then_some(out)
}

fn emails(l: &mut Loader, key: &str, list: Vec<String>) -> Option<Vec<String>> {
    let mut ok = true;
    let out = list
        .into_iter()
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty() && !e.starts_with('#'))
        .inspect(|e| {
            if e.matches('@').count() != 1 || e.starts_with('@') || e.ends_with('@') {
                l.problem(key, format!("{e:?} is not an email address"));
                ok = false;
            }
        })
        .collect();
    ok.then_some(out)
}

fn authorization(l: &mut Loader) -> Option<AuthorizationConfig> {
    let domains = l.get::<Vec<String>>("authorization.allowed_email_domains")?;
    let domains = email_domains(l, "authorization.allowed_email_domains", domains);
    let mut listed = l.get::<Vec<String>>("authorization.allowed_emails")?;
    if let Some(path) = l.path("authorization.allowed_emails_file") {
        match std::fs::read_to_string(&path) {
            Ok(text) => listed.extend(text.lines().map(String::from)),
            Err(e) => l.problem(
                "authorization.allowed_emails_file",
                format!("cannot read {}: {e}", path.display()),
            ),
        }
    }
    let allowed_emails = emails(l, "authorization.allowed_emails", listed);
    let allowed_groups = l.get::<Vec<String>>("authorization.allowed_groups")?;
    let groups_claim = l.string("authorization.groups_claim");
    let groups_claim = json_pointer(l, "authorization.groups_claim", groups_claim);
    let raw_rules = l.get::<Vec<RawRule>>("authorization.rules")?;
    let mut rules = Vec::new();
    let mut ok = true;
    for (i, r) in raw_rules.into_iter().enumerate() {
        let key = format!("authorization.rules[{}]", i + 1);
        let path = match regex::Regex::new(&r.path) {
            Ok(p) => Some(p),
            Err(e) => {
                l.problem(&format!("{key}.path"), format!("{:?}: {e}", r.path));
                None
            }
        };
        let mut claims = Vec::new();
        for (pointer, values) in r.claims {
            if let Some(p) = json_pointer(l, &format!("{key}.claims"), pointer) {
                if p.is_empty() || values.is_empty() {
                    l.problem(
                        &format!("{key}.claims"),
                        "each claim needs a JSON Pointer and at least one allowed value",
                    );
                    ok = false;
                }
                claims.push((
                    p,
                    values.into_iter().map(toml_scalar::Scalar::text).collect(),
                ));
            } else {
                ok = false;
            }
        }
        let domains = email_domains(
            l,
            &format!("{key}.allowed_email_domains"),
            r.allowed_email_domains,
        );
        let emails = emails(l, &format!("{key}.allowed_emails"), r.allowed_emails);
        match (path, domains, emails) {
            (Some(path), Some(domains), Some(emails)) => rules.push(AuthorizationRule {
                path,
                allowed_email_domains: domains,
                allowed_emails: emails,
                allowed_groups: r.allowed_groups,
                claims,
            }),
            _ => ok = false,
        }
    }
    let config = AuthorizationConfig {
        allowed_email_domains: domains?,
        allowed_emails: allowed_emails?,
        allowed_groups,
        groups_claim: groups_claim?,
        rules,
    };
    ok.then_some(config)
}

fn bearer(l: &mut Loader, provider: Option<&ProviderConfig>) -> Option<BearerConfig> {
    let enabled = l.get::<bool>("bearer.enabled")?;
    let mut audiences = l.get::<Vec<String>>("bearer.audiences")?;
    audiences.retain(|a| !a.trim().is_empty());
    if audiences.is_empty()
        && let Some(p) = provider
    {
        audiences.push(p.client_id.clone());
    }
    let mut extra_issuers = Vec::new();
    let mut ok = true;
    for entry in l.get::<Vec<String>>("bearer.extra_issuers")? {
        let parsed = entry.split_once('=').and_then(|(issuer, audience)| {
            let url = Url::parse(issuer.trim()).ok()?;
            let audience = audience.trim();
            (matches!(url.scheme(), "https" | "http") && !audience.is_empty())
                .then(|| (url, audience.to_string()))
        });
        match parsed {
            Some(p) => extra_issuers.push(p),
            None => {
                l.problem(
                    "bearer.extra_issuers",
                    format!("{entry:?}: expected \"https://issuer.example=audience\""),
                );
                ok = false;
            }
        }
    }
    let opaque_cache = l.duration("bearer.opaque_cache")?;
    if enabled
        && let Some(p) = provider
        && p.kind == ProviderKind::Emp
        && !p.profile
        && extra_issuers.is_empty()
    {
        l.problem(
            "bearer.enabled",
            "EMP's access tokens are opaque: they can be checked only through provider.profile = true (or add bearer.extra_issuers)",
        );
        ok = false;
    }
    ok.then_some(BearerConfig {
        enabled,
        audiences,
        extra_issuers,
        opaque_cache,
    })
}

fn routes(l: &mut Loader) -> Option<RoutesConfig> {
    let patterns = l.get::<Vec<String>>("routes.skip_auth")?;
    let mut ok = true;
    for (i, p) in patterns.iter().enumerate() {
        if let Err(e) = regex::Regex::new(p) {
            l.problem("routes.skip_auth", format!("pattern #{} {p:?}: {e}", i + 1));
            ok = false;
        }
    }
    let domains = l.get::<Vec<String>>("routes.allowed_redirect_domains")?;
    for d in &domains {
        let host = d.strip_prefix('.').unwrap_or(d);
        if host.is_empty() || url::Host::parse(host).is_err() || host.contains(['/', ':', '*']) {
            l.problem(
                "routes.allowed_redirect_domains",
                format!("{d:?} is not a host name such as \"app.example.com\" or \".example.com\""),
            );
            ok = false;
        }
    }
    let path_normalization = match l.string("routes.path_normalization").as_str() {
        "reject" => Some(PathNormalization::Reject),
        "rewrite" => Some(PathNormalization::Rewrite),
        other => {
            l.problem(
                "routes.path_normalization",
                format!("{other:?}: expected \"reject\" or \"rewrite\""),
            );
            None
        }
    };
    let set = RegexSet::new(&patterns).ok().filter(|_| ok)?;
    Some(RoutesConfig {
        skip_auth: set,
        path_normalization: path_normalization?,
        allowed_redirect_domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
    })
}

#[cfg(test)]
mod tests;
