//! # gpumesh-protocol
//!
//! The pure core of gpumesh: everything two nodes must agree on, and every decision a node
//! makes, with no IO. It never reads a clock or a global random source: time (`now`) and
//! randomness (nonces, keys) are parameters. The node crate carries out what it decides.
//!
//! # Layout
//!
//! - [`id`]: [`NodeId`] (ed25519 key, printed as a libp2p peer id), [`OfferId`], [`LeaseId`].
//! - [`time`]: [`Timestamp`] in Unix milliseconds.
//! - [`price`]: [`Price`], integer micro-USD per GPU-hour with exact decimal text.
//! - [`spec`]: [`GpuSpec`], [`HostSpec`], [`Interconnect`], [`ComputeCapability`].
//! - [`bytes`]: byte-string newtypes ([`Bytes`], [`Nonce`], [`Digest32`]).
//! - [`envelope`]: the signed envelope, domain tags, size limits, and [`Verified`].
//! - [`error`]: [`Invalid`], every reason a remote message is refused.
//! - [`offer`]: [`Offer`], [`Withdrawal`] and their validation rules.
//! - [`offer_cbor`]: a decoder for offers in the exact form this crate encodes them, beside
//!   serde's (which decides everything else).
//! - [`book`]: [`OfferBook`], the offer book's rules and in-memory index.
//! - [`lease`]: lease messages and the provider and renter state machines.
//! - [`wire`]: protocol names and the request-response messages.
//! - [`query`]: the query language (`gpu=H100 vram>=80 price<=2.5`).
//! - [`rank`]: sorting by price, latency or a blended score.

pub mod book;
pub mod bytes;
pub mod envelope;
pub mod error;
pub mod id;
pub mod lease;
pub mod offer;
pub mod offer_cbor;
pub mod price;
pub mod query;
pub mod rank;
pub mod spec;
pub mod time;
pub mod wire;

pub use book::{BookChange, BookConfig, OfferBook, SyncDigest, SyncPage};
pub use bytes::{Bytes, BytesRef, Digest32, Nonce, SharedBytes};
pub use envelope::{Kind, Verified};
pub use error::Invalid;
pub use id::{LeaseId, NodeId, OfferId};
pub use offer::{Offer, PROTOCOL_VERSION, ValidationContext, Withdrawal};
pub use price::Price;
pub use spec::{ComputeCapability, GpuSpec, HostSpec, Interconnect};
pub use time::Timestamp;

/// Re-exported so users of the protocol need not depend on ed25519-dalek directly.
pub use ed25519_dalek::SigningKey;
