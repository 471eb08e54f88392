//! Lease engines for the lease tests: a provider with one group of H100s, and what it says.

use super::*;
use gpumesh_protocol::lease::GpuUnit;
use gpumesh_protocol::lease::provider::*;
use gpumesh_protocol::wire::LeaseRpcReply;
use gpumesh_protocol::{NodeId, OfferId, Price, Timestamp};

pub const NOW: Timestamp = Timestamp(1_700_000_000_000);

/// `n` GPUs of one H100 group of `provider`, $2.00 per GPU-hour, leases of 60 s to 1 h.
pub fn group(provider: &NodeId, n: u32) -> GpuGroup {
    let gpu = gpu("H100-SXM-80GB", 81559);
    GpuGroup {
        offer_id: OfferId::derive(provider, &gpu.group_key()),
        gpus: (0..n).map(|i| GpuUnit { uuid: format!("GPU-{i}"), index: i }).collect(),
        price: Price(2_000_000),
        min_duration_s: 60,
        max_duration_s: 3600,
    }
}

/// A provider engine signing with `k` on the test network (30 s clock skew, 60 s replay
/// window), with this policy and with or without a start hook; no groups yet.
pub fn provider_engine(k: &SigningKey, hook: bool, policy: Policy) -> ProviderEngine {
    ProviderEngine::new(
        k.clone(),
        ProviderConfig {
            network: NET.into(),
            max_clock_skew_ms: 30_000,
            request_max_age_ms: 60_000,
            policy,
            start_hook: hook,
        },
    )
}

/// A provider engine (key 100) offering `n` GPUs, with or without a start hook.
pub fn provider(n: u32, hook: bool) -> (ProviderEngine, GpuGroup) {
    let k = key(100);
    let mut e = provider_engine(&k, hook, Policy::default());
    let g = group(&id_of(&k), n);
    e.handle(ProviderInput::SetGroups(vec![g.clone()]), NOW);
    (e, g)
}

/// The first reply among a provider's outputs.
pub fn reply_of(out: &[ProviderOutput]) -> &LeaseRpcReply {
    out.iter()
        .find_map(|o| match o {
            ProviderOutput::Reply { reply, .. } => Some(reply),
            _ => None,
        })
        .expect("a reply")
}
