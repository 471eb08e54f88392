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
    let cache: u64 = std::env::args().nth(1).map(|a| a.parse().unwrap()).unwrap_or(2 << 20);
    let share = std::env::args().nth(2).is_some();
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new().path(dir.path()).mode(sled::Mode::LowSpace).cache_capacity(cache).open()?;
    let offers = db.open_tree("offers")?;
    let mut keep = Vec::new();
    for i in 0..10_000u64 {
        let v = sled::IVec::from(vec![i as u8; 570]);
        if share {
            keep.push(v.clone());
        } else {
            keep.push(sled::IVec::from(vec![i as u8; 570]));
        }
        offers.insert(key(i), v)?;
    }
    db.flush()?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    println!("cache {cache} share {share}: heap {:.1} MiB with our 10k values", heap());
    drop(keep);
    println!("   without ours: {:.1}", heap());
    Ok(())
}
