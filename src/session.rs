//! Sessions: what the sidecar keeps per logged-in browser, the store trait
//! they live behind (memory now, Redis later), and the signed cookies that
//! name them. The cookie holds only an opaque random id; tokens stay here.

pub mod cookie;
pub mod memory;
pub mod record;
pub mod redis;
pub mod seal;

pub use cookie::SessionKey;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use rand::RngCore as _;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::provider::{BoxFuture, IdpError, TokenSet};

/// Wall-clock Unix milliseconds, for what outlives this process.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 256 random bits, URL-safe base64: session ids, `state` values.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The tokens of a session at one moment; replaced whole on refresh.
pub struct Tokens {
    pub access_token: String,
    /// Its upstream header lines, and the token as a header value.
    pub headers: TokenHeaders,
    pub refresh_token: Option<String>,
    pub expires_at: Instant,
    /// The lifetime the IdP gave the access token (`expires_in`).
    pub lifetime: Duration,
    /// When a refresh becomes due: `token.refresh_margin` before expiry,
    /// capped at half the token's lifetime.
    pub refresh_at: Instant,
    pub backend_url: Option<String>,
    /// `backend_url` as a header value, when it can be one.
    pub backend_header: Option<HeaderValue>,
    /// The newest id_token (OpenID), for `id_token_hint` at sign-out.
    pub id_token: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("expires_at", &self.expires_at)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Tokens issued `now`; `None` when the access token cannot be a header value.
    pub fn issued(set: TokenSet, now: Instant, margin: Duration) -> Option<Tokens> {
        let headers = TokenHeaders::new(&set.access_token)?;
        let margin = margin.min(set.expires_in / 2);
        Some(Tokens {
            access_token: set.access_token,
            headers,
            refresh_token: set.refresh_token,
            expires_at: now + set.expires_in,
            lifetime: set.expires_in,
            refresh_at: now + set.expires_in - margin,
            backend_header: set
                .backend_url
                .as_deref()
                .and_then(|u| HeaderValue::try_from(u).ok()),
            backend_url: set.backend_url,
            id_token: set.id_token,
        })
    }
}

/// An access token's upstream header lines, rendered once per token:
/// `authorization: Bearer <token>\r\nx-forwarded-access-token: <token>\r\n`.
/// A proxied request copies the ones it injects in one piece instead of
/// writing each name and value (benches/README.md, issue 15); the header
/// value is a view of the same bytes, so the token is held once here.
#[derive(Clone)]
pub struct TokenHeaders {
    lines: Bytes,
    /// Where the `X-Forwarded-Access-Token` line starts.
    access_at: usize,
    /// The token as a header value (`X-Forwarded-Access-Token`, and
    /// `X-Auth-Request-Access-Token` for `/oauth2/auth`); sensitive.
    pub access: HeaderValue,
}

/// Never the token itself.
impl std::fmt::Debug for TokenHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenHeaders").finish_non_exhaustive()
    }
}

impl TokenHeaders {
    /// `None` when the token cannot be a header value.
    pub fn new(token: &str) -> Option<TokenHeaders> {
        const AUTHORIZATION: &str = "authorization: Bearer ";
        const ACCESS: &str = "x-forwarded-access-token: ";
        let mut lines =
            BytesMut::with_capacity(AUTHORIZATION.len() + ACCESS.len() + 4 + 2 * token.len());
        for name in [AUTHORIZATION, ACCESS] {
            lines.extend_from_slice(name.as_bytes());
            lines.extend_from_slice(token.as_bytes());
            lines.extend_from_slice(b"\r\n");
        }
        let lines = lines.freeze();
        let access_at = AUTHORIZATION.len() + token.len() + 2;
        let value_at = access_at + ACCESS.len();
        // Validates the token as header text (no CR, LF or other controls).
        let mut access =
            HeaderValue::from_maybe_shared(lines.slice(value_at..value_at + token.len())).ok()?;
        access.set_sensitive(true);
        Some(TokenHeaders {
            lines,
            access_at,
            access,
        })
    }

