//! The process's allocator, and giving memory back after bursts.
//!
//! mimalloc (v2) serves every Rust allocation: glibc's malloc and free
//! were about 1 600 instructions of a proxied request, mimalloc's about 850
//! (callgrind, benches/README.md, issue 15). Set here, in the library, so
//! the tests and benchmarks run on the allocator production runs on.
//!
//! mimalloc keeps freed memory in the heap of the thread that freed it and
//! returns it to the system lazily, when that thread allocates or frees
//! again. A worker that goes quiet after a burst of connections would
//! keep the burst's memory, so the server asks each worker to
//! [`release_this_thread`] when a burst is over (`server.rs`).
//!
//! The default feature `mimalloc` sets it; the fuzz targets build without
//! it, so that a sanitizer sees every allocation.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns this thread's free mimalloc pages to the system.
#[cfg(feature = "mimalloc")]
pub fn release_this_thread() {
    // SAFETY: mi_collect only walks the calling thread's own heap and the
    // segments abandoned by ended threads; it takes no pointers from us.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Without mimalloc, freed memory is glibc's: [`release_c_heap`] covers it.
#[cfg(not(feature = "mimalloc"))]
pub fn release_this_thread() {}

/// Returns what glibc's malloc holds free: the C libraries in the binary
/// (aws-lc) allocate through it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_c_heap() {
    // SAFETY: malloc_trim only walks glibc's own arenas; it takes no
    // pointers from us and is safe to call from any thread at any time.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_c_heap() {}
