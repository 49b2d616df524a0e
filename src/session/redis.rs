//! The shared session store on Redis (or Valkey): standalone, Cluster or
//! Sentinel, through fred (one client type for the three topologies, its
//! own reconnection with backoff, a per-command timeout, a subscriber that
//! resubscribes by itself, rustls on AWS-LC like the rest of the sidecar).
//!
//! What Redis holds, under `session.redis.key_prefix`:
//! - `{<store key>}:s`: a hash `g` (the record's generation) and `d` (the
//!   record, sealed under the session's own key, bound to the store key).
//!   The store key is an HMAC of the session id under the session's secret
//!   (`SessionKey::store_key`): neither it nor the record tells anything
//!   without the browser's cookie. Its TTL is what is left of
//!   `session.lifetime`, or `session.idle_timeout` when that is shorter,
//!   slid by a throttled touch.
//! - `state:<hash of state>`: a login's `state`, once consumed (single use
//!   on every replica), for the login's lifetime.
//! - Refresh leases and results (see [`crate::token_cache`]).
//!
//! The braces are a Cluster hash tag: every key of one session lives in
//! one slot, so the scripts that touch several of them run there.
//!
//! In front of Redis sits this replica's moka cache: a request on a warm
//! session makes no Redis call. A copy older than [`LOCAL_MAX_AGE`] is
//! checked against Redis again (one `HMGET`), and every change or sign-out
//! is published on `<prefix>events`, which drops the copy on every other
//! replica at once. A lost message therefore keeps a signed-out session
//! alive on another replica for at most [`LOCAL_MAX_AGE`]. While Redis is
//! unreachable the cached copy is served as it is (its token is still
//! checked for expiry), so users already seen keep working.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::{
    ClientLike, Config, Error as FredError, ErrorKind, EventInterface, Expiration, HashesInterface,
    KeysInterface, LuaInterface, PubsubInterface, ReconnectPolicy, ServerConfig, SetOptions,
};
use fred::types::Builder;
use moka::sync::Cache;

use super::cookie::StoreKeyHash;
use super::{
    IdentityRules, LeaseGuard, RefreshTurn, Session, SessionKey, SessionStore, StoreError, now_ms,
    record, state_digest,
};
use crate::config::{Problem, RedisConfig, RedisTopology, SessionConfig};
use crate::metrics::{CacheResult, LockResult, Metrics, StoreErrorKind, StoreOp};
use crate::provider::BoxFuture;

/// A cached copy is checked against Redis again when it is this old.
pub const LOCAL_MAX_AGE: Duration = Duration::from_secs(10);

