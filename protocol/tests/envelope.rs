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

#[test]
fn a_small_order_signer_key_is_refused() {
    // The identity point encodes as 0x01 followed by zeros: a weak key that strict
    // verification must refuse whatever the signature.
    let mut weak = [0u8; 32];
    weak[0] = 1;
    let bytes = assemble(Kind::Offer, &NodeId::from_bytes(weak), &[0xa0], &[0; 64]);
    assert!(matches!(open::<Offer>(&bytes), Err(Invalid::BadSignature | Invalid::BadSignerKey)));
}