    /// The lines to inject: `Authorization`, `X-Forwarded-Access-Token`,
    /// both or neither.
    pub fn lines(&self, authorization: bool, access_token: bool) -> &[u8] {
        let (from, to) = match (authorization, access_token) {
            (true, true) => (0, self.lines.len()),
            (true, false) => (0, self.access_at),
            (false, true) => (self.access_at, self.lines.len()),
            (false, false) => (0, 0),
        };
        &self.lines[from..to]
    }
}

/// Header lines (`name: value\r\n` each), written as they are.
fn render_lines(headers: &[(HeaderName, HeaderValue)]) -> Bytes {
    let mut lines = BytesMut::new();
    for (name, value) in headers {
        lines.extend_from_slice(name.as_str().as_bytes());
        lines.extend_from_slice(b": ");
        lines.extend_from_slice(value.as_bytes());
        lines.extend_from_slice(b"\r\n");
    }
    lines.freeze()
}

/// The value at an RFC 6901 pointer, as header text (strings as they are,
/// numbers and booleans printed, arrays of strings comma-joined).
pub fn claim_text(claims: &Value, pointer: &str) -> Option<HeaderValue> {
    let text = match claims.pointer(pointer)? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str())
            .collect::<Vec<_>>()
            .join(","),
        Value::Null | Value::Object(_) => return None,
    };
    HeaderValue::try_from(text).ok()
}

/// How claims become identity headers (`headers.user_claim`,
/// `headers.email_claim`, `[headers.claims]`).
#[derive(Debug, Clone)]
pub struct IdentityRules {
    user_claim: String,
    email_claim: String,
    claims: Vec<(HeaderName, String)>,
}

impl IdentityRules {
    pub fn new(config: &crate::config::Config) -> IdentityRules {
        IdentityRules {
            user_claim: config.headers.user_claim.clone(),
            email_claim: config.headers.email_claim.clone(),
            claims: config.headers.claims.clone(),
        }
    }

    /// Rules that read only the user claim at `user_claim`.
    #[cfg(test)]
    pub fn for_tests(user_claim: &str) -> IdentityRules {
        IdentityRules {
            user_claim: user_claim.into(),
            email_claim: "/email".into(),
            claims: Vec::new(),
        }
    }

    pub fn identity(&self, claims: &serde_json::Value) -> Identity {
        Identity::new(
            claim_text(claims, &self.user_claim),
            claim_text(claims, &self.email_claim),
            self.claims
                .iter()
                .filter_map(|(name, pointer)| Some((name.clone(), claim_text(claims, pointer)?)))
                .collect(),
        )
    }
}

/// Who the user is, as headers: computed once at login.
#[derive(Debug, Default)]
pub struct Identity {
    pub user: Option<HeaderValue>,
    pub email: Option<HeaderValue>,
    /// `[headers.claims]`, resolved against the claims.
    pub claim_headers: Vec<(HeaderName, HeaderValue)>,
    /// The same as upstream header lines, ready to copy.
    pub claim_lines: Bytes,
}

impl Identity {
    pub fn new(
        user: Option<HeaderValue>,
        email: Option<HeaderValue>,
        claim_headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Identity {
        Identity {
            user,
            email,
            claim_lines: render_lines(&claim_headers),
            claim_headers,
        }
    }
}

/// How a refresh flight ended, as its waiters learn it.
#[derive(Debug, Clone)]
pub enum Outcome {
    Refreshed,
    Ended,
    Failed(Arc<IdpError>),
    /// The store could not say who refreshes.
    StoreFailed(StoreError),
}

/// A refresh flight's outcome, once it has one.
pub type Flight = watch::Receiver<Option<Outcome>>;

/// Single-flight bookkeeping for refreshes of one session
/// ([`crate::token_cache`]).
#[derive(Debug, Default)]
pub struct RefreshState {
    /// The refresh in the air, if any: its outcome is published here.
    flight: Mutex<Option<Flight>>,
    /// After a transient failure: no new flight before this, and the error
    /// that requests with an expired token get meanwhile.
    cool_down: Mutex<Option<(Instant, Arc<IdpError>)>>,
}

impl RefreshState {
    /// The flight in the air.
    pub fn current(&self) -> Option<Flight> {
        lock(&self.flight).clone()
    }

