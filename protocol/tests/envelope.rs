//! The signed envelope: sealing, opening, and every way a forged or broken one is refused.

mod common;
use common::*;
use gpumesh_protocol::envelope::{self, Kind, RawEnvelope, assemble, encode_body, open};
use gpumesh_protocol::*;

#[test]
fn sealed_offer_opens_to_the_same_offer() {
    let k = key(1);
    let o = offer(&k, "H100-SXM-80GB", 1, Timestamp(1_700_000_000_000));
    let bytes = envelope::seal(&k, &o);
    let v = open::<Offer>(&bytes).unwrap();
    assert_eq!(v.body(), &o);
    assert_eq!(v.signer(), &id_of(&k));
    assert_eq!(v.bytes(), &bytes[..]);
}

#[test]
fn a_flipped_bit_anywhere_in_body_or_signature_fails_verification() {
    let k = key(1);
    let bytes = envelope::seal(&k, &offer(&k, "H100-SXM-80GB", 1, Timestamp(1)));
    let raw = RawEnvelope::parse(&bytes).unwrap();
    let body_start = bytes.len() - 64 - 2 - raw.body.len();
    for i in (body_start..bytes.len()).step_by(7) {
        let mut t = bytes.clone();
        t[i] ^= 0x01;
        let err = open::<Offer>(&t).unwrap_err();
        assert!(matches!(err, Invalid::BadSignature | Invalid::MalformedEnvelope(_)), "byte {i}: {err:?}");
    }
}

#[test]
fn a_valid_signature_over_other_bytes_is_refused() {
    let k = key(1);
    let a = envelope::seal(&k, &offer(&k, "H100-SXM-80GB", 1, Timestamp(1)));
    let b = envelope::seal(&k, &offer(&k, "H100-SXM-80GB", 2, Timestamp(1)));
    let ra = RawEnvelope::parse(&a).unwrap();
    let rb = RawEnvelope::parse(&b).unwrap();
    // Body of b with the signature of a.
    let spliced = assemble(Kind::Offer, &ra.signer, rb.body, &ra.signature);
    assert_eq!(open::<Offer>(&spliced).unwrap_err(), Invalid::BadSignature);
}

#[test]
fn another_nodes_id_as_provider_is_a_signer_mismatch() {
    let k = key(1);
    let victim = key(2);
    let o = offer(&victim, "H100-SXM-80GB", 1, Timestamp(1));
    let bytes = envelope::seal(&k, &o);
    assert_eq!(open::<Offer>(&bytes).unwrap_err(), Invalid::SignerMismatch);
}

#[test]
fn a_withdrawal_is_not_an_offer() {
    let k = key(1);
    let w = Withdrawal {
        v: PROTOCOL_VERSION,
        network: NET.into(),
        offer_id: OfferId::from_bytes([0; 8]),
        provider: id_of(&k),
        seq: 1,
        issued_at: Timestamp(1),
    };
    let bytes = envelope::seal(&k, &w);
    assert_eq!(
        open::<Offer>(&bytes).unwrap_err(),
        Invalid::WrongKind { expected: Kind::Offer, got: Kind::Withdrawal }
    );
    assert!(open::<Withdrawal>(&bytes).is_ok());
}

#[test]
fn the_same_body_signed_under_another_domain_tag_does_not_verify() {
    // Sign the offer body as if it were a withdrawal, then relabel the kind as offer.
    let k = key(1);
    let o = offer(&k, "H100-SXM-80GB", 1, Timestamp(1));
    let body = encode_body(&o);
    let mut msg = Kind::Withdrawal.domain_tag().to_vec();
    msg.extend_from_slice(&body);
    use ed25519_dalek::Signer;
    let sig = k.sign(&msg).to_bytes();
    let bytes = assemble(Kind::Offer, &id_of(&k), &body, &sig);
    assert_eq!(open::<Offer>(&bytes).unwrap_err(), Invalid::BadSignature);
}

#[test]
fn oversized_envelopes_are_refused_before_parsing() {
    let junk = vec![0x84u8; 20_000];
    assert!(matches!(RawEnvelope::parse(&junk), Err(Invalid::Oversized { .. })));
    // An offer-kind envelope above the gossip limit but below the lease limit.
    let k = key(1);
    let mut o = offer(&k, "H100-SXM-80GB", 1, Timestamp(1));
    o.addrs = vec!["x".repeat(5000)];
    let bytes = envelope::seal(&k, &o);
    assert!(matches!(open::<Offer>(&bytes), Err(Invalid::Oversized { max: 4096, .. })));
}