/// Writes a new session: generation, sealed record, TTL.
const INSERT: &str = r"
redis.call('HSET', KEYS[1], 'g', ARGV[1], 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1";

/// Adds a session's store key to a back-channel logout index (a set under
/// a hash of the `sid` or `sub`), which lives as long as its newest session.
const INDEX: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1";

/// Takes a back-channel logout index: its store keys, and the set gone.
const TAKE_INDEX: &str = r"
local keys = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
return keys";

/// Replaces a record only at the generation it was read at (compare and
/// set): a replica that lost its lease cannot overwrite a newer record.
/// The TTL is left as it is. The new generation is also noted under the
/// old refresh token's hash (KEYS[2]) for a while: a replica that still
/// holds that token and is refused by the IdP finds the result there.
const SAVE: &str = r"
if redis.call('HGET', KEYS[1], 'g') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'g', ARGV[2], 'd', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
return 1";

/// Extends a lease only while it is still ours (compare and extend).
const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Releases a lease only while it is still ours (compare and delete).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// A refresh lease lives this long unless its holder renews it, which it
/// does every third of it while the IdP call runs: a holder that dies
/// frees the session for another replica within this time.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// The longest a replica waits for another's refresh before giving up
/// (the request then gets 503; the next one tries again).
const TURN_WAIT: Duration = Duration::from_secs(15);
/// How long the result of a refresh is kept under the old refresh token.
const RESULT_TTL: Duration = Duration::from_secs(60);
/// Waiters are woken by the change message; without one they look again
/// this often.
const POLL: Duration = Duration::from_millis(100);

/// A cached session and when it was last read from (or checked against) Redis.
struct Cached {
    session: Arc<Session>,
    checked: Instant,
}

pub struct RedisStore {
    client: fred::clients::Client,
    subscriber: fred::clients::SubscriberClient,
    /// Sentinel only: one subscriber per sentinel, listening for
    /// `+switch-master`, so a failover moves this replica to the new master
    /// at once rather than when the old one has been demoted (seconds
    /// later, with the writes of that window lost).
    sentinels: Vec<fred::clients::SubscriberClient>,
    prefix: String,
    channel: String,
    local: Cache<Box<str>, Arc<Cached>, StoreKeyHash>,
    rules: IdentityRules,
    margin: Duration,
    lifetime: Duration,
    idle: Duration,
    metrics: Arc<Metrics>,
}

fn problem(key: &str, message: String) -> Problem {
    Problem {
        key: key.into(),
        message,
        source: None,
    }
}

/// The fred configuration for `cfg`: topology, credentials, TLS.
fn fred_config(cfg: &RedisConfig) -> Result<Config, Problem> {
    let host = |u: &url::Url| {
        (
            u.host_str().unwrap_or_default().to_string(),
            u.port().unwrap_or(6379),
        )
    };
    let (mut config, urls, key) = match &cfg.topology {
        RedisTopology::Standalone(url) => (
            Config::from_url_centralized(url.as_str())
                .map_err(|e| problem("session.redis.url", e.details().to_string()))?,
            vec![url.clone()],
            "session.redis.url",
        ),
        RedisTopology::Cluster(urls) => {
            let first = urls.first().ok_or_else(|| {
                problem(
                    "session.redis.cluster_urls",
                    "needs at least one node".into(),
                )
            })?;
            let mut c = Config::from_url_centralized(first.as_str())
                .map_err(|e| problem("session.redis.cluster_urls", e.details().to_string()))?;
            c.server = ServerConfig::new_clustered(urls.iter().map(host).collect());
            (c, urls.clone(), "session.redis.cluster_urls")
        }
        RedisTopology::Sentinel { sentinels, master } => {
            let config = Config {
                server: ServerConfig::new_sentinel(
                    sentinels.iter().map(host).collect(),
                    master.clone(),
                ),
                ..Config::default()
            };
            (config, sentinels.clone(), "session.redis.sentinel_urls")
        }
    };
    if let Some(password) = &cfg.password {
        config.password = Some(String::from_utf8_lossy(password.expose()).into_owned());
    }
    config.fail_fast = false;
    config.tls = None;
    if urls.iter().any(|u| u.scheme() == "rediss") {
        config.tls = Some(tls(cfg.ca_file.as_deref(), key)?.into());
    } else if cfg.ca_file.is_some() {
        return Err(problem(
            "session.redis.ca_file",
            "is only used with rediss:// URLs".into(),
        ));
    }
    Ok(config)
}

/// rustls on AWS-LC with the system's roots and `ca_file`.
fn tls(ca_file: Option<&std::path::Path>, key: &str) -> Result<rustls::ClientConfig, Problem> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| {
                problem(
                    "session.redis.ca_file",
                    format!("cannot read PEM certificates from {}: {e}", path.display()),
                )
            })?;
        for cert in certs {
            roots.add(cert).map_err(|e| {
                problem(
                    "session.redis.ca_file",
                    format!("invalid CA certificate: {e}"),
                )
            })?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| problem(key, format!("TLS set-up failed: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// Sorts a fred error into what the request path can tell the user.
fn store_error(e: &FredError) -> StoreError {
    match e.kind() {
        ErrorKind::Timeout => StoreError::Timeout,
        _ => StoreError::Unavailable(e.details().to_string()),
    }
}

impl RedisStore {
    /// Builds the clients; nothing connects until [`SessionStore::start`].
    pub fn new(
        cfg: &RedisConfig,
        session: &SessionConfig,
        rules: IdentityRules,
        margin: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<RedisStore, Problem> {
        let config = fred_config(cfg)?;
        let mut builder = Builder::from_config(config);
        let timeout = cfg.timeout;
        builder
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .with_connection_config(|c| {
                c.connection_timeout = timeout.max(Duration::from_secs(1));
                c.internal_command_timeout = timeout.max(Duration::from_secs(1));
                // A command that failed is not sent again behind the
                // caller's back: the timeout is the whole budget.
                c.max_command_attempts = 1;
                // A server that stops answering (paused, partitioned) is
                // given up on like one that closed the connection.
                c.unresponsive.max_timeout = Some(timeout * 2);
                c.unresponsive.interval = timeout.min(Duration::from_millis(500));
            })
            // Forever, from 100 ms up to 2 s apart.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2000, 2));
        let key = match cfg.topology {
            RedisTopology::Standalone(_) => "session.redis.url",
            RedisTopology::Cluster(_) => "session.redis.cluster_urls",
            RedisTopology::Sentinel { .. } => "session.redis.sentinel_urls",
        };
        let client = builder
            .build()
            .map_err(|e| problem(key, e.details().to_string()))?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| problem(key, e.details().to_string()))?;
        let sentinels = match &cfg.topology {
            RedisTopology::Sentinel { sentinels, .. } => sentinels
                .iter()
                .map(|url| {
                    let mut c = Config::from_url_centralized(url.as_str())
                        .map_err(|e| problem(key, e.details().to_string()))?;
                    c.fail_fast = false;
                    c.tls = None;
                    if url.scheme() == "rediss" {
                        c.tls = Some(tls(cfg.ca_file.as_deref(), key)?.into());
                    }
                    Builder::from_config(c)
                        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2000, 2))
                        .build_subscriber_client()
                        .map_err(|e| problem(key, e.details().to_string()))
                })
                .collect::<Result<Vec<_>, Problem>>()?,
            _ => Vec::new(),
        };
        Ok(RedisStore {
            client,
            subscriber,
            sentinels,
            prefix: cfg.key_prefix.clone(),
            channel: format!("{}events", cfg.key_prefix),
            local: Cache::builder()
                .max_capacity(session.max_sessions)
                .time_to_live(session.lifetime)
                .time_to_idle(session.idle_timeout.min(session.lifetime))
                .build_with_hasher(StoreKeyHash::default()),
            rules,
            margin,
            lifetime: session.lifetime,
            idle: session.idle_timeout.min(session.lifetime),
            metrics,
        })
    }

    fn session_key(&self, key: &SessionKey) -> String {
        self.session_key_of(key.store_key())
    }

    fn session_key_of(&self, store_key: &str) -> String {
        format!("{}{{{store_key}}}:s", self.prefix)
    }

    /// The back-channel logout index of a `sid` or `sub` name.
    fn index_key(&self, name: &str) -> String {
        format!("{}who:{name}", self.prefix)
    }

    fn lease_key(&self, key: &SessionKey) -> String {
        format!("{}{{{}}}:l", self.prefix, key.store_key())
    }

    /// Where a refresh's result is noted, by the hash of the refresh token
    /// it used (with the store key, so equal tokens of two sessions differ).
    fn result_key(&self, key: &SessionKey, old_refresh_token: &str) -> String {
        use base64::Engine as _;
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(key.store_key().as_bytes());
        h.update(old_refresh_token.as_bytes());
        let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h.finalize());
        format!("{}{{{}}}:r:{hash}", self.prefix, key.store_key())
    }

    /// Takes over what Redis has if it is newer than `session`; whether it was.
    fn adopt_if_newer(&self, key: &SessionKey, session: &Arc<Session>, fresh: &Session) -> bool {
        if fresh.generation.load(Ordering::Acquire) <= session.generation.load(Ordering::Acquire) {
            return false;
        }
        session.adopt(fresh);
        self.local.insert(
            key.store_key().into(),
            Arc::new(Cached {
                session: session.clone(),
                checked: Instant::now(),
            }),
        );
        true
    }

    /// Holds the lease `token` on `lease_key`: renews it every third of its
    /// life until dropped, then releases it (compare and delete).
    fn hold_lease(&self, lease_key: String, token: String) -> LeaseGuard {
        let client = self.client.clone();
        let (k, t) = (lease_key.clone(), token.clone());
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE_TTL / 3).await;
                let args: Vec<fred::types::Value> = vec![
                    t.clone().into(),
                    (LEASE_TTL.as_millis() as i64).to_string().into(),
                ];
                let kept: Result<i64, FredError> = client.eval(EXTEND, vec![k.clone()], args).await;
                if !matches!(kept, Ok(1)) {
                    // Lost (expired, or Redis unreachable): the fenced
                    // write will tell whether the result can be kept.
                    tracing::warn!("lost the refresh lease while the identity provider answered");
                    return;
                }
            }
        });
        LeaseGuard::new(Lease {
            client: self.client.clone(),
            key: lease_key,
            token,
            renew,
        })
    }
}

