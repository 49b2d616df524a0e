//! The sidecar's cookies.
//!
//! - The session cookie (`session.cookie_name`) carries the session's id
//!   and its own random secret, `<base64url(id | secret)>.<HMAC-SHA256(key,
//!   "<name>=<value>")>`; the first `session.cookie_secret` signs, every one
//!   verifies (rotation). The secret never leaves the browser and this
//!   process: the stores know the session by a keyed hash of its id
//!   ([`SessionKey::store_key`]) and keep its record encrypted under a key
//!   derived from the secret ([`SessionKey::record_key`]), so whoever reads
//!   a store, even with the configuration in hand, learns neither cookie
//!   values nor tokens.
//! - One login cookie per login in progress (`<cookie_name>_csrf_<tag of
//!   state>`), holding that login's `state`, nonce, PKCE verifier, return
//!   URL and issue time, sealed (AES-256-GCM under a key derived from the
//!   cookie secret). A login in progress thus holds no server memory, and
//!   several tabs can log in at once. A browser keeps at most
//!   [`MAX_LOGIN_COOKIES`]: the oldest are dropped first, so the `Cookie`
//!   header cannot grow into a `431`. The issue time is inside the sealed
//!   value, since a cookie's `Max-Age` is not authenticated.
//!
//! A session cookie verified once is remembered by its whole value, per
//! worker thread: a request that brings it again costs a
//! hash lookup and a constant-time comparison instead of two HMACs and
//! three base64 passes. The memory is bounded, and it is forgotten with the
//! secrets that verified it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, SameSite};
use hmac::{Hmac, KeyInit, Mac};
use http::header::{self, HeaderMap, HeaderValue};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::seal::SealKey;
use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

/// How long a login may take from redirect to callback.
pub const LOGIN_COOKIE_TTL: Duration = Duration::from_secs(600);
/// Logins in progress a browser may hold at once (tabs).
pub const MAX_LOGIN_COOKIES: usize = 5;
/// The longest return URL a login cookie keeps (a longer one returns to `/`).
pub const MAX_RETURN_URL: usize = 2048;

const ID_LEN: usize = 16;
const SECRET_LEN: usize = 32;

/// A session's identity as its cookie carries it. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey {
    id: [u8; ID_LEN],
    secret: [u8; SECRET_LEN],
    store_key: Box<str>,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// A new session: a random id and a random secret.
    pub fn generate() -> SessionKey {
        let mut id = [0u8; ID_LEN];
        let mut secret = [0u8; SECRET_LEN];
        rand::rng().fill_bytes(&mut id);
        rand::rng().fill_bytes(&mut secret);
        SessionKey::from_parts(id, secret)
    }

    fn from_parts(id: [u8; ID_LEN], secret: [u8; SECRET_LEN]) -> SessionKey {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret);
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
        ctx.update(b"emp-sidecar store key v1");
        ctx.update(&id);
        let store_key = URL_SAFE_NO_PAD.encode(ctx.sign()).into_boxed_str();
        SessionKey {
            id,
            secret,
            store_key,
        }
    }

    /// The name of the session in every store and cache: HMAC-SHA256 of
    /// the id under the session's secret. It reveals neither, and without
    /// the cookie it cannot be computed.
    pub fn store_key(&self) -> &str {
        &self.store_key
    }

    /// The key the session's record is sealed under.
    pub fn record_key(&self) -> Option<SealKey> {
        let mut purpose = b"session record v1 ".to_vec();
        purpose.extend_from_slice(&self.id);
        SealKey::derive(&self.secret, &purpose)
    }

    fn encode(&self) -> String {
        let mut raw = [0u8; ID_LEN + SECRET_LEN];
        raw[..ID_LEN].copy_from_slice(&self.id);
        raw[ID_LEN..].copy_from_slice(&self.secret);
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn decode(text: &str) -> Option<SessionKey> {
        let raw = URL_SAFE_NO_PAD.decode(text).ok()?;
        if raw.len() != ID_LEN + SECRET_LEN {
            return None;
        }
        let (id, secret) = raw.split_at(ID_LEN);
        Some(SessionKey::from_parts(
            id.try_into().ok()?,
            secret.try_into().ok()?,
        ))
    }
}

