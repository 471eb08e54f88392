//! Request-response messages from a peer: `wire::decode::<T>(bytes, MAX_*)` for every wire
//! message with its size limit. Nothing may panic; input over the limit is refused as
//! `Oversized` before parsing; whatever decodes round-trips through `wire::encode`.
#![no_main]

use gpumesh_protocol::Invalid;
use gpumesh_protocol::wire::{
    self, CapacityAnswer, CapacityQuery, LeaseRpc, LeaseRpcReply, SyncAnswer, SyncRequest,
};
use libfuzzer_sys::fuzz_target;

fn check<T>(data: &[u8], max: usize) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let name = std::any::type_name::<T>();
    match wire::decode::<T>(data, max) {
        Ok(v) => {
            assert!(data.len() <= max, "{name}: {} bytes accepted over the limit {max}", data.len());
            let again = wire::encode(&v);
            // The re-encoding may be longer than a non-canonical input, so no limit here.
            let back: T = wire::decode(&again, usize::MAX)
                .unwrap_or_else(|e| panic!("{name}: re-encoded message refused: {e}"));
            assert_eq!(back, v, "{name} changed in a round trip");
            Some(v)
        }
        Err(Invalid::Oversized { len, max: m }) => {
            assert!(data.len() > max && len == data.len() && m == max);
            None
        }
        Err(_) => {
            assert!(data.len() <= max, "{name}: oversized input must be refused as Oversized");
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check::<CapacityQuery>(data, wire::MAX_CAPACITY_QUERY);
    check::<CapacityAnswer>(data, wire::MAX_CAPACITY_ANSWER);
    check::<SyncRequest>(data, wire::MAX_SYNC_REQUEST);
    check::<SyncAnswer>(data, wire::MAX_SYNC_ANSWER);
    check::<LeaseRpc>(data, wire::MAX_LEASE_RPC);
    check::<LeaseRpcReply>(data, wire::MAX_LEASE_RPC);
});
