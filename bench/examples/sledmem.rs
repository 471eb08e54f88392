//! Heap that sled holds for 10k offer-sized values (no node, no book, no libp2p): sled's share
//! of a node's memory in the memory suite, and whether `cache_capacity` bounds it.
//! `cargo run --release -p gpumesh-bench --example sledmem [CACHE_BYTES]`
#![allow(unsafe_code)]

fn heap() -> f64 {
    // SAFETY: mallinfo2 only reads glibc's allocator statistics.
    let m = unsafe { libc::mallinfo2() };
    m.uordblks as f64 / 1048576.0
}

fn key(i: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    k
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache: u64 = match std::env::args().nth(1) {
        Some(a) => {
            a.parse().map_err(|_| format!("CACHE_BYTES must be a whole number of bytes, not `{a}`"))?
        }
        None => 2 << 20,
    };
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new().path(dir.path()).mode(sled::Mode::LowSpace).cache_capacity(cache).open()?;
    let offers = db.open_tree("offers")?;
    println!("cache_capacity {cache} bytes; opened: heap {:.1} MiB", heap());
    // 10k values of 570 bytes, the size of a signed offer.
    for i in 0..10_000u64 {
        offers.insert(key(i), vec![i as u8; 570])?;
    }
    db.flush()?;
    println!("10k values (5.4 MiB) written and flushed: heap {:.1} MiB", heap());
    std::thread::sleep(std::time::Duration::from_secs(1));
    println!("a second later: heap {:.1} MiB", heap());
    Ok(())
}
