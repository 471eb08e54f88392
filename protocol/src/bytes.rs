//! Small byte-string newtypes that travel as CBOR byte strings (and as hex in JSON).

use crate::id::{FixedBytes, decode_hex, to_hex};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

/// An owned byte string: CBOR major type 2 on the wire (serde would otherwise write a
/// `Vec<u8>` as an array of integers), lowercase hex in JSON.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        BytesRef(&self.0).serialize(s)
    }
}

/// A borrowed byte string that encodes exactly like [`Bytes`] (to send bytes held elsewhere
/// without copying them first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BytesRef<'a>(pub &'a [u8]);

impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.serialize_str(&to_hex(self.0)) } else { s.serialize_bytes(self.0) }
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        // Work on bytes: slicing a `str` between hex pairs panics inside a multi-byte char.
        let v = v.as_bytes();
        if !v.len().is_multiple_of(2) {
            return Err(E::custom("odd-length hex"));
        }
        v.chunks_exact(2)
            .map(|pair| {
                let hi = (pair[0] as char).to_digit(16)?;
                let lo = (pair[1] as char).to_digit(16)?;
                Some((hi * 16 + lo) as u8)
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| E::custom("invalid hex"))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(BytesVisitor).map(Bytes)
        } else {
            d.deserialize_byte_buf(BytesVisitor).map(Bytes)
        }
    }
}

macro_rules! fixed_bytes {
    ($(#[$doc:meta])* $name:ident, $n:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $n]);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), to_hex(&self.0))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&to_hex(&self.0))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&to_hex(&self.0))
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    decode_hex::<$n>(&s)
                        .map($name)
                        .ok_or_else(|| de::Error::custom(concat!("expected ", $n, " bytes of hex")))
                } else {
                    d.deserialize_bytes(FixedBytes::<$n>).map($name)
                }
            }
        }
    };
}

fixed_bytes!(
    /// A renter's per-request random value: 16 bytes. Makes every lease request unique and
    /// lets a provider refuse a replayed one.
    Nonce,
    16
);

fixed_bytes!(
    /// SHA-256 of a message's exact envelope bytes; binds a reply to its request.
    Digest32,
    32
);

impl Digest32 {
    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest32 {
        use sha2::Digest;
        let d = sha2::Sha256::digest(bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(&d);
        Digest32(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_from_json_hex_with_a_multibyte_char_is_an_error_not_a_panic() {
        // Found by reading the fuzz targets' blind spot: JSON text `"aéb"` used to panic.
        assert!(serde_json::from_str::<Bytes>("\"a\u{e9}b\"").is_err());
        assert!(serde_json::from_str::<Bytes>("\"\u{e9}\u{e9}\"").is_err());
        assert_eq!(serde_json::from_str::<Bytes>("\"00ff\"").unwrap(), Bytes(vec![0, 255]));
        assert!(serde_json::from_str::<Bytes>("\"0g\"").is_err());
    }
}

/// Signed envelope bytes behind a reference count, cheap to clone: either a copy of our own
/// or a buffer that something else owns and shares ([`SharedBytes::from_owner`]; the node
/// hands the offer book the very buffer its store keeps, so an offer is resident once).
#[derive(Clone)]
pub struct SharedBytes(Shared);

#[derive(Clone)]
enum Shared {
    Own(Arc<[u8]>),
    Foreign(Arc<dyn AsRef<[u8]> + Send + Sync>),
}

impl SharedBytes {
    /// A reference-counted copy of `bytes`.
    pub fn copy_from_slice(bytes: &[u8]) -> SharedBytes {
        SharedBytes(Shared::Own(Arc::from(bytes)))
    }

    /// Shares `owner`'s bytes without copying them.
    pub fn from_owner<T: AsRef<[u8]> + Send + Sync + 'static>(owner: T) -> SharedBytes {
        SharedBytes(Shared::Foreign(Arc::new(owner)))
    }
}

impl From<Vec<u8>> for SharedBytes {
    fn from(bytes: Vec<u8>) -> SharedBytes {
        SharedBytes(Shared::Own(Arc::from(bytes)))
    }
}

impl std::ops::Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Shared::Own(b) => b,
            Shared::Foreign(owner) => (**owner).as_ref(),
        }
    }
}

impl PartialEq for SharedBytes {
    fn eq(&self, other: &SharedBytes) -> bool {
        **self == **other
    }
}

impl Eq for SharedBytes {}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.len())
    }
}
