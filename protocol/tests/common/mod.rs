//! Builders shared by the protocol's integration tests.
#![allow(dead_code)]

use gpumesh_protocol::*;

pub mod lease_rig;

pub const NET: &str = "testnet";
pub const HOUR_MS: u64 = 3_600_000;

pub fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

pub fn id_of(k: &SigningKey) -> NodeId {
    NodeId::from_bytes(k.verifying_key().to_bytes())
}

pub fn gpu(model: &str, vram_mib: u32) -> GpuSpec {
    GpuSpec {
        vendor: "nvidia".into(),
        model: model.into(),
        vram_mib,
        compute_capability: Some(ComputeCapability(9, 0)),
        interconnect: Interconnect::Sxm,
        cuda_version: Some("12.4".into()),
        driver_version: Some("550.54.15".into()),
    }
}

pub fn offer(k: &SigningKey, model: &str, seq: u64, now: Timestamp) -> Offer {
    let provider = id_of(k);
    let gpu = gpu(model, 81559);
    Offer {
        v: PROTOCOL_VERSION,
        network: NET.into(),
        offer_id: OfferId::derive(&provider, &gpu.group_key()),
        provider,
        seq,
        issued_at: now,
        expires_at: now.plus_millis(10 * 60_000),
        gpu,
        gpu_total: 8,
        gpu_free: 8,
        host: HostSpec { cpu_cores: 64, ram_mib: 512 * 1024, disk_gib: 2000, region: "us-east".into() },
        price: Price(2_350_000),
        min_duration_s: 60,
        max_duration_s: 24 * 3600,
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
    }
}

pub fn ctx(now: Timestamp) -> ValidationContext<'static> {
    ValidationContext { network: NET, now, max_clock_skew_ms: 30_000, max_ttl_ms: HOUR_MS }
}

/// A tiny deterministic PRNG (xorshift64*) for seeded simulations.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn bytes16(&mut self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next().to_le_bytes());
        b[8..].copy_from_slice(&self.next().to_le_bytes());
        b
    }
}
