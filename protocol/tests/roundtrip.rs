//! Property tests: every message encodes, signs and opens back to itself; every wire message
//! encodes and decodes back to itself; ids survive their text and JSON forms.

use gpumesh_protocol::bytes::{Bytes, Digest32, Nonce};
use gpumesh_protocol::envelope::{self, Body};
use gpumesh_protocol::lease::messages::*;
use gpumesh_protocol::wire::{
    self, CapacityAnswer, CapacityQuery, LeaseRpc, LeaseRpcReply, SyncAnswer, SyncAnswerRef, SyncRequest,
};
use gpumesh_protocol::*;
use proptest::prelude::*;
use std::fmt::Debug;

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[ -~\u{e9}\u{4e2d}]{{0,{max}}}")).expect("valid regex")
}

fn node_id() -> impl Strategy<Value = NodeId> {
    any::<[u8; 32]>().prop_map(NodeId::from_bytes)
}
fn offer_id() -> impl Strategy<Value = OfferId> {
    any::<[u8; 8]>().prop_map(OfferId::from_bytes)
}
fn lease_id() -> impl Strategy<Value = LeaseId> {
    any::<[u8; 8]>().prop_map(LeaseId::from_bytes)
}
fn ts() -> impl Strategy<Value = Timestamp> {
    any::<u64>().prop_map(Timestamp)
}
fn interconnect() -> impl Strategy<Value = Interconnect> {
    prop_oneof![Just(Interconnect::Pcie), Just(Interconnect::Sxm), Just(Interconnect::Nvlink)]
}

prop_compose! {
    fn gpu_spec()(vendor in text(10), model in text(40), vram_mib in any::<u32>(),
                  cc in proptest::option::of((any::<u8>(), any::<u8>())), interconnect in interconnect(),
                  cuda in proptest::option::of(text(8)), driver in proptest::option::of(text(12))) -> GpuSpec {
        GpuSpec { vendor, model, vram_mib, compute_capability: cc.map(|(a, b)| ComputeCapability(a, b)),
                  interconnect, cuda_version: cuda, driver_version: driver }
    }
}

prop_compose! {
    fn offer()(network in text(16), offer_id in offer_id(), provider in node_id(), seq in any::<u64>(),
               issued_at in ts(), expires_at in ts(), gpu in gpu_spec(), gpu_total in any::<u32>(),
               gpu_free in any::<u32>(), cpu in any::<u32>(), ram in any::<u64>(), disk in any::<u64>(),
               region in text(16), price in any::<u64>(), min in any::<u64>(), max in any::<u64>(),
               addrs in proptest::collection::vec(text(40), 0..4)) -> Offer {
        Offer { v: PROTOCOL_VERSION, network, offer_id, provider, seq, issued_at, expires_at, gpu, gpu_total, gpu_free,
                host: HostSpec { cpu_cores: cpu, ram_mib: ram, disk_gib: disk, region }, price: Price(price),
                min_duration_s: min, max_duration_s: max, addrs }
    }
}

prop_compose! {
    fn request()(network in text(16), renter in node_id(), provider in node_id(), offer_id in offer_id(),
                 gpus in any::<u32>(), duration_s in any::<u64>(), price in any::<u64>(), max_price in any::<u64>(),
                 nonce in any::<[u8; 16]>(), issued_at in ts(), ssh_key in proptest::option::of(text(60))) -> LeaseRequest {
        LeaseRequest { v: PROTOCOL_VERSION, network, renter, provider, offer_id, gpus, duration_s,
                       price: Price(price), max_price: Price(max_price), nonce: Nonce(nonce), issued_at, ssh_key }
    }
}

prop_compose! {
    fn grant()(network in text(16), lease_id in lease_id(), provider in node_id(), renter in node_id(),
               offer_id in offer_id(), request in any::<[u8; 32]>(), uuids in proptest::collection::vec(text(40), 0..4),
               indices in proptest::collection::vec(any::<u32>(), 0..4), start in ts(), end in ts(),
               price in any::<u64>(), access in text(100)) -> LeaseGrant {
        LeaseGrant { v: PROTOCOL_VERSION, network, lease_id, provider, renter, offer_id, request: Digest32(request),
                     gpu_uuids: uuids, gpu_indices: indices, start, end, price: Price(price), access }
    }
}

fn reason() -> impl Strategy<Value = RejectReason> {
    proptest::sample::select(RejectReason::ALL.to_vec())
}