#[test]
fn truncated_and_random_bytes_are_malformed_not_panics() {
    let k = key(1);
    let bytes = envelope::seal(&k, &offer(&k, "H100-SXM-80GB", 1, Timestamp(1)));
    for n in 0..bytes.len() {
        assert!(open::<Offer>(&bytes[..n]).is_err());
    }
    let mut rng = Rng::new(7);
    for _ in 0..2000 {
        let len = rng.below(600) as usize;
        let v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        assert!(open::<Offer>(&v).is_err());
    }
    let mut extra = bytes.clone();
    extra.push(0);
    assert_eq!(
        open::<Offer>(&extra).unwrap_err(),
        Invalid::MalformedEnvelope("trailing bytes after the envelope")
    );
}

#[test]
fn unknown_kinds_are_refused() {
    let k = key(1);
    let bytes = assemble(Kind::Offer, &id_of(&k), &[0xa0], &[0; 64]);
    let mut t = bytes.clone();
    t[1] = 0x09; // kind 9 does not exist
    assert_eq!(RawEnvelope::parse(&t).unwrap_err(), Invalid::UnknownKind(9));
}

#[test]
fn valid_cbor_of_the_wrong_shape_is_a_malformed_body() {
    let k = key(1);
    // A correctly signed envelope whose body is a CBOR map with unexpected keys.
    #[derive(serde::Serialize)]
    struct NotAnOffer {
        hello: u32,
    }
    let body = encode_body(&NotAnOffer { hello: 1 });
    let mut msg = Kind::Offer.domain_tag().to_vec();
    msg.extend_from_slice(&body);
    use ed25519_dalek::Signer;
    let sig = k.sign(&msg).to_bytes();
    let bytes = assemble(Kind::Offer, &id_of(&k), &body, &sig);
    assert!(matches!(open::<Offer>(&bytes), Err(Invalid::MalformedBody(_))));
}

/// A body whose array head promises more items than follow is not well-formed CBOR. serde
/// over ciborium alone took it: the compute capability reads its two items, and the array's
/// "third" is the next map key, read again as the key.
#[test]
fn an_array_head_promising_more_items_than_follow_is_a_malformed_body() {
    let k = key(1);
    let o = offer(&k, "H100-SXM-80GB", 1, Timestamp(1));
    assert!(o.gpu.compute_capability.is_some());
    let mut body = encode_body(&o);
    let key_name = b"compute_capability";
    let at = body.windows(key_name.len()).position(|w| w == key_name).unwrap() + key_name.len();
    assert_eq!(body[at], 0x82, "an array of two");
    body[at] = 0x83;
    assert!(matches!(envelope::decode_body::<Offer>(&body), Err(Invalid::MalformedBody(_))));
    let mut msg = Kind::Offer.domain_tag().to_vec();
    msg.extend_from_slice(&body);
    use ed25519_dalek::Signer;
    let sig = k.sign(&msg).to_bytes();
    let bytes = assemble(Kind::Offer, &id_of(&k), &body, &sig);
    assert!(matches!(open::<Offer>(&bytes), Err(Invalid::MalformedBody(_))));
}

#[test]
fn a_small_order_signer_key_is_refused() {
    // The identity point encodes as 0x01 followed by zeros: a weak key that strict
    // verification must refuse whatever the signature.
    let mut weak = [0u8; 32];
    weak[0] = 1;
    let bytes = assemble(Kind::Offer, &NodeId::from_bytes(weak), &[0xa0], &[0; 64]);
    assert!(matches!(open::<Offer>(&bytes), Err(Invalid::BadSignature | Invalid::BadSignerKey)));
}

