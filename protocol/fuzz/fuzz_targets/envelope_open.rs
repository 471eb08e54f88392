//! Envelope bytes from a peer: `RawEnvelope::parse`, then `envelope::open::<T>` for every body
//! type. Nothing may panic. When an envelope opens: its parts agree with `parse`, an opened
//! offer can be validated, and the body re-sealed by a fixed key opens again to an equal body.
//!
//! Random bytes almost never carry a valid signature, so every envelope that parses is also
//! re-signed by the fixed key (same kind, same body bytes) and opened again: that takes the
//! fuzzer's bodies through the whole of `open` (signature, decode, signer check) and into
//! `Offer::validate`.
#![no_main]

use ed25519_dalek::Signer;
use gpumesh_protocol::envelope::{self, Body, RawEnvelope};
use gpumesh_protocol::lease::messages::{LeaseGrant, LeaseReject, LeaseRelease, LeaseRequest, UsageReceipt};
use gpumesh_protocol::{Invalid, Offer, Withdrawal};
use gpumesh_protocol_fuzz::{ctx, fixed_key, id_of, reseal_opens};
use libfuzzer_sys::fuzz_target;

fn check<T: Body + PartialEq + std::fmt::Debug>(
    data: &[u8],
    raw: &Result<RawEnvelope<'_>, Invalid>,
) -> Option<T> {
    let opened = envelope::open::<T>(data);
    match (raw, &opened) {
        (Err(e), Err(e2)) => assert_eq!(e, e2, "open and parse refuse for different reasons"),
        (Err(e), Ok(_)) => panic!("open accepted what parse refused ({e})"),
        (Ok(raw), Ok(v)) => {
            assert_eq!(raw.kind, T::KIND);
            assert_eq!(v.signer(), &raw.signer);
            assert_eq!(v.body().claimed_signer(), &raw.signer);
            assert_eq!(v.bytes(), data);
            assert!(raw.verify_signature().is_ok());
            assert!(data.len() <= T::KIND.max_envelope());
        }
        (Ok(raw), Err(Invalid::WrongKind { expected, got })) => {
            assert_eq!((*expected, *got), (T::KIND, raw.kind));
            assert_ne!(raw.kind, T::KIND);
        }
        (Ok(raw), Err(_)) => assert_eq!(raw.kind, T::KIND, "a kind mismatch must be reported as WrongKind"),
    }
    let v = opened.ok()?.into_body();
    reseal_opens(&v);
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    open_all(data);
    // The same kind and body, signed by the fixed key.
    if let Ok(r) = RawEnvelope::parse(data) {
        let k = fixed_key();
        let mut msg = r.kind.domain_tag().to_vec();
        msg.extend_from_slice(r.body);
        let sig = k.sign(&msg).to_bytes();
        let resigned = envelope::assemble(r.kind, &id_of(&k), r.body, &sig);
        open_all(&resigned);
    }
});

fn open_all(data: &[u8]) {
    let raw = RawEnvelope::parse(data);
    if let Ok(r) = &raw {
        // Every part is borrowed from the input, and a re-assembled envelope parses the same.
        let again = envelope::assemble(r.kind, &r.signer, r.body, &r.signature);
        let r2 = RawEnvelope::parse(&again).expect("a re-assembled envelope parses");
        assert_eq!((r2.kind, r2.signer, r2.body, r2.signature), (r.kind, r.signer, r.body, r.signature));
        assert_eq!(envelope::peek_kind(data), Ok(r.kind));
    }
    if let Some(offer) = check::<Offer>(data, &raw) {
        let _ = offer.validate(&ctx());
        let _ = offer.validate_fields();
        let _ = offer.is_expired(ctx().now);
    }
    if let Some(w) = check::<Withdrawal>(data, &raw) {
        let _ = w.validate(&ctx());
    }
    check::<LeaseRequest>(data, &raw);
    check::<LeaseGrant>(data, &raw);
    check::<LeaseReject>(data, &raw);
    check::<LeaseRelease>(data, &raw);
    check::<UsageReceipt>(data, &raw);
}
