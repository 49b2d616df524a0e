//! Keeping each session's access token fresh without making requests wait.
//!
//! - Before `refresh_at` (expiry minus `token.refresh_margin`, capped at half
//!   the lifetime): the token is used as is.
//! - Between `refresh_at` and expiry: the request goes on with the
//!   still-valid token and one background refresh starts for the session,
//!   unless one is running (single flight) or a transient failure asked to
//!   wait.
//! - Expired: the request waits for one refresh, shared by every request of
//!   the session (they queue on the session's refresh lock and find the new
//!   token when they get it).
//!
//! A refresh the IdP refuses (4xx: the refresh token is no longer good)
//! ends the session. A transient failure (5xx, timeout, unreachable) keeps
//! the current token in use until it expires, and is retried with backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::{Metrics, RefreshResult};
use crate::provider::{IdpError, Provider};
use crate::session::{Session, SessionStore, Tokens};

/// Attempts per refresh, and the pause before each retry.
const RETRY_BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(800)];
/// After a refresh failed for good this time, no new background attempt for this long.
const COOL_DOWN: Duration = Duration::from_secs(5);

/// The outcome for one request.
#[derive(Debug)]
pub enum Fresh {
    /// A token that is valid now.
    Valid(Arc<Tokens>),
    /// The session is over (refresh refused, or nothing to refresh with).
    Ended,
    /// The token has expired and the IdP cannot refresh it right now.
    Unavailable(IdpError),
}

pub struct TokenCache {
    provider: Arc<dyn Provider>,
    store: Arc<dyn SessionStore>,
    metrics: Arc<Metrics>,
    margin: Duration,
}

impl TokenCache {
    pub fn new(
        provider: Arc<dyn Provider>,
        store: Arc<dyn SessionStore>,
        metrics: Arc<Metrics>,
        margin: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            provider,
            store,
            metrics,
            margin,
        })
    }

    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// A valid token for session `id`, refreshing as described above.
    pub async fn fresh(self: &Arc<Self>, id: &str, session: &Arc<Session>) -> Fresh {
        let tokens = session.tokens();
        let now = Instant::now();
        if now < tokens.refresh_at {
            return Fresh::Valid(tokens);
        }
        if now < tokens.expires_at {
            self.refresh_in_background(id, session);
            return Fresh::Valid(tokens);
        }
        // Expired: one refresh for everyone, whoever gets the lock first.
        let _turn = session.refresh.lock.lock().await;
        let current = session.tokens();
        if Instant::now() < current.expires_at {
            return Fresh::Valid(current);
        }
        match self.refresh(session, &current).await {
            Ok(tokens) => Fresh::Valid(tokens),
            Err(Some(e)) if e.is_transient() => Fresh::Unavailable(e),
            Err(_) => {
                self.store.remove(id).await;
                Fresh::Ended
            }
        }
    }

    fn refresh_in_background(self: &Arc<Self>, id: &str, session: &Arc<Session>) {
        let state = &session.refresh;
        if let Ok(after) = state.retry_after.lock()
            && after.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        if state.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let cache = self.clone();
        let session = session.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let before = session.tokens();
            {
                let _turn = session.refresh.lock.lock().await;
                // An inline refresh may have run while this task waited.
                let current = session.tokens();
                if Arc::ptr_eq(&before, &current) {
                    match cache.refresh(&session, &current).await {
                        Ok(_) => set_retry_after(&session, None),
                        Err(Some(e)) if e.is_transient() => {
                            set_retry_after(&session, Some(Instant::now() + COOL_DOWN));
                        }
                        Err(_) => cache.store.remove(&id).await,
                    }
                }
            }
            session.refresh.running.store(false, Ordering::Release);
        });
    }

    /// One refresh with retries on transient failures. `Err(None)` means
    /// there is no refresh token to use.
    async fn refresh(
        &self,
        session: &Session,
        current: &Tokens,
    ) -> Result<Arc<Tokens>, Option<IdpError>> {
        let Some(refresh_token) = current.refresh_token.clone() else {
            return Err(None);
        };
        let mut attempt = 0;
        loop {
            match self
                .provider
                .refresh(&refresh_token, session.subject.as_deref())
                .await
            {
                Ok(mut set) => {
                    // EMP answers without a refresh token: keep the old one;
                    // a provider that rotates sends a new one.
                    if set.refresh_token.is_none() {
                        set.refresh_token = Some(refresh_token);
                    }
                    if set.backend_url.is_none() {
                        set.backend_url = current.backend_url.clone();
                    }
                    let Some(tokens) = Tokens::issued(set, Instant::now(), self.margin) else {
                        self.metrics.refresh(RefreshResult::Rejected);
                        tracing::warn!("refreshed access token is not usable as a header value");
                        return Err(None);
                    };
                    session.set_tokens(tokens);
                    self.metrics.refresh(RefreshResult::Success);
                    return Ok(session.tokens());
                }
                Err(e) if e.is_transient() && attempt < RETRY_BACKOFF.len() => {
                    tokio::time::sleep(RETRY_BACKOFF[attempt]).await;
                    attempt += 1;
                }
                Err(e) => {
                    let result = if e.is_transient() {
                        RefreshResult::Failed
                    } else {
                        RefreshResult::Rejected
                    };
                    self.metrics.refresh(result);
                    tracing::warn!(error = %crate::error::chain(&e), result = result.as_str(), "token refresh failed");
                    return Err(Some(e));
                }
            }
        }
    }
}

fn set_retry_after(session: &Session, at: Option<Instant>) {
    if let Ok(mut after) = session.refresh.retry_after.lock() {
        *after = at;
    }
}

#[cfg(test)]
mod tests;
