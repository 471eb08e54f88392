//! Realistic signed offers for the benchmarks.

use gpumesh_protocol::*;

/// Models with VRAM (MiB) and a base price (micro-USD per GPU-hour).
pub const MODELS: [(&str, u32, u64, Interconnect); 8] = [
    ("H100-SXM-80GB", 81559, 2_200_000, Interconnect::Sxm),
    ("H200-SXM-141GB", 143771, 3_100_000, Interconnect::Sxm),
    ("A100-SXM-80GB", 81920, 1_300_000, Interconnect::Sxm),
    ("L40S", 46068, 800_000, Interconnect::Pcie),
    ("RTX-4090", 24564, 350_000, Interconnect::Pcie),
    ("RTX-3090", 24576, 220_000, Interconnect::Pcie),
    ("RTX-A6000", 49140, 500_000, Interconnect::Pcie),
    ("T4", 15360, 150_000, Interconnect::Pcie),
];
pub const REGIONS: [&str; 7] =
    ["us-east", "us-west", "eu-west", "eu-central", "ap-northeast", "ap-south", "DE"];

/// A key from a number.
pub fn key(i: u64) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&i.to_le_bytes());
    seed[8] = 0xbe;
    SigningKey::from_bytes(&seed)
}

/// Offer number `i` of `provider` (distinct `variant`s give distinct offer ids).
pub fn offer(provider: &SigningKey, network: &str, i: u64, variant: u64, seq: u64, now: Timestamp) -> Offer {
    let pid = NodeId::from_bytes(provider.verifying_key().to_bytes());
    let (model, vram, base, ic) = MODELS[(i % MODELS.len() as u64) as usize];
    let model = if variant == 0 { model.to_string() } else { format!("{model}-V{variant}") };
    let gpu = GpuSpec {
        vendor: "nvidia".into(),
        model,
        vram_mib: vram,
        compute_capability: Some(ComputeCapability(
            8 + (i % 2) as u8,
            if i.is_multiple_of(3) { 9 } else { 0 },
        )),
        interconnect: ic,
        cuda_version: Some("12.4".into()),
        driver_version: Some("550.54.15".into()),
    };
    let total = [1u32, 2, 4, 8][(i / 7 % 4) as usize];
    Offer {
        v: PROTOCOL_VERSION,
        network: network.into(),
        offer_id: OfferId::derive(&pid, &gpu.group_key()),
        provider: pid,
        seq,
        issued_at: now,
        expires_at: now.plus_millis(30 * 60_000),
        gpu,
        gpu_total: total,
        gpu_free: total - (i % 3) as u32 % total,
        host: HostSpec {
            cpu_cores: 16 << (i % 4),
            ram_mib: 65536 << (i % 4),
            disk_gib: 500 << (i % 3),
            region: REGIONS[(i % REGIONS.len() as u64) as usize].into(),
        },
        price: Price(base * (80 + (i * 7919) % 50) / 100),
        min_duration_s: 60,
        max_duration_s: 3600 * (1 + i % 168),
        addrs: vec!["/ip4/203.0.113.7/tcp/4747".into(), "/ip4/203.0.113.7/udp/4747/quic-v1".into()],
    }
}
