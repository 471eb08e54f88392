//! What the local API returns: plain serializable views, shared with the CLI.

use crate::clock::rfc3339;
use gpumesh_protocol::lease::messages::UsageReceipt;
use gpumesh_protocol::lease::{LeaseState, ProviderLease, RenterLease};
use gpumesh_protocol::{Offer, Timestamp};
use serde::{Deserialize, Serialize};

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusView {
    pub peer_id: String,
    pub network: String,
    /// Bound listen addresses, each ending in `/p2p/<peer id>`.
    pub listen_addrs: Vec<String>,
    pub api: String,
    /// Connected peers.
    pub peers: usize,
    pub offers_known: usize,
    pub providers_known: usize,
    /// GPUs this node offers.
    pub local_gpus: usize,
    pub version: String,
    pub uptime_s: u64,
}

/// `GET /v1/peers` items.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PeerView {
    pub peer_id: String,
    pub addrs: Vec<String>,
    /// Latest ping round trip, ms.
    pub rtt_ms: Option<f64>,
    pub agent: Option<String>,
    /// This node's gossipsub score of the peer (negative: it misbehaved).
    pub score: Option<f64>,
}

/// An offer as shown to people and scripts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OfferView {
    pub offer_id: String,
    pub provider: String,
    pub gpu_model: String,
    pub gpu_vendor: String,
    /// Free GPUs.
    pub gpu_count: u32,
    pub gpu_total: u32,
    pub vram_mib: u32,
    pub compute_capability: Option<String>,
    pub interconnect: String,
    /// USD per GPU-hour.
    pub price: f64,
    /// Micro-USD per GPU-hour (exact).
    pub price_micros: u64,
    pub region: String,
    pub cpu_cores: u32,
    pub ram_mib: u64,
    pub disk_gib: u64,
    pub min_duration_s: u64,
    pub max_duration_s: u64,
    pub seq: u64,
    pub expires_at: String,
    /// Latest measured round trip to the provider, ms; null when unknown.
    pub latency_ms: Option<f64>,
    /// Rank score when sorted by score (lower is better).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub score: Option<f64>,
    pub addrs: Vec<String>,
}

impl OfferView {
    /// The view of an offer with an optional measured latency.
    pub fn new(o: &Offer, latency_ms: Option<f64>) -> OfferView {
        OfferView {
            offer_id: o.offer_id.to_string(),
            provider: o.provider.to_string(),
            gpu_model: o.gpu.model.clone(),
            gpu_vendor: o.gpu.vendor.clone(),
            gpu_count: o.gpu_free,
            gpu_total: o.gpu_total,
            vram_mib: o.gpu.vram_mib,
            compute_capability: o.gpu.compute_capability.map(|c| c.to_string()),
            interconnect: o.gpu.interconnect.to_string(),
            price: o.price.as_usd_f64(),
            price_micros: o.price.0,
            region: o.host.region.clone(),
            cpu_cores: o.host.cpu_cores,
            ram_mib: o.host.ram_mib,
            disk_gib: o.host.disk_gib,
            min_duration_s: o.min_duration_s,
            max_duration_s: o.max_duration_s,
            seq: o.seq,
            expires_at: rfc3339(o.expires_at),
            latency_ms,
            score: None,
            addrs: o.addrs.clone(),
        }
    }
}

/// One provider's answer to a live capacity query.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CapacityAnswerView {
    pub peer_id: String,
    /// Request to response, ms (includes dialing when not connected).
    pub rtt_ms: f64,
    /// Matching offers it returned.
    pub offers: usize,
}

/// A peer that did not answer a live capacity query.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UnreachableView {
    pub peer_id: String,
    pub error: String,
}

/// `POST /v1/query`: the result of a live capacity query.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CapacityReport {
    pub query: String,
    pub asked: usize,
    pub answered: Vec<CapacityAnswerView>,
    pub unreachable: Vec<UnreachableView>,
    /// The fresh offers that matched, ranked.
    pub offers: Vec<OfferView>,
    pub elapsed_ms: f64,
}