/// A held refresh lease: renewed while it lives, released when dropped.
struct Lease {
    client: fred::clients::Client,
    key: String,
    token: String,
    renew: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
        let (client, key, token) = (
            self.client.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.token),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                // Not released: it expires within LEASE_TTL.
                let _: Result<i64, FredError> = client.eval(RELEASE, vec![key], vec![token]).await;
            });
        }
    }
}

impl RedisStore {
    /// Times `call` as `op` and counts its failure.
    async fn timed<T>(
        &self,
        op: StoreOp,
        call: impl Future<Output = Result<T, FredError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let result = call.await;
        self.metrics
            .observe_store(op, start.elapsed().as_secs_f64());
        result.map_err(|e| {
            let err = store_error(&e);
            self.metrics.store_error(match err {
                StoreError::Timeout => StoreErrorKind::Timeout,
                StoreError::Unavailable(_) => StoreErrorKind::Unavailable,
            });
            err
        })
    }

    /// How long the record should live from now: what is left of the
    /// lifetime, or the idle timeout when that is shorter.
    fn ttl(&self, session: &Session) -> Duration {
        let age = Duration::from_millis(now_ms().saturating_sub(session.created_at));
        self.lifetime.saturating_sub(age).min(self.idle)
    }

    /// Reads the session from Redis: `None` when there is none, or when
    /// what is there does not open (counted as corrupt).
    async fn load(&self, key: &SessionKey) -> Result<Option<Arc<Session>>, StoreError> {
        let (generation, data): (Option<String>, Option<Bytes>) = self
            .timed(
                StoreOp::Get,
                self.client.hmget(self.session_key(key), vec!["g", "d"]),
            )
            .await?;
        let (Some(generation), Some(data)) = (generation, data) else {
            return Ok(None);
        };
        let session = generation.parse::<u64>().ok().and_then(|generation| {
            let plain = key.record_key()?.open(key.store_key().as_bytes(), &data)?;
            record::decode(&plain, &self.rules, self.margin, generation)
        });
        match session {
            Some(s) => Ok(Some(Arc::new(s))),
            None => {
                self.metrics.store_error(StoreErrorKind::Corrupt);
                tracing::warn!("a session record in Redis does not open: treated as no session");
                Ok(None)
            }
        }
    }

