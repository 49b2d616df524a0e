//! Keeping each session's access token fresh without making requests wait.
//!
//! - Before `refresh_at` (expiry minus `token.refresh_margin`, capped at half
//!   the lifetime): the token is used as is.
//! - Between `refresh_at` and expiry: the request goes on with the
//!   still-valid token and one background refresh starts for the session,
//!   unless one is running (single flight) or a transient failure asked to
//!   wait.
//! - Expired: the request waits for the session's refresh, at most
//!   `provider.timeout`, then gets `503` while the refresh goes on.
//!
//! Every refresh of a session is one flight: a task that makes the attempts
//! of the retry schedule and publishes its outcome to whoever waits, so
//! however many requests arrive, the IdP sees at most the schedule's calls.
//! A refresh the IdP refuses (4xx: the refresh token is no longer good)
//! ends the session. A transient failure (5xx, timeout, unreachable) keeps
//! the current token in use until it expires and starts a cool-down: no
//! new flight before it ends, and a request whose token has expired gets
//! `503` at once instead of waiting on an IdP that just failed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::{Endpoint, Metrics, RefreshResult};
use crate::provider::{IdpError, Provider};
use crate::session::{
    Flight, IdentityRules, Outcome, Profile, RefreshTurn, Session, SessionKey, SessionStore,
    StoreError, Tokens,
};

/// Attempts per refresh, and the pause before each retry.
const RETRY_BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(800)];
/// After a refresh failed for good this time, no new attempt for this long.
const COOL_DOWN: Duration = Duration::from_secs(5);

/// The outcome for one request.
#[derive(Debug)]
pub enum Fresh {
    /// A token that is valid now.
    Valid(Arc<Tokens>),
    /// The session is over (refresh refused, or nothing to refresh with).
    Ended,
    /// The token has expired and the IdP cannot refresh it right now.
    Unavailable(Arc<IdpError>),
    /// The token has expired and the session store cannot be reached to
    /// coordinate its refresh.
    StoreUnavailable(StoreError),
}

pub struct TokenCache {
    provider: Arc<dyn Provider>,
    store: Arc<dyn SessionStore>,
    metrics: Arc<Metrics>,
    /// How newer claims become identity headers.
    identity: IdentityRules,
    margin: Duration,
    /// The longest a request waits for a refresh (`provider.timeout`).
    wait: Duration,
}