    /// Claims the flight: the sender to publish its outcome on, or `None`
    /// when one is in the air already.
    pub fn take_off(&self) -> Option<watch::Sender<Option<Outcome>>> {
        let mut slot = lock(&self.flight);
        if slot.is_some() {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        *slot = Some(rx);
        Some(tx)
    }

    /// The flight is over: the next refresh is a new one.
    pub fn land(&self) {
        *lock(&self.flight) = None;
    }

    /// The error of the last failure while its cool-down lasts.
    pub fn cooling(&self, now: Instant) -> Option<Arc<IdpError>> {
        lock(&self.cool_down)
            .as_ref()
            .filter(|(until, _)| now < *until)
            .map(|(_, e)| e.clone())
    }

    pub fn set_cool_down(&self, cool_down: Option<(Instant, Arc<IdpError>)>) {
        *lock(&self.cool_down) = cool_down;
    }
}

/// A poisoned lock still holds consistent data here (plain values swapped
/// whole), so it is used as it is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Who the session's user is: the newest verified claims and what is read
/// out of them. Replaced whole when a refresh brings a newer id_token, so
/// headers and authorization follow it.
#[derive(Debug)]
pub struct Profile {
    /// The claims as a JSON object, for `/oauth2/userinfo`.
    pub claims: Box<str>,
    /// The claims' `sub`: a refreshed id_token must name the same.
    pub subject: Option<Box<str>>,
    /// The provider's session id (`sid`), for back-channel logout.
    pub sid: Option<Box<str>>,
    pub identity: Identity,
    /// What the authorization rules look at, read from `claims` once.
    pub authz: arc_swap::ArcSwapOption<crate::authz::Facts>,
}

impl Profile {
    pub fn new(claims: &serde_json::Value, identity: Identity) -> Profile {
        Profile {
            claims: claims.to_string().into_boxed_str(),
            subject: claims
                .get("sub")
                .and_then(serde_json::Value::as_str)
                .map(Into::into),
            sid: claims
                .get("sid")
                .and_then(serde_json::Value::as_str)
                .map(Into::into),
            identity,
            authz: arc_swap::ArcSwapOption::empty(),
        }
    }
}

#[derive(Debug)]
pub struct Session {
    tokens: Mutex<Arc<Tokens>>,
    profile: arc_swap::ArcSwap<Profile>,
    pub refresh: RefreshState,
    /// Unix milliseconds of the login: `session.lifetime` counts from it.
    pub created_at: u64,
    /// The generation of the stored record this copy matches (a shared
    /// store fences refresh writes with it).
    pub generation: AtomicU64,
    /// Unix milliseconds of the last idle-timeout touch sent to the store.
    pub touched_at: AtomicU64,
}

impl Session {
    pub fn new(tokens: Tokens, claims: &serde_json::Value, identity: Identity) -> Session {
        Session::restored(tokens, claims, identity, now_ms(), 1)
    }

    /// A session as a store kept it.
    pub fn restored(
        tokens: Tokens,
        claims: &serde_json::Value,
        identity: Identity,
        created_at: u64,
        generation: u64,
    ) -> Session {
        Session {
            tokens: Mutex::new(Arc::new(tokens)),
            profile: arc_swap::ArcSwap::from_pointee(Profile::new(claims, identity)),
            refresh: RefreshState::default(),
            created_at,
            generation: AtomicU64::new(generation),
            touched_at: AtomicU64::new(now_ms()),
        }
    }

    pub fn tokens(&self) -> Arc<Tokens> {
        lock(&self.tokens).clone()
    }

