//! The signed lease messages: request, grant, reject (with a closed set of reasons), release,
//! usage receipt.

use crate::bytes::{Digest32, Nonce};
use crate::envelope::{Body, Kind};
use crate::id::{LeaseId, NodeId, OfferId};
use crate::price::Price;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest SSH public key a request may carry, bytes.
pub const MAX_SSH_KEY_LEN: usize = 4096;
/// Longest access-details JSON a grant may carry, bytes.
pub const MAX_ACCESS_LEN: usize = 8192;
/// Longest free-text detail of a reject, bytes.
pub const MAX_DETAIL_LEN: usize = 512;
/// Most GPUs one lease may ask for.
pub const MAX_LEASE_GPUS: u32 = 1024;

/// A renter asks a provider for `gpus` GPUs of one offer for `duration_s` seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub v: u32,
    pub network: String,
    pub renter: NodeId,
    pub provider: NodeId,
    pub offer_id: OfferId,
    pub gpus: u32,
    pub duration_s: u64,
    /// The offer price the renter saw, per GPU-hour; must equal the provider's current price.
    pub price: Price,
    /// The most the renter will pay per GPU-hour.
    pub max_price: Price,
    pub nonce: Nonce,
    pub issued_at: Timestamp,
    /// An OpenSSH public key for the provider's start hook, if the renter gives one.
    pub ssh_key: Option<String>,
}

/// The provider's yes: which GPUs, for how long, at what price, and how to reach them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseGrant {
    pub v: u32,
    pub network: String,
    /// `LeaseId::derive(provider, renter, request.nonce)`.
    pub lease_id: LeaseId,
    pub provider: NodeId,
    pub renter: NodeId,
    pub offer_id: OfferId,
    /// SHA-256 of the request envelope this grant answers.
    pub request: Digest32,
    pub gpu_uuids: Vec<String>,
    pub gpu_indices: Vec<u32>,
    pub start: Timestamp,
    pub end: Timestamp,
    /// Price per GPU-hour.
    pub price: Price,
    /// Access details as a JSON object in text (what the provider's start hook printed).
    pub access: String,
}

/// Why a provider said no. A closed set; the number is the wire code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
#[non_exhaustive]
pub enum RejectReason {
    NoCapacity = 1,
    PriceChanged = 2,
    OfferUnknownOrExpired = 3,
    DurationOutOfRange = 4,
    DeniedByPolicy = 5,
    BadSignature = 6,
    NetworkMismatch = 7,
    TooManyLeases = 8,
    PriceAboveMax = 9,
    Replayed = 10,
    InvalidRequest = 11,
    ProviderError = 12,
    UnknownLease = 13,
    NotLeaseOwner = 14,
}

impl RejectReason {
    /// Every reason, in code order.
    pub const ALL: [RejectReason; 14] = [
        RejectReason::NoCapacity,
        RejectReason::PriceChanged,
        RejectReason::OfferUnknownOrExpired,
        RejectReason::DurationOutOfRange,
        RejectReason::DeniedByPolicy,
        RejectReason::BadSignature,
        RejectReason::NetworkMismatch,
        RejectReason::TooManyLeases,
        RejectReason::PriceAboveMax,
        RejectReason::Replayed,
        RejectReason::InvalidRequest,
        RejectReason::ProviderError,
        RejectReason::UnknownLease,
        RejectReason::NotLeaseOwner,
    ];

