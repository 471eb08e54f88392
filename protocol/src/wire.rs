//! Names and messages of the network protocols: the gossip topic and the three
//! request-response protocols (`/gpumesh/capacity/1`, `/gpumesh/lease/1`, `/gpumesh/sync/2`).
//!
//! Each request-response stream carries exactly one CBOR item each way; the writer closes its
//! side after the item. Sizes are capped before decoding.

use crate::bytes::{Bytes, BytesRef};
use crate::envelope::decode_cbor;
use crate::error::Invalid;
use crate::id::{LeaseId, OfferId};
use serde::{Deserialize, Serialize};

/// Protocol name of live capacity queries.
pub const CAPACITY_PROTOCOL: &str = "/gpumesh/capacity/1";
/// Protocol name of book sync.
pub const SYNC_PROTOCOL: &str = "/gpumesh/sync/2";
/// Protocol name of lease messages.
pub const LEASE_PROTOCOL: &str = "/gpumesh/lease/1";
/// Kademlia protocol name (peer discovery only; gpumesh stores no records in the DHT).
pub const KAD_PROTOCOL: &str = "/gpumesh/kad/1";
/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/gpumesh/1";

/// Largest capacity query, bytes.
pub const MAX_CAPACITY_QUERY: usize = 4 * 1024;
/// Most offers in one capacity answer.
pub const MAX_CAPACITY_OFFERS: usize = 64;
/// Largest capacity answer, bytes.
pub const MAX_CAPACITY_ANSWER: usize = MAX_CAPACITY_OFFERS * (crate::envelope::MAX_GOSSIP_ENVELOPE + 8) + 64;
/// Largest lease request or reply, bytes.
pub const MAX_LEASE_RPC: usize = crate::envelope::MAX_LEASE_ENVELOPE + 64;
/// How long a renter waits for the answer to a lease message, ms. A provider answers every
/// lease message within it, start hook and durable write included, so it must stop a start
/// hook well before (the reference node allows a hook at most [`MAX_START_HOOK_MS`]).
pub const LEASE_ANSWER_WITHIN_MS: u64 = 120_000;
/// The longest a provider lets its start hook run, ms: the rest of
/// [`LEASE_ANSWER_WITHIN_MS`] is for the durable write and the way back.
pub const MAX_START_HOOK_MS: u64 = 90_000;

/// The gossipsub topic that carries offers and withdrawals of a network.
pub fn offers_topic(network: &str) -> String {
    format!("/gpumesh/{network}/offers/1")
}

/// A renter asks a provider which of its offers match a query, right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityQuery {
    pub v: u32,
    pub network: String,
    /// A query in the query language; empty matches every offer.
    pub query: String,
}

/// The provider's answer: its current signed offers that match (each an offer envelope).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityAnswer {
    pub v: u32,
    pub offers: Vec<Bytes>,
}

/// A newly connected peer asks for the offers this node holds, one page at a time: the
/// first request has no `after`; each next one carries the answer's `next`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    pub v: u32,
    pub network: String,
    /// Only offers whose id sorts above this one (bytewise). Omitted on the first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<OfferId>,
    /// The asking node's [`crate::SyncDigest`] ([`crate::book::SYNC_DIGEST_BYTES`] bytes):
    /// only offers in ranges where it differs from the answering node's are sent. Omitted
    /// by a node whose book is empty (everything is sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub have: Option<Bytes>,
}

/// The answer to a [`SyncRequest`]: live offer envelopes from the book in ascending offer id
/// order, at most [`MAX_SYNC_OFFERS`] and [`MAX_SYNC_ANSWER`] bytes. Each is checked like
/// gossip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncAnswer {
    pub v: u32,
    pub offers: Vec<Bytes>,
    /// Present when more offers follow: the id of the last offer in this page, to send back
    /// as `after`. Omitted on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<OfferId>,
}

/// What a node sends as a [`SyncAnswer`], borrowing the envelopes from its book instead of
/// copying them: encodes byte for byte like a `SyncAnswer` with the same contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncAnswerRef<'a> {
    pub v: u32,
    pub offers: Vec<BytesRef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<OfferId>,
}

/// Largest sync request, bytes (a digest of 2048 bytes, the network name and a cursor).
pub const MAX_SYNC_REQUEST: usize = 4096;
/// Most offers in one sync answer.
pub const MAX_SYNC_OFFERS: usize = 4096;
/// Largest sync answer, bytes.
pub const MAX_SYNC_ANSWER: usize = 4 * 1024 * 1024;

/// A message on `/gpumesh/lease/1` from renter to provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LeaseRpc {
    /// A `LeaseRequest` envelope.
    Request(Bytes),
    /// A `LeaseRelease` envelope.
    Release(Bytes),
    /// Ask what became of a lease (the renter's end-of-lease check and crash recovery).
    Status(LeaseId),
}

/// The provider's reply on `/gpumesh/lease/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LeaseRpcReply {
    /// A `LeaseGrant` envelope, answering a request.
    Grant(Bytes),
    /// A `LeaseReject` envelope, answering a request or a release.
    Reject(Bytes),
    /// A `UsageReceipt` envelope: the lease has ended.
    Receipt(Bytes),
    /// A `LeaseGrant` envelope: the lease is still running (answering a status).
    Active(Bytes),
    /// The provider knows no such lease for the asking peer.
    Unknown,
}

/// Encodes any wire message to CBOR.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    crate::envelope::encode_body(msg)
}

/// Decodes a wire message, refusing more than `max` bytes before parsing.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, Invalid> {
    if bytes.len() > max {
        return Err(Invalid::Oversized { len: bytes.len(), max });
    }
    decode_cbor(bytes)
}
