//! Identifiers: [`NodeId`] (an ed25519 public key printed as a libp2p peer id), [`OfferId`]
//! and [`LeaseId`] (short hex strings derived from what they name, so nobody can claim another
//! provider's id).

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// Errors from parsing an identifier's textual form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("`{0}` is not base58: a node id looks like 12D3KooW… (52 characters)")]
    NotBase58(String),
    #[error("`{0}` is not an ed25519 peer id: a node id looks like 12D3KooW… (52 characters)")]
    NotEd25519PeerId(String),
    #[error("`{0}` is not a valid ed25519 public key")]
    BadKey(String),
    #[error("`{input}` is not a {what}: expected {len} lowercase hex characters")]
    BadHex { input: String, what: &'static str, len: usize },
}

/// The prefix of a libp2p peer id made from an ed25519 key: identity multihash (code 0x00,
/// length 36) of the protobuf `PublicKey { Type = Ed25519 (1), Data = 32 bytes }`.
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// A node's identity: its ed25519 public key. The same key is the node's libp2p identity, so
/// the textual form is exactly the libp2p peer id (`12D3KooW…`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Wraps 32 public-key bytes. Whether they are a valid curve point is checked when a
    /// signature is verified, not here.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        NodeId(bytes)
    }

    /// The 32 public-key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The bytes of the libp2p peer id (an identity multihash) for this key.
    pub fn peer_id_bytes(&self) -> [u8; 38] {
        let mut out = [0u8; 38];
        out[..6].copy_from_slice(&PEER_ID_PREFIX);
        out[6..].copy_from_slice(&self.0);
        out
    }

    /// Parses the bytes of a libp2p peer id; only ed25519 identity peer ids are node ids.
    pub fn from_peer_id_bytes(bytes: &[u8]) -> Option<NodeId> {
        if bytes.len() != 38 || bytes[..6] != PEER_ID_PREFIX {
            return None;
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[6..]);
        Some(NodeId(key))
    }

    /// The ed25519 verifying key, or an error if the bytes are not a valid point.
    pub fn verifying_key(&self) -> Result<ed25519_dalek::VerifyingKey, IdError> {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0).map_err(|_| IdError::BadKey(self.to_string()))
    }

    /// A short form for tables: the last 8 characters of the peer id (the first ones are the
    /// same for every ed25519 peer id).
    pub fn short(&self) -> String {
        let s = self.to_string();
        format!("…{}", &s[s.len() - 8..])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.peer_id_bytes()).into_string())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bytes = bs58::decode(s).into_vec().map_err(|_| IdError::NotBase58(s.to_string()))?;
        NodeId::from_peer_id_bytes(&bytes).ok_or_else(|| IdError::NotEd25519PeerId(s.to_string()))
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.collect_str(self) } else { s.serialize_bytes(&self.0) }
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(de::Error::custom)
        } else {
            d.deserialize_bytes(FixedBytes::<32>).map(NodeId)
        }
    }
}

/// Serde visitor for a byte string of exactly `N` bytes.
pub(crate) struct FixedBytes<const N: usize>;

impl<'de, const N: usize> Visitor<'de> for FixedBytes<N> {
    type Value = [u8; N];
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a byte string of {N} bytes")
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<[u8; N], E> {
        v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
    }
    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<[u8; N], E> {
        self.visit_bytes(v)
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<[u8; N], E> {
        self.visit_bytes(&v)
    }
}

/// Defines an 8-byte id shown as 16 lowercase hex characters, carried as an 8-byte CBOR byte
/// string.
macro_rules! short_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; 8]);

        impl $name {
            /// Wraps raw id bytes.
            pub const fn from_bytes(bytes: [u8; 8]) -> Self {
                $name(bytes)
            }
            /// The raw id bytes.
            pub fn as_bytes(&self) -> &[u8; 8] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let err = || IdError::BadHex { input: s.to_string(), what: $what, len: 16 };
                let bytes = decode_hex::<8>(s).ok_or_else(err)?;
                Ok($name(bytes))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(de::Error::custom)
                } else {
                    d.deserialize_bytes(FixedBytes::<8>).map($name)
                }
            }
        }
    };
}

