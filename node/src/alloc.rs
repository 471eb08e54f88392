//! Keeps the C allocator's idle memory small. A node's heap moves in bursts (a book sync, a
//! flood of offers, sled's write buffers), and glibc keeps what a burst freed inside its
//! arenas, resident, one arena per allocating thread (up to 8 per core). Measured with
//! `cargo run --release -p gpumesh-bench -- memory`: a node holding 10k offers kept about
//! 8 MiB free in its arenas. Other C libraries: both calls do nothing.

/// How often a node process returns freed memory to the system ([`spawn_trimmer`]).
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Blocks at least this large are mapped on their own and unmapped when freed: glibc's
/// initial threshold, kept from rising (see [`limit_arenas`]).
pub const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Caps glibc's malloc arenas at two for the process and fixes its mmap threshold at
/// [`MMAP_THRESHOLD`]. glibc raises the threshold each time a mapped block is freed, up to
/// that block's size (32 MiB at most), so after a node has freed one large buffer (a sync
/// page of 2.4 MB, a grown hash table) every later block below that size comes from the
/// arenas, and what a burst freed there stays resident around the blocks still in use.
/// Measured with `cargo run --release -p gpumesh-bench -- memory`: a node that took 10k
/// offers as one gossip burst kept 43.7–43.8 MiB with the threshold fixed, 46.5–47.4 MiB
/// without (alternating runs); fixed at 1 MiB instead, every node grew by about 5 MiB.
/// Call before threads start allocating.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets allocator tunables; M_ARENA_MAX takes any positive count,
    // M_MMAP_THRESHOLD any size up to 32 MiB.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Runs [`trim`] every `every` on the blocking pool until the task is aborted. A process
/// concern, not a node's: `trim` walks every arena of the process with its locks held, so a
/// process that hosts many nodes (tests, benchmarks) must not trim once per node.
pub fn spawn_trimmer(every: std::time::Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    })
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
