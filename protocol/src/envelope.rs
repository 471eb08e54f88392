//! The signed envelope every message travels in, and [`Verified`], the only way to hold a
//! message whose signature was checked.
//!
//! Wire form (a CBOR array of four items, definite lengths):
//!
//! ```text
//! [ kind: uint, signer: bstr .size 32, body: bstr, signature: bstr .size 64 ]
//! ```
//!
//! The signature is ed25519 (strict verification) over `domain_tag(kind) || body`. The body is
//! itself CBOR; it is decoded only after the signature over its exact bytes has been checked,
//! and never re-encoded to be verified.

use crate::bytes::SharedBytes;
use crate::error::Invalid;
use crate::id::NodeId;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;

/// Message kinds. A closed set: any other number is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Kind {
    Offer = 1,
    Withdrawal = 2,
    LeaseRequest = 3,
    LeaseGrant = 4,
    LeaseReject = 5,
    LeaseRelease = 6,
    UsageReceipt = 7,
}

/// Largest envelope for offers and withdrawals (gossip), in bytes.
pub const MAX_GOSSIP_ENVELOPE: usize = 4096;
/// Largest envelope for lease messages (they may carry access details), in bytes.
pub const MAX_LEASE_ENVELOPE: usize = 16 * 1024;

impl Kind {
    /// Every kind, in numeric order.
    pub const ALL: [Kind; 7] = [
        Kind::Offer,
        Kind::Withdrawal,
        Kind::LeaseRequest,
        Kind::LeaseGrant,
        Kind::LeaseReject,
        Kind::LeaseRelease,
        Kind::UsageReceipt,
    ];

    /// The domain tag prepended to the body before signing. No tag is a prefix of another.
    pub fn domain_tag(self) -> &'static [u8] {
        match self {
            Kind::Offer => b"gpumesh/offer/v1",
            Kind::Withdrawal => b"gpumesh/withdrawal/v1",
            Kind::LeaseRequest => b"gpumesh/lease-request/v1",
            Kind::LeaseGrant => b"gpumesh/lease-grant/v1",
            Kind::LeaseReject => b"gpumesh/lease-reject/v1",
            Kind::LeaseRelease => b"gpumesh/lease-release/v1",
            Kind::UsageReceipt => b"gpumesh/usage-receipt/v1",
        }
    }

    /// The largest envelope of this kind, in bytes.
    pub fn max_envelope(self) -> usize {
        match self {
            Kind::Offer | Kind::Withdrawal => MAX_GOSSIP_ENVELOPE,
            _ => MAX_LEASE_ENVELOPE,
        }
    }

    fn from_u64(v: u64) -> Result<Kind, Invalid> {
        Kind::ALL.into_iter().find(|k| *k as u64 == v).ok_or(Invalid::UnknownKind(v))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Kind::Offer => "offer",
            Kind::Withdrawal => "withdrawal",
            Kind::LeaseRequest => "lease-request",
            Kind::LeaseGrant => "lease-grant",
            Kind::LeaseReject => "lease-reject",
            Kind::LeaseRelease => "lease-release",
            Kind::UsageReceipt => "usage-receipt",
        };
        f.write_str(s)
    }
}

/// A message body that travels signed.
pub trait Body: Serialize + DeserializeOwned {
    /// The envelope kind of this body.
    const KIND: Kind;
    /// The node the body says signed it (the provider of an offer, the renter of a request…).
    fn claimed_signer(&self) -> &NodeId;
    /// Decodes a body from its CBOR bytes: with serde ([`decode_body`]) unless the type has a
    /// faster path, which must decide every input exactly as serde does.
    fn decode(bytes: &[u8]) -> Result<Self, Invalid> {
        decode_body(bytes)
    }
}

/// The parts of an envelope, borrowed from the received bytes. Nothing here is verified.
#[derive(Debug, Clone, Copy)]
pub struct RawEnvelope<'a> {
    pub kind: Kind,
    pub signer: NodeId,
    pub body: &'a [u8],
    pub signature: [u8; 64],
}