/// Signatures built to pass or fail each test `verify_strict` makes, for checking that the
/// envelope's own strict verification (which skips decompressing R) decides every one the same.
mod strict {
    use super::*;
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT as B, EIGHT_TORSION};
    use curve25519_dalek::{EdwardsPoint, Scalar};
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    use sha2::{Digest, Sha512};

    const BODY: &[u8] = b"\xa1\x61v\x01 any bytes: the signature is checked before the body is decoded";

    fn message() -> Vec<u8> {
        [Kind::Offer.domain_tag(), BODY].concat()
    }

    /// k = SHA-512(R || A || M) reduced mod l, as the verifier computes it.
    fn challenge(r: &[u8; 32], a: &[u8; 32]) -> Scalar {
        let mut h = Sha512::new();
        h.update(r);
        h.update(a);
        h.update(message());
        let wide: [u8; 64] = h.finalize().into();
        Scalar::from_bytes_mod_order_wide(&wide)
    }

    fn signature(r: &[u8; 32], s: &[u8; 32]) -> [u8; 64] {
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(r);
        sig[32..].copy_from_slice(s);
        sig
    }

    /// The envelope's decision and ed25519-dalek's `verify_strict` on the same bytes; panics
    /// if they differ. `true` means accepted.
    fn decide(signer: &[u8; 32], sig: &[u8; 64]) -> bool {
        let bytes = assemble(Kind::Offer, &NodeId::from_bytes(*signer), BODY, sig);
        let ours = RawEnvelope::parse(&bytes).unwrap().verify_signature();
        let dalek = VerifyingKey::from_bytes(signer)
            .map(|k| k.verify_strict(&message(), &Signature::from_bytes(sig)).is_ok())
            .unwrap_or(false);
        assert_eq!(ours.is_ok(), dalek, "envelope {ours:?} but verify_strict {dalek}");
        if let Err(e) = ours {
            assert!(matches!(e, Invalid::BadSignature | Invalid::BadSignerKey), "{e:?}");
        }
        dalek
    }

    /// Whether the plain (cofactorless, non-strict) check accepts: shows that a forged case
    /// depends on the strict tests.
    fn lax(signer: &[u8; 32], sig: &[u8; 64]) -> bool {
        VerifyingKey::from_bytes(signer).unwrap().verify(&message(), &Signature::from_bytes(sig)).is_ok()
    }

    /// R = [r]B + `torsion` and s = r + k*a for the key of `k`.
    fn sign_with_r(k: &SigningKey, r: Scalar, torsion: EdwardsPoint) -> [u8; 64] {
        let a = k.verifying_key().to_bytes();
        let big_r = (B * r + torsion).compress().to_bytes();
        let s = r + challenge(&big_r, &a) * k.to_scalar();
        signature(&big_r, &s.to_bytes())
    }

    #[test]
    fn an_honest_signature_is_accepted_by_both() {
        let k = key(7);
        use ed25519_dalek::Signer;
        let sig = k.sign(&message()).to_bytes();
        assert!(decide(&k.verifying_key().to_bytes(), &sig));
        let sig = sign_with_r(&k, Scalar::from(12345u64), EdwardsPoint::default());
        assert!(decide(&k.verifying_key().to_bytes(), &sig));
    }

    #[test]
    fn a_small_order_r_is_refused_by_both_even_where_the_equation_holds() {
        let k = key(7);
        let a = k.verifying_key().to_bytes();
        for (i, t) in EIGHT_TORSION.iter().enumerate() {
            // R = T, s = k*a: [s]B - [k]A is the identity, so the equation holds for T = 0.
            let r = t.compress().to_bytes();
            let sig = signature(&r, &(challenge(&r, &a) * k.to_scalar()).to_bytes());
            if i == 0 {
                assert!(lax(&a, &sig), "the identity as R passes the plain check");
            }
            assert!(!decide(&a, &sig), "torsion point {i}");
        }
    }

    #[test]
    fn an_r_with_a_torsion_component_is_refused_by_both() {
        let k = key(7);
        for t in &EIGHT_TORSION[1..] {
            let sig = sign_with_r(&k, Scalar::from(99u64), *t);
            assert!(!decide(&k.verifying_key().to_bytes(), &sig));
        }
    }

    #[test]
    fn a_small_order_key_is_refused_by_both_even_where_the_equation_holds() {
        // A = the identity, R = the identity, s = 0: [0]B - [k]A = R for every message.
        let identity = EdwardsPoint::default().compress().to_bytes();
        let sig = signature(&identity, &[0; 32]);
        assert!(lax(&identity, &sig));
        assert!(!decide(&identity, &sig));
        // A = a point of order 8: R = [r]B - [g]A holds when k = g mod 8; try r until it does.
        let a_point = EIGHT_TORSION[1];
        let a = a_point.compress().to_bytes();
        let mut found = 0;
        for r in 1..200u64 {
            for g in 0..8u64 {
                let big_r = (B * Scalar::from(r) - a_point * Scalar::from(g)).compress().to_bytes();
                let k = challenge(&big_r, &a);
                if k.to_bytes()[0] % 8 != g as u8 {
                    continue;
                }
                let sig = signature(&big_r, &Scalar::from(r).to_bytes());
                assert!(lax(&a, &sig), "r {r}, g {g}");
                assert!(!decide(&a, &sig));
                found += 1;
            }
        }
        assert!(found > 10, "only {found} forgeries found to test");
    }

    #[test]
    fn non_canonical_encodings_of_s_and_r_are_refused_by_both() {
        let k = key(7);
        let a = k.verifying_key().to_bytes();
        let honest = sign_with_r(&k, Scalar::from(5u64), EdwardsPoint::default());
        // s + l: the same scalar, not reduced.
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut s_plus_l = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = honest[32 + i] as u16 + l[i] as u16 + carry;
            s_plus_l[i] = v as u8;
            carry = v >> 8;
        }
        assert!(!decide(&a, &signature(honest[..32].try_into().unwrap(), &s_plus_l)));
        // R = the identity written as y = p + 1 (not reduced), with s = k*a.
        let mut y = [0xffu8; 32];
        y[0] = 0xee;
        y[31] = 0x7f;
        let sig = signature(&y, &(challenge(&y, &a) * k.to_scalar()).to_bytes());
        assert!(!decide(&a, &sig));
        // R bytes that are no curve point at all.
        let mut junk = [0u8; 32];
        junk[0] = 2;
        assert!(!decide(&a, &signature(&junk, &honest[32..].try_into().unwrap())));
    }
}