prop_compose! {
    fn reject()(network in text(16), provider in node_id(), renter in proptest::option::of(node_id()),
                request in any::<[u8; 32]>(), reason in reason(), detail in text(80)) -> LeaseReject {
        LeaseReject { v: PROTOCOL_VERSION, network, provider, renter, request: Digest32(request), reason, detail }
    }
}

prop_compose! {
    fn receipt()(network in text(16), lease_id in lease_id(), provider in node_id(), renter in node_id(),
                 offer_id in offer_id(), uuids in proptest::collection::vec(text(40), 0..4), start in ts(), end in ts(),
                 price in any::<u64>(), amount in any::<u64>(), released in any::<bool>()) -> UsageReceipt {
        UsageReceipt { v: PROTOCOL_VERSION, network, lease_id, provider, renter, offer_id, gpu_uuids: uuids, start, end,
                       price: Price(price), amount, ended_by: if released { EndReason::Released } else { EndReason::Expired } }
    }
}

/// Seals with the key whose id the body names as its signer, opens, compares.
fn sealed_round_trip<T: Body + PartialEq + Debug + Clone>(body: T, key: &SigningKey) {
    let bytes = envelope::seal(key, &body);
    let opened = envelope::open::<T>(&bytes).expect("opens");
    assert_eq!(opened.body(), &body);
    assert_eq!(envelope::decode_body::<T>(envelope::RawEnvelope::parse(&bytes).unwrap().body).unwrap(), body);
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[3; 32])
}
fn me() -> NodeId {
    NodeId::from_bytes(key().verifying_key().to_bytes())
}

fn wire_round_trip<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Debug>(
    msg: T,
    max: usize,
) {
    let bytes = wire::encode(&msg);
    assert_eq!(wire::decode::<T>(&bytes, max.max(bytes.len())).unwrap(), msg);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn offers_round_trip(mut o in offer()) {
        o.provider = me();
        sealed_round_trip(o, &key());
    }

    #[test]
    fn withdrawals_round_trip(network in text(16), id in offer_id(), seq in any::<u64>(), at in ts()) {
        sealed_round_trip(Withdrawal { v: PROTOCOL_VERSION, network, offer_id: id, provider: me(), seq, issued_at: at }, &key());
    }

    #[test]
    fn lease_requests_round_trip(mut r in request()) {
        r.renter = me();
        sealed_round_trip(r, &key());
    }

    #[test]
    fn grants_round_trip(mut g in grant()) {
        g.provider = me();
        sealed_round_trip(g, &key());
    }

    #[test]
    fn rejects_round_trip(mut r in reject()) {
        r.provider = me();
        sealed_round_trip(r, &key());
    }

    #[test]
    fn releases_round_trip(network in text(16), id in lease_id(), provider in node_id(), at in ts()) {
        sealed_round_trip(LeaseRelease { v: PROTOCOL_VERSION, network, lease_id: id, renter: me(), provider, issued_at: at }, &key());
    }

    #[test]
    fn receipts_round_trip(mut r in receipt()) {
        r.provider = me();
        sealed_round_trip(r, &key());
    }

    #[test]
    fn wire_messages_round_trip(network in text(16), query in text(60), blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..4), id in lease_id(), which in 0u8..4) {
        wire_round_trip(CapacityQuery { v: 1, network: network.clone(), query }, wire::MAX_CAPACITY_QUERY);
        let offers: Vec<Bytes> = blobs.iter().cloned().map(Bytes).collect();
        wire_round_trip(CapacityAnswer { v: 1, offers: offers.clone() }, wire::MAX_CAPACITY_ANSWER);
        let cursor = (which % 2 == 1).then(|| OfferId::from_bytes(*id.as_bytes()));
        // A full digest, with the cursor or without, fits the request's limit.
        let have = (which < 2).then(|| Bytes(vec![0xA5; gpumesh_protocol::book::SYNC_DIGEST_BYTES]));
        wire_round_trip(SyncRequest { v: 1, network, after: cursor, have }, wire::MAX_SYNC_REQUEST);
        let refs = SyncAnswerRef { v: 1, offers: blobs.iter().map(|b| BytesRef(b)).collect(), next: cursor };
        prop_assert_eq!(wire::encode(&refs), wire::encode(&SyncAnswer { v: 1, offers: offers.clone(), next: cursor }));
        wire_round_trip(SyncAnswer { v: 1, offers, next: cursor }, wire::MAX_SYNC_ANSWER);
        let blob = Bytes(blobs.concat());
        let rpc = match which { 0 => LeaseRpc::Request(blob.clone()), 1 => LeaseRpc::Release(blob.clone()), _ => LeaseRpc::Status(id) };
        wire_round_trip(rpc, wire::MAX_LEASE_RPC);
        let reply = match which { 0 => LeaseRpcReply::Grant(blob), 1 => LeaseRpcReply::Reject(blob), 2 => LeaseRpcReply::Receipt(blob), _ => LeaseRpcReply::Unknown };
        wire_round_trip(reply, wire::MAX_LEASE_RPC);
    }

    #[test]
    fn ids_survive_text(n in node_id(), o in offer_id(), l in lease_id()) {
        prop_assert_eq!(n.to_string().parse::<NodeId>().unwrap(), n);
        prop_assert_eq!(o.to_string().parse::<OfferId>().unwrap(), o);
        prop_assert_eq!(l.to_string().parse::<LeaseId>().unwrap(), l);
    }
}

