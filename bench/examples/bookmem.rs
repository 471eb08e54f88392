//! Heap used by an offer book of 10k offers, alone (no node, no sled, no libp2p): the book's share
//! of a node's memory in the memory suite. `cargo run --release -p gpumesh-bench --example bookmem`
#![allow(unsafe_code)]
use gpumesh_protocol::book::{BookConfig, OfferBook};
use gpumesh_protocol::*;

fn heap() -> f64 {
    // SAFETY: mallinfo2 only reads glibc's allocator statistics.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as f64 / 1048576.0
}

fn main() {
    let keys: Vec<SigningKey> = (0..200u64)
        .map(|i| {
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&i.to_le_bytes());
            SigningKey::from_bytes(&s)
        })
        .collect();
    let now = Timestamp(1_767_225_600_000);
    let mut envs = Vec::new();
    for i in 0..10_000u64 {
        let k = &keys[(i % 200) as usize];
        let pid = NodeId::from_bytes(k.verifying_key().to_bytes());
        let gpu = GpuSpec {
            vendor: "nvidia".into(),
            model: format!("H100-SXM-80GB-V{}", i / 200),
            vram_mib: 81559,
            compute_capability: Some(ComputeCapability(9, 0)),
            interconnect: Interconnect::Sxm,
            cuda_version: Some("12.4".into()),
            driver_version: Some("550.54.15".into()),
        };
        let o = Offer {
            v: PROTOCOL_VERSION,
            network: "m".into(),
            offer_id: OfferId::derive(&pid, &gpu.group_key()),
            provider: pid,
            seq: i + 1,
            issued_at: now,
            expires_at: now.plus_millis(1_800_000),
            gpu,
            gpu_total: 8,
            gpu_free: 8,
            host: HostSpec { cpu_cores: 64, ram_mib: 512 * 1024, disk_gib: 2000, region: "us-east".into() },
            price: Price(2_000_000),
            min_duration_s: 60,
            max_duration_s: 86400,
            addrs: vec!["/ip4/203.0.113.7/tcp/4747".into(), "/ip4/203.0.113.7/udp/4747/quic-v1".into()],
        };
        envs.push(envelope::seal(k, &o));
    }
    let bytes: usize = envs.iter().map(Vec::len).sum();
    let h0 = heap();
    let mut book = OfferBook::new(BookConfig { max_offers_per_provider: 100_000, ..BookConfig::default() });
    for e in &envs {
        let v = envelope::open::<Offer>(e).unwrap();
        book.insert(v, now).unwrap();
    }
    let h1 = heap();
    drop(envs);
    println!(
        "envelopes {:.1} MiB; book of 10k offers adds {:.1} MiB of heap ({:.0} B/offer); heap now {:.1} MiB",
        bytes as f64 / 1048576.0,
        h1 - h0,
        (h1 - h0) * 1048576.0 / 10_000.0,
        heap()
    );
}