/// A lease, from either side.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LeaseView {
    pub lease_id: String,
    /// `renter` or `provider`.
    pub role: String,
    pub state: String,
    pub provider: String,
    pub renter: String,
    pub offer_id: String,
    pub gpus: u32,
    pub gpu_uuids: Vec<String>,
    /// USD per GPU-hour.
    pub price: f64,
    pub start: Option<String>,
    pub end: Option<String>,
    /// Access details from the provider's start hook (a JSON object).
    pub access: serde_json::Value,
    /// Why it was rejected or failed.
    pub reason: Option<String>,
    /// The reject code, when rejected.
    pub reject: Option<String>,
}

fn access_json(s: &str) -> serde_json::Value {
    if s.is_empty() {
        return serde_json::Value::Object(Default::default());
    }
    serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_string()))
}

fn ts(t: Option<Timestamp>) -> Option<String> {
    t.map(rfc3339)
}

impl LeaseView {
    pub fn renter(l: &RenterLease, me: &str) -> LeaseView {
        LeaseView {
            lease_id: l.lease_id.to_string(),
            role: "renter".into(),
            state: l.state.as_str().into(),
            provider: l.provider.to_string(),
            renter: me.into(),
            offer_id: l.offer_id.to_string(),
            gpus: l.gpus,
            gpu_uuids: l.gpu_uuids.clone(),
            price: l.price.as_usd_f64(),
            start: ts(l.start),
            end: ts(l.end),
            access: access_json(&l.access),
            reason: l.reason.clone(),
            reject: l.reject.map(|r| r.as_str().to_string()),
        }
    }

    pub fn provider(l: &ProviderLease, me: &str) -> LeaseView {
        let state = match l.state {
            LeaseState::Starting => "starting",
            s => s.as_str(),
        };
        LeaseView {
            lease_id: l.lease_id.to_string(),
            role: "provider".into(),
            state: state.into(),
            provider: me.into(),
            renter: l.renter.to_string(),
            offer_id: l.offer_id.to_string(),
            gpus: l.gpus.len() as u32,
            gpu_uuids: l.gpus.iter().map(|g| g.uuid.clone()).collect(),
            price: l.price.as_usd_f64(),
            start: ts(Some(l.start)),
            end: ts(Some(l.end)),
            access: access_json(&l.access),
            reason: None,
            reject: None,
        }
    }
}

/// A verified usage receipt.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReceiptView {
    pub lease_id: String,
    pub provider: String,
    pub renter: String,
    pub gpus: u32,
    pub gpu_uuids: Vec<String>,
    pub start: String,
    pub end: String,
    /// USD per GPU-hour.
    pub price: f64,
    /// Total in USD.
    pub amount: f64,
    /// Total in micro-USD (exact).
    pub amount_micros: u64,
    pub ended_by: String,
}

impl ReceiptView {
    pub fn new(r: &UsageReceipt) -> ReceiptView {
        ReceiptView {
            lease_id: r.lease_id.to_string(),
            provider: r.provider.to_string(),
            renter: r.renter.to_string(),
            gpus: r.gpu_uuids.len() as u32,
            gpu_uuids: r.gpu_uuids.clone(),
            start: rfc3339(r.start),
            end: rfc3339(r.end),
            price: r.price.as_usd_f64(),
            amount: r.amount as f64 / 1e6,
            amount_micros: r.amount,
            ended_by: match r.ended_by {
                gpumesh_protocol::lease::messages::EndReason::Released => "released".into(),
                gpumesh_protocol::lease::messages::EndReason::Expired => "expired".into(),
            },
        }
    }
}

/// A GPU of the local inventory (`GET /v1/gpus`).
pub use crate::inventory::DetectedGpu as GpuView;