    /// The names a back-channel logout finds this session by
    /// ([`logout_name`] of its `sid` and of its `sub`).
    pub fn logout_names(&self) -> Vec<String> {
        let p = self.profile();
        let sid = p.sid.as_deref().map(|s| logout_name("sid", s));
        let sub = p.subject.as_deref().map(|s| logout_name("sub", s));
        sid.into_iter().chain(sub).collect()
    }

    /// The user's claims and identity as they are now.
    pub fn profile(&self) -> arc_swap::Guard<Arc<Profile>> {
        self.profile.load()
    }

    /// Newer verified claims (a refresh's id_token).
    pub fn set_profile(&self, profile: Profile) {
        self.profile.store(Arc::new(profile));
    }

    /// Takes over the tokens, claims and generation of a newer copy of
    /// this session (another replica's refresh).
    pub fn adopt(&self, newer: &Session) {
        *lock(&self.tokens) = newer.tokens();
        self.profile.store(newer.profile.load_full());
        self.generation.store(
            newer.generation.load(std::sync::atomic::Ordering::Acquire),
            std::sync::atomic::Ordering::Release,
        );
    }

    pub fn set_tokens(&self, tokens: Tokens) {
        *lock(&self.tokens) = Arc::new(tokens);
    }
}

/// The store could not answer: its backend is unreachable or too slow.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the session store is unreachable: {0}")]
    Unavailable(String),
    #[error("the session store did not answer in time")]
    Timeout,
}

/// Where sessions live, named by [`SessionKey::store_key`]. Every
/// implementation passes the one suite in `session/tests.rs`.
pub trait SessionStore: Send + Sync {
    /// The answer of [`Self::get`] when this replica has it at hand (the
    /// memory store always; the Redis store on a fresh hit in its local
    /// cache), without a future to allocate and poll: `None` means ask
    /// `get`.
    fn get_now(&self, _key: &SessionKey) -> Option<Option<Arc<Session>>> {
        None
    }
    fn get<'a>(
        &'a self,
        key: &'a SessionKey,
    ) -> BoxFuture<'a, Result<Option<Arc<Session>>, StoreError>>;
    fn insert<'a>(
        &'a self,
        key: &'a SessionKey,
        session: Arc<Session>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn remove<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Records that the login of `state` has come back: `true` the first
    /// time, `false` for a replay. Kept for `ttl` (the login's lifetime).
    fn consume_state<'a>(
        &'a self,
        state: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Ends every session indexed under `name` ([`logout_name`]), on every
    /// replica; how many there were. Sessions are indexed when inserted.
    fn end_sessions_of<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<usize, StoreError>>;
    /// Before a refresh: whether this replica refreshes (it then holds
    /// the session's refresh lease until the guard drops) or another
    /// replica already did (the session now holds its tokens).
    fn refresh_turn<'a>(
        &'a self,
        _key: &'a SessionKey,
        _session: &'a Arc<Session>,
    ) -> BoxFuture<'a, Result<RefreshTurn, StoreError>> {
        // One process: the token cache's single flight is the lock.
        Box::pin(std::future::ready(Ok(
            RefreshTurn::Mine(LeaseGuard::none()),
        )))
    }
    /// After a refresh: stores the session's new tokens, if the stored
    /// record is still at the generation this copy was read at, and keeps
    /// a note of it under `old_refresh_token` for a while. `false`:
    /// another replica wrote first, or the session ended.
    fn save_refreshed<'a>(
        &'a self,
        _key: &'a SessionKey,
        _session: &'a Arc<Session>,
        _old_refresh_token: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        // One process: the session object is the record.
        Box::pin(std::future::ready(Ok(true)))
    }
    /// When the IdP refused `old_refresh_token`: whether another replica
    /// refreshed with it a moment ago (the session then holds its result).
    fn refreshed_elsewhere<'a>(
        &'a self,
        _key: &'a SessionKey,
        _session: &'a Arc<Session>,
        _old_refresh_token: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(std::future::ready(Ok(false)))
    }
    /// Sessions held now (approximate), for `emp_sidecar_sessions_active`.
    fn count(&self) -> u64;
    /// Starts background work (connections, subscriptions); called once,
    /// inside the runtime that serves.
    fn start(&self) {}
    /// Whether the store can serve now (`/ready`).
    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(std::future::ready(true))
    }
}