    fn seal(&self, key: &SessionKey, session: &Session) -> Result<Bytes, StoreError> {
        key.record_key()
            .and_then(|k| k.seal(key.store_key().as_bytes(), &record::encode(session)))
            .map(Bytes::from)
            .ok_or_else(|| StoreError::Unavailable("cannot seal a session record".into()))
    }

    /// Tells the other replicas to drop their copy of this session.
    async fn publish(&self, key: &SessionKey) {
        self.publish_store_key(key.store_key()).await
    }

    async fn publish_store_key(&self, store_key: &str) {
        let sent: Result<i64, StoreError> = self
            .timed(
                StoreOp::Publish,
                self.client.publish(&self.channel, store_key),
            )
            .await;
        if let Err(e) = sent {
            // Their copies age out within LOCAL_MAX_AGE.
            tracing::warn!(error = %e, "cannot tell the other replicas about a session change");
        }
    }

    /// The session of a local cache entry young enough to trust without
    /// asking Redis (pub/sub tells of changes; this bounds a missed one).
    fn fresh_hit(&self, key: &SessionKey, cached: &Cached) -> Option<Arc<Session>> {
        if cached.checked.elapsed() >= LOCAL_MAX_AGE {
            return None;
        }
        self.metrics.cache_hit();
        self.touch_if_due(key, &cached.session);
        Some(cached.session.clone())
    }

