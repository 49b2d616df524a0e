//! Logging set-up: JSON (one object per line) or human-readable output on
//! stdout. `RUST_LOG`, when set, wins over `log.level`.
//!
//! Lines are written by the thread that logs them, one `write(2)` each, as
//! nginx writes its access log. A background writer thread was measured
//! slower: waking it for every line cost more than the write itself
//! (benches/README.md).

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber.
pub fn init(cfg: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::builder().parse(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&cfg.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        LogFormat::Pretty => builder.with_target(false).init(),
    }
}
