//! The API's handlers: each turns a request into one node operation.

use super::{ApiError, ApiState};
use crate::handle::{LookupError, Search};
use crate::lease_task::{LeaseError, LeaseParams};
use crate::views::*;
use axum::extract::{Path, Query as QueryParams, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use gpumesh_protocol::query::Query;
use gpumesh_protocol::rank::{DEFAULT_LATENCY_WEIGHT, SortKey};
use gpumesh_protocol::{NodeId, Price};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/peers/{id}/block", post(block))
        .route("/v1/peers/{id}/unblock", post(unblock))
        .route("/v1/gpus", get(gpus))
        .route("/v1/offers", get(offers))
        .route("/v1/query", post(query))
        .route("/v1/probe", post(probe))
        .route("/v1/leases", get(leases).post(lease))
        .route("/v1/leases/{id}", get(lease_show))
        .route("/v1/leases/{id}/release", post(release))
        .route("/v1/receipts", get(receipts))
        .route("/v1/price", post(set_price))
        .route("/metrics", get(metrics))
}

type ApiResult<T> = Result<Json<T>, ApiError>;

async fn status(State(s): State<ApiState>) -> ApiResult<StatusView> {
    Ok(Json(s.node.status().await?))
}

async fn peers(State(s): State<ApiState>) -> ApiResult<Vec<PeerView>> {
    Ok(Json(s.node.peers().await?))
}

/// `POST /v1/peers/{id}/block` and `/unblock` result.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct BlockResult {
    pub peer_id: String,
    pub blocked: bool,
    /// Whether this changed anything.
    pub changed: bool,
}

fn peer_param(id: &str) -> Result<libp2p::PeerId, ApiError> {
    id.parse().map_err(|_| ApiError::bad_request(format!("`{id}` is not a peer id (12D3KooW…)")))
}

async fn block(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<BlockResult> {
    let peer = peer_param(&id)?;
    let changed = s.node.block(peer).await?;
    Ok(Json(BlockResult { peer_id: peer.to_string(), blocked: true, changed }))
}

async fn unblock(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<BlockResult> {
    let peer = peer_param(&id)?;
    let changed = s.node.unblock(peer).await?;
    Ok(Json(BlockResult { peer_id: peer.to_string(), blocked: false, changed }))
}

async fn gpus(State(s): State<ApiState>) -> ApiResult<Vec<GpuView>> {
    Ok(Json(s.node.gpus().await?))
}

async fn metrics(State(s): State<ApiState>) -> String {
    s.metrics.encode()
}

/// Search parameters, as query string or JSON.
#[derive(Debug, Deserialize, Serialize, Default, Clone)]
#[serde(default)]
pub struct SearchParams {
    /// Query text, e.g. `gpu=h100 price<=2.5`.
    pub q: String,
    /// `price`, `latency` or `score`.
    pub sort: Option<String>,
    pub limit: Option<usize>,
    pub latency_weight: Option<f64>,
    /// For live queries and probes: how long to wait, ms.
    pub timeout_ms: Option<u64>,
}

impl SearchParams {
    fn search(&self) -> Result<Search, ApiError> {
        let query = Query::parse(&self.q)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.to_string()))?;
        let sort = match &self.sort {
            Some(s) => s.parse::<SortKey>().map_err(|e| ApiError::bad_request(e.to_string()))?,
            None => SortKey::Price,
        };
        Ok(Search {
            query,
            sort,
            limit: self.limit.unwrap_or(usize::MAX),
            latency_weight: self.latency_weight.unwrap_or(DEFAULT_LATENCY_WEIGHT),
        })
    }

    fn timeout(&self, default_ms: u64) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(default_ms).clamp(1, 120_000))
    }
}

async fn offers(
    State(s): State<ApiState>,
    QueryParams(p): QueryParams<SearchParams>,
) -> ApiResult<Vec<OfferView>> {
    Ok(Json(s.node.offers(p.search()?).await?))
}

async fn query(State(s): State<ApiState>, Json(p): Json<SearchParams>) -> ApiResult<CapacityReport> {
    let search = p.search()?;
    Ok(Json(s.node.capacity(search, p.timeout(3_000)).await?))
}

/// `POST /v1/probe` result.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct ProbeResult {
    /// Providers dialled.
    pub probed: usize,
    /// Of those, how many now have a measured RTT.
    pub measured: usize,
}

