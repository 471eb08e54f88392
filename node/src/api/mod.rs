//! The local HTTP/JSON API the CLI talks to. Every request needs `Authorization: Bearer
//! <token>` with the token from the data dir (compared in constant time); bodies are capped.
//!
//! | route | does |
//! |---|---|
//! | `GET /v1/status` | node id, network, listen addresses, peers, book size |
//! | `GET /v1/peers` | connected peers with RTT |
//! | `POST /v1/peers/{id}/block`, `/unblock` | disconnect and refuse a peer, or stop refusing it |
//! | `GET /v1/gpus` | the local GPU inventory |
//! | `GET /v1/offers?q=&sort=&limit=&latency_weight=` | search the offer book |
//! | `POST /v1/query` | live capacity query to every provider |
//! | `POST /v1/probe` | dial and ping the best candidates without an RTT |
//! | `POST /v1/leases` | lease from an offer (waits for the provider) |
//! | `GET /v1/leases`, `GET /v1/leases/{id}` | leases, by id or unique prefix |
//! | `POST /v1/leases/{id}/release` | release a lease (waits for the receipt) |
//! | `GET /v1/receipts` | verified usage receipts |
//! | `POST /v1/price` | change the price of local GPU groups (re-advertises) |
//! | `GET /metrics` | Prometheus text |

pub mod routes;

use crate::handle::NodeHandle;
use crate::metrics::{Metrics, RouteLabels};
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;

/// Largest request body, bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// Shared state of the API handlers.
#[derive(Clone, Debug)]
pub struct ApiState {
    pub node: NodeHandle,
    pub metrics: Arc<Metrics>,
    token: Arc<str>,
}

/// The error body of every failed request.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct ApiError {
    /// A sentence that says what is wrong and how to fix it.
    pub error: String,
    /// A stable code: `unauthorized`, `bad_request`, `not_found`, `rejected`, `failed`,
    /// `stopped`; for lease rejects, the reject reason (e.g. `no-capacity`).
    pub code: String,
    #[serde(skip)]
    status: u16,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, error: impl Into<String>) -> ApiError {
        ApiError { error: error.into(), code: code.into(), status: status.as_u16() }
    }
    pub fn bad_request(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self)).into_response()
    }
}

impl From<crate::handle::NodeStopped> for ApiError {
    fn from(_: crate::handle::NodeStopped) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", "the node is shutting down")
    }
}

/// The router with auth, body limit and latency metrics.
pub fn router(node: NodeHandle, metrics: Arc<Metrics>, token: String) -> Router {
    let state = ApiState { node, metrics, token: token.into() };
    routes::routes()
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth_and_measure))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn auth_and_measure(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok: bool = presented.as_bytes().ct_eq(state.token.as_bytes()).into();
    if !ok {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token; the CLI reads it from <data dir>/api.token",
        )
        .into_response();
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let resp = next.run(req).await;
    state.metrics.api_latency.get_or_create(&RouteLabels { route }).observe(started.elapsed().as_secs_f64());
    resp
}
