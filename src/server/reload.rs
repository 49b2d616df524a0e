//! `SIGHUP`: read the configuration file and its secret files again and
//! apply what can change while serving, as nginx's reload does. A file with
//! a problem changes nothing: every problem is logged, and the sidecar goes
//! on with the configuration it has. Changed keys that only a restart can
//! apply (listeners, the upstream, the provider, the store, ...) are named
//! in the log.
//!
//! Applied live, for requests that start after the reload:
//! - `session.cookie_secret(_file)`: rotation (the first signs, all verify);
//! - `provider.client_secret(_file)`;
//! - `log.level` (unless `RUST_LOG` is set: it wins, as at start);
//! - `routes.skip_auth` and `[authorization]` (with `allowed_emails_file`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::auth::Auth;
use crate::config::{Config, Problem, Problems, Secret};
use crate::metrics::Metrics;
use crate::router::Rules;
use crate::telemetry;

/// The keys a reload applies; a changed key under any other needs a restart.
const LIVE_KEYS: &[&str] = &[
    "session.cookie_secret",
    "session.cookie_secret_file",
    "provider.client_secret",
    "provider.client_secret_file",
    "log.level",
    "routes.skip_auth",
    // Every key under it (a prefix).
    "authorization.",
];

/// Applies reloaded configurations to a running server.
pub struct Reloader {
    path: PathBuf,
    /// The configuration the server started with: what restart-only keys
    /// are compared against.
    started: Config,
    auth: Arc<Auth>,
    rules: Arc<ArcSwap<Rules>>,
    metrics: Arc<Metrics>,
    /// The cookie secrets in use now.
    cookie_secrets: Mutex<Vec<Secret>>,
}

/// What one successful reload did.
#[derive(Debug, Default)]
pub struct Report {
    /// Changed keys that only a restart applies, compared to the start.
    pub needs_restart: Vec<String>,
    /// Cookie secrets in use before and gone from `session.cookie_secret`
    /// now: the sessions whose cookies they signed have ended.
    pub cookie_secrets_dropped: usize,
    /// `log.level`, applied after the reload's own lines are written, so
    /// they show at the level the operator had when sending the signal.
    pub level: String,
}

impl Reloader {
    pub(super) fn new(
        path: &Path,
        started: &Config,
        auth: Arc<Auth>,
        rules: Arc<ArcSwap<Rules>>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        Reloader {
            path: path.to_path_buf(),
            started: started.clone(),
            auth,
            rules,
            metrics,
            cookie_secrets: Mutex::new(started.session.cookie_secrets.clone()),
        }
    }

    /// Reads the file again and applies all but the log level; on a
    /// problem, applies nothing.
    fn apply(&self) -> Result<Report, Problems> {
        let newer = Config::load(&self.path)?;
        // Everything below was validated by `load`; the secrets go first so
        // that a refusal there leaves the rest as it was.
        self.auth.set_secrets(&newer).map_err(|message| {
            Problems(vec![Problem {
                key: "provider.client_secret".into(),
                message,
                source: None,
            }])
        })?;
        self.rules.store(Arc::new(Rules::new(&newer)));
        let dropped = {
            let mut current = self
                .cookie_secrets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let dropped = current
                .iter()
                .filter(|s| !newer.session.cookie_secrets.contains(s))
                .count();
            *current = newer.session.cookie_secrets.clone();
            dropped
        };
        Ok(Report {
            needs_restart: self
                .started
                .changed_keys(&newer)
                .into_iter()
                .filter(|k| {
                    !LIVE_KEYS
                        .iter()
                        .any(|live| k == live || (live.ends_with('.') && k.starts_with(live)))
                })
                .collect(),
            cookie_secrets_dropped: dropped,
            level: newer.log.level,
        })
    }

    /// What a `SIGHUP` does: reloads, and logs the outcome.
    pub fn reload_and_log(&self) {
        tracing::info!(config = %self.path.display(), "SIGHUP received: reloading the configuration");
        let result = self.apply();
        self.metrics.config_reload(result.is_ok());
        match result {
            Ok(report) => {
                if !report.needs_restart.is_empty() {
                    tracing::warn!(
                        keys = %report.needs_restart.join(", "),
                        "changed keys need a restart to apply; running with their previous values"
                    );
                }
                if report.cookie_secrets_dropped > 0 {
                    tracing::warn!(
                        dropped = report.cookie_secrets_dropped,
                        "cookie secrets dropped from session.cookie_secret: the sessions they signed have ended (to rotate without signing anyone out, put the new secret first and keep the old one second for a session lifetime)"
                    );
                }
                tracing::info!("configuration reloaded");
                match telemetry::set_level(&report.level) {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!("log.level not applied: RUST_LOG is set and wins"),
                    Err(e) => tracing::warn!(error = %e, "log.level not applied"),
                }
            }
            Err(problems) => {
                for p in &problems.0 {
                    tracing::error!(key = %p.key, problem = %p.message, source = p.source.as_deref().unwrap_or(""), "configuration problem");
                }
                tracing::error!(
                    problems = problems.0.len(),
                    "configuration reload failed; still running the previous configuration"
                );
            }
        }
    }
}
