//! Keeps the C allocator's idle memory small. A node's heap moves in bursts (a book sync, a
//! flood of offers, sled's write buffers), and glibc keeps what a burst freed inside its
//! arenas, resident, one arena per allocating thread (up to 8 per core). Measured with
//! `cargo run --release -p gpumesh-bench -- memory`: a node holding 10k offers kept about
//! 8 MiB free in its arenas. Other C libraries: both calls do nothing.

/// Caps glibc's malloc arenas at two for the process. Call before threads start allocating.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets an allocator tunable; M_ARENA_MAX takes any positive count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns memory freed inside glibc's arenas to the system (every arena, not only the top
/// of the heap). Takes about a millisecond for a loaded node; run it off the event loop.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only walks and releases the allocator's free chunks.
    unsafe {
        libc::malloc_trim(0);
    }
}
