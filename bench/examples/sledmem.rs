//! Heap that sled holds for 10k offer-sized values (no node, no book, no libp2p): sled's share
//! of a node's memory in the memory suite, whether `cache_capacity` bounds it, and what a
//! second copy of the values beside sled costs against one buffer shared with sled (what the
//! node does: the offer book holds the very `IVec` it writes).
//! `cargo run --release -p gpumesh-bench --example sledmem [CACHE_BYTES] [none|copy|shared]`
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
    let mut args = std::env::args().skip(1);
    let cache: u64 = match args.next() {
        Some(a) => {
            a.parse().map_err(|_| format!("CACHE_BYTES must be a whole number of bytes, not `{a}`"))?
        }
        None => 256 << 20,
    };
    let keep = args.next().unwrap_or_else(|| "none".into());
    if !["none", "copy", "shared"].contains(&keep.as_str()) {
        return Err(format!("the second argument is none, copy or shared, not `{keep}`").into());
    }
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new().path(dir.path()).mode(sled::Mode::LowSpace).cache_capacity(cache).open()?;
    let offers = db.open_tree("offers")?;
    println!("cache_capacity {cache} bytes, values kept beside sled: {keep}; opened: heap {:.1} MiB", heap());
    // 10k values of 570 bytes, the size of a signed offer.
    let mut kept = Vec::new();
    for i in 0..10_000u64 {
        let value = sled::IVec::from(vec![i as u8; 570]);
        match keep.as_str() {
            "copy" => kept.push(sled::IVec::from(&value[..])),
            "shared" => kept.push(value.clone()),
            _ => {}
        }
        offers.insert(key(i), value)?;
    }
    db.flush()?;
    println!("10k values (5.4 MiB) written and flushed: heap {:.1} MiB", heap());
    std::thread::sleep(std::time::Duration::from_secs(1));
    println!("a second later: heap {:.1} MiB ({} values kept)", heap(), kept.len());
    Ok(())
}