impl<'a> RawEnvelope<'a> {
    /// Splits envelope bytes into their parts. Checks the size limit of the kind first (and
    /// the largest limit of any kind before reading anything), then the exact CBOR layout.
    pub fn parse(bytes: &'a [u8]) -> Result<RawEnvelope<'a>, Invalid> {
        if bytes.len() > MAX_LEASE_ENVELOPE {
            return Err(Invalid::Oversized { len: bytes.len(), max: MAX_LEASE_ENVELOPE });
        }
        let mut r = Reader { buf: bytes };
        if r.byte()? != 0x84 {
            return Err(Invalid::MalformedEnvelope("not a CBOR array of 4 items"));
        }
        let (major, kind) = r.head()?;
        if major != 0 {
            return Err(Invalid::MalformedEnvelope("kind is not an unsigned integer"));
        }
        let kind = Kind::from_u64(kind)?;
        if bytes.len() > kind.max_envelope() {
            return Err(Invalid::Oversized { len: bytes.len(), max: kind.max_envelope() });
        }
        let signer: [u8; 32] =
            r.bstr()?.try_into().map_err(|_| Invalid::MalformedEnvelope("signer is not 32 bytes"))?;
        let body = r.bstr()?;
        let signature: [u8; 64] =
            r.bstr()?.try_into().map_err(|_| Invalid::MalformedEnvelope("signature is not 64 bytes"))?;
        if !r.buf.is_empty() {
            return Err(Invalid::MalformedEnvelope("trailing bytes after the envelope"));
        }
        Ok(RawEnvelope { kind, signer: NodeId::from_bytes(signer), body, signature })
    }

    /// The exact bytes the signature covers: `domain_tag || body`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let tag = self.kind.domain_tag();
        let mut m = Vec::with_capacity(tag.len() + self.body.len());
        m.extend_from_slice(tag);
        m.extend_from_slice(self.body);
        m
    }

    /// Strict ed25519 verification of the signature over `domain_tag || body`.
    pub fn verify_signature(&self) -> Result<(), Invalid> {
        let key = self.signer.verifying_key().map_err(|_| Invalid::BadSignerKey)?;
        self.verify_with(&key)
    }

    /// Like [`RawEnvelope::verify_signature`], with the signer's key already decompressed
    /// (from a [`KeyCache`]).
    pub fn verify_with(&self, key: &VerifyingKey) -> Result<(), Invalid> {
        strict_verify(key, self.kind.domain_tag(), self.body, &self.signature)
    }
}

/// Exactly ed25519-dalek's `verify_strict` of `signature` over `tag || body`, computed
/// without its two avoidable costs: the message is hashed in two pieces instead of being
/// copied into one buffer, and the signature's R is not decompressed.
///
/// `verify_strict` accepts when s is canonical, neither R nor the key is a point of small
/// order, and `[s]B - [k]A` compresses to exactly R's 32 bytes (k = SHA-512(R || A || M)).
/// It decompresses R only to test it for small order. But a compression is always the
/// canonical encoding of a curve point, so whenever the final comparison succeeds R's bytes
/// are the canonical encoding of a point, and that point has small order exactly when those
/// bytes are one of the eight canonical encodings of the small-order points. Testing the bytes
/// against those eight therefore accepts and rejects the same signatures, and costs nothing
/// next to a decompression (a field exponentiation, about a tenth of a verification).
/// `verify_stream` checks s and runs the same hash and comparison as `verify_strict`, without
/// the small-order tests, which are made here. `protocol/tests/envelope.rs` (`strict`)
/// checks the two agree on signatures built to fail each test.
fn strict_verify(key: &VerifyingKey, tag: &[u8], body: &[u8], signature: &[u8; 64]) -> Result<(), Invalid> {
    let r = &signature[..32];
    if key.is_weak() || small_order_encodings().iter().any(|e| e[..] == *r) {
        return Err(Invalid::BadSignature);
    }
    let mut v = key.verify_stream(&Signature::from_bytes(signature)).map_err(|_| Invalid::BadSignature)?;
    v.update(tag);
    v.update(body);
    v.finalize_and_verify().map_err(|_| Invalid::BadSignature)
}

