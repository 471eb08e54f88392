//! `gpumesh.toml` text: `NodeConfig::parse`, then `resolve()` when it parses. Nothing may
//! panic, whatever the text; errors render; a resolved config keeps the rules `resolve`
//! promises (a listen address, a loopback API unless allowed, sane lease and TTL bounds).
#![no_main]

use gpumesh_node::config::NodeConfig;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let config = match NodeConfig::parse(text) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.is_empty(), "an empty parse error for {text:?}");
            return;
        }
    };
    let _ = format!("{config:?}");
    match config.resolve() {
        Err(e) => {
            let _ = e.to_string();
        }
        Ok(s) => {
            assert!(!s.listen.is_empty());
            assert!(s.api.ip().is_loopback() || config.api_allow_remote);
            assert!(!s.max_lease.is_zero() && s.min_lease <= s.max_lease);
            assert!(s.offer_ttl >= Duration::from_secs(1) && s.offer_ttl <= s.max_offer_ttl);
            assert!(s.max_offers_per_provider >= 1 && s.max_connections >= 8);
            assert!(s.price.is_none_or(|p| p.0 > 0) && s.prices.values().all(|p| p.0 > 0));
            assert!(gpumesh_protocol::spec::is_valid_region(&s.region));
        }
    }
});