/// Serde's decision on `bytes` and the node's (the canonical-form decoder, serde for the
/// rest) must be the same: the same offer, or an error from both.
fn decides_as_serde(bytes: &[u8]) {
    let serde = envelope::decode_body::<Offer>(bytes).ok();
    if let Some(fast) = gpumesh_protocol::offer_cbor::decode(bytes) {
        assert_eq!(
            serde.as_ref(),
            Some(&fast),
            "the canonical decoder accepted what serde decodes otherwise"
        );
    }
    assert_eq!(<Offer as Body>::decode(bytes).ok(), serde);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn encoded_offers_decode_without_serde_to_what_serde_decodes(o in offer()) {
        let bytes = envelope::encode_body(&o);
        prop_assert_eq!(gpumesh_protocol::offer_cbor::decode(&bytes), Some(o.clone()));
        prop_assert_eq!(envelope::decode_body::<Offer>(&bytes).unwrap(), o);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Every single-byte change, deletion and insertion of an encoded offer is decided alike.
    #[test]
    fn every_single_byte_change_of_an_offer_is_decided_as_serde_decides(o in offer()) {
        // Each option both present and absent.
        let mut other = o.clone();
        other.gpu.compute_capability = match o.gpu.compute_capability { Some(_) => None, None => Some(ComputeCapability(9, 0)) };
        other.gpu.cuda_version = match &o.gpu.cuda_version { Some(_) => None, None => Some("12.4".into()) };
        for o in [o, other] {
        let bytes = envelope::encode_body(&o);
        for i in 0..bytes.len() {
            for new in [bytes[i] ^ 0x01, bytes[i] ^ 0x20, bytes[i] ^ 0x80, bytes[i].wrapping_add(1), 0x00, 0xf6, 0xf7, 0xff] {
                let mut m = bytes.clone();
                m[i] = new;
                decides_as_serde(&m);
            }
            let mut m = bytes.clone();
            m.remove(i);
            decides_as_serde(&m);
            let mut m = bytes.clone();
            m.insert(i, 0x00);
            decides_as_serde(&m);
        }
        let mut m = bytes.clone();
        m.push(0x00);
        decides_as_serde(&m);
        }
    }
}

/// Forms serde accepts that the canonical decoder leaves to it: still decoded, and alike.
#[test]
fn other_encodings_of_an_offer_are_left_to_serde() {
    let o = Offer {
        v: PROTOCOL_VERSION,
        network: "n".into(),
        offer_id: OfferId::from_bytes([1; 8]),
        provider: NodeId::from_bytes([2; 32]),
        seq: 3,
        issued_at: Timestamp(4),
        expires_at: Timestamp(5),
        gpu: GpuSpec {
            vendor: "nvidia".into(),
            model: "H100".into(),
            vram_mib: 81_920,
            compute_capability: None,
            interconnect: Interconnect::Sxm,
            cuda_version: None,
            driver_version: Some("550".into()),
        },
        gpu_total: 8,
        gpu_free: 8,
        host: HostSpec { cpu_cores: 64, ram_mib: 1 << 19, disk_gib: 2000, region: "eu".into() },
        price: Price(2_000_000),
        min_duration_s: 60,
        max_duration_s: 3600,
        addrs: vec![],
    };
    let canonical = envelope::encode_body(&o);
    assert_eq!(canonical[..4], [0xaf, 0x61, b'v', 0x01]);
    let value: ciborium::Value = ciborium::from_reader(&canonical[..]).unwrap();
    let reencode = |v: &ciborium::Value| {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    };
    let mut variants = Vec::new();
    // `v` as a one-byte integer where the shortest form is the head itself.
    variants.push([&[0xaf, 0x61, b'v', 0x18, 0x01][..], &canonical[4..]].concat());
    // The fields in reverse order.
    let ciborium::Value::Map(entries) = &value else { panic!("an offer is a map") };
    variants.push(reencode(&ciborium::Value::Map(entries.iter().rev().cloned().collect())));
    // An absent option left out instead of written as null.
    let without_cc = entries
        .iter()
        .map(|(k, v)| match (k, v) {
            (ciborium::Value::Text(t), ciborium::Value::Map(gpu)) if t == "gpu" => (
                k.clone(),
                ciborium::Value::Map(
                    gpu.iter().filter(|(k, _)| k.as_text() != Some("compute_capability")).cloned().collect(),
                ),
            ),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    variants.push(reencode(&ciborium::Value::Map(without_cc)));
    for bytes in &variants {
        assert_eq!(gpumesh_protocol::offer_cbor::decode(bytes), None);
        assert_eq!(<Offer as Body>::decode(bytes).unwrap(), o);
        decides_as_serde(bytes);
    }
}

/// Every value in an encoded offer replaced by each of a set of others (integers just past
/// each width, negative ones, other types), re-encoded in the canonical form: decided alike.
#[test]
fn every_field_given_a_value_of_another_range_or_type_is_decided_as_serde_decides() {
    use ciborium::Value as V;
    let runner_offer = {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        proptest::strategy::ValueTree::current(&offer().new_tree(&mut runner).unwrap())
    };
    let mut o = runner_offer;
    o.gpu.compute_capability = Some(ComputeCapability(9, 0));
    o.gpu.cuda_version = None;
    o.addrs = vec!["/ip4/1.2.3.4/tcp/1".into()];
    let value: V = ciborium::from_reader(&envelope::encode_body(&o)[..]).unwrap();
    let replacements = [
        V::Integer(0.into()),
        V::Integer(255.into()),
        V::Integer(256.into()),
        V::Integer(u64::from(u32::MAX).into()),
        V::Integer((u64::from(u32::MAX) + 1).into()),
        V::Integer(u64::MAX.into()),
        V::Integer((-1).into()),
        V::Text("sxm".into()),
        V::Text("x".into()),
        V::Bytes(vec![0; 8]),
        V::Bytes(vec![0; 32]),
        V::Bytes(vec![0; 31]),
        V::Null,
        V::Bool(true),
        V::Float(1.0),
        V::Array(vec![V::Integer(9.into()), V::Integer(0.into())]),
        V::Array(vec![V::Integer(9.into())]),
        V::Array(vec![V::Text("a".into())]),
        V::Map(vec![]),
    ];
    // Paths to every value (map values and array items), as index lists.
    fn paths(v: &V, at: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        let children: Vec<&V> = match v {
            V::Map(m) => m.iter().map(|(_, v)| v).collect(),
            V::Array(a) => a.iter().collect(),
            _ => vec![],
        };
        for (i, c) in children.into_iter().enumerate() {
            at.push(i);
            out.push(at.clone());
            paths(c, at, out);
            at.pop();
        }
    }
    fn at_mut<'v>(v: &'v mut V, path: &[usize]) -> &'v mut V {
        path.iter().fold(v, |v, &i| match v {
            V::Map(m) => &mut m[i].1,
            V::Array(a) => &mut a[i],
            _ => unreachable!("paths only lead into maps and arrays"),
        })
    }
    let mut all = Vec::new();
    paths(&value, &mut Vec::new(), &mut all);
    assert!(all.len() > 25, "{} values", all.len());
    let mut accepted = 0;
    for path in &all {
        for r in &replacements {
            let mut changed = value.clone();
            *at_mut(&mut changed, path) = r.clone();
            let mut bytes = Vec::new();
            ciborium::into_writer(&changed, &mut bytes).unwrap();
            decides_as_serde(&bytes);
            accepted += usize::from(gpumesh_protocol::offer_cbor::decode(&bytes).is_some());
        }
    }
    assert!(accepted > 20, "the canonical decoder took only {accepted} of the changed offers");
}