/// A login between redirect and callback, as its cookie holds it.
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingLogin {
    #[serde(rename = "s")]
    pub state: String,
    #[serde(rename = "n")]
    pub nonce: String,
    #[serde(rename = "v")]
    pub code_verifier: String,
    #[serde(rename = "r")]
    pub return_to: String,
    /// Unix milliseconds when the login started.
    #[serde(rename = "t")]
    pub issued_at: u64,
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct Cookies {
    /// Replaced as a whole when the secrets change (`SIGHUP`).
    keys: ArcSwap<Keys>,
    /// `keys`' [`Keys::id`], stored after them: what a cookie verified
    /// before needs, for one atomic load instead of `ArcSwap::load` (about
    /// 200 instructions a request, benches/README.md).
    keys_id: AtomicU64,
    pub session_name: String,
    /// `<cookie_name>_csrf_`: every login cookie's name starts so.
    login_prefix: String,
    secure: bool,
    session_max_age: Duration,
}

/// What the cookie secrets key: the first signs and seals, all verify.
struct Keys {
    /// Tells these keys from every other set in the process (another
    /// sidecar's in a test, or the set a reload replaced): what they
    /// verified is remembered under it.
    id: u64,
    /// One HMAC per secret, keyed once; cloned for each use.
    macs: Vec<HmacSha256>,
    /// One login-cookie key per secret.
    login: Vec<SealKey>,
}

impl Keys {
    fn new(secrets: &[Secret]) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Keys {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            macs: secrets
                .iter()
                .filter_map(|s| <HmacSha256 as KeyInit>::new_from_slice(s.expose()).ok())
                .collect(),
            login: secrets
                .iter()
                .filter_map(|s| SealKey::derive(s.expose(), b"login cookie v1"))
                .collect(),
        }
    }
}

impl Cookies {
    pub fn new(secrets: Vec<Secret>, name: &str, secure: bool, lifetime: Duration) -> Self {
        let keys = Keys::new(&secrets);
        Self {
            keys_id: AtomicU64::new(keys.id),
            keys: ArcSwap::from_pointee(keys),
            session_name: name.to_string(),
            login_prefix: format!("{name}_csrf_"),
            secure,
            session_max_age: lifetime,
        }
    }

    /// Signs and verifies with `secrets` from now on (`SIGHUP`): cookies
    /// that only a dropped secret signed are no session from here.
    pub fn set_secrets(&self, secrets: &[Secret]) {
        let keys = Keys::new(secrets);
        let id = keys.id;
        self.keys.store(std::sync::Arc::new(keys));
        // A request that still reads the old id takes a cookie the old
        // keys verified: as if it had come a moment before the reload.
        self.keys_id.store(id, Ordering::Release);
    }

    fn mac(key: &HmacSha256, name: &str, value: &str) -> HmacSha256 {
        let mut mac = key.clone();
        mac.update(name.as_bytes());
        mac.update(b"=");
        mac.update(value.as_bytes());
        mac
    }

    fn sign(&self, name: &str, value: &str) -> String {
        let tag = self
            .keys
            .load()
            .macs
            .first()
            .map(|k| URL_SAFE_NO_PAD.encode(Self::mac(k, name, value).finalize().into_bytes()))
            .unwrap_or_default();
        format!("{value}.{tag}")
    }

