//! [`Offer`] (one homogeneous group of GPUs on one provider) and [`Withdrawal`] (retires an
//! offer before it expires), with their validation rules.

use crate::envelope::{Body, Kind};
use crate::error::Invalid;
use crate::id::{NodeId, OfferId};
use crate::price::Price;
use crate::spec::{GpuSpec, HostSpec, is_valid_region};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks, carried in every body as `v`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Limits on offer fields (checked by [`Offer::validate`]).
pub mod limits {
    /// Longest network name, bytes.
    pub const NETWORK_LEN: usize = 64;
    /// Longest vendor or model name, bytes.
    pub const MODEL_LEN: usize = 64;
    /// Longest CUDA or driver version string, bytes.
    pub const VERSION_LEN: usize = 32;
    /// Most listen addresses in an offer.
    pub const ADDRS: usize = 8;
    /// Longest listen address, bytes.
    pub const ADDR_LEN: usize = 256;
    /// Most GPUs in one offer.
    pub const GPUS: u32 = 1024;
}

/// One homogeneous group of GPUs on one provider, as signed and gossiped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    /// Protocol version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The network this offer belongs to (e.g. `mainnet`, `testnet`).
    pub network: String,
    /// `OfferId::derive(provider, gpu.group_key())`.
    pub offer_id: OfferId,
    /// The provider, who must be the signer.
    pub provider: NodeId,
    /// Monotonic per provider across all its offers and withdrawals.
    pub seq: u64,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub gpu: GpuSpec,
    /// GPUs in the group.
    pub gpu_total: u32,
    /// GPUs not leased right now.
    pub gpu_free: u32,
    pub host: HostSpec,
    /// Price per GPU-hour.
    pub price: Price,
    /// Shortest lease the provider accepts, seconds.
    pub min_duration_s: u64,
    /// Longest lease the provider accepts, seconds.
    pub max_duration_s: u64,
    /// The provider's listen multiaddrs as strings, for renters to dial.
    pub addrs: Vec<String>,
}

/// Retires one offer before its expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Withdrawal {
    pub v: u32,
    pub network: String,
    pub offer_id: OfferId,
    pub provider: NodeId,
    /// From the same per-provider counter as offers; must be above the offer's.
    pub seq: u64,
    pub issued_at: Timestamp,
}

impl Body for Offer {
    const KIND: Kind = Kind::Offer;
    fn claimed_signer(&self) -> &NodeId {
        &self.provider
    }
    /// The canonical form without serde ([`crate::offer_cbor`]), anything else with serde.
    fn decode(bytes: &[u8]) -> Result<Offer, Invalid> {
        crate::offer_cbor::decode(bytes).map_or_else(|| crate::envelope::decode_body(bytes), Ok)
    }
}

impl Body for Withdrawal {
    const KIND: Kind = Kind::Withdrawal;
    fn claimed_signer(&self) -> &NodeId {
        &self.provider
    }
}

/// What a node checks a message against: its network, its clock and its tolerances.
#[derive(Clone, Debug)]
pub struct ValidationContext<'a> {
    pub network: &'a str,
    pub now: Timestamp,
    /// How far in the future `issued_at` may be (clock skew allowance), ms.
    pub max_clock_skew_ms: u64,
    /// The longest `expires_at - issued_at` accepted, ms.
    pub max_ttl_ms: u64,
}

impl ValidationContext<'_> {
    fn check_common(&self, v: u32, network: &str, issued_at: Timestamp) -> Result<(), Invalid> {
        if v != PROTOCOL_VERSION {
            return Err(Invalid::UnsupportedVersion(v));
        }
        if network != self.network {
            return Err(Invalid::WrongNetwork {
                expected: self.network.to_string(),
                got: truncate(network, limits::NETWORK_LEN),
            });
        }
        if issued_at.0 > self.now.0.saturating_add(self.max_clock_skew_ms) {
            return Err(Invalid::IssuedInFuture { issued_at, now: self.now });
        }
        Ok(())
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl Offer {
    /// Checks every rule that needs no other state: version, network, timing, id, field sense.
    /// Sequence order is checked by the offer book.
    pub fn validate(&self, ctx: &ValidationContext<'_>) -> Result<(), Invalid> {
        ctx.check_common(self.v, &self.network, self.issued_at)?;
        if self.expires_at < self.issued_at {
            return Err(Invalid::ExpiresBeforeIssued {
                issued_at: self.issued_at,
                expires_at: self.expires_at,
            });
        }
        if self.expires_at.millis_since(self.issued_at) > ctx.max_ttl_ms {
            return Err(Invalid::ExpiryTooFarAhead {
                issued_at: self.issued_at,
                expires_at: self.expires_at,
            });
        }
        if self.expires_at <= ctx.now {
            return Err(Invalid::Expired { expires_at: self.expires_at, now: ctx.now });
        }
        self.validate_fields()
    }

    /// The field-sense rules alone (also used by a provider before it signs).
    pub fn validate_fields(&self) -> Result<(), Invalid> {
        let g = &self.gpu;
        if g.vendor.len() > limits::MODEL_LEN || g.model.len() > limits::MODEL_LEN {
            return Err(Invalid::FieldTooLong("gpu.model"));
        }
        if g.model.trim().is_empty() {
            return Err(Invalid::InvalidField("gpu.model"));
        }
        if [&g.cuda_version, &g.driver_version].into_iter().flatten().any(|v| v.len() > limits::VERSION_LEN) {
            return Err(Invalid::FieldTooLong("gpu.version"));
        }
        if self.addrs.len() > limits::ADDRS || self.addrs.iter().any(|a| a.len() > limits::ADDR_LEN) {
            return Err(Invalid::FieldTooLong("addrs"));
        }
        if !is_valid_region(&self.host.region) {
            return Err(Invalid::InvalidField("host.region"));
        }
        if self.gpu_total == 0 {
            return Err(Invalid::ZeroGpus);
        }
        if self.gpu_total > limits::GPUS {
            return Err(Invalid::FieldTooLong("gpu_total"));
        }
        if self.gpu_free > self.gpu_total {
            return Err(Invalid::FreeExceedsTotal { free: self.gpu_free, total: self.gpu_total });
        }
        if g.vram_mib == 0 {
            return Err(Invalid::ZeroVram);
        }
        if self.price.0 == 0 {
            return Err(Invalid::ZeroPrice);
        }
        if self.max_duration_s == 0 {
            return Err(Invalid::ZeroDuration);
        }
        if self.min_duration_s > self.max_duration_s {
            return Err(Invalid::MinDurationExceedsMax {
                min_s: self.min_duration_s,
                max_s: self.max_duration_s,
            });
        }
        if self.offer_id != OfferId::derive(&self.provider, &g.group_key()) {
            return Err(Invalid::OfferIdMismatch);
        }
        Ok(())
    }

    /// Whether the offer has expired at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at <= now
    }
}

impl Withdrawal {
    /// Checks version, network and timing. Ownership and sequence are checked by the book.
    pub fn validate(&self, ctx: &ValidationContext<'_>) -> Result<(), Invalid> {
        ctx.check_common(self.v, &self.network, self.issued_at)?;
        if self.issued_at.0.saturating_add(ctx.max_ttl_ms) <= ctx.now.0 {
            // Older than any offer it could retire: nothing left to withdraw.
            return Err(Invalid::Expired {
                expires_at: self.issued_at.plus_millis(ctx.max_ttl_ms),
                now: ctx.now,
            });
        }
        Ok(())
    }
}
