//! The offer book's rules: latest sequence wins, withdrawals and tombstones, caps, expiry.

mod common;
use common::*;
use gpumesh_protocol::*;

const NOW: Timestamp = Timestamp(1_700_000_000_000);

fn sealed(o: Offer) -> Verified<Offer> {
    Verified::seal(&key(1), o)
}

fn withdrawal(offer_id: OfferId, seq: u64) -> Verified<Withdrawal> {
    let k = key(1);
    Verified::seal(
        &k,
        Withdrawal {
            v: PROTOCOL_VERSION,
            network: NET.into(),
            offer_id,
            provider: id_of(&k),
            seq,
            issued_at: NOW,
        },
    )
}

#[test]
fn newer_sequence_replaces_older_and_older_is_stale() {
    let mut b = OfferBook::new(BookConfig::default());
    let o1 = offer(&key(1), "H100-SXM-80GB", 1, NOW);
    let id = o1.offer_id;
    assert_eq!(b.insert(sealed(o1.clone()), NOW), Ok(BookChange::Added(id)));
    assert_eq!(b.insert(sealed(o1.clone()), NOW), Err(Invalid::Duplicate));
    let mut o3 = o1.clone();
    o3.seq = 3;
    o3.gpu_free = 2;
    assert_eq!(b.insert(sealed(o3), NOW), Ok(BookChange::Replaced(id)));
    let mut o2 = o1;
    o2.seq = 2;
    assert_eq!(b.insert(sealed(o2), NOW), Err(Invalid::StaleSequence { seq: 2, latest: 3 }));
    assert_eq!(b.get(&id, NOW).unwrap().gpu_free, 2);
}

#[test]
fn withdrawal_removes_and_blocks_older_copies() {
    let mut b = OfferBook::new(BookConfig::default());
    let o = offer(&key(1), "H100-SXM-80GB", 5, NOW);
    let id = o.offer_id;
    b.insert(sealed(o.clone()), NOW).unwrap();
    assert_eq!(b.withdraw(&withdrawal(id, 4), NOW), Err(Invalid::StaleSequence { seq: 4, latest: 5 }));
    assert_eq!(b.withdraw(&withdrawal(id, 6), NOW), Ok(BookChange::Removed(id)));
    assert!(b.get(&id, NOW).is_none());
    // A late gossip copy of the withdrawn offer does not come back…
    assert!(matches!(b.insert(sealed(o.clone()), NOW), Err(Invalid::StaleSequence { .. })));
    // …but a newer offer from the provider does.
    let mut o7 = o;
    o7.seq = 7;
    assert_eq!(b.insert(sealed(o7), NOW), Ok(BookChange::Added(id)));
}

#[test]
fn a_withdrawal_before_its_offer_leaves_a_tombstone() {
    let mut b = OfferBook::new(BookConfig::default());
    let o = offer(&key(1), "H100-SXM-80GB", 5, NOW);
    assert_eq!(b.withdraw(&withdrawal(o.offer_id, 6), NOW), Ok(BookChange::Tombstoned(o.offer_id)));
    assert!(b.insert(sealed(o), NOW).is_err());
    assert!(b.is_empty());
}

#[test]
fn a_withdrawal_of_someone_elses_offer_is_not_owner() {
    let mut b = OfferBook::new(BookConfig::default());
    let victim = key(2);
    let o = offer(&victim, "H100-SXM-80GB", 1, NOW);
    let id = o.offer_id;
    b.insert(Verified::seal(&victim, o), NOW).unwrap();
    assert_eq!(b.withdraw(&withdrawal(id, 9), NOW), Err(Invalid::NotOwner));
    assert!(b.get(&id, NOW).is_some());
}

#[test]
fn per_provider_cap_holds() {
    let mut b = OfferBook::new(BookConfig { max_offers_per_provider: 3, ..BookConfig::default() });
    for i in 0..3 {
        b.insert(sealed(offer(&key(1), &format!("GPU-{i}"), 1, NOW)), NOW).unwrap();
    }
    assert_eq!(b.insert(sealed(offer(&key(1), "GPU-9", 1, NOW)), NOW), Err(Invalid::ProviderCapReached));
    // Updates of held offers still go through.
    assert!(b.insert(sealed(offer(&key(1), "GPU-0", 2, NOW)), NOW).is_ok());
    // Another provider is not affected.
    let k2 = key(2);
    assert!(b.insert(Verified::seal(&k2, offer(&k2, "GPU-9", 1, NOW)), NOW).is_ok());
    assert_eq!(b.len(), 4);
}

#[test]
fn expired_offers_are_hidden_at_read_time_and_swept() {
    let mut b = OfferBook::new(BookConfig::default());
    let o = offer(&key(1), "H100-SXM-80GB", 1, NOW);
    let id = o.offer_id;
    let exp = o.expires_at;
    b.insert(sealed(o), NOW).unwrap();
    assert!(b.get(&id, exp).is_none());
    assert_eq!(b.live(exp).count(), 0);
    assert_eq!(b.len(), 1);
    assert_eq!(b.sweep(exp), vec![id]);
    assert!(b.is_empty());
    assert_eq!(b.providers(), 0);
}
