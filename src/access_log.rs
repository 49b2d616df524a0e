//! The access log line in JSON, formatted by hand.
//!
//! Through tracing-subscriber's JSON formatter the line cost about 22 000
//! instructions, a third of the proxy's user-space work per request
//! (callgrind, benches/README.md). Written here, it is the same object with
//! the same keys (`timestamp`, `level`, `message`, `method`, `path`,
//! `status`, `route`, `duration_ms`, `upstream_ms` when the upstream was
//! called, `request_id`, `target`), built in a thread-local buffer and
//! written with one `write(2)`. It honours the log filter (`log.level`,
//! `RUST_LOG`) as the tracing event did; the `pretty` format still goes
//! through tracing, as it is for people, not for throughput.
//!
//! On a worker thread the lines are batched: each is added to the worker's
//! buffer, and the buffer is written when the worker's runtime runs out of
//! work and is about to wait for I/O ([`flush`], its `on_thread_park` hook),
//! when the next line would take it over 4 KiB, or when its oldest line is
//! from an earlier second. An idle proxy so writes each line as soon as its
//! request ends, as before; a busy one writes several lines per `write(2)`
//! instead of one, which was the proxy's costliest system call per request
//! after the four that move the request and response (benches/README.md).
//! nginx's `access_log ... buffer= flush=` is the same idea, with a timer.
//! Each write is at most 4 KiB and ends at a line's end, so on a pipe (a
//! container's stdout) lines from two workers never interleave.

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::Method;

use crate::metrics::RouteClass;

/// The log target of the access lines.
pub const TARGET: &str = "emp_sidecar::access";

static OUT: OnceLock<Option<File>> = OnceLock::new();
/// Whether the log filter lets `emp_sidecar::access` INFO events through.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Installs the hand-written JSON line, writing to `out` (a duplicate of
/// stdout). `telemetry::init` calls it for the JSON format. Left
/// uninstalled, or while [`set_enabled`] says the filter drops access
/// lines, [`write()`] reports `false` and the caller logs through tracing
/// (which then drops the line, or formats it itself).
pub fn install(out: Option<File>) {
    let _ = OUT.set(out);
}

/// Follows the log filter, at start and after each reload of `log.level`.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

thread_local! {
    static BUF: RefCell<Line> = RefCell::new(Line::default());
}

/// The most one write carries: up to `PIPE_BUF` (4 KiB on Linux) a write to
/// a pipe is atomic.
const BATCH_BYTES: usize = 4096;

#[derive(Default)]
struct Line {
    text: Vec<u8>,
    /// The second the cached `YYYY-MM-DDTHH:MM:SS` prefix is for.
    second: u64,
    prefix: [u8; 19],
    /// Whether this thread batches its lines ([`batch_on_this_thread`]).
    batching: bool,
    /// Whole lines not written yet.
    pending: Vec<u8>,
    /// The second the oldest pending line was formatted in.
    pending_since: u64,
    /// A monotonic and a wall-clock reading taken together, at most
    /// [`CALIBRATION`] ago ([`Line::wall_clock`]).
    calibrated: Option<(Instant, SystemTime)>,
}

/// How long a wall-clock reading serves to date lines from the monotonic
/// clock: a step of the system clock (NTP, an operator) shows in the log
/// within a second, and a slew of at most 500 ppm moves a timestamp by at
/// most half a millisecond.
const CALIBRATION: Duration = Duration::from_secs(1);

impl Line {
    /// Queues the formatted line. The batch is written first when the line
    /// would take it past [`BATCH_BYTES`], and with the line when this
    /// thread does not batch, when it reaches [`BATCH_BYTES`] or when it
    /// holds a line from an earlier second.
    fn push(&mut self, out: &mut impl Write) {
        if self.pending.len() + self.text.len() > BATCH_BYTES {
            self.write_pending(out);
        }
        if self.pending.is_empty() {
            self.pending_since = self.second;
        }
        self.pending.extend_from_slice(&self.text);
        if !self.batching || self.second != self.pending_since || self.pending.len() >= BATCH_BYTES
        {
            self.write_pending(out);
        }
    }

    /// The wall-clock time of `at`, a monotonic reading the caller has
    /// already made (the request's end), so a line costs no clock read of
    /// its own: each is about 30 ns under this machine's hypervisor and a
    /// proxied request made about seven (benches/README.md, issue 15).
    fn wall_clock(&mut self, at: Instant) -> SystemTime {
        // One subtraction of instants a line (each ~40 instructions).
        if let Some((mono, wall)) = self.calibrated {
            match at.checked_duration_since(mono) {
                Some(after) if after < CALIBRATION => return wall + after,
                Some(_) => {}
                None => return wall.checked_sub(mono.duration_since(at)).unwrap_or(wall),
            }
        }
        let (mono, wall) = (Instant::now(), SystemTime::now());
        self.calibrated = Some((mono, wall));
        wall.checked_sub(mono.saturating_duration_since(at))
            .unwrap_or(wall)
    }