/// Who refreshes a shared session ([`SessionStore::refresh_turn`]).
pub enum RefreshTurn {
    /// This replica: it holds the lease while the guard lives.
    Mine(LeaseGuard),
    /// Another replica refreshed meanwhile; the session holds its tokens.
    Adopted,
    /// The session is gone from the store (signed out, expired).
    Ended,
}

/// Holds a refresh lease; dropping it releases the lease.
pub struct LeaseGuard {
    _held: Option<Box<dyn Send + Sync>>,
}

impl LeaseGuard {
    /// No lease to hold (a store that needs none).
    pub fn none() -> LeaseGuard {
        LeaseGuard { _held: None }
    }

    /// A lease held by `held`, whose `Drop` releases it.
    pub fn new(held: impl Send + Sync + 'static) -> LeaseGuard {
        LeaseGuard {
            _held: Some(Box::new(held)),
        }
    }
}

/// What a consumed `state` is remembered by: its hash, so that no store
/// holds a state that is still valid somewhere in readable form.
/// The index name of a `sid` or `sub` (`kind`) for back-channel logout:
/// a hash, so no store holds the identifier readably.
pub fn logout_name(kind: &str, value: &str) -> String {
    state_digest(&format!("{kind}:{value}"))
}

pub fn state_digest(state: &str) -> String {
    use sha2::Digest as _;
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(state.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_tokens_header_lines_are_rendered_once_and_picked_by_the_settings() {
        let t = TokenHeaders::new("abc.def").unwrap();
        let text = |a, b| String::from_utf8(t.lines(a, b).to_vec()).unwrap();
        let authorization = "authorization: Bearer abc.def\r\n";
        let access = "x-forwarded-access-token: abc.def\r\n";
        assert_eq!(text(true, true), format!("{authorization}{access}"));
        assert_eq!(text(true, false), authorization);
        assert_eq!(text(false, true), access);
        assert_eq!(text(false, false), "");
        assert_eq!(t.access, "abc.def");
        assert!(t.access.is_sensitive());
        assert!(!format!("{t:?}").contains("abc"));
        // A token that is no header text gives no lines to inject.
        for bad in ["a\r\nx-evil: 1", "a\nb", "a\0b"] {
            assert!(TokenHeaders::new(bad).is_none(), "{bad:?}");
        }
        let id = Identity::new(
            None,
            None,
            vec![
                (
                    HeaderName::from_static("x-group"),
                    HeaderValue::from_static("a,b"),
                ),
                (
                    HeaderName::from_static("x-user"),
                    HeaderValue::from_static("u1"),
                ),
            ],
        );
        assert_eq!(&id.claim_lines[..], b"x-group: a,b\r\nx-user: u1\r\n");
    }

    #[test]
    fn claims_become_header_text() {
        let c = json!({"sub": "u1", "n": 7, "ok": true, "groups": ["a", "b"], "obj": {"x": 1}, "nl": "a\nb"});
        assert_eq!(claim_text(&c, "/sub").unwrap(), "u1");
        assert_eq!(claim_text(&c, "/n").unwrap(), "7");
        assert_eq!(claim_text(&c, "/ok").unwrap(), "true");
        assert_eq!(claim_text(&c, "/groups").unwrap(), "a,b");
        assert!(claim_text(&c, "/obj").is_none());
        assert!(claim_text(&c, "/missing").is_none());
        // A value that cannot be a header is left out, not sent broken.
        assert!(claim_text(&c, "/nl").is_none());
    }
}