/// Probes the best `limit` (default 8) candidates of a search that have no RTT yet.
async fn probe(State(s): State<ApiState>, Json(p): Json<SearchParams>) -> ApiResult<ProbeResult> {
    let mut search = p.search()?;
    let limit = p.limit.unwrap_or(8).min(16);
    // Rank by price alone: latency is what we are about to measure.
    search.sort = SortKey::Price;
    search.limit = usize::MAX;
    let mut providers: Vec<NodeId> = Vec::new();
    for o in s.node.offers(search).await? {
        if o.latency_ms.is_none()
            && let Ok(id) = o.provider.parse::<NodeId>()
            && !providers.contains(&id)
        {
            providers.push(id);
        }
        if providers.len() >= limit {
            break;
        }
    }
    let probed = providers.len();
    let measured = s.node.probe(providers, p.timeout(2_000)).await?;
    Ok(Json(ProbeResult { probed, measured }))
}

/// `POST /v1/leases` body.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    /// Offer id or a unique prefix.
    pub offer: String,
    pub gpus: u32,
    pub duration_s: u64,
    /// USD per GPU-hour, as a decimal string.
    pub max_price: Option<String>,
    pub ssh_key: Option<String>,
}

fn lease_error(e: LeaseError) -> ApiError {
    match &e {
        LeaseError::Rejected { reason, .. } => {
            ApiError::new(StatusCode::CONFLICT, reason.as_str(), e.to_string())
        }
        LeaseError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
        LeaseError::Ambiguous { .. } | LeaseError::Invalid(_) => ApiError::bad_request(e.to_string()),
        LeaseError::Failed(_) => ApiError::new(StatusCode::BAD_GATEWAY, "failed", e.to_string()),
    }
}

async fn lease(State(s): State<ApiState>, Json(b): Json<LeaseBody>) -> ApiResult<LeaseView> {
    let offer = s.node.find_offer(b.offer.clone()).await?.map_err(|e| match e {
        LookupError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
        LookupError::Ambiguous { .. } => ApiError::bad_request(e.to_string()),
    })?;
    if b.gpus == 0 {
        return Err(ApiError::bad_request("--gpus must be at least 1"));
    }
    if b.duration_s == 0 {
        return Err(ApiError::bad_request("--duration must be above zero, e.g. 90s, 2h, 1d"));
    }
    let max_price = b
        .max_price
        .as_deref()
        .map(|p| p.parse::<Price>().map_err(|e| ApiError::bad_request(format!("--max-price: {e}"))))
        .transpose()?;
    if b.ssh_key.as_ref().is_some_and(|k| k.len() > gpumesh_protocol::lease::messages::MAX_SSH_KEY_LEN) {
        return Err(ApiError::bad_request("the SSH key is too long (4 KiB at most)"));
    }
    let params = LeaseParams { offer, gpus: b.gpus, duration_s: b.duration_s, max_price, ssh_key: b.ssh_key };
    Ok(Json(s.node.lease(params).await?.map_err(lease_error)?))
}

async fn leases(State(s): State<ApiState>) -> ApiResult<Vec<LeaseView>> {
    Ok(Json(s.node.leases().await?))
}

async fn lease_show(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<LeaseView> {
    Ok(Json(s.node.lease_show(id).await?.map_err(lease_error)?))
}

async fn release(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<LeaseView> {
    Ok(Json(s.node.release(id).await?.map_err(lease_error)?))
}

async fn receipts(State(s): State<ApiState>) -> ApiResult<Vec<ReceiptView>> {
    Ok(Json(s.node.receipts().await?))
}

/// `POST /v1/price` body.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PriceBody {
    /// USD per GPU-hour, as a decimal string.
    pub price: String,
    /// Only this model's group; every group when absent.
    pub model: Option<String>,
}

/// `POST /v1/price` result.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
pub struct PriceResult {
    /// GPU groups whose offers now carry the price.
    pub groups: usize,
}

async fn set_price(State(s): State<ApiState>, Json(b): Json<PriceBody>) -> ApiResult<PriceResult> {
    let price: Price = b
        .price
        .parse()
        .map_err(|e: gpumesh_protocol::price::PriceError| ApiError::bad_request(e.to_string()))?;
    if price.0 == 0 {
        return Err(ApiError::bad_request("a price must be above zero"));
    }
    let groups = s.node.set_price(b.model, price).await?.map_err(lease_error)?;
    Ok(Json(PriceResult { groups }))
}
