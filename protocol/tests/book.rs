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
fn sync_pages_cover_every_live_offer_once_in_id_order() {
    let mut b = OfferBook::new(BookConfig::default());
    let mut live = Vec::new();
    for i in 0..25u8 {
        let k = key(100 + i);
        let mut o = offer(&k, "H100-SXM-80GB", 1, NOW);
        if i == 3 {
            o.expires_at = NOW.plus_millis(1);
        }
        let v = Verified::seal(&k, o);
        if i != 3 {
            live.push((v.offer_id, v.bytes().to_vec()));
        }
        b.insert(v, NOW).unwrap();
    }
    live.sort();
    let later = NOW.plus_millis(2); // offer 3 has expired by then
    let want: Vec<Vec<u8>> = live.iter().map(|(_, b)| b.clone()).collect();

    // Pages of at most 7 offers.
    let (mut got, mut after, mut pages) = (Vec::new(), None, Vec::new());
    loop {
        let page = b.sync_page(after.as_ref(), None, later, 7, usize::MAX, 8);
        pages.push(page.offers.len());
        got.extend(page.offers.iter().map(|o| o.to_vec()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(pages, vec![7, 7, 7, 3]);
    assert_eq!(got, want, "every live offer once, lowest id first, the expired one left out");

    // A byte budget that holds two offers and a half cuts pages at two.
    let size = want[0].len() + 8;
    let page = b.sync_page(None, None, later, 4096, size * 5 / 2, 8);
    assert_eq!(page.offers, want[..2].iter().map(|o| &o[..]).collect::<Vec<_>>());
    assert_eq!(page.next, Some(live[1].0));
    // A budget smaller than one offer still moves on by one.
    let page = b.sync_page(Some(&live[1].0), None, later, 4096, 1, 8);
    assert_eq!(page.offers, vec![&want[2][..]]);
    assert_eq!(page.next, Some(live[2].0));
    // Past the last id: an empty last page.
    let page = b.sync_page(Some(&live[23].0), None, later, 7, usize::MAX, 8);
    assert!(page.offers.is_empty() && page.next.is_none());
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

#[test]
fn recorded_latencies_rank_and_filter_offers_held_before_and_after() {
    use gpumesh_protocol::query::Query;
    use gpumesh_protocol::rank::SortKey;
    let mut b = OfferBook::new(BookConfig::default());
    let (ka, kb, kc) = (key(1), key(2), key(3));
    let (a, bb, c) = (id_of(&ka), id_of(&kb), id_of(&kc));
    for k in [&ka, &kb] {
        b.insert(Verified::seal(k, offer(k, "H100-SXM-80GB", 1, NOW)), NOW).unwrap();
    }
    let order = |b: &OfferBook, q: &str| -> Vec<(NodeId, Option<u32>)> {
        let q = Query::parse(q).unwrap();
        b.search(&q, SortKey::Latency, 0.5, 10, NOW)
            .iter()
            .map(|s| (s.offer.provider, s.latency_ms))
            .collect()
    };
    // Nothing measured: no offer passes a latency term.
    assert!(order(&b, "latency<1000").is_empty());
    b.set_latency(a, Some(50));
    b.set_latency(bb, Some(5));
    assert_eq!(order(&b, ""), vec![(bb, Some(5)), (a, Some(50))]);
    assert_eq!(order(&b, "latency<10"), vec![(bb, Some(5))]);
    // A new measurement moves every offer of the provider.
    b.set_latency(a, Some(1));
    assert_eq!(order(&b, ""), vec![(a, Some(1)), (bb, Some(5))]);
    // Measured before its offers arrive: they come in with it.
    b.set_latency(c, Some(0));
    b.insert(Verified::seal(&kc, offer(&kc, "H100-SXM-80GB", 1, NOW)), NOW).unwrap();
    assert_eq!(b.latency(&c), Some(0));
    assert_eq!(order(&b, "")[0], (c, Some(0)));
    // Forgotten (disconnected): unmeasured, ranked last, filtered out by latency terms.
    b.set_latency(c, None);
    assert_eq!(order(&b, "").last(), Some(&(c, None)));
    assert_eq!(order(&b, "latency<=1"), vec![(a, Some(1))]);
}

mod search {
    use super::*;
    use gpumesh_protocol::query::Query;
    use gpumesh_protocol::rank::{Candidate, SortKey, ranked};
    use proptest::prelude::*;

    const MODELS: [&str; 5] = ["H100-SXM-80GB", "RTX-4090", "A100-SXM-80GB", "L40S", "RTX-3090"];
    const REGIONS: [&str; 4] = ["us-east", "us-west", "eu-west", "DE"];

    fn varied(
        k: &SigningKey,
        model: &str,
        region: &str,
        price: u64,
        free: u32,
        ttl_ms: u64,
        seq: u64,
    ) -> Verified<Offer> {
        let mut o = offer(k, model, seq, NOW);
        o.host.region = region.into();
        o.price = Price(price);
        o.gpu_total = 8;
        o.gpu_free = free.min(8);
        o.expires_at = NOW.plus_millis(ttl_ms);
        o.host.cpu_cores = 8 + (price % 64) as u32;
        Verified::seal(k, o)
    }

    fn naive(
        book: &OfferBook,
        q: &Query,
        key: SortKey,
        limit: usize,
        now: Timestamp,
        lat: &dyn Fn(&NodeId) -> Option<u32>,
    ) -> Vec<(OfferId, String)> {
        let offers: Vec<Verified<Offer>> = book.live(now).collect();
        let cands: Vec<Candidate<'_>> = offers
            .iter()
            .map(|o| Candidate { offer: o.body(), latency_ms: lat(&o.provider) })
            .filter(|c| q.matches(c.offer, c.latency_ms))
            .collect();
        let shown = |s: f64| if key == SortKey::Score { format!("{s:.9}") } else { String::new() };
        ranked(&cands, key, 0.5)
            .into_iter()
            .take(limit)
            .map(|s| (s.candidate.offer.offer_id, shown(s.score)))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// The indexed search returns exactly what filtering and ranking every live offer does.
        #[test]
        fn indexed_search_equals_a_full_scan(
            entries in prop::collection::vec((0u8..12, 0usize..5, 0usize..4, 100_000u64..3_000_000, 0u32..9, 1u64..10_000), 1..120),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
            threshold in 0u64..3_000_000,
            qi in 0usize..8,
            sort in prop::sample::select(vec![SortKey::Price, SortKey::Latency, SortKey::Score]),
            limit in 1usize..30,
            at in 0u64..10_000,
        ) {
            let mut book = OfferBook::new(BookConfig { max_offers_per_provider: 1000, ..BookConfig::default() });
            let keys: Vec<SigningKey> = (0..12u8).map(|i| key(i + 1)).collect();
            let mut seq = 0;
            let mut ids = Vec::new();
            for (p, m, r, price, free, ttl) in entries {
                seq += 1;
                let o = varied(&keys[p as usize], MODELS[m], REGIONS[r], price, free, ttl, seq);
                ids.push(o.offer_id);
                let _ = book.insert(o, NOW);
            }
            for r in removals {
                let id = ids[r.index(ids.len())];
                let provider = book.get(&id, Timestamp(0)).map(|o| o.provider);
                if let Some(pk) = keys.iter().find(|k| Some(id_of(k)) == provider) {
                    seq += 1;
                    let w = Verified::seal(pk, Withdrawal { v: PROTOCOL_VERSION, network: NET.into(), offer_id: id, provider: id_of(pk), seq, issued_at: NOW });
                    let _ = book.withdraw(&w, NOW);
                }
            }
            let price = format!("{}.{:06}", threshold / 1_000_000, threshold % 1_000_000);
            let queries = [
                String::new(),
                "gpu=h100".to_string(),
                format!("price<={price}"),
                format!("gpu in [rtx4090,l40s] price>{price}"),
                "region=us count>=2".to_string(),
                "latency<5 vram>=40".to_string(),
                format!("region!=de cpu>=20 price<{price}"),
                "gpu~a provider!=12D3KooWA".to_string(),
            ];
            let q = Query::parse(&queries[qi]).unwrap();
            let now = NOW.plus_millis(at);
            let lat = |n: &NodeId| (!n.as_bytes()[0].is_multiple_of(3)).then_some(u32::from(n.as_bytes()[1] % 10));
            for k in &keys {
                book.set_latency(id_of(k), lat(&id_of(k)));
            }
            let fast: Vec<(OfferId, String)> = book
                .search(&q, sort, 0.5, limit, now)
                .into_iter()
                .map(|s| (s.offer.offer_id, if sort == SortKey::Score { format!("{:.9}", s.score) } else { String::new() }))
                .collect();
            prop_assert_eq!(fast, naive(&book, &q, sort, limit, now, &lat));
        }
    }
}

/// Only the exact signed bytes of an unexpired offer the book holds count as a copy (which a
/// node then need not verify again): any changed byte, a longer or shorter envelope, another
/// sequence of the offer, a withdrawal, or the held offer once expired do not.
#[test]
fn only_the_exact_bytes_of_a_live_held_offer_are_a_copy() {
    let mut b = OfferBook::new(BookConfig::default());
    let o = offer(&key(1), "H100-SXM-80GB", 5, NOW);
    let held = sealed(o.clone());
    let bytes = held.bytes().to_vec();
    assert!(!b.holds_copy(&bytes, NOW), "not held yet");
    b.insert(held, NOW).unwrap();
    assert!(b.holds_copy(&bytes, NOW));
    for i in 0..bytes.len() {
        let mut changed = bytes.clone();
        changed[i] ^= 0x01;
        assert!(!b.holds_copy(&changed, NOW), "byte {i} changed");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(!b.holds_copy(&longer, NOW));
    assert!(!b.holds_copy(&bytes[..bytes.len() - 1], NOW));
    let mut newer = o.clone();
    newer.seq = 6;
    assert!(!b.holds_copy(sealed(newer).bytes(), NOW));
    assert!(!b.holds_copy(withdrawal(o.offer_id, 6).bytes(), NOW));
    assert!(!b.holds_copy(&bytes, o.expires_at), "expired");
}

/// The digest from scratch over what a book should hold: ids and envelope bytes.
fn digest_of(held: &std::collections::HashMap<OfferId, Vec<u8>>) -> SyncDigest {
    SyncDigest::of(held.iter().map(|(id, b)| (id, &b[..])))
}

#[test]
fn the_sync_digest_follows_every_change_to_the_book() {
    let mut b = OfferBook::new(BookConfig::default());
    let mut held = std::collections::HashMap::new();
    assert_eq!(b.sync_digest(), &SyncDigest::default(), "an empty book sums to zero everywhere");
    let mut ids = Vec::new();
    for i in 0..12u8 {
        let mut o = offer(&key(1), &format!("GPU-{i}"), 1, NOW);
        if i == 5 {
            o.expires_at = NOW.plus_millis(1);
        }
        let v = sealed(o);
        ids.push(v.offer_id);
        held.insert(v.offer_id, v.bytes().to_vec());
        b.insert(v, NOW).unwrap();
    }
    assert_eq!(b.sync_digest(), &digest_of(&held), "after inserts");

    // A newer sequence replaces the old bytes in the sum.
    let mut newer = b.get(&ids[2], NOW).unwrap().body().clone();
    newer.seq = 2;
    newer.gpu_free = 0;
    let newer = sealed(newer);
    held.insert(ids[2], newer.bytes().to_vec());
    assert_eq!(b.insert(newer, NOW), Ok(BookChange::Replaced(ids[2])));
    assert_eq!(b.sync_digest(), &digest_of(&held), "after a replacement");

    // A withdrawal takes its offer out.
    assert_eq!(b.withdraw(&withdrawal(ids[7], 9), NOW), Ok(BookChange::Removed(ids[7])));
    held.remove(&ids[7]);
    assert_eq!(b.sync_digest(), &digest_of(&held), "after a withdrawal");

    // An expired offer counts until the sweep removes it.
    let later = NOW.plus_millis(2);
    assert_eq!(b.sweep(later), vec![ids[5]]);
    held.remove(&ids[5]);
    assert_eq!(b.sync_digest(), &digest_of(&held), "after a sweep");

    // Refused messages change nothing.
    let before = b.sync_digest().clone();
    let stale = sealed(offer(&key(1), "GPU-2", 1, NOW));
    assert!(b.insert(stale, later).is_err());
    assert_eq!(b.sync_digest(), &before, "after a refused offer");
}

#[test]
fn a_sync_page_leaves_out_the_ranges_the_asking_peer_holds_alike() {
    // The answering peer holds 60 offers; the asking one the same 60, except one it lacks
    // and one it holds at an older sequence.
    let (mut ours, mut theirs) =
        (OfferBook::new(BookConfig::default()), OfferBook::new(BookConfig::default()));
    let mut ids = Vec::new();
    for i in 0..60u8 {
        let k = key(100 + i);
        let o = offer(&k, "H100-SXM-80GB", 1, NOW);
        ids.push(o.offer_id);
        if i != 10 {
            theirs.insert(Verified::seal(&k, o.clone()), NOW).unwrap();
        }
        let mut o = o;
        if i == 20 {
            o.seq = 2;
        }
        ours.insert(Verified::seal(&k, o), NOW).unwrap();
    }
    let (lacking, older) = (ids[10], ids[20]);

    let page = ours.sync_page(None, Some(theirs.sync_digest()), NOW, 4096, usize::MAX, 8);
    let sent: Vec<OfferId> = page.offers.iter().map(|b| offer_id_in(b)).collect();
    assert!(sent.contains(&lacking) && sent.contains(&older), "the two offers that differ are sent");
    let differing = [SyncDigest::range_of(&lacking), SyncDigest::range_of(&older)];
    assert!(
        sent.iter().all(|id| differing.contains(&SyncDigest::range_of(id))),
        "only offers in the two differing ranges are sent: {sent:?}"
    );
    assert!(sent.len() < 60);
    assert!(page.next.is_none());

    // Once the asking peer holds what the answering one holds, nothing is sent.
    for id in [lacking, older] {
        let v = ours.get(&id, NOW).unwrap();
        theirs.insert(v, NOW).unwrap();
    }
    assert_eq!(theirs.sync_digest(), ours.sync_digest());
    let page = ours.sync_page(None, Some(theirs.sync_digest()), NOW, 4096, usize::MAX, 8);
    assert!(page.offers.is_empty() && page.next.is_none());
    // Without a digest, everything is sent, as before.
    assert_eq!(ours.sync_page(None, None, NOW, 4096, usize::MAX, 8).offers.len(), 60);

    // Paging and the digest together: pages of one offer over a book that differs in two
    // ranges bring exactly the offers of those ranges, each once, in id order.
    let mut theirs = OfferBook::new(BookConfig::default());
    for id in &ids {
        if *id != lacking && *id != older {
            theirs.insert(ours.get(id, NOW).unwrap(), NOW).unwrap();
        }
    }
    let (mut got, mut after) = (Vec::new(), None);
    loop {
        let page = ours.sync_page(after.as_ref(), Some(theirs.sync_digest()), NOW, 1, usize::MAX, 8);
        got.extend(page.offers.iter().map(|b| offer_id_in(b)));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut want: Vec<OfferId> =
        ids.iter().copied().filter(|id| differing.contains(&SyncDigest::range_of(id))).collect();
    want.sort();
    assert_eq!(got, want);
}

fn offer_id_in(envelope_bytes: &[u8]) -> OfferId {
    let raw = envelope::RawEnvelope::parse(envelope_bytes).unwrap();
    <Offer as envelope::Body>::decode(raw.body).unwrap().offer_id
}

#[test]
fn a_sync_digest_reads_back_only_from_its_exact_wire_length() {
    let mut b = OfferBook::new(BookConfig::default());
    for i in 0..5u8 {
        b.insert(Verified::seal(&key(40 + i), offer(&key(40 + i), "A100", 1, NOW)), NOW).unwrap();
    }
    let bytes = b.sync_digest().to_bytes();
    assert_eq!(bytes.len(), book::SYNC_DIGEST_BYTES);
    assert_eq!(SyncDigest::from_bytes(&bytes).as_ref(), Some(b.sync_digest()));
    assert_eq!(SyncDigest::from_bytes(&bytes[1..]), None);
    assert_eq!(SyncDigest::from_bytes(&[bytes.clone(), vec![0]].concat()), None);
}
