//! Logging set-up: JSON (one object per line) or human-readable output on
//! stdout, written by a background thread so a slow log consumer never stalls
//! the request path. `RUST_LOG`, when set, wins over `log.level`.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber; keep the guard alive until exit so the
/// last lines are flushed.
pub fn init(cfg: &LogConfig) -> WorkerGuard {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::builder().parse(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&cfg.level));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        // Under overload, block rather than silently drop access-log lines.
        .lossy(false)
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        LogFormat::Pretty => builder.with_target(false).init(),
    }
    guard
}