short_id!(
    /// Names one offer: `sha256("gpumesh/offer-id/v1" || provider key || group key)[..8]`,
    /// where the group key is the GPU group's identity (see [`crate::GpuSpec::group_key`]).
    /// Because the provider's key is in the hash, a node cannot publish under another
    /// provider's offer id: validation recomputes it.
    OfferId,
    "offer id"
);

short_id!(
    /// Names one lease: `sha256("gpumesh/lease-id/v1" || provider key || renter key ||
    /// nonce)[..8]`. The renter recomputes it from its own request, so a grant cannot reuse
    /// another lease's id.
    LeaseId,
    "lease id"
);

impl OfferId {
    /// Derives the id of `provider`'s offer for the GPU group named by `group_key`.
    pub fn derive(provider: &NodeId, group_key: &str) -> OfferId {
        let mut h = Sha256::new();
        h.update(b"gpumesh/offer-id/v1");
        h.update(provider.as_bytes());
        h.update(group_key.as_bytes());
        OfferId(first8(&h.finalize()))
    }
}

impl LeaseId {
    /// Derives the id of the lease that `renter` asked of `provider` with `nonce`.
    pub fn derive(provider: &NodeId, renter: &NodeId, nonce: &[u8; 16]) -> LeaseId {
        let mut h = Sha256::new();
        h.update(b"gpumesh/lease-id/v1");
        h.update(provider.as_bytes());
        h.update(renter.as_bytes());
        h.update(nonce);
        LeaseId(first8(&h.finalize()))
    }
}

fn first8(digest: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// Decodes exactly `N` bytes from `2N` lowercase or uppercase hex characters.
pub(crate) fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Lowercase hex of any bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_text_round_trips_and_looks_like_a_peer_id() {
        let id = NodeId::from_bytes([7u8; 32]);
        let text = id.to_string();
        assert!(text.starts_with("12D3KooW"), "{text}");
        assert_eq!(text.len(), 52);
        assert_eq!(text.parse::<NodeId>().unwrap(), id);
    }

    #[test]
    fn node_id_rejects_non_ed25519_peer_ids() {
        // A base58 string that is not an identity multihash of an ed25519 key.
        let err = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N".parse::<NodeId>().unwrap_err();
        assert!(matches!(err, IdError::NotEd25519PeerId(_)));
        assert!(matches!("0OIl".parse::<NodeId>().unwrap_err(), IdError::NotBase58(_)));
    }

    #[test]
    fn short_ids_print_as_hex_and_parse_back() {
        let id = OfferId::derive(&NodeId::from_bytes([1; 32]), "h100-sxm|81920|sxm");
        let text = id.to_string();
        assert_eq!(text.len(), 16);
        assert_eq!(text.parse::<OfferId>().unwrap(), id);
        assert!("xyz".parse::<OfferId>().is_err());
    }

    #[test]
    fn derived_ids_depend_on_every_input() {
        let a = NodeId::from_bytes([1; 32]);
        let b = NodeId::from_bytes([2; 32]);
        assert_ne!(OfferId::derive(&a, "g"), OfferId::derive(&b, "g"));
        assert_ne!(OfferId::derive(&a, "g"), OfferId::derive(&a, "h"));
        assert_ne!(LeaseId::derive(&a, &b, &[0; 16]), LeaseId::derive(&b, &a, &[0; 16]));
        assert_ne!(LeaseId::derive(&a, &b, &[0; 16]), LeaseId::derive(&a, &b, &[1; 16]));
    }

    #[test]
    fn ids_are_bytes_in_cbor_and_text_in_json() {
        let id = NodeId::from_bytes([9; 32]);
        let mut buf = Vec::new();
        ciborium::into_writer(&id, &mut buf).unwrap();
        assert_eq!(buf[0], 0x58); // byte string, 1-byte length
        assert_eq!(buf[1], 32);
        let back: NodeId = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(back, id);
    }
}
