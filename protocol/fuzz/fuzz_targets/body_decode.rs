//! Body bytes straight into the CBOR decoder (`envelope::decode_body::<T>`), bypassing the
//! signature check, for every body type. Nothing may panic; whatever decodes re-encodes with
//! `envelope::encode_body` and decodes again to an equal value, and that encoding is stable.
#![no_main]

use gpumesh_protocol::lease::messages::{LeaseGrant, LeaseReject, LeaseRelease, LeaseRequest, UsageReceipt};
use gpumesh_protocol::{Offer, Withdrawal};
use gpumesh_protocol_fuzz::{ctx, decode_round_trip};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(offer) = decode_round_trip::<Offer>(data) {
        let _ = offer.validate(&ctx());
    }
    if let Some(w) = decode_round_trip::<Withdrawal>(data) {
        let _ = w.validate(&ctx());
    }
    decode_round_trip::<LeaseRequest>(data);
    decode_round_trip::<LeaseGrant>(data);
    decode_round_trip::<LeaseReject>(data);
    decode_round_trip::<LeaseRelease>(data);
    decode_round_trip::<UsageReceipt>(data);
});