    /// Every cookie of the request, parsed.
    fn all<'h>(headers: &'h HeaderMap) -> impl Iterator<Item = Cookie<'h>> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|h| h.to_str().ok())
            .flat_map(|text| Cookie::split_parse(text).flatten())
    }

    /// The first cookie `name` of the request that one of `keys` signed:
    /// its whole value (`<value>.<tag>`) and the length of `<value>`.
    fn read(keys: &Keys, headers: &HeaderMap, name: &str) -> Option<(String, usize)> {
        for c in Self::all(headers) {
            if c.name() != name {
                continue;
            }
            let Some((value, tag)) = c.value().rsplit_once('.') else {
                continue;
            };
            let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
                continue;
            };
            let valid = keys
                .macs
                .iter()
                .any(|k| Self::mac(k, name, value).verify_slice(&tag).is_ok());
            if valid {
                return Some((c.value().to_string(), value.len()));
            }
        }
        None
    }

    /// The session the request's cookie names, if it carries a valid one.
    /// A cookie value verified before on this thread, under the same
    /// secrets, is not verified again.
    pub fn session_key(&self, headers: &HeaderMap) -> Option<Arc<SessionKey>> {
        let id = self.keys_id.load(Ordering::Acquire);
        let known = VERIFIED.with_borrow_mut(|v| {
            Self::values(headers, &self.session_name).find_map(|value| v.get(id, value))
        });
        if known.is_some() {
            return known;
        }
        let keys = self.keys.load();
        let (signed, len) = Self::read(&keys, headers, &self.session_name)?;
        let key = Arc::new(SessionKey::decode(&signed[..len])?);
        // Remembered as sent, tag and all: only the whole signed value is
        // ever taken for this session.
        VERIFIED.with_borrow_mut(|v| v.insert(keys.id, &signed, key.clone()));
        Some(key)
    }

    /// The values of every cookie called `name` in the request, as sent:
    /// what [`Self::all`] would find, without parsing the other cookies
    /// or checking the header's other bytes (a value with quotes around
    /// it, which the parser takes off, only misses [`VERIFIED`]).
    fn values<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h [u8]> {
        fn blank(b: &u8) -> bool {
            matches!(b, b' ' | b'\t')
        }
        fn trim_start(text: &[u8]) -> &[u8] {
            let n = text.iter().take_while(|b| blank(b)).count();
            &text[n..]
        }
        headers
            .get_all(header::COOKIE)
            .iter()
            .flat_map(|h| pairs(h.as_bytes()))
            .filter_map(move |pair| {
                let rest = trim_start(pair).strip_prefix(name.as_bytes())?;
                let value = trim_start(trim_start(rest).strip_prefix(b"=")?);
                let end = value.len() - value.iter().rev().take_while(|b| blank(b)).count();
                Some(&value[..end])
            })
    }

    fn set(&self, name: &str, value: String, max_age: Duration) -> HeaderValue {
        let c = Cookie::build((name.to_string(), value))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.secure)
            .max_age(cookie::time::Duration::seconds(max_age.as_secs() as i64));
        // Names are validated at start and values are base64 and '.', so the
        // header is always valid; an empty value would just set nothing.
        HeaderValue::try_from(c.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    pub fn set_session(&self, key: &SessionKey) -> HeaderValue {
        self.set(
            &self.session_name,
            self.sign(&self.session_name, &key.encode()),
            self.session_max_age,
        )
    }

    pub fn clear_session(&self) -> HeaderValue {
        self.set(&self.session_name, String::new(), Duration::ZERO)
    }

    /// The login cookie of `state`: its name ends in a tag of the state,
    /// so each login in progress has its own.
    fn login_name(&self, state: &str) -> String {
        let tag = URL_SAFE_NO_PAD.encode(&Sha256::digest(state.as_bytes())[..9]);
        format!("{}{tag}", self.login_prefix)
    }

    /// The `Set-Cookie` for a login starting now.
    pub fn set_login(&self, login: &PendingLogin) -> Option<HeaderValue> {
        let name = self.login_name(&login.state);
        let plain = serde_json::to_vec(login).ok()?;
        let sealed = self
            .keys
            .load()
            .login
            .first()?
            .seal(name.as_bytes(), &plain)?;
        Some(self.set(&name, URL_SAFE_NO_PAD.encode(sealed), LOGIN_COOKIE_TTL))
    }

    fn open_login(&self, name: &str, value: &str) -> Option<PendingLogin> {
        let sealed = URL_SAFE_NO_PAD.decode(value).ok()?;
        let plain = self
            .keys
            .load()
            .login
            .iter()
            .find_map(|k| k.open(name.as_bytes(), &sealed))?;
        let login: PendingLogin = serde_json::from_slice(&plain).ok()?;
        let age = unix_now_ms().saturating_sub(login.issued_at);
        (age <= LOGIN_COOKIE_TTL.as_millis() as u64).then_some(login)
    }

    /// The login of `state`, if this browser holds its cookie, sealed by
    /// us, for that state, and not older than [`LOGIN_COOKIE_TTL`].
    pub fn login(&self, headers: &HeaderMap, state: &str) -> Option<PendingLogin> {
        let name = self.login_name(state);
        Self::all(headers)
            .filter(|c| c.name() == name)
            .find_map(|c| self.open_login(&name, c.value()))
            .filter(|login| login.state == state)
    }

    /// Clears the login cookie of `state`.
    pub fn clear_login(&self, state: &str) -> HeaderValue {
        self.set(&self.login_name(state), String::new(), Duration::ZERO)
    }

    /// `Set-Cookie`s that drop this browser's login cookies which are
    /// expired, unreadable, or the oldest beyond `keep`.
    pub fn prune_logins(&self, headers: &HeaderMap, keep: usize) -> Vec<HeaderValue> {
        let mut live: Vec<(u64, String)> = Vec::new();
        let mut drop: Vec<String> = Vec::new();
        for c in Self::all(headers) {
            if !c.name().starts_with(&self.login_prefix) {
                continue;
            }
            match self.open_login(c.name(), c.value()) {
                Some(login) => live.push((login.issued_at, c.name().to_string())),
                None => drop.push(c.name().to_string()),
            }
        }
        live.sort();
        let excess = live.len().saturating_sub(keep);
        drop.extend(live.into_iter().take(excess).map(|(_, name)| name));
        drop.sort();
        drop.dedup();
        drop.iter()
            .map(|name| self.set(name, String::new(), Duration::ZERO))
            .collect()
    }

    /// A login starting now.
    pub fn new_login(
        state: String,
        nonce: String,
        code_verifier: String,
        return_to: String,
    ) -> PendingLogin {
        let return_to = if return_to.len() <= MAX_RETURN_URL {
            return_to
        } else {
            "/".to_string()
        };
        PendingLogin {
            state,
            nonce,
            code_verifier,
            return_to,
            issued_at: unix_now_ms(),
        }
    }
}

