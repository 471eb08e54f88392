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

    let cached_keys: Vec<VerifyingKey> =
        parts.iter().map(|(k, _, _)| VerifyingKey::from_bytes(k).expect("valid key")).collect();
    let baseline = || {
        let t = Instant::now();
        for (key, msg, sig) in &parts {
            let vk = VerifyingKey::from_bytes(key).expect("valid key");
            vk.verify_strict(black_box(msg), &Signature::from_bytes(sig)).expect("valid signature");
        }
        t.elapsed().as_secs_f64()
    };
    // dalek's verify_strict alone, keys decompressed beforehand.
    let predecompressed = || {
        let t = Instant::now();
        for ((_, msg, sig), vk) in parts.iter().zip(&cached_keys) {
            vk.verify_strict(black_box(msg), &Signature::from_bytes(sig)).expect("valid signature");
        }
        t.elapsed().as_secs_f64()
    };
    let fill = || {
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
        (t.elapsed().as_secs_f64(), book)
    };
    let ours = || {
        let (took, book) = fill();
        black_box(book.len());
        took
    };
    // Rounds of the two sides back to back, which goes first alternating: the ratio is the
    // median of each round's own ratio, so a slow spell of the shared machine falls on both
    // sides of the rounds it hits and is voted out of the rest.
    let rounds = if args.quick { 5 } else { 9 };
    let (mut base_t, mut ours_t, mut cached_t) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            ours_t.push(ours());
            base_t.push(baseline());
        } else {
            base_t.push(baseline());
            ours_t.push(ours());
        }
        cached_t.push(predecompressed());
    }
    // The same offers again, as a book sync with a peer that holds them sends them: the node
    // finds each one held byte for byte (`OfferBook::holds_copy`) and verifies none.
    let (_, held) = fill();
    let resync_t = best_of(3, || {
        let t = Instant::now();
        for e in &envs {
            assert!(held.holds_copy(black_box(e), now), "every offer is held");
        }
        t.elapsed().as_secs_f64()
    });
    let resync = resync_same_book(&held, now);
    let mut paired: Vec<f64> = base_t.iter().zip(&ours_t).map(|(b, o)| b / o).collect();
    paired.sort_by(f64::total_cmp);
    let ratio = paired[paired.len() / 2];
    let best = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
    let ours_rate = n as f64 / best(&ours_t);
    let base_rate = n as f64 / best(&base_t);
    let best_cached = best(&cached_t);
    Ok(SuiteResult {
        suite: "ingest",
        ours: json!({"offers_per_s": ours_rate, "us_per_offer": 1e6 / ours_rate,
                     "resync_of_held_offers": {"offers_per_s": n as f64 / resync_t, "us_per_offer": 1e6 * resync_t / n as f64},
                     "resync_same_book": resync}),
        baseline: json!({"verifies_per_s": base_rate, "us_per_verify": 1e6 / base_rate,
                         "predecompressed_keys": {"verifies_per_s": n as f64 / best_cached, "us_per_verify": 1e6 * best_cached / n as f64}}),
        ratio,
        headline: "offers/s through parse+verify+decode+validate+index / verify_strict/s, the median of the rounds' own ratios (higher is better)".into(),
        goal: "ratio >= 1.0".into(),
        goal_met: Some(ratio >= 1.0),
        params: json!({"offers": n, "providers": providers, "threads": 1, "rounds": rounds,
                       "round_ratios_sorted": paired, "ratio_of_best_rounds": ours_rate / base_rate}),
        notes: vec![
            "the node path: each offer verified strictly (envelope::strict_verify: verify_strict's decisions without decompressing R), signer keys decompressed once per provider (KeyCache)".into(),
            "the baseline verifies raw bytes with ed25519-dalek's verify_strict: it decompresses the signer key of every message, as any verifier of bytes \
             must; baseline.predecompressed_keys is the same verify_strict with keys decompressed beforehand"
                .into(),
            "rates are each side's best round; the ratio is the median of the rounds' ratios".into(),
            "ours.resync_of_held_offers: the same offers once more, as a book sync from a peer holding the same book delivers them; each is found held byte for byte and not verified again (best of 3)".into(),
            "ours.resync_same_book: a whole book sync between two peers holding the same offers, both sides' work (encode and decode every page, each offer found held); with_digest: the asking side sends its sync digest and the answer leaves out every range where the books agree, without_digest: every offer is sent, as /gpumesh/sync/1 did (best of 3 each)".into(),
            "no batch verification: ed25519-dalek's verify_batch is not equivalent to verify_strict for \
             signatures with small-order components (see docs/performance.md), so every offer is verified strictly"
                .into(),
        ],
    })
}

/// Both sides of a whole book sync between two peers that hold the same offers (`book`),
/// with the asking side's digest in each request and without it: wall time (best of 3),
/// pages, and the bytes of requests and answers.
fn resync_same_book(book: &OfferBook, now: Timestamp) -> serde_json::Value {
    use gpumesh_protocol::wire::{self, SyncAnswer, SyncAnswerRef, SyncRequest};
    use gpumesh_protocol::{Bytes, BytesRef, SyncDigest};
    let run = |with_digest: bool| {
        let (mut pages, mut bytes, mut after) = (0usize, 0usize, None);
        loop {
            // The asking side: its request, with its digest.
            let have = with_digest.then(|| Bytes(book.sync_digest().to_bytes()));
            let req = wire::encode(&SyncRequest { v: 1, network: NET.into(), after, have });
            // The answering side: decode, page, encode.
            let r = wire::decode::<SyncRequest>(&req, wire::MAX_SYNC_REQUEST).expect("decodes");
            let have = r.have.as_ref().map(|h| SyncDigest::from_bytes(&h.0).expect("2048 bytes"));
            let page = book.sync_page(
                r.after.as_ref(),
                have.as_ref(),
                now,
                wire::MAX_SYNC_OFFERS,
                wire::MAX_SYNC_ANSWER - 64,
                8,
            );
            let answer = wire::encode(&SyncAnswerRef {
                v: 1,
                offers: page.offers.into_iter().map(BytesRef).collect(),
                next: page.next,
            });
            // The asking side again: every offer in the answer is found held.
            let a = wire::decode::<SyncAnswer>(&answer, wire::MAX_SYNC_ANSWER).expect("decodes");
            for o in &a.offers {
                assert!(book.holds_copy(black_box(&o.0), now), "every offer is held");
            }
            pages += 1;
            bytes += req.len() + answer.len();
            match a.next {
                Some(n) => after = Some(n),
                None => return (pages, bytes),
            }
        }
    };
    let timed = |with_digest: bool| {
        let mut out = (0, 0);
        let t = best_of(3, || {
            let t = Instant::now();
            out = run(with_digest);
            t.elapsed().as_secs_f64()
        });
        (t, out.0, out.1)
    };
    let (t_with, pages_with, bytes_with) = timed(true);
    let (t_without, pages_without, bytes_without) = timed(false);
    json!({"with_digest": {"ms": t_with * 1e3, "pages": pages_with, "bytes": bytes_with},
           "without_digest": {"ms": t_without * 1e3, "pages": pages_without, "bytes": bytes_without},
           "time_ratio": t_with / t_without.max(1e-12)})
}

/// The shortest of `n` timings.
fn best_of(n: usize, mut f: impl FnMut() -> f64) -> f64 {
    (0..n).map(|_| f()).fold(f64::MAX, f64::min)
}