    /// Slides the idle timeout, at most once per tenth of it per replica.
    fn touch_if_due(&self, key: &SessionKey, session: &Arc<Session>) {
        if self.idle >= self.lifetime {
            return; // the TTL set at login is the whole lifetime
        }
        let now = now_ms();
        let last = session.touched_at.load(Ordering::Relaxed);
        let every = (self.idle / 10).as_millis() as u64;
        if now.saturating_sub(last) < every
            || session
                .touched_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let ttl = self.ttl(session);
        let redis_key = self.session_key(key);
        let client = self.client.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let touched: Result<bool, FredError> = client
                .pexpire(redis_key, ttl.as_millis() as i64, None)
                .await;
            metrics.observe_store(StoreOp::Touch, start.elapsed().as_secs_f64());
            if touched.is_err() {
                metrics.store_error(StoreErrorKind::Unavailable);
            }
        });
    }
}

impl SessionStore for RedisStore {
    fn get_now(&self, key: &SessionKey) -> Option<Option<Arc<Session>>> {
        let cached = self.local.get(key.store_key())?;
        self.fresh_hit(key, &cached).map(Some)
    }

    fn get<'a>(
        &'a self,
        key: &'a SessionKey,
    ) -> BoxFuture<'a, Result<Option<Arc<Session>>, StoreError>> {
        Box::pin(async move {
            let cached = self.local.get(key.store_key());
            if let Some(c) = &cached
                && let Some(session) = self.fresh_hit(key, c)
            {
                return Ok(Some(session));
            }
            let loaded = match self.load(key).await {
                Ok(loaded) => loaded,
                Err(e) => {
                    // Redis is out of reach: a copy this replica has is
                    // still good (its token is checked for expiry).
                    return match cached {
                        Some(c) => {
                            self.metrics.cache(CacheResult::Stale);
                            Ok(Some(c.session.clone()))
                        }
                        None => Err(e),
                    };
                }
            };
            self.metrics.cache(CacheResult::Miss);
            let Some(fresh) = loaded else {
                self.local.invalidate(key.store_key());
                return Ok(None);
            };
            // The same generation: keep this replica's copy (and its
            // refresh state); a newer one replaces it.
            let session = match cached {
                Some(c)
                    if c.session.generation.load(Ordering::Acquire)
                        >= fresh.generation.load(Ordering::Acquire) =>
                {
                    c.session.clone()
                }
                _ => fresh,
            };
            self.local.insert(
                key.store_key().into(),
                Arc::new(Cached {
                    session: session.clone(),
                    checked: Instant::now(),
                }),
            );
            Ok(Some(session))
        })
    }

    fn insert<'a>(
        &'a self,
        key: &'a SessionKey,
        session: Arc<Session>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let data = self.seal(key, &session)?;
            let generation = session.generation.load(Ordering::Acquire);
            let ttl = self.ttl(&session).as_millis().max(1) as i64;
            let args: Vec<fred::types::Value> = vec![
                generation.to_string().into(),
                data.into(),
                ttl.to_string().into(),
            ];
            let _: i64 = self
                .timed(
                    StoreOp::Insert,
                    self.client.eval(INSERT, vec![self.session_key(key)], args),
                )
                .await?;
            for name in session.logout_names() {
                let args: Vec<fred::types::Value> =
                    vec![key.store_key().into(), ttl.to_string().into()];
                let _: i64 = self
                    .timed(
                        StoreOp::Insert,
                        self.client.eval(INDEX, vec![self.index_key(&name)], args),
                    )
                    .await?;
            }
            self.local.insert(
                key.store_key().into(),
                Arc::new(Cached {
                    session,
                    checked: Instant::now(),
                }),
            );
            Ok(())
        })
    }

    fn remove<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.local.invalidate(key.store_key());
            let _: i64 = self
                .timed(StoreOp::Remove, self.client.del(self.session_key(key)))
                .await?;
            self.publish(key).await;
            Ok(())
        })
    }

    fn end_sessions_of<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            let no_args: Vec<fred::types::Value> = Vec::new();
            let keys: Vec<String> = self
                .timed(
                    StoreOp::Remove,
                    self.client
                        .eval(TAKE_INDEX, vec![self.index_key(name)], no_args),
                )
                .await?;
            let mut ended = 0;
            for sk in keys {
                // Each session in its own slot: one DEL each, then the
                // message that drops every replica's copy.
                self.local.invalidate(sk.as_str());
                let removed: i64 = self
                    .timed(StoreOp::Remove, self.client.del(self.session_key_of(&sk)))
                    .await?;
                ended += usize::from(removed > 0);
                self.publish_store_key(&sk).await;
            }
            Ok(ended)
        })
    }

    fn consume_state<'a>(
        &'a self,
        state: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let key = format!("{}state:{}", self.prefix, state_digest(state));
            let ttl = ttl.max(Duration::from_millis(1)).as_millis() as i64;
            let set: Option<String> = self
                .timed(
                    StoreOp::ConsumeState,
                    self.client.set(
                        key,
                        "1",
                        Some(Expiration::PX(ttl)),
                        Some(SetOptions::NX),
                        false,
                    ),
                )
                .await?;
            Ok(set.is_some())
        })
    }

    fn refresh_turn<'a>(
        &'a self,
        key: &'a SessionKey,
        session: &'a Arc<Session>,
    ) -> BoxFuture<'a, Result<RefreshTurn, StoreError>> {
        Box::pin(async move {
            let deadline = Instant::now() + TURN_WAIT;
            let mut messages = self.subscriber.message_rx();
            let mut held_elsewhere = false;
            loop {
                // Another replica may have refreshed already.
                match self.load(key).await? {
                    None => {
                        self.local.invalidate(key.store_key());
                        return Ok(RefreshTurn::Ended);
                    }
                    Some(fresh) if self.adopt_if_newer(key, session, &fresh) => {
                        self.metrics.refresh_lock(LockResult::Waited);
                        return Ok(RefreshTurn::Adopted);
                    }
                    Some(_) => {}
                }
                let token = super::random_token();
                let lease_key = self.lease_key(key);
                let taken: Option<String> = self
                    .timed(
                        StoreOp::Lease,
                        self.client.set(
                            lease_key.clone(),
                            token.clone(),
                            Some(Expiration::PX(LEASE_TTL.as_millis() as i64)),
                            Some(SetOptions::NX),
                            false,
                        ),
                    )
                    .await?;
                if taken.is_some() {
                    // The record may have moved between the look and the
                    // lease: look once more, now that nobody else can.
                    if let Some(fresh) = self.load(key).await?
                        && self.adopt_if_newer(key, session, &fresh)
                    {
                        let _: Result<i64, FredError> = self
                            .client
                            .eval(RELEASE, vec![lease_key], vec![token])
                            .await;
                        self.metrics.refresh_lock(LockResult::Waited);
                        return Ok(RefreshTurn::Adopted);
                    }
                    self.metrics.refresh_lock(if held_elsewhere {
                        LockResult::TakenOver
                    } else {
                        LockResult::Acquired
                    });
                    return Ok(RefreshTurn::Mine(self.hold_lease(lease_key, token)));
                }
                held_elsewhere = true;
                if Instant::now() >= deadline {
                    return Err(StoreError::Timeout);
                }
                // Woken by the holder's change message, or look again soon.
                let wait = async {
                    loop {
                        match messages.recv().await {
                            Ok(m) if m.value.as_str().as_deref() == Some(key.store_key()) => return,
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                std::future::pending::<()>().await
                            }
                        }
                    }
                };
                let _ = tokio::time::timeout(POLL, wait).await;
            }
        })
    }

    fn save_refreshed<'a>(
        &'a self,
        key: &'a SessionKey,
        session: &'a Arc<Session>,
        old_refresh_token: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let data = self.seal(key, session)?;
            let expected = session.generation.load(Ordering::Acquire);
            let args: Vec<fred::types::Value> = vec![
                expected.to_string().into(),
                (expected + 1).to_string().into(),
                data.into(),
                (RESULT_TTL.as_millis() as i64).to_string().into(),
            ];
            let keys = vec![
                self.session_key(key),
                self.result_key(key, old_refresh_token),
            ];
            let saved: i64 = self
                .timed(StoreOp::Save, self.client.eval(SAVE, keys, args))
                .await?;
            if saved == 1 {
                session.generation.store(expected + 1, Ordering::Release);
                self.publish(key).await;
            } else {
                // Another replica wrote first, or the session ended: the
                // next request reads what Redis has.
                self.local.invalidate(key.store_key());
            }
            Ok(saved == 1)
        })
    }

    fn refreshed_elsewhere<'a>(
        &'a self,
        key: &'a SessionKey,
        session: &'a Arc<Session>,
        old_refresh_token: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let noted: Option<String> = self
                .timed(
                    StoreOp::Get,
                    self.client.get(self.result_key(key, old_refresh_token)),
                )
                .await?;
            if noted.is_none() {
                return Ok(false);
            }
            Ok(match self.load(key).await? {
                Some(fresh) => self.adopt_if_newer(key, session, &fresh),
                None => false,
            })
        })
    }

    fn count(&self) -> u64 {
        self.local.run_pending_tasks();
        self.local.entry_count()
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let pong: Result<String, StoreError> =
                self.timed(StoreOp::Ping, self.client.ping(None)).await;
            pong.is_ok()
        })
    }

    fn start(&self) {
        // The connection tasks run by themselves; their handles are not needed.
        drop(self.client.connect());
        drop(self.subscriber.connect());
        for sentinel in &self.sentinels {
            drop(sentinel.connect());
            let sentinel = sentinel.clone();
            let (client, subscriber) = (self.client.clone(), self.subscriber.clone());
            let mut switches = sentinel.message_rx();
            tokio::spawn(async move {
                let _manager = sentinel.manage_subscriptions();
                let _ = sentinel.subscribe("+switch-master").await;
                while let Ok(switch) = switches.recv().await {
                    tracing::info!(
                        to = %switch.value.as_str().unwrap_or_default(),
                        "the sentinels switched the Redis master; reconnecting"
                    );
                    let _ = client.force_reconnection().await;
                    let _ = subscriber.force_reconnection().await;
                }
            });
        }
        let subscriber = self.subscriber.clone();
        let channel = self.channel.clone();
        let local = self.local.clone();
        let metrics = self.metrics.clone();
        let mut messages = self.subscriber.message_rx();
        let mut reconnects = self.subscriber.reconnect_rx();
        tokio::spawn(async move {
            // Resubscribes after every reconnection by itself.
            let _manager = subscriber.manage_subscriptions();
            if let Err(e) = subscriber.subscribe(channel.as_str()).await {
                tracing::warn!(error = %e, "cannot subscribe to session changes yet; retrying on reconnect");
            }
            // fred announces the first connection as a reconnection too;
            // copies cached before it are at most LOCAL_MAX_AGE old and
            // checked again then, so only later ones drop every copy. (It
            // used to drop a session cached moments before, when the
            // subscriber connected late on a loaded machine: a flaky
            // `redis_down_keeps_cached_sessions…`.)
            let mut connected_before = false;
            loop {
                tokio::select! {
                    message = messages.recv() => match message {
                        Ok(m) => {
                            if let Some(store_key) = m.value.as_str() {
                                local.invalidate(store_key.as_ref());
                                metrics.invalidations.inc();
                            }
                        }
                        // Messages were missed: no copy can be trusted.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            local.invalidate_all();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    reconnected = reconnects.recv() => match reconnected {
                        // Whatever was published while this replica was
                        // away is lost: start over from Redis.
                        Ok(_) if !connected_before => connected_before = true,
                        // fred resubscribes after the reconnection, and a
                        // copy cached before that would miss its change
                        // message: drop every copy once the subscription
                        // is confirmed (a second SUBSCRIBE to the channel
                        // is a no-op for Redis).
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let _ = subscriber.subscribe(channel.as_str()).await;
                            local.invalidate_all();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
    }
}
