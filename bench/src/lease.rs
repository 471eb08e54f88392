//! Lease: request → durable grant → release between two nodes on loopback, against a raw
//! libp2p request-response exchange of the same sizes on a fresh pair of swarms plus one sled
//! flush (what the provider must at least do before it answers). The two are measured in
//! alternating blocks while both are up.

use crate::net::{BenchNode, Responder, RrClient, node_config, rr_server, wait_until};
use crate::stats::Summary;
use crate::{Args, SuiteResult};
use anyhow::{Context, Result};
use gpumesh_node::lease_task::LeaseParams;
use serde_json::json;
use std::time::{Duration, Instant};

const NET: &str = "bench-lease";
/// Leases measured in a row before the baseline takes its turn (and the other way round).
const BLOCK: usize = 25;

pub async fn run(args: &Args) -> Result<SuiteResult> {
    let count = args.pick(args.leases, 500, 100);
    let provider = BenchNode::start(node_config(NET, Some("H100-SXM-80GB:8"), vec![])).await?;
    let renter = BenchNode::start(node_config(NET, None, vec![provider.addr.clone()])).await?;
    let pid = provider.node.peer_id.clone();
    let r = &renter;
    wait_until("the provider's offer at the renter", Duration::from_secs(30), || {
        let pid = pid.clone();
        async move { r.node.handle.offers(all()).await.is_ok_and(|o| o.iter().any(|o| o.provider == pid)) }
    })
    .await?;
    let offer_id = renter
        .node
        .handle
        .offers(all())
        .await?
        .into_iter()
        .find(|o| o.provider == pid)
        .context("offer")?
        .offer_id;
    let offer = renter.node.handle.find_offer(offer_id).await?.map_err(|e| anyhow::anyhow!("{e}"))?;

    // One lease outside the measure, as the baseline's first exchange (which connects) is:
    // it opens the lease protocol's first stream and gives the grant's GPU list for the sizes.
    cycle(&renter, &offer).await?;
    let leases = renter.node.handle.leases().await?;
    let (req_size, grant_size) =
        sizes(&renter, &provider, &offer, leases.first().map(|l| l.gpu_uuids.clone()).unwrap_or_default());

    // Baseline: request → (sled write + flush) → response of the same sizes, on a fresh pair
    // of swarms.
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new().path(dir.path()).mode(sled::Mode::LowSpace).open()?;
    let (peer, addr) =
        rr_server(1, "/bench/lease-echo/1", Responder::FlushThenEcho { size: grant_size, db }).await?;
    let client = RrClient::start(2, "/bench/lease-echo/1")?;
    client.request(peer, &addr, vec![1; req_size]).await?; // connect

    // Ours and the baseline take turns in blocks, so that a noisy spell of a shared machine
    // falls on both rather than on whichever ran during it.
    let mut lease_t = Vec::new();
    let mut release_t = Vec::new();
    let mut cycle_t = Vec::new();
    let mut base = Vec::new();
    while lease_t.len() < count {
        let block = BLOCK.min(count - lease_t.len());
        for _ in 0..block {
            let (lease, release) = cycle(&renter, &offer).await?;
            lease_t.push(lease);
            release_t.push(release);
            cycle_t.push(lease + release);
        }
        for _ in 0..block {
            base.push(client.request(peer, &addr, vec![1; req_size]).await?);
        }
    }
    let recorded = renter.node.handle.leases().await?.len();
    renter.node.stop().await;
    provider.node.stop().await;
    let (l, rl, c, b) =
        (Summary::of(&lease_t), Summary::of(&release_t), Summary::of(&cycle_t), Summary::of(&base));
    let ratio = l.p99_ms / b.p99_ms.max(1e-9);
    Ok(SuiteResult {
        suite: "lease",
        ours: json!({"lease": l, "release": rl, "request_grant_release": c}),
        baseline: json!({"request_response_with_flush": b}),
        ratio,
        headline: "p99 of a lease (request → durable grant, as the renter's API call sees it) / raw request-response + one sled flush".into(),
        goal: "ratio <= 2.0".into(),
        goal_met: Some(ratio <= 2.0),
        params: json!({"leases": count, "request_bytes": req_size, "grant_bytes": grant_size, "leases_recorded": recorded, "block": BLOCK}),
        notes: vec![
            "a lease makes two writes durable: the provider's grant (before it is sent) and the renter's record of its request (flushed while the request travels; the call returns once both are done)".into(),
            format!("ours and the baseline alternate in blocks of {BLOCK}, each after one exchange outside the measure"),
        ],
    })
}

/// One lease and its release, as the renter's API calls see them.
async fn cycle(
    renter: &BenchNode,
    offer: &gpumesh_protocol::Verified<gpumesh_protocol::Offer>,
) -> Result<(Duration, Duration)> {
    let t0 = Instant::now();
    let params =
        LeaseParams { offer: offer.clone(), gpus: 1, duration_s: 600, max_price: None, ssh_key: None };
    let l = renter.node.handle.lease(params).await?.map_err(|e| anyhow::anyhow!("lease failed: {e}"))?;
    let t1 = Instant::now();
    renter
        .node
        .handle
        .release(l.lease_id.clone())
        .await?
        .map_err(|e| anyhow::anyhow!("release failed: {e}"))?;
    Ok((t1 - t0, t1.elapsed()))
}

fn all() -> gpumesh_node::handle::Search {
    gpumesh_node::handle::Search {
        query: Default::default(),
        sort: Default::default(),
        limit: usize::MAX,
        latency_weight: 0.5,
    }
}

/// Wire sizes of a lease request and of a grant for one GPU, as the renter and provider send them.
fn sizes(
    renter: &BenchNode,
    provider: &BenchNode,
    offer: &gpumesh_protocol::Verified<gpumesh_protocol::Offer>,
    uuids: Vec<String>,
) -> (usize, usize) {
    use gpumesh_protocol::lease::messages::{LeaseGrant, LeaseRequest};
    use gpumesh_protocol::wire::{LeaseRpc, LeaseRpcReply, encode};
    use gpumesh_protocol::*;
    let now = gpumesh_node::clock::now();
    let renter_id = NodeId::from_bytes(renter.key.verifying_key().to_bytes());
    let req = LeaseRequest {
        v: PROTOCOL_VERSION,
        network: NET.into(),
        renter: renter_id,
        provider: offer.provider,
        offer_id: offer.offer_id,
        gpus: 1,
        duration_s: 600,
        price: offer.price,
        max_price: offer.price,
        nonce: Nonce([0; 16]),
        issued_at: now,
        ssh_key: None,
    };
    let req_env = envelope::seal(&renter.key, &req);
    let grant = LeaseGrant {
        v: PROTOCOL_VERSION,
        network: NET.into(),
        lease_id: LeaseId::derive(&offer.provider, &renter_id, &[0; 16]),
        provider: offer.provider,
        renter: renter_id,
        offer_id: offer.offer_id,
        request: Digest32::of(&req_env),
        gpu_uuids: uuids,
        gpu_indices: vec![0],
        start: now,
        end: now.plus_secs(600),
        price: offer.price,
        access: "{}".into(),
    };
    let grant_env = envelope::seal(&provider.key, &grant);
    (encode(&LeaseRpc::Request(Bytes(req_env))).len(), encode(&LeaseRpcReply::Grant(Bytes(grant_env))).len())
}
