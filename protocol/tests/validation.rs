//! Offer and withdrawal validation: one assertion per refusal cause.

mod common;
use common::*;
use gpumesh_protocol::*;

const NOW: Timestamp = Timestamp(1_700_000_000_000);

fn check(mutate: impl FnOnce(&mut Offer)) -> Result<(), Invalid> {
    let mut o = offer(&key(1), "H100-SXM-80GB", 1, NOW);
    mutate(&mut o);
    o.validate(&ctx(NOW))
}

#[test]
fn a_good_offer_is_valid() {
    assert_eq!(check(|_| {}), Ok(()));
}

#[test]
fn each_bad_field_has_its_own_reason() {
    assert_eq!(
        check(|o| o.network = "mainnet".into()),
        Err(Invalid::WrongNetwork { expected: NET.into(), got: "mainnet".into() })
    );
    assert_eq!(check(|o| o.v = 2), Err(Invalid::UnsupportedVersion(2)));
    assert!(matches!(
        check(|o| {
            o.issued_at = Timestamp(NOW.0 - 20 * 60_000);
            o.expires_at = Timestamp(NOW.0 - 1);
        }),
        Err(Invalid::Expired { .. })
    ));
    assert!(matches!(
        check(|o| {
            o.issued_at = NOW.plus_millis(31_000);
            o.expires_at = NOW.plus_millis(600_000);
        }),
        Err(Invalid::IssuedInFuture { .. })
    ));
    assert!(matches!(
        check(|o| o.expires_at = NOW.plus_millis(2 * HOUR_MS)),
        Err(Invalid::ExpiryTooFarAhead { .. })
    ));
    assert!(matches!(
        check(|o| o.expires_at = Timestamp(NOW.0 - 1)),
        Err(Invalid::ExpiresBeforeIssued { .. })
    ));
    assert_eq!(check(|o| o.gpu_total = 0), Err(Invalid::ZeroGpus));
    assert_eq!(check(|o| o.gpu_free = 9), Err(Invalid::FreeExceedsTotal { free: 9, total: 8 }));
    // The offer id covers the VRAM, so fix it up to reach the VRAM rule.
    assert_eq!(
        check(|o| {
            o.gpu.vram_mib = 0;
            o.offer_id = OfferId::derive(&o.provider, &o.gpu.group_key());
        }),
        Err(Invalid::ZeroVram)
    );
    assert_eq!(check(|o| o.price = Price(0)), Err(Invalid::ZeroPrice));
    assert_eq!(
        check(|o| o.min_duration_s = o.max_duration_s + 1),
        Err(Invalid::MinDurationExceedsMax { min_s: 86401, max_s: 86400 })
    );
    assert_eq!(check(|o| o.max_duration_s = 0), Err(Invalid::ZeroDuration));
    assert_eq!(check(|o| o.offer_id = OfferId::from_bytes([1; 8])), Err(Invalid::OfferIdMismatch));
    assert_eq!(check(|o| o.host.region = "not a region".into()), Err(Invalid::InvalidField("host.region")));
    assert_eq!(check(|o| o.addrs = vec!["a".into(); 9]), Err(Invalid::FieldTooLong("addrs")));
    assert_eq!(check(|o| o.gpu.model = "x".repeat(65)), Err(Invalid::FieldTooLong("gpu.model")));
}

#[test]
fn clock_skew_allowance_is_a_parameter() {
    let o = offer(&key(1), "H100-SXM-80GB", 1, NOW.plus_millis(20_000));
    let mut c = ctx(NOW);
    assert_eq!(o.validate(&c), Ok(()));
    c.max_clock_skew_ms = 10_000;
    assert!(matches!(o.validate(&c), Err(Invalid::IssuedInFuture { .. })));
}

#[test]
fn withdrawals_check_network_version_and_age() {
    let w = |network: &str, v: u32, issued_at: Timestamp| Withdrawal {
        v,
        network: network.into(),
        offer_id: OfferId::from_bytes([0; 8]),
        provider: id_of(&key(1)),
        seq: 2,
        issued_at,
    };
    assert_eq!(w(NET, 1, NOW).validate(&ctx(NOW)), Ok(()));
    assert!(matches!(w("x", 1, NOW).validate(&ctx(NOW)), Err(Invalid::WrongNetwork { .. })));
    assert_eq!(w(NET, 9, NOW).validate(&ctx(NOW)), Err(Invalid::UnsupportedVersion(9)));
    assert!(matches!(
        w(NET, 1, Timestamp(NOW.0 - 2 * HOUR_MS)).validate(&ctx(NOW)),
        Err(Invalid::Expired { .. })
    ));
}

#[test]
fn only_sender_faults_are_penalised() {
    assert!(Invalid::BadSignature.is_peer_fault());
    assert!(Invalid::WrongNetwork { expected: "a".into(), got: "b".into() }.is_peer_fault());
    assert!(!Invalid::Duplicate.is_peer_fault());
    assert!(!Invalid::StaleSequence { seq: 1, latest: 2 }.is_peer_fault());
    assert!(!Invalid::ProviderCapReached.is_peer_fault());
}
