//! How the agent's memory goes back to the kernel. A config parse or an install from
//! scratch is a peak of short-lived buffers (tens of megabytes at 10,000 services); glibc
//! would keep those pages, spread over per-thread arenas, and leave the agent at its peak
//! size. musl hands freed memory back by itself, so this is glibc's alone.

/// Fewer arenas (the agent has a handful of threads, not a server's hundreds) and large
/// buffers straight from mmap, so freeing one unmaps it.
pub fn tune() {
    #[cfg(target_env = "gnu")]
    {
        const M_MMAP_THRESHOLD: libc::c_int = -3;
        const M_ARENA_MAX: libc::c_int = -8;
        // SAFETY: mallopt only changes allocator parameters; called before the threads start.
        unsafe {
            libc::mallopt(M_ARENA_MAX, 2);
            libc::mallopt(M_MMAP_THRESHOLD, 1 << 20);
        }
    }
}

/// Returns freed heap pages to the kernel after a large apply.
pub fn release() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
