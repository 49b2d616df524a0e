//! emp-sidecar: a reverse-proxy authentication sidecar for LG EMP, UPBOND
//! Login 3.0 and OpenID Connect providers.
//!
//! The path of a request, one stage per module:
//!
//! - [`server`]: listeners, TLS, HTTP/1.1 + HTTP/2 connections, idle and
//!   header timeouts, graceful drain, quiet HTTP/1 connections parked
//!   without buffers, `SIGHUP` reloads. Handed its listeners and a
//!   shutdown future, so tests run it in-process on port 0.
//! - [`router`]: request id, size limit, route choice (`/ping`, `/ready`,
//!   `/metrics`, `/oauth2/*`, skip-auth proxy, authenticated proxy) and the
//!   one place errors become responses.
//! - [`path`]: the canonical form of a request path, which routes are
//!   chosen on and the upstream receives, and the readings rules match.
//! - [`proxy`]: forwarding to the upstream app; [`proxy::headers`] owns header
//!   hygiene, [`proxy::pool`] the per-worker connections and
//!   [`proxy::h1`] the HTTP/1.1 exchange on them, in the request's own task.
//! - [`activity`]: per-connection activity (requests in flight, a head
//!   being read) and the watchdog that closes idle or slow connections.
//! - [`body`]: the response body type and the per-request record that writes
//!   the access log and metrics when the body is done.
//! - [`authz`]: who may enter once logged in (`[authorization]`).
//! - [`auth`]: the login flow and the one authentication decision
//!   ([`auth::bearer`]: API clients' own tokens);
//!   [`token_cache`] refreshes tokens ahead of expiry; [`session`] holds
//!   sessions and signs their cookies.
//! - [`provider`]: the identity-provider interface, with [`provider::emp`]
//!   (EMP's dialect) and [`provider::oidc`] (UPBOND and any OpenID provider:
//!   discovery, PKCE, nonce, id_tokens verified against the JWKS).
//! - [`error`]: request-path errors grouped by fault, mapped to statuses.
//! - [`metrics`]: every Prometheus metric, on a registry passed in.
//! - [`memory`]: the allocator (mimalloc), and memory given back after bursts.
//! - [`config`]: figment layers → typed, validated [`config::Config`].
//! - [`telemetry`]: tracing subscriber set-up.

// Nothing on the request path may panic: no unwrap/expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod access_log;
pub mod activity;
pub mod auth;
pub mod authz;
pub mod body;
pub mod config;
pub mod demo;
pub mod error;
pub mod memory;
pub mod metrics;
pub mod mock_emp;
pub mod path;
pub mod provider;
pub mod proxy;
pub mod router;
pub mod server;
pub mod session;
pub mod telemetry;
pub mod token_cache;
