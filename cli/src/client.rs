//! The HTTP client for a running node's local API.

use anyhow::{Context, Result, anyhow};
use gpumesh_node::DataDir;
use gpumesh_node::api::ApiError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// How to reach a node's API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    data_dir: String,
}

/// A failed API call: the node's own error (code and message) or a transport problem.
#[derive(Debug)]
pub enum CallError {
    Api(ApiError),
    Other(anyhow::Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Api(e) => f.write_str(&e.error),
            CallError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for CallError {}

impl Client {
    /// Finds the node of `data_dir` (its `api.json` and `api.token`), or uses `api`/`token`.
    pub fn new(data_dir: &DataDir, api: Option<&str>, token: Option<&str>) -> Result<Client> {
        let dd = data_dir.root().display().to_string();
        let not_running = || {
            anyhow!(
                "no gpumesh node is running for data dir {dd}; start one with `gpumesh --data-dir {dd} node` (or pass --api and --token)"
            )
        };
        let base = match api {
            Some(a) if a.starts_with("http://") || a.starts_with("https://") => {
                a.trim_end_matches('/').to_string()
            }
            Some(a) => format!("http://{a}"),
            None => {
                let info = data_dir.read_api_info().map_err(|_| not_running())?;
                format!("http://{}", info.api)
            }
        };
        let token = match token {
            Some(t) => t.to_string(),
            None => data_dir
                .read_token()
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| format!("reading the API token of {dd}"))?,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(180))
            .no_proxy()
            .build()
            .context("building the HTTP client")?;
        Ok(Client { base, token, http, data_dir: dd })
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, CallError> {
        let resp = req.bearer_auth(&self.token).send().await.map_err(|e| {
            if e.is_connect() {
                CallError::Other(anyhow!(
                    "cannot reach the node at {} (is it running? start it with `gpumesh --data-dir {} node`)",
                    self.base,
                    self.data_dir
                ))
            } else {
                CallError::Other(anyhow!("request to the node failed: {e}"))
            }
        })?;
        let status = resp.status();
        let body =
            resp.bytes().await.map_err(|e| CallError::Other(anyhow!("reading the node's answer: {e}")))?;
        if status.is_success() {
            serde_json::from_slice(&body)
                .map_err(|e| CallError::Other(anyhow!("unexpected answer from the node: {e}")))
        } else {
            match serde_json::from_slice::<ApiError>(&body) {
                Ok(e) => Err(CallError::Api(e)),
                Err(_) => Err(CallError::Other(anyhow!(
                    "the node answered {status}: {}",
                    String::from_utf8_lossy(&body)
                ))),
            }
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    pub async fn get_query<T: DeserializeOwned, Q: Serialize>(
        &self,
        path: &str,
        q: &Q,
    ) -> Result<T, CallError> {
        self.send(self.http.get(format!("{}{path}", self.base)).query(q)).await
    }

    pub async fn post<T: DeserializeOwned, B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CallError> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }

    /// Starts a lease (`POST /v1/leases`). The node answers once the provider has; a provider
    /// that stays silent costs up to three of the lease protocol's answer windows (the request,
    /// a status question, one more copy), so this call waits that long rather than the
    /// client's usual limit.
    pub async fn start_lease<T: DeserializeOwned, B: Serialize>(&self, body: &B) -> Result<T, CallError> {
        let window = Duration::from_millis(gpumesh_protocol::wire::LEASE_ANSWER_WITHIN_MS);
        let limit = window * 3 + Duration::from_secs(30);
        self.send(self.http.post(format!("{}/v1/leases", self.base)).json(body).timeout(limit)).await
    }
}

/// Turns a call error into an anyhow error (for commands that do not treat API errors apart).
pub fn plain<T>(r: Result<T, CallError>) -> Result<T> {
    r.map_err(|e| match e {
        CallError::Api(a) => anyhow!(a.error),
        CallError::Other(o) => o,
    })
}