    fn write_pending(&mut self, out: &mut impl Write) {
        if !self.pending.is_empty() {
            // A failed write (stdout closed) has nowhere to be reported.
            let _ = out.write_all(&self.pending);
            self.pending.clear();
        }
    }
}

/// Makes this thread batch its access lines. Only for a thread that calls
/// [`flush`] whenever it is about to wait: a worker, whose runtime does so
/// from its `on_thread_park` hook and once more when it ends.
pub fn batch_on_this_thread() {
    let _ = BUF.try_with(|cell| {
        if let Ok(mut line) = cell.try_borrow_mut() {
            line.batching = true;
        }
    });
}

/// Writes this thread's pending lines.
pub fn flush() {
    let Some(Some(mut out)) = OUT.get().map(Option::as_ref) else {
        return;
    };
    let _ = BUF.try_with(|cell| {
        if let Ok(mut line) = cell.try_borrow_mut() {
            line.write_pending(&mut out);
        }
    });
}

/// One request's line, by reference to the record's fields.
pub struct Entry<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub status: u16,
    pub route: RouteClass,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    pub request_id: &'a str,
}

/// Writes the line of a request that ended at `finished`; `false` when the
/// JSON writer is not installed or the filter drops access lines.
pub fn write(entry: &Entry<'_>, finished: Instant) -> bool {
    let Some(out) = OUT.get() else {
        return false;
    };
    if !ENABLED.load(Ordering::Relaxed) {
        return false;
    }
    BUF.with(|cell| {
        let Ok(mut line) = cell.try_borrow_mut() else {
            return;
        };
        let now = line.wall_clock(finished);
        format_line(&mut line, now, entry);
        if let Some(mut file) = out.as_ref() {
            line.push(&mut file);
        }
    });
    true
}

fn format_line(line: &mut Line, now: SystemTime, e: &Entry<'_>) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = since.as_secs();
    if second != line.second || line.prefix[0] == 0 {
        line.prefix = timestamp_prefix(second);
        line.second = second;
    }
    let t = &mut line.text;
    t.clear();
    t.extend_from_slice(b"{\"timestamp\":\"");
    t.extend_from_slice(&line.prefix);
    t.push(b'.');
    padded(t, since.subsec_micros(), 6);
    t.push(b'Z');
    t.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
    json_str(t, e.method.as_str());
    t.extend_from_slice(b",\"path\":");
    json_str(t, e.path);
    t.extend_from_slice(b",\"status\":");
    t.extend_from_slice(itoa::Buffer::new().format(e.status).as_bytes());
    t.extend_from_slice(b",\"route\":\"");
    t.extend_from_slice(e.route.as_str().as_bytes());
    t.extend_from_slice(b"\",\"duration_ms\":");
    millis(t, e.duration);
    if let Some(up) = e.upstream {
        t.extend_from_slice(b",\"upstream_ms\":");
        millis(t, up);
    }
    t.extend_from_slice(b",\"request_id\":");
    json_str(t, e.request_id);
    t.extend_from_slice(b",\"target\":\"emp_sidecar::access\"}\n");
}

/// A JSON string: copied as it is when nothing in it needs escaping (the
/// usual path and request id), escaped by serde_json otherwise.
fn json_str(t: &mut Vec<u8>, s: &str) {
    // No early exit: the check then runs many bytes at a time (SIMD).
    let plain = s
        .bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        t.push(b'"');
        t.extend_from_slice(s.as_bytes());
        t.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *t, s);
    }
}

/// Milliseconds with microsecond precision: `15.900`.
fn millis(t: &mut Vec<u8>, d: Duration) {
    // In u64 (584 554 years of microseconds): u128 division and printing
    // are library calls, ~150 instructions a line (benches/README.md).
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    t.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    t.push(b'.');
    padded(t, (micros % 1000) as u32, 3);
}

