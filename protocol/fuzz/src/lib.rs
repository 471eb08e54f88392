//! Helpers shared by the fuzz targets in `fuzz_targets/`: the fixed signing key, the
//! validation context and sample offers. See `README.md` for what each target checks.

use gpumesh_protocol::envelope::{self, Body};
use gpumesh_protocol::*;

/// The network every fuzz target pretends to be on.
pub const NET: &str = "testnet";
/// The fixed "now" of every fuzz target.
pub const NOW: Timestamp = Timestamp(1_700_000_000_000);

/// The fixed key the targets seal with. The seed envelopes in `seeds/` are signed by it too,
/// so re-sealing a seed's body gives an envelope that opens.
pub fn fixed_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

/// The key of renter or provider number `n` (as the protocol's tests build them).
pub fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// The node id of a key.
pub fn id_of(k: &SigningKey) -> NodeId {
    NodeId::from_bytes(k.verifying_key().to_bytes())
}

/// The validation context the brief asks for.
pub fn ctx() -> ValidationContext<'static> {
    ValidationContext { network: NET, now: NOW, max_clock_skew_ms: 30_000, max_ttl_ms: 3_600_000 }
}

/// A GPU spec like the protocol tests' `gpu()`.
pub fn gpu(model: &str, vram_mib: u32, cc: Option<ComputeCapability>) -> GpuSpec {
    GpuSpec {
        vendor: "nvidia".into(),
        model: model.into(),
        vram_mib,
        compute_capability: cc,
        interconnect: Interconnect::Sxm,
        cuda_version: Some("12.4".into()),
        driver_version: Some("550.54.15".into()),
    }
}

/// A valid offer like the protocol tests' `common::offer()`.
pub fn sample_offer() -> Offer {
    let k = key(1);
    let provider = id_of(&k);
    let gpu = gpu("H100-SXM-80GB", 81559, Some(ComputeCapability(9, 0)));
    Offer {
        v: PROTOCOL_VERSION,
        network: NET.into(),
        offer_id: OfferId::derive(&provider, &gpu.group_key()),
        provider,
        seq: 1,
        issued_at: NOW,
        expires_at: NOW.plus_millis(10 * 60_000),
        gpu,
        gpu_total: 8,
        gpu_free: 8,
        host: HostSpec { cpu_cores: 64, ram_mib: 512 * 1024, disk_gib: 2000, region: "us-east".into() },
        price: Price(2_350_000),
        min_duration_s: 60,
        max_duration_s: 24 * 3600,
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
    }
}

/// A second offer with the unknown values (no compute capability) and extreme numbers, so
/// that query matching meets `None`s and large values too.
pub fn odd_offer() -> Offer {
    let k = key(2);
    let provider = id_of(&k);
    let mut gpu = gpu("RTX 4090 (24GB)", u32::MAX, None);
    gpu.interconnect = Interconnect::Pcie;
    gpu.cuda_version = None;
    Offer {
        v: PROTOCOL_VERSION,
        network: NET.into(),
        offer_id: OfferId::derive(&provider, &gpu.group_key()),
        provider,
        seq: u64::MAX,
        issued_at: NOW,
        expires_at: NOW.plus_millis(60_000),
        gpu,
        gpu_total: 1024,
        gpu_free: 0,
        host: HostSpec { cpu_cores: u32::MAX, ram_mib: u64::MAX, disk_gib: u64::MAX, region: "DE".into() },
        price: Price(u64::MAX),
        min_duration_s: 0,
        max_duration_s: u64::MAX,
        addrs: vec![],
    }
}

/// Decodes with `decode_body`; on success checks that `encode_body` → `decode_body` gives an
/// equal value. Returns the value.
pub fn decode_round_trip<T>(bytes: &[u8]) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let v: T = envelope::decode_body(bytes).ok()?;
    let again = envelope::encode_body(&v);
    let back: T = envelope::decode_body(&again).unwrap_or_else(|e| {
        panic!("re-encoded {} does not decode: {e}; value {v:?}", std::any::type_name::<T>())
    });
    assert_eq!(back, v, "{} changed in a CBOR round trip", std::any::type_name::<T>());
    // The encoding of a decoded value is canonical: encoding it again gives the same bytes.
    assert_eq!(envelope::encode_body(&back), again, "{} encodes unstably", std::any::type_name::<T>());
    Some(v)
}

/// Seals `body` with the fixed key and checks that it opens again: to an equal body when the
/// body names the fixed key as signer, with `SignerMismatch` otherwise. Also checks the raw
/// parts of the sealed envelope.
pub fn reseal_opens<T>(body: &T)
where
    T: Body + PartialEq + std::fmt::Debug,
{
    let k = fixed_key();
    let sealed = envelope::seal(&k, body);
    let raw = envelope::RawEnvelope::parse(&sealed);
    match raw {
        Ok(raw) => {
            assert_eq!(raw.kind, T::KIND);
            assert_eq!(raw.signer, id_of(&k));
            assert!(raw.verify_signature().is_ok(), "our own seal does not verify");
            let decoded: T = envelope::decode_body(raw.body).expect("our own sealed body decodes");
            assert_eq!(&decoded, body, "sealed body decodes to another value");
        }
        // A body too big for its kind's envelope cannot be opened, whoever sealed it.
        Err(Invalid::Oversized { len, max }) => {
            assert!(len > max && sealed.len() == len);
            return;
        }
        Err(e) => panic!("our own sealed {} envelope does not parse: {e}", T::KIND),
    }
    match envelope::open::<T>(&sealed) {
        Ok(v) => {
            assert_eq!(body.claimed_signer(), &id_of(&k));
            assert_eq!(v.body(), body, "re-sealed body opens to another value");
            assert_eq!(v.bytes(), &sealed[..]);
        }
        Err(Invalid::SignerMismatch) => assert_ne!(body.claimed_signer(), &id_of(&k)),
        Err(e) => panic!("re-sealed {} does not open: {e}", T::KIND),
    }
}
