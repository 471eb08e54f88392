//! Query text from a user or a peer's capacity query: `Query::parse`. Nothing may panic; a
//! parsed query's canonical text (`Display`) parses back to an equal query, and matching it
//! against sample offers (with and without a measured latency) does not panic.
#![no_main]

use gpumesh_protocol::query::Query;
use gpumesh_protocol_fuzz::{odd_offer, sample_offer};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static OFFERS: OnceLock<[gpumesh_protocol::Offer; 2]> = OnceLock::new();
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = Query::parse(text);
    let Ok(q) = parsed else {
        // Errors render without panicking.
        let _ = parsed.map_err(|e| e.to_string());
        return;
    };
    let canonical = q.to_string();
    assert_eq!(
        Query::parse(&canonical),
        Ok(q.clone()),
        "canonical text {canonical:?} of {text:?} parses differently"
    );
    assert_eq!(q.is_empty(), q.terms().is_empty());
    for offer in OFFERS.get_or_init(|| [sample_offer(), odd_offer()]) {
        let with = q.matches(offer, Some(10));
        let without = q.matches(offer, None);
        let _ = q.matches(offer, Some(u32::MAX));
        // A term on an unknown latency never holds, so measuring latency only adds matches.
        if without {
            assert!(with, "{canonical:?} matches without a latency but not with latency 10");
        }
        if !q.uses_latency() {
            assert_eq!(with, without, "{canonical:?} has no latency term but depends on latency");
        }
    }
});