/// `n` in decimal, zero-padded to `width` digits.
fn padded(t: &mut Vec<u8>, n: u32, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n).as_bytes();
    t.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    t.extend_from_slice(digits);
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) for seconds since the epoch.
fn timestamp_prefix(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let mut out = [0u8; 19];
    let text = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    out.copy_from_slice(&text.as_bytes()[..19]);
    out
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(&timestamp_prefix(0), b"1970-01-01T00:00:00");
        assert_eq!(&timestamp_prefix(951_782_400), b"2000-02-29T00:00:00");
        assert_eq!(&timestamp_prefix(1_795_468_838), b"2026-11-23T21:20:38");
        assert_eq!(&timestamp_prefix(4_102_444_799), b"2099-12-31T23:59:59");
    }

    /// Each `write` call it receives, as one chunk.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line_at(line: &mut Line, micros: u64, request_id: &str) {
        let method = Method::GET;
        let entry = Entry {
            method: &method,
            path: "/p",
            status: 200,
            route: RouteClass::Proxy,
            duration: Duration::from_micros(900),
            upstream: None,
            request_id,
        };
        format_line(line, UNIX_EPOCH + Duration::from_micros(micros), &entry);
    }

    #[test]
    fn a_batching_thread_writes_whole_lines_in_writes_of_at_most_4_kib() {
        let mut out = Writes::default();
        let mut line = Line {
            batching: true,
            ..Line::default()
        };
        let t0 = 1_795_468_838_000_000;
        for i in 0..100 {
            line_at(&mut line, t0 + i, &format!("rid-{i}"));
            line.push(&mut out);
        }
        // Nothing waits longer than its second: a line from the next one
        // writes the batch, itself included.
        line_at(&mut line, t0 + 1_000_000, "rid-next-second");
        line.push(&mut out);
        assert!(line.pending.is_empty());
        line_at(&mut line, t0 + 1_000_001, "rid-last");
        line.push(&mut out);
        assert!(!line.pending.is_empty(), "a lone line waits for the flush");
        line.write_pending(&mut out);

        // About 19 lines of this size fit in a write; one write a line
        // would be 102.
        let lines_per_write = BATCH_BYTES / line.text.len();
        assert!(
            out.0.len() <= 100 / lines_per_write + 3,
            "{} writes",
            out.0.len()
        );
        let mut ids = Vec::new();
        for chunk in &out.0 {
            assert!(chunk.len() <= BATCH_BYTES && chunk.ends_with(b"\n"));
            for l in chunk.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let v: serde_json::Value = serde_json::from_slice(l).unwrap();
                ids.push(v["request_id"].as_str().unwrap().to_owned());
            }
        }
        let mut want: Vec<String> = (0..100).map(|i| format!("rid-{i}")).collect();
        want.extend(["rid-next-second".into(), "rid-last".into()]);
        assert_eq!(ids, want, "every line once, in order");
    }

    #[test]
    fn lines_are_dated_from_the_monotonic_clock_and_a_wall_reading_of_this_second() {
        let mut line = Line::default();
        let ended = Instant::now();
        let before = SystemTime::now();
        let first = line.wall_clock(ended);
        let (mono, wall) = line.calibrated.unwrap();
        assert!(mono >= ended && wall >= before);
        // Dated back from the calibration to the moment the request ended.
        assert_eq!(first, wall - (mono - ended));
        assert!(before.duration_since(first).unwrap_or_default() < Duration::from_millis(50));

        // Later in the same second: no new reading, exact offsets.
        let later = ended + Duration::from_millis(300);
        assert_eq!(line.wall_clock(later), first + Duration::from_millis(300));
        assert_eq!(line.calibrated.unwrap().0, mono);

        // A second on: the wall clock is read again.
        let next = mono + CALIBRATION;
        let _ = line.wall_clock(next);
        assert_ne!(line.calibrated.unwrap().0, mono);
    }

    #[test]
    fn a_thread_that_does_not_batch_writes_each_line_at_once() {
        let mut out = Writes::default();
        let mut line = Line::default();
        for i in 0..3 {
            line_at(&mut line, 1_000_000 + i, "rid");
            line.push(&mut out);
            assert_eq!(out.0.len(), i as usize + 1);
            assert_eq!(out.0[i as usize], line.text);
        }
    }

    #[test]
    fn the_line_is_one_json_object_with_the_access_fields() {
        let mut line = Line::default();
        let at = UNIX_EPOCH + Duration::from_micros(1_795_468_838_000_042);
        let method = Method::GET;
        let mut entry = Entry {
            method: &method,
            path: "/a \"quoted\"\\path\u{1}",
            status: 502,
            route: RouteClass::Proxy,
            duration: Duration::from_micros(15_900),
            upstream: Some(Duration::from_micros(7)),
            request_id: "rid-1",
        };
        format_line(&mut line, at, &entry);
        let text = std::str::from_utf8(&line.text).unwrap();
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["timestamp"], "2026-11-23T21:20:38.000042Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "request");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/a \"quoted\"\\path\u{1}");
        assert_eq!(v["status"], 502);
        assert_eq!(v["route"], "proxy");
        assert_eq!(v["duration_ms"], 15.9);
        assert_eq!(v["upstream_ms"], 0.007);
        assert_eq!(v["request_id"], "rid-1");
        assert_eq!(v["target"], TARGET);
        entry.upstream = None;
        entry.path = "/plain/ÿ~\u{7f}";
        format_line(&mut line, at, &entry);
        let v: serde_json::Value = serde_json::from_slice(&line.text).unwrap();
        assert!(v.get("upstream_ms").is_none());
        assert_eq!(v["path"], "/plain/ÿ~\u{7f}");
    }
}