impl TokenCache {
    pub fn new(
        provider: Arc<dyn Provider>,
        store: Arc<dyn SessionStore>,
        metrics: Arc<Metrics>,
        identity: IdentityRules,
        margin: Duration,
        wait: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            provider,
            store,
            metrics,
            identity,
            margin,
            wait,
        })
    }

    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// A valid token for session `id` at `now` (the request's arrival),
    /// refreshing as described above.
    pub async fn fresh(
        self: &Arc<Self>,
        key: &SessionKey,
        session: &Arc<Session>,
        now: Instant,
    ) -> Fresh {
        let tokens = session.tokens();
        if now < tokens.refresh_at {
            return Fresh::Valid(tokens);
        }
        if now < tokens.expires_at {
            if session.refresh.cooling(now).is_none() {
                self.flight(key, session);
            }
            return Fresh::Valid(tokens);
        }
        // Expired: join the flight in the air, or start one unless the IdP
        // failed a moment ago.
        let flight = match session.refresh.current() {
            Some(flight) => flight,
            None => match session.refresh.cooling(now) {
                Some(e) => return Fresh::Unavailable(e),
                None => self.flight(key, session),
            },
        };
        match tokio::time::timeout(self.wait, landed(flight)).await {
            Ok(Outcome::Refreshed) => {
                let tokens = session.tokens();
                if Instant::now() < tokens.expires_at {
                    Fresh::Valid(tokens)
                } else {
                    Fresh::Unavailable(Arc::new(IdpError::Timeout {
                        endpoint: Endpoint::Refresh,
                    }))
                }
            }
            Ok(Outcome::Ended) => Fresh::Ended,
            Ok(Outcome::Failed(e)) => Fresh::Unavailable(e),
            Ok(Outcome::StoreFailed(e)) => Fresh::StoreUnavailable(e),
            Err(_) => Fresh::Unavailable(Arc::new(IdpError::Timeout {
                endpoint: Endpoint::Refresh,
            })),
        }
    }

    /// The session's refresh flight: the one in the air, or a new one.
    fn flight(self: &Arc<Self>, key: &SessionKey, session: &Arc<Session>) -> Flight {
        let Some(tx) = session.refresh.take_off() else {
            return session.refresh.current().unwrap_or_else(|| {
                // Landed between the two looks: its outcome is in the session.
                watch::channel(Some(Outcome::Refreshed)).1
            });
        };
        let flight = tx.subscribe();
        let cache = self.clone();
        let session = session.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let outcome = cache.fly(&key, &session).await;
            session.refresh.land();
            let _ = tx.send(Some(outcome));
        });
        flight
    }

    /// The flight itself: the store says whether this replica refreshes
    /// (holding the session's lease across replicas) or another already
    /// did; then the IdP call with its retries, and the fenced write.
    async fn fly(&self, key: &SessionKey, session: &Arc<Session>) -> Outcome {
        let _lease = match self.store.refresh_turn(key, session).await {
            Ok(RefreshTurn::Mine(lease)) => lease,
            Ok(RefreshTurn::Adopted) => {
                session.refresh.set_cool_down(None);
                return Outcome::Refreshed;
            }
            Ok(RefreshTurn::Ended) => return Outcome::Ended,
            Err(e) => {
                tracing::warn!(error = %e, "cannot coordinate a token refresh");
                return Outcome::StoreFailed(e);
            }
        };
        let current = session.tokens();
        let old_refresh_token = current.refresh_token.as_deref().unwrap_or_default();
        match self.refresh(session, &current).await {
            Ok(()) => {
                session.refresh.set_cool_down(None);
                match self
                    .store
                    .save_refreshed(key, session, old_refresh_token)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!("another replica stored a newer copy of the session first")
                    }
                    // This replica goes on with the new tokens; the others
                    // refresh on their own when theirs run out.
                    Err(e) => tracing::warn!(error = %e, "cannot store refreshed tokens"),
                }
                Outcome::Refreshed
            }
            Err(Some(e)) if e.is_transient() => {
                let e = Arc::new(e);
                let until = Instant::now() + COOL_DOWN;
                session.refresh.set_cool_down(Some((until, e.clone())));
                Outcome::Failed(e)
            }
            Err(refused) => {
                // A rotating IdP refuses a refresh token used once already:
                // another replica may have done just that a moment ago.
                if refused.is_some()
                    && matches!(
                        self.store
                            .refreshed_elsewhere(key, session, old_refresh_token)
                            .await,
                        Ok(true)
                    )
                {
                    return Outcome::Refreshed;
                }
                // A store that cannot be reached now lets the record
                // expire on its own; this process forgets it at once.
                let _ = self.store.remove(key).await;
                Outcome::Ended
            }
        }
    }

    /// One refresh with retries on transient failures. `Err(None)` means
    /// there is no refresh token to use.
    async fn refresh(&self, session: &Session, current: &Tokens) -> Result<(), Option<IdpError>> {
        let Some(refresh_token) = current.refresh_token.clone() else {
            return Err(None);
        };
        let mut attempt = 0;
        loop {
            match self
                .provider
                .refresh(&refresh_token, session.profile().subject.as_deref())
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
                    if set.id_token.is_none() {
                        set.id_token = current.id_token.clone();
                    }
                    let claims = set.claims.take();
                    let Some(tokens) = Tokens::issued(set, Instant::now(), self.margin) else {
                        self.metrics.refresh(RefreshResult::Rejected);
                        tracing::warn!("refreshed access token is not usable as a header value");
                        return Err(None);
                    };
                    // Headers and authorization follow the newest claims
                    // (the store saves them with the tokens).
                    if let Some(claims) = claims {
                        let identity = self.identity.identity(&claims);
                        session.set_profile(Profile::new(&claims, identity));
                    }
                    session.set_tokens(tokens);
                    self.metrics.refresh(RefreshResult::Success);
                    return Ok(());
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

/// Waits for a flight's outcome; a flight that vanished (its task ended
/// without one) counts as a failure to reach the IdP.
async fn landed(mut flight: Flight) -> Outcome {
    match flight.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or(Outcome::Refreshed),
        Err(_) => Outcome::Failed(Arc::new(IdpError::Timeout {
            endpoint: Endpoint::Refresh,
        })),
    }
}

#[cfg(test)]
mod tests;
