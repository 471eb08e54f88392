//! Test vectors: a fixed key and fixed messages must still encode and sign to the bytes
//! published in docs/protocol.md, so other implementations can check themselves against them.

use gpumesh_protocol::lease::messages::LeaseRequest;
use gpumesh_protocol::*;

/// The vector key's 32-byte seed: bytes 0x00, 0x01, …, 0x1f.
fn vector_key() -> SigningKey {
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = i as u8;
    }
    SigningKey::from_bytes(&seed)
}

fn vector_offer() -> Offer {
    let provider = NodeId::from_bytes(vector_key().verifying_key().to_bytes());
    let gpu = GpuSpec {
        vendor: "nvidia".into(),
        model: "H100-SXM-80GB".into(),
        vram_mib: 81559,
        compute_capability: Some(ComputeCapability(9, 0)),
        interconnect: Interconnect::Sxm,
        cuda_version: Some("12.4".into()),
        driver_version: None,
    };
    Offer {
        v: 1,
        network: "testnet".into(),
        offer_id: OfferId::derive(&provider, &gpu.group_key()),
        provider,
        seq: 7,
        issued_at: Timestamp(1_767_225_600_000),
        expires_at: Timestamp(1_767_226_200_000),
        gpu,
        gpu_total: 8,
        gpu_free: 6,
        host: HostSpec { cpu_cores: 96, ram_mib: 1_048_576, disk_gib: 4000, region: "us-east".into() },
        price: "2.35".parse().unwrap(),
        min_duration_s: 600,
        max_duration_s: 86_400,
        addrs: vec!["/ip4/203.0.113.7/tcp/4747".into()],
    }
}

fn vector_request() -> LeaseRequest {
    let renter = NodeId::from_bytes(vector_key().verifying_key().to_bytes());
    let offer = vector_offer();
    LeaseRequest {
        v: 1,
        network: "testnet".into(),
        renter,
        provider: offer.provider,
        offer_id: offer.offer_id,
        gpus: 2,
        duration_s: 3600,
        price: offer.price,
        max_price: "2.50".parse().unwrap(),
        nonce: Nonce([0xab; 16]),
        issued_at: Timestamp(1_767_225_700_000),
        ssh_key: None,
    }
}

/// Reads the hex in the fenced block that follows `<!-- vector: NAME -->` in the spec.
fn from_spec(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let doc = std::fs::read_to_string(path).expect("docs/protocol.md is readable");
    let marker = format!("<!-- vector: {name} -->");
    let start = doc.find(&marker).unwrap_or_else(|| panic!("{marker} missing from docs/protocol.md"));
    let rest = &doc[start + marker.len()..];
    let open = rest.find("```").expect("a fenced block after the marker");
    let body = &rest[open + 3..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    let close = body.find("```").expect("closing fence");
    body[..close].split_whitespace().collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares a vector with the spec. `GPUMESH_PRINT_VECTORS=1` prints the values instead (to
/// regenerate the spec after a deliberate format change).
fn check(name: &str, actual: &str) {
    if std::env::var_os("GPUMESH_PRINT_VECTORS").is_some() {
        println!("VECTOR {name} {actual}");
        return;
    }
    assert_eq!(from_spec(name), actual, "vector `{name}` differs from docs/protocol.md");
}

#[test]
fn key_and_ids_match_the_spec() {
    let k = vector_key();
    check("public-key", &hex(&k.verifying_key().to_bytes()));
    let id = NodeId::from_bytes(k.verifying_key().to_bytes());
    check("node-id", &id.to_string());
    check("offer-id", &vector_offer().offer_id.to_string());
    let lease = LeaseId::derive(&id, &id, &[0xab; 16]);
    check("lease-id", &lease.to_string());
}

#[test]
fn offer_envelope_matches_the_spec() {
    let k = vector_key();
    let bytes = envelope::seal(&k, &vector_offer());
    let raw = envelope::RawEnvelope::parse(&bytes).unwrap();
    check("offer-body", &hex(raw.body));
    check("offer-signature", &hex(&raw.signature));
    check("offer-envelope", &hex(&bytes));
    if std::env::var_os("GPUMESH_PRINT_VECTORS").is_some() {
        return;
    }
    // And the published envelope opens to the same offer.
    let published = from_spec("offer-envelope");
    let published: Vec<u8> = (0..published.len() / 2)
        .map(|i| u8::from_str_radix(&published[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert_eq!(envelope::open::<Offer>(&published).unwrap().body(), &vector_offer());
}

#[test]
fn sync_fingerprint_and_digest_match_the_spec() {
    let k = vector_key();
    let bytes = envelope::seal(&k, &vector_offer());
    check("sync-fingerprint", &hex(&book::fingerprint(&bytes).to_be_bytes()));
    // A book holding only this offer: its sum in the range of the id's first byte (0xbd),
    // zero elsewhere.
    let mut b = OfferBook::new(BookConfig::default());
    let now = vector_offer().issued_at;
    b.insert(envelope::open::<Offer>(&bytes).unwrap(), now).unwrap();
    let wire = b.sync_digest().to_bytes();
    let at = 0xbd * 8;
    assert_eq!(hex(&wire[at..at + 8]), from_spec("sync-fingerprint"));
    assert!(wire[..at].iter().chain(&wire[at + 8..]).all(|&x| x == 0));
}

#[test]
fn lease_request_envelope_matches_the_spec() {
    let bytes = envelope::seal(&vector_key(), &vector_request());
    let raw = envelope::RawEnvelope::parse(&bytes).unwrap();
    check("lease-request-body", &hex(raw.body));
    check("lease-request-signature", &hex(&raw.signature));
}