/// The canonical encodings of the eight points of order dividing 8 (the points
/// `verify_strict` calls small order).
fn small_order_encodings() -> &'static [[u8; 32]; 8] {
    static ENCODINGS: std::sync::OnceLock<[[u8; 32]; 8]> = std::sync::OnceLock::new();
    ENCODINGS.get_or_init(|| curve25519_dalek::constants::EIGHT_TORSION.map(|p| p.compress().to_bytes()))
}

/// Minimal reader for the envelope's fixed CBOR layout.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Invalid> {
        let (&b, rest) = self.buf.split_first().ok_or(Invalid::MalformedEnvelope("truncated"))?;
        self.buf = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Invalid> {
        if self.buf.len() < n {
            return Err(Invalid::MalformedEnvelope("truncated"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    /// Reads a CBOR head: (major type, argument). Indefinite lengths are refused.
    fn head(&mut self) -> Result<(u8, u64), Invalid> {
        let b = self.byte()?;
        let major = b >> 5;
        let info = b & 0x1f;
        let arg = match info {
            0..=23 => info as u64,
            24 => self.byte()? as u64,
            25 => u16::from_be_bytes(self.take(2)?.try_into().unwrap_or_default()) as u64,
            26 => u32::from_be_bytes(self.take(4)?.try_into().unwrap_or_default()) as u64,
            27 => u64::from_be_bytes(self.take(8)?.try_into().unwrap_or_default()),
            _ => return Err(Invalid::MalformedEnvelope("indefinite or reserved length")),
        };
        Ok((major, arg))
    }

    fn bstr(&mut self) -> Result<&'a [u8], Invalid> {
        let (major, len) = self.head()?;
        if major != 2 {
            return Err(Invalid::MalformedEnvelope("expected a byte string"));
        }
        let len = usize::try_from(len).map_err(|_| Invalid::MalformedEnvelope("truncated"))?;
        self.take(len)
    }
}

fn write_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    match arg {
        0..=23 => out.push(m | arg as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, arg as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(arg as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(arg as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&arg.to_be_bytes());
        }
    }
}

/// Encodes a body to CBOR.
pub fn encode_body<T: Serialize>(body: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    // Writing into a Vec cannot fail, and every body type serializes to CBOR.
    ciborium::into_writer(body, &mut out).expect("CBOR encoding into a Vec is infallible");
    out
}

/// Decodes a signed body: one well-formed CBOR item and nothing after it, then serde.
///
/// The generic pass first matters: serde over ciborium reads only the items a type asks for,
/// so an array whose head promises more items than a fixed-size type takes (a compute
/// capability's two) would have its surplus read as whatever follows, and a body of the wrong
/// shape would decode. Reading the whole item generically refuses it.
pub fn decode_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Invalid> {
    let mut rest = bytes;
    ciborium::from_reader::<ciborium::Value, _>(&mut rest)
        .map_err(|e| Invalid::MalformedBody(short_error(&e)))?;
    if !rest.is_empty() {
        return Err(Invalid::MalformedBody("trailing bytes after the body".into()));
    }
    decode_cbor(bytes)
}

/// Decodes CBOR with serde, refusing trailing bytes (no generic pass: wire messages such as
/// sync pages carry megabytes of byte strings, and the bodies inside them are opened, and so
/// checked, one by one).
pub(crate) fn decode_cbor<T: DeserializeOwned>(mut bytes: &[u8]) -> Result<T, Invalid> {
    let v = ciborium::from_reader(&mut bytes).map_err(|e| Invalid::MalformedBody(short_error(&e)))?;
    if !bytes.is_empty() {
        return Err(Invalid::MalformedBody("trailing bytes after the body".into()));
    }
    Ok(v)
}

fn short_error<E: fmt::Debug>(e: &ciborium::de::Error<E>) -> String {
    match e {
        ciborium::de::Error::Semantic(_, msg) => msg.clone(),
        ciborium::de::Error::Syntax(at) => format!("invalid CBOR at byte {at}"),
        ciborium::de::Error::Io(_) => "truncated".into(),
        ciborium::de::Error::RecursionLimitExceeded => "nested too deeply".into(),
    }
}

/// Builds envelope bytes from already-encoded body bytes and a signature.
pub fn assemble(kind: Kind, signer: &NodeId, body: &[u8], signature: &[u8; 64]) -> Vec<u8> {
    assemble_raw(kind as u64, signer.as_bytes(), body, signature)
}

/// Builds envelope bytes with any kind number, including ones this version does not know
/// (for tests and tools that probe how a peer handles them).
pub fn assemble_raw(kind: u64, signer: &[u8; 32], body: &[u8], signature: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 110);
    out.push(0x84);
    write_head(&mut out, 0, kind);
    write_head(&mut out, 2, 32);
    out.extend_from_slice(signer);
    write_head(&mut out, 2, body.len() as u64);
    out.extend_from_slice(body);
    write_head(&mut out, 2, 64);
    out.extend_from_slice(signature);
    out
}

/// Encodes `body`, signs `domain_tag || body` with `key` and returns the envelope bytes.
pub fn seal<T: Body>(key: &SigningKey, body: &T) -> Vec<u8> {
    let body_bytes = encode_body(body);
    let tag = T::KIND.domain_tag();
    let mut msg = Vec::with_capacity(tag.len() + body_bytes.len());
    msg.extend_from_slice(tag);
    msg.extend_from_slice(&body_bytes);
    let sig = key.sign(&msg).to_bytes();
    let signer = NodeId::from_bytes(key.verifying_key().to_bytes());
    assemble(T::KIND, &signer, &body_bytes, &sig)
}

/// Checks and opens an envelope of kind `T::KIND`: size, layout, kind, strict signature over
/// the exact bytes, then decodes the body and checks that the body names its signer.
pub fn open<T: Body>(bytes: &[u8]) -> Result<Verified<T>, Invalid> {
    let raw = RawEnvelope::parse(bytes)?;
    open_raw(bytes, raw)
}

/// Like [`open`], on an envelope already split by [`RawEnvelope::parse`].
pub fn open_raw<T: Body>(bytes: &[u8], raw: RawEnvelope<'_>) -> Result<Verified<T>, Invalid> {
    if raw.kind != T::KIND {
        return Err(Invalid::WrongKind { expected: T::KIND, got: raw.kind });
    }
    raw.verify_signature()?;
    finish_open(bytes, raw)
}

/// Like [`open_raw`], taking the signer's decompressed key from `keys` (and adding it).
/// Providers sign many offers; decompressing each one's key once saves a field inversion
/// per message. Verification is the same strict verification.
pub fn open_cached<T: Body>(
    bytes: &[u8],
    raw: RawEnvelope<'_>,
    keys: &mut KeyCache,
) -> Result<Verified<T>, Invalid> {
    verify_cached::<T>(&raw, keys)?;
    finish_open(bytes, raw)
}

/// Checks the kind and the strict signature, with the signer's key from `keys`.
fn verify_cached<T: Body>(raw: &RawEnvelope<'_>, keys: &mut KeyCache) -> Result<(), Invalid> {
    if raw.kind != T::KIND {
        return Err(Invalid::WrongKind { expected: T::KIND, got: raw.kind });
    }
    let key = keys.get(&raw.signer)?;
    raw.verify_with(&key)
}

/// Like [`open_cached`], keeping `bytes` themselves instead of a copy: the caller decides
/// where the envelope lives (the node hands the book the same buffer its store keeps, so an
/// offer is resident once).
pub fn open_shared<T: Body>(bytes: SharedBytes, keys: &mut KeyCache) -> Result<Verified<T>, Invalid> {
    let (body, signer) = {
        let raw = RawEnvelope::parse(&bytes)?;
        verify_cached::<T>(&raw, keys)?;
        (checked_body::<T>(&raw)?, raw.signer)
    };
    Ok(Verified { body, signer, bytes })
}

fn finish_open<T: Body>(bytes: &[u8], raw: RawEnvelope<'_>) -> Result<Verified<T>, Invalid> {
    let body = checked_body::<T>(&raw)?;
    Ok(Verified { body, signer: raw.signer, bytes: SharedBytes::copy_from_slice(bytes) })
}

/// Decodes the body of a verified envelope and checks that it names its signer.
fn checked_body<T: Body>(raw: &RawEnvelope<'_>) -> Result<T, Invalid> {
    let body = T::decode(raw.body)?;
    if body.claimed_signer() != &raw.signer {
        return Err(Invalid::SignerMismatch);
    }
    Ok(body)
}

/// A message whose envelope signature was verified and whose body names its signer. The only
/// constructors are [`open`], [`open_raw`], [`open_cached`], [`open_shared`] and
/// [`Verified::seal`].
#[derive(Clone, PartialEq, Eq)]
pub struct Verified<T> {
    body: T,
    signer: NodeId,
    bytes: SharedBytes,
}

impl<T: Body> Verified<T> {
    /// Signs a body of our own. The result is verified by construction.
    pub fn seal(key: &SigningKey, body: T) -> Verified<T> {
        let bytes = seal(key, &body);
        let signer = NodeId::from_bytes(key.verifying_key().to_bytes());
        Verified { body, signer, bytes: SharedBytes::from(bytes) }
    }
}

impl<T: Body> Verified<T> {
    /// Decodes envelope bytes that came out of [`open`] (or [`Verified::seal`]) before and were
    /// kept, without verifying the signature again: the offer book keeps only the bytes of
    /// what it admitted. `None` if they do not decode, which cannot happen for such bytes.
    pub(crate) fn reopen(bytes: SharedBytes) -> Option<Verified<T>> {
        let (body, signer) = {
            let raw = RawEnvelope::parse(&bytes).ok()?;
            (T::decode(raw.body).ok()?, raw.signer)
        };
        Some(Verified { body, signer, bytes })
    }
}

impl<T> Verified<T> {
    /// The verified body.
    pub fn body(&self) -> &T {
        &self.body
    }
    /// Who signed it.
    pub fn signer(&self) -> &NodeId {
        &self.signer
    }
    /// The exact envelope bytes that were verified (to store or forward).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// A cheap shared handle on the envelope bytes.
    pub fn shared_bytes(&self) -> SharedBytes {
        self.bytes.clone()
    }
    /// Drops the proof and keeps the body.
    pub fn into_body(self) -> T {
        self.body
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.body
    }
}

impl<T: fmt::Debug> fmt::Debug for Verified<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verified").field("signer", &self.signer).field("body", &self.body).finish()
    }
}

/// Reads only the kind of an envelope (for dispatch), after the size check.
pub fn peek_kind(bytes: &[u8]) -> Result<Kind, Invalid> {
    RawEnvelope::parse(bytes).map(|r| r.kind)
}

/// Decompressed signer keys, bounded: when full it starts over (a flood of new keys cannot
/// grow it, and honest providers are decompressed again at most once per refill).
#[derive(Debug)]
pub struct KeyCache {
    keys: HashMap<NodeId, VerifyingKey>,
    capacity: usize,
}

impl KeyCache {
    /// A cache of at most `capacity` keys.
    pub fn new(capacity: usize) -> KeyCache {
        KeyCache { keys: HashMap::new(), capacity: capacity.max(1) }
    }

    /// The decompressed key of `id`, or [`Invalid::BadSignerKey`] if it is not a curve point.
    pub fn get(&mut self, id: &NodeId) -> Result<VerifyingKey, Invalid> {
        if let Some(k) = self.keys.get(id) {
            return Ok(*k);
        }
        let k = id.verifying_key().map_err(|_| Invalid::BadSignerKey)?;
        if self.keys.len() >= self.capacity {
            self.keys.clear();
        }
        self.keys.insert(*id, k);
        Ok(k)
    }
}
