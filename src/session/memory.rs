//! The in-memory session store on moka: bounded (`session.max_sessions`,
//! least recently used out first), each session ending `session.lifetime`
//! after login or `session.idle_timeout` after its last use. Consumed login
//! states are kept in a second bounded cache for the login's lifetime.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

use super::cookie::{LOGIN_COOKIE_TTL, StoreKeyHash};
use super::{Session, SessionKey, SessionStore, StoreError, state_digest};
use crate::provider::BoxFuture;

/// Consumed states remembered at most (a login's lifetime each).
const MAX_CONSUMED_STATES: u64 = 100_000;

pub struct MemoryStore {
    cache: Cache<Box<str>, Arc<Session>, StoreKeyHash>,
    consumed: Cache<String, ()>,
    /// Back-channel logout: a `sid` or `sub` name → the store keys of its
    /// sessions (bounded and aging like the sessions).
    index: Cache<String, Arc<std::sync::Mutex<Vec<Box<str>>>>>,
}

impl MemoryStore {
    pub fn new(max_sessions: u64, lifetime: Duration, idle_timeout: Duration) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(max_sessions)
                .time_to_live(lifetime)
                .time_to_idle(idle_timeout.min(lifetime))
                .build_with_hasher(StoreKeyHash::default()),
            consumed: Cache::builder()
                .max_capacity(MAX_CONSUMED_STATES)
                .time_to_live(LOGIN_COOKIE_TTL)
                .build(),
            index: Cache::builder()
                .max_capacity(max_sessions)
                .time_to_live(lifetime)
                .build(),
        }
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, Result<T, StoreError>> {
    Box::pin(std::future::ready(Ok(value)))
}

impl SessionStore for MemoryStore {
    fn get_now(&self, key: &SessionKey) -> Option<Option<Arc<Session>>> {
        Some(self.cache.get(key.store_key()))
    }

    fn get<'a>(
        &'a self,
        key: &'a SessionKey,
    ) -> BoxFuture<'a, Result<Option<Arc<Session>>, StoreError>> {
        ready(self.cache.get(key.store_key()))
    }

    fn insert<'a>(
        &'a self,
        key: &'a SessionKey,
        session: Arc<Session>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        for name in session.logout_names() {
            let keys = self.index.get_with(name, Default::default);
            let mut keys = keys
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Sessions that ended on their own are dropped as new ones come.
            keys.retain(|k| self.cache.contains_key(k.as_ref()));
            keys.push(key.store_key().into());
        }
        self.cache.insert(key.store_key().into(), session);
        ready(())
    }

    fn remove<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<(), StoreError>> {
        self.cache.invalidate(key.store_key());
        ready(())
    }

    fn consume_state<'a>(
        &'a self,
        state: &'a str,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let entry = self.consumed.entry(state_digest(state)).or_insert(());
        ready(entry.is_fresh())
    }

    fn end_sessions_of<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<usize, StoreError>> {
        let keys = self
            .index
            .remove(name)
            .map(|k| {
                std::mem::take(&mut *k.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
            })
            .unwrap_or_default();
        let mut ended = 0;
        for k in keys {
            if self.cache.remove(k.as_ref()).is_some() {
                ended += 1;
            }
        }
        ready(ended)
    }

    fn count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}