/// The `;`-separated parts of a `Cookie` header, as sent (untrimmed).
/// memchr finds the separators a word at a time: a session cookie is
/// 100-odd bytes, scanned on every request.
pub fn pairs(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(header);
    std::iter::from_fn(move || {
        let text = rest?;
        match memchr::memchr(b';', text) {
            Some(i) => {
                rest = Some(&text[i + 1..]);
                Some(&text[..i])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// Session cookie values verified on this thread, each with its session
/// key, under one set of keys: two generations of at most
/// [`Verified::GENERATION`] entries (the older is dropped whole when the
/// newer fills; a hit in the older moves up), so the cookies in use stay
/// and memory is bounded (about 1 MiB a thread at most). Only cookies that
/// verified are kept: whoever fills it holds that many sessions.
struct Verified {
    /// The [`Keys::id`] the entries were verified under.
    keys: u64,
    young: Slots,
    old: Slots,
}

/// Entries by [`Verified::slot`], the tail of an HMAC tag: random already,
/// so [`StoreKeyHash`] serves it as it serves store keys.
type Slots = HashMap<u64, (Box<str>, Arc<SessionKey>), StoreKeyHash>;

/// The hasher of keys that are HMAC outputs already: the session caches'
/// [`SessionKey::store_key`] (in base64) and [`Verified`]'s slots. Uniform
/// already, their first eight bytes spread by one multiplication are as
/// good a hash as SipHash over all 43, for a tenth of the instructions a
/// lookup. Nobody can choose such a key (it takes a valid cookie, and the
/// HMAC's secret), so nobody can aim keys at one bucket either.
pub type StoreKeyHash = BuildHasherDefault<StoreKeyHasher>;

#[derive(Default)]
pub struct StoreKeyHasher(u64);

impl Hasher for StoreKeyHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(17) ^ u64::from_le_bytes(word);
    }
}

thread_local! {
    static VERIFIED: RefCell<Verified> = RefCell::new(Verified {
        keys: 0,
        young: Slots::default(),
        old: Slots::default(),
    });
}

impl Verified {
    const GENERATION: usize = 2048;

    fn get(&mut self, keys: u64, value: &[u8]) -> Option<Arc<SessionKey>> {
        if self.keys != keys {
            return None;
        }
        let hash = self.slot(value);
        // The whole value must match, compared in constant time: a
        // 64-bit hash is no proof, and a timing must not tell how much of
        // a guessed cookie was right.
        let same = |(known, _): &(Box<str>, Arc<SessionKey>)| {
            aws_lc_rs::constant_time::verify_slices_are_equal(known.as_bytes(), value).is_ok()
        };
        if let Some(entry) = self.young.get(&hash) {
            return same(entry).then(|| entry.1.clone());
        }
        let entry = self.old.remove(&hash)?;
        let found = same(&entry).then(|| entry.1.clone());
        if found.is_some() {
            self.put(hash, entry);
        }
        found
    }

    fn insert(&mut self, keys: u64, value: &str, key: Arc<SessionKey>) {
        if self.keys != keys {
            // Other secrets now (a reload), or another sidecar on this
            // thread: what the previous keys verified is not trusted.
            self.keys = keys;
            self.young.clear();
            self.old.clear();
        }
        let hash = self.slot(value.as_bytes());
        self.put(hash, (value.into(), key));
    }

    /// Where a value goes: its last 8 bytes, which end its HMAC tag, so
    /// are uniformly spread for every value that can be in here (only
    /// verified ones are). A crafted value that shares them meets one
    /// constant-time comparison, never a match.
    fn slot(&self, bytes: &[u8]) -> u64 {
        let mut tail = [0u8; 8];
        let n = bytes.len().min(8);
        tail[..n].copy_from_slice(&bytes[bytes.len() - n..]);
        u64::from_le_bytes(tail)
    }

    fn put(&mut self, hash: u64, entry: (Box<str>, Arc<SessionKey>)) {
        if self.young.len() >= Self::GENERATION {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(hash, entry);
    }
}

#[cfg(test)]
mod tests;
