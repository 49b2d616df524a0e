//! The scheduling policy of the worker threads (`server.worker_scheduling`).
//!
//! By default the workers run under Linux's `SCHED_BATCH`. A proxy is woken
//! by every packet; under the normal policy each wake-up may preempt the
//! thread that was running on that CPU, often the app the sidecar fronts or
//! the client. On a busy machine that turns into a ping-pong: the app is cut
//! off mid-batch, the proxy runs dry and sleeps, and is woken again for the
//! next response. `SCHED_BATCH` threads are never given the CPU by a wake-up
//! (they wait for the scheduler's next decision, and run at once on an idle
//! CPU), so both sides keep their batches. On the 2-core benchmark with 128
//! connections the workers slept 0.17–0.46 times a request in most rounds
//! under the normal policy and 0.01–0.02 under `SCHED_BATCH`, and served
//! 11–20% more requests a second in those rounds, with p99 no worse
//! (benches/README.md, "Worker scheduling"). Any unprivileged thread may
//! take this policy.

use crate::config::WorkerScheduling;

/// Applies `policy` to the calling thread. `Normal` leaves the thread as it
/// started (the process's policy, `SCHED_OTHER` unless started otherwise).
pub fn apply(policy: WorkerScheduling) -> std::io::Result<()> {
    match policy {
        WorkerScheduling::Normal => Ok(()),
        WorkerScheduling::Batch => set_batch(),
    }
}

#[cfg(target_os = "linux")]
fn set_batch() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a system call on the calling thread (pid 0) that reads `param`,
    // which outlives it.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_batch() -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "SCHED_BATCH is Linux's",
    ))
}