    /// The kebab-case name used in JSON and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NoCapacity => "no-capacity",
            RejectReason::PriceChanged => "price-changed",
            RejectReason::OfferUnknownOrExpired => "offer-unknown-or-expired",
            RejectReason::DurationOutOfRange => "duration-out-of-range",
            RejectReason::DeniedByPolicy => "denied-by-policy",
            RejectReason::BadSignature => "bad-signature",
            RejectReason::NetworkMismatch => "network-mismatch",
            RejectReason::TooManyLeases => "too-many-leases",
            RejectReason::PriceAboveMax => "price-above-max",
            RejectReason::Replayed => "replayed",
            RejectReason::InvalidRequest => "invalid-request",
            RejectReason::ProviderError => "provider-error",
            RejectReason::UnknownLease => "unknown-lease",
            RejectReason::NotLeaseOwner => "not-lease-owner",
        }
    }

    /// One sentence a person understands.
    pub fn explain(self) -> &'static str {
        match self {
            RejectReason::NoCapacity => "the provider has not enough free GPUs in that offer",
            RejectReason::PriceChanged => "the offer's price changed since you saw it; search again",
            RejectReason::OfferUnknownOrExpired => "the provider no longer has that offer",
            RejectReason::DurationOutOfRange => "the duration is outside the offer's minimum and maximum",
            RejectReason::DeniedByPolicy => "the provider's policy does not allow you to lease",
            RejectReason::BadSignature => "the request's signature did not verify",
            RejectReason::NetworkMismatch => "the provider is on another network",
            RejectReason::TooManyLeases => "you already hold the most concurrent leases this provider allows",
            RejectReason::PriceAboveMax => "the offer's price is above your maximum price",
            RejectReason::Replayed => "the request was already used (replayed nonce or stale request)",
            RejectReason::InvalidRequest => "the request is malformed or asks for something impossible",
            RejectReason::ProviderError => "the provider failed to start the lease",
            RejectReason::UnknownLease => "the provider does not know that lease",
            RejectReason::NotLeaseOwner => "that lease belongs to someone else",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<RejectReason> for u8 {
    fn from(r: RejectReason) -> u8 {
        r as u8
    }
}

impl TryFrom<u8> for RejectReason {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        RejectReason::ALL
            .into_iter()
            .find(|r| *r as u8 == v)
            .ok_or_else(|| format!("unknown reject reason {v}"))
    }
}

impl std::str::FromStr for RejectReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RejectReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown reject reason `{s}`"))
    }
}

/// The provider's no, with a reason code and a short detail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseReject {
    pub v: u32,
    pub network: String,
    pub provider: NodeId,
    /// The renter the request named, when the request could be read.
    pub renter: Option<NodeId>,
    /// SHA-256 of the request (or release) envelope this answers.
    pub request: Digest32,
    pub reason: RejectReason,
    pub detail: String,
}

/// The renter ends a lease early.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRelease {
    pub v: u32,
    pub network: String,
    pub lease_id: LeaseId,
    pub renter: NodeId,
    pub provider: NodeId,
    pub issued_at: Timestamp,
}

/// How a lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndReason {
    /// The renter released it.
    Released,
    /// Its end time passed.
    Expired,
}

/// The provider's signed statement of what a finished lease used and cost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageReceipt {
    pub v: u32,
    pub network: String,
    pub lease_id: LeaseId,
    pub provider: NodeId,
    pub renter: NodeId,
    pub offer_id: OfferId,
    pub gpu_uuids: Vec<String>,
    pub start: Timestamp,
    pub end: Timestamp,
    pub price: Price,
    /// `price.cost(gpus, end - start)`: micro-USD, rounded down.
    pub amount: u64,
    pub ended_by: EndReason,
}

impl Body for LeaseRequest {
    const KIND: Kind = Kind::LeaseRequest;
    fn claimed_signer(&self) -> &NodeId {
        &self.renter
    }
}
impl Body for LeaseGrant {
    const KIND: Kind = Kind::LeaseGrant;
    fn claimed_signer(&self) -> &NodeId {
        &self.provider
    }
}
impl Body for LeaseReject {
    const KIND: Kind = Kind::LeaseReject;
    fn claimed_signer(&self) -> &NodeId {
        &self.provider
    }
}
impl Body for LeaseRelease {
    const KIND: Kind = Kind::LeaseRelease;
    fn claimed_signer(&self) -> &NodeId {
        &self.renter
    }
}
impl Body for UsageReceipt {
    const KIND: Kind = Kind::UsageReceipt;
    fn claimed_signer(&self) -> &NodeId {
        &self.provider
    }
}
