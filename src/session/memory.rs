//! The in-memory session store on moka: bounded (`session.max_sessions`,
//! least recently used out first), each session ending `session.lifetime`
//! after login or `session.idle_timeout` after its last use.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

use super::{Session, SessionStore};
use crate::provider::BoxFuture;

pub struct MemoryStore {
    cache: Cache<String, Arc<Session>>,
}

impl MemoryStore {
    pub fn new(max_sessions: u64, lifetime: Duration, idle_timeout: Duration) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(max_sessions)
                .time_to_live(lifetime)
                .time_to_idle(idle_timeout.min(lifetime))
                .build(),
        }
    }
}

impl SessionStore for MemoryStore {
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<Arc<Session>>> {
        let found = self.cache.get(id);
        Box::pin(std::future::ready(found))
    }

    fn insert(&self, id: String, session: Arc<Session>) -> BoxFuture<'_, ()> {
        self.cache.insert(id, session);
        Box::pin(std::future::ready(()))
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()> {
        self.cache.invalidate(id);
        Box::pin(std::future::ready(()))
    }

    fn count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}
