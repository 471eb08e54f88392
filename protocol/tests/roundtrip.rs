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
        wire_round_trip(SyncRequest { v: 1, network, after: cursor }, wire::MAX_SYNC_REQUEST);
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
