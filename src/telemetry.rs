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

/// Installs the global subscriber.
pub fn init(cfg: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::builder().parse(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&cfg.level));
    let out = StdoutFd(dup_stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(out);
    match cfg.format {
        LogFormat::Json => {
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .init();
            // The filter is fixed from here on: decide once whether access
            // lines are written, and then write them by hand.
            if tracing::enabled!(target: crate::access_log::TARGET, tracing::Level::INFO) {
                crate::access_log::install(dup_stdout());
            }
        }
        LogFormat::Pretty => builder.with_target(false).init(),
    }
}

/// A duplicate of the stdout descriptor; `None` when stdout is closed.
fn dup_stdout() -> Option<File> {
    std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(File::from)
}
