//! Leasing: the signed messages ([`messages`]) and the two sans-IO state machines,
//! [`provider::ProviderEngine`] and [`renter::RenterEngine`].

pub mod messages;
pub mod provider;
pub mod renter;

use crate::bytes::Bytes;
use crate::id::{LeaseId, NodeId, OfferId};
use crate::price::Price;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// The reference replay window: a provider refuses a lease request issued longer ago than
/// this (protocol section 8.2), ms.
pub const REQUEST_MAX_AGE_MS: u64 = 120_000;

/// One physical GPU a provider can lease.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GpuUnit {
    pub uuid: String,
    /// The device index the driver uses (for `CUDA_VISIBLE_DEVICES`, `--gpus device=`).
    pub index: u32,
}

/// Where a lease is in its life. `Starting` and `Active` hold GPUs; the rest are terminal,
/// except `Requested` on the renter's side, which waits for the provider's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Renter: request sent, no answer yet.
    Requested,
    /// Provider: GPUs reserved, start hook running, no grant sent yet.
    Starting,
    /// Granted and running.
    Active,
    /// Ended early by the renter.
    Released,
    /// Ended at its end time.
    Expired,
    /// The provider said no.
    Rejected,
    /// It could not start (start hook failed, no answer, crash before grant).
    Failed,
}

impl LeaseState {
    /// Whether the lease holds GPUs (provider) or may still be granted or running (renter).
    pub fn is_live(self) -> bool {
        matches!(self, LeaseState::Requested | LeaseState::Starting | LeaseState::Active)
    }

    /// Whether the lease has reached its one final state.
    pub fn is_terminal(self) -> bool {
        !self.is_live()
    }

    /// Lowercase name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Requested => "requested",
            LeaseState::Starting => "starting",
            LeaseState::Active => "active",
            LeaseState::Released => "released",
            LeaseState::Expired => "expired",
            LeaseState::Rejected => "rejected",
            LeaseState::Failed => "failed",
        }
    }
}

/// A lease as the provider stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderLease {
    pub lease_id: LeaseId,
    pub renter: NodeId,
    pub offer_id: OfferId,
    pub gpus: Vec<GpuUnit>,
    pub price: Price,
    pub start: Timestamp,
    pub end: Timestamp,
    pub state: LeaseState,
    /// The request envelope, exactly as received.
    pub request: Bytes,
    pub ssh_key: Option<String>,
    /// Access details JSON (from the start hook).
    pub access: String,
    /// The grant envelope, once granted.
    pub grant: Option<Bytes>,
    /// The usage receipt envelope, once ended.
    pub receipt: Option<Bytes>,
}

/// A lease as the renter stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenterLease {
    pub lease_id: LeaseId,
    pub provider: NodeId,
    pub offer_id: OfferId,
    pub gpus: u32,
    pub duration_s: u64,
    pub price: Price,
    pub state: LeaseState,
    pub requested_at: Timestamp,
    /// The request envelope we sent.
    pub request: Bytes,
    pub gpu_uuids: Vec<String>,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    pub access: String,
    pub grant: Option<Bytes>,
    pub receipt: Option<Bytes>,
    /// Why it was rejected or failed, for people.
    pub reason: Option<String>,
    /// The reject code, when the provider rejected.
    pub reject: Option<messages::RejectReason>,
}
