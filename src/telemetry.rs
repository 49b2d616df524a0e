//! Logging set-up: JSON (one object per line) or human-readable output on
//! stdout. `RUST_LOG`, when set, wins over `log.level`.
//!
//! Lines are written by the thread that logs them, one `write(2)` each, but
//! for the access lines of a busy worker, which go out several to a write
//! (`access_log.rs`). A background writer thread was measured slower: waking
//! it for every line cost more than the write itself (benches/README.md).
//! The writes go to a duplicate of the stdout file descriptor, not through
//! `std::io::Stdout`, whose process-wide lock made the worker threads queue
//! behind each other's `write(2)`.

use std::fs::File;
use std::os::fd::AsFd as _;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogConfig, LogFormat};

/// Stdout without a user-space lock: each formatted line is one `write_all`
/// on the file, so one `write(2)` for lines of ordinary size (atomic on
/// pipes up to 4 KiB, as nginx's access log lines are). `None` when stdout
/// is closed: lines go nowhere, as they would have.
struct StdoutFd(Option<File>);

enum Out<'a> {
    Fd(&'a File),
    Closed,
}

impl std::io::Write for Out<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Out::Fd(f) => (*f).write(buf),
            Out::Closed => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for StdoutFd {
    type Writer = Out<'a>;
    fn make_writer(&'a self) -> Out<'a> {
        self.0.as_ref().map_or(Out::Closed, Out::Fd)
    }
}

/// Replaces the filter of the installed subscriber.
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static SET_FILTER: OnceLock<SetFilter> = OnceLock::new();

/// Whether `RUST_LOG` holds a filter, which then wins over `log.level`.
fn rust_log() -> Option<EnvFilter> {
    std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::builder().parse(v).ok())
}

/// Installs the global subscriber.
pub fn init(cfg: &LogConfig) {
    let filter = rust_log().unwrap_or_else(|| EnvFilter::new(&cfg.level));
    let out = StdoutFd(dup_stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(out);
    let set: SetFilter = match cfg.format {
        LogFormat::Json => {
            let builder = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            // Access lines are written by hand, past the subscriber; the
            // filter decides whether they are written (`access_lines_follow_the_filter`).
            crate::access_log::install(dup_stdout());
            Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()))
        }
        LogFormat::Pretty => {
            let builder = builder.with_target(false).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()))
        }
    };
    let _ = SET_FILTER.set(set);
    access_lines_follow_the_filter();
}

/// Sets `log.level` while running (`SIGHUP`). `Ok(false)`: not applied,
/// since `RUST_LOG` is set and wins.
pub fn set_level(level: &str) -> Result<bool, String> {
    if rust_log().is_some() {
        return Ok(false);
    }
    let filter = EnvFilter::builder()
        .parse(level)
        .map_err(|e| format!("log.level {level:?}: {e}"))?;
    match SET_FILTER.get() {
        Some(set) => set(filter)?,
        None => return Err("logging is not set up".into()),
    }
    access_lines_follow_the_filter();
    Ok(true)
}

fn access_lines_follow_the_filter() {
    crate::access_log::set_enabled(tracing::enabled!(
        target: crate::access_log::TARGET,
        tracing::Level::INFO
    ));
}

/// A duplicate of the stdout descriptor; `None` when stdout is closed.
fn dup_stdout() -> Option<File> {
    std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(File::from)
}
