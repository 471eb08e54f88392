//! Ingest: offers per second through decode → verify → validate → index on one core, over
//! distinct signed offers, against ed25519-dalek's `verify_strict` alone over the same bytes.

use crate::offers;
use crate::{Args, SuiteResult};
use anyhow::Result;
use ed25519_dalek::{Signature, VerifyingKey};
use gpumesh_protocol::envelope::{self, KeyCache, RawEnvelope};
use gpumesh_protocol::{BookConfig, Offer, OfferBook, Timestamp, ValidationContext};
use serde_json::json;
use std::hint::black_box;
use std::time::Instant;

const NET: &str = "bench-ingest";

pub fn run(args: &Args) -> Result<SuiteResult> {
    let n = if args.quick { 5_000 } else { 20_000 };
    let providers = 500u64;
    let now = Timestamp(1_767_225_600_000);
    let keys: Vec<_> = (0..providers).map(offers::key).collect();
    let envs: Vec<Vec<u8>> = (0..n as u64)
        .map(|i| {
            let k = &keys[(i % providers) as usize];
            envelope::seal(k, &offers::offer(k, NET, i, i / providers, i + 1, now))
        })
        .collect();
    // Baseline inputs: the parts of each envelope, split beforehand (not timed).
    let parts: Vec<([u8; 32], Vec<u8>, [u8; 64])> = envs
        .iter()
        .map(|e| {
            let raw = RawEnvelope::parse(e).expect("our own envelope parses");
            (*raw.signer.as_bytes(), raw.signed_bytes(), raw.signature)
        })
        .collect();
    let ctx = ValidationContext { network: NET, now, max_clock_skew_ms: 30_000, max_ttl_ms: 3_600_000 };

    let mut best_base = f64::MAX;
    let mut best_cached = f64::MAX;
    let mut best_ours = f64::MAX;
    let cached_keys: Vec<VerifyingKey> =
        parts.iter().map(|(k, _, _)| VerifyingKey::from_bytes(k).expect("valid key")).collect();
    // Alternate the two a few times and keep each one's best run (least disturbed by noise).
    for _ in 0..3 {
        let t = Instant::now();
        for (key, msg, sig) in &parts {
            let vk = VerifyingKey::from_bytes(key).expect("valid key");
            vk.verify_strict(black_box(msg), &Signature::from_bytes(sig)).expect("valid signature");
        }
        best_base = best_base.min(t.elapsed().as_secs_f64());

        // The signature check alone, keys decompressed beforehand (a lower bound no
        // verifier of raw bytes reaches).
        let t = Instant::now();
        for ((_, msg, sig), vk) in parts.iter().zip(&cached_keys) {
            vk.verify_strict(black_box(msg), &Signature::from_bytes(sig)).expect("valid signature");
        }
        best_cached = best_cached.min(t.elapsed().as_secs_f64());

        let mut book =
            OfferBook::new(BookConfig { max_offers_per_provider: 100_000, ..BookConfig::default() });
        let mut keys = KeyCache::new(8192);
        let t = Instant::now();
        for e in &envs {
            let raw = RawEnvelope::parse(e).expect("parses");
            let offer = envelope::open_cached::<Offer>(e, raw, &mut keys).expect("verifies");
            offer.validate(&ctx).expect("valid");
            book.insert(offer, now).expect("new");
        }
        best_ours = best_ours.min(t.elapsed().as_secs_f64());
        black_box(book.len());
    }
    let ours_rate = n as f64 / best_ours;
    let base_rate = n as f64 / best_base;
    let ratio = ours_rate / base_rate;
    Ok(SuiteResult {
        suite: "ingest",
        ours: json!({"offers_per_s": ours_rate, "us_per_offer": 1e6 / ours_rate}),
        baseline: json!({"verifies_per_s": base_rate, "us_per_verify": 1e6 / base_rate,
                         "predecompressed_keys": {"verifies_per_s": n as f64 / best_cached, "us_per_verify": 1e6 * best_cached / n as f64}}),
        ratio,
        headline: "offers/s through parse+verify_strict+decode+validate+index / verify_strict/s (higher is better)".into(),
        goal: "ratio >= 1.0".into(),
        goal_met: ratio >= 1.0,
        params: json!({"offers": n, "providers": providers, "threads": 1, "runs": 3}),
        notes: vec![
            "the node path: each offer verified strictly, signer keys decompressed once per provider (KeyCache)".into(),
            "the baseline verifies raw bytes: it decompresses the signer key of every message, as any verifier of bytes \
             must; baseline.predecompressed_keys is the bare signature check with keys decompressed beforehand"
                .into(),
            "no batch verification: ed25519-dalek's verify_batch is not equivalent to verify_strict for \
             signatures with small-order components (see docs/performance.md), so every offer is verified strictly"
                .into(),
        ],
    })
}
