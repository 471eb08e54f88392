//! Capacity: a live capacity query fanned out to N providers with connections open, until
//! all answered; and what a cold start (dialing every provider) costs. Baseline: the same
//! fan-out of raw request-response exchanges of the same sizes to N raw servers.

use crate::net::{BenchNode, Responder, RrClient, node_config, rr_server, settle, wait_until};
use crate::stats::Summary;
use crate::{Args, SuiteResult};
use anyhow::Result;
use gpumesh_node::handle::Search;
use serde_json::json;
use std::time::{Duration, Instant};

const NET: &str = "bench-capacity";

fn search() -> Search {
    Search { query: Default::default(), sort: Default::default(), limit: usize::MAX, latency_weight: 0.5 }
}

pub async fn run(args: &Args) -> Result<SuiteResult> {
    let n = args.pick(args.providers, 50, 20);
    let reps = if args.quick { 20 } else { 100 };
    let mut providers = Vec::new();
    for i in 0..n {
        let boot = if i == 0 {
            vec![]
        } else {
            vec![providers.first().map(|p: &BenchNode| p.addr.clone()).unwrap_or_default()]
        };
        providers.push(BenchNode::start(node_config(NET, Some("RTX-4090:2"), boot)).await?);
    }
    let addrs: Vec<String> = providers.iter().map(|p| p.addr.clone()).collect();
    // A cold renter: it knows every provider's offer (book sync through provider 0) but has
    // a connection to provider 0 only.
    let cold = BenchNode::start(node_config(NET, None, vec![addrs[0].clone()])).await?;
    let c = &cold;
    wait_until("the cold renter's book", Duration::from_secs(60), || async move {
        c.node.handle.status().await.is_ok_and(|s| s.offers_known >= n)
    })
    .await?;
    let t = Instant::now();
    let first = cold.node.handle.capacity(search(), Duration::from_secs(20)).await?;
    let cold_ms = t.elapsed().as_secs_f64() * 1000.0;
    let cold_answered = first.answered.len();
    cold.node.stop().await;

    // A warm renter, connected to every provider.
    let renter = BenchNode::start(node_config(NET, None, addrs.clone())).await?;
    let r = &renter;
    wait_until("connections to every provider", Duration::from_secs(60), || async move {
        r.node.handle.status().await.is_ok_and(|s| s.peers >= n && s.offers_known >= n)
    })
    .await?;
    renter.node.handle.capacity(search(), Duration::from_secs(10)).await?; // warm-up
    let (settle_t, settled) = settle(Duration::from_secs(30)).await;
    let mut ours = Vec::new();
    let mut incomplete = 0;
    let mut rtts = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        let rep = renter.node.handle.capacity(search(), Duration::from_secs(10)).await?;
        let took = t.elapsed();
        rtts.extend(rep.answered.iter().map(|a| Duration::from_secs_f64(a.rtt_ms / 1000.0)));
        if rep.answered.len() < n {
            incomplete += 1;
        } else {
            ours.push(took);
        }
    }
    renter.node.stop().await;
    for p in providers {
        p.node.stop().await;
    }

    // Baseline: N raw servers answering an offer-sized payload, one client fanning out.
    let mut servers = Vec::new();
    for i in 0..n {
        servers.push(rr_server(100 + i as u64, "/bench/capacity/1", Responder::Echo { size: 760 }).await?);
    }
    let client = std::sync::Arc::new(RrClient::start(99, "/bench/capacity/1")?);
    let fan = |client: std::sync::Arc<RrClient>, servers: Vec<(libp2p::PeerId, libp2p::Multiaddr)>| async move {
        let t = Instant::now();
        let all =
            futures::future::join_all(servers.iter().map(|(p, a)| client.request(*p, a, vec![7; 40]))).await;
        (t.elapsed(), all.iter().filter(|r| r.is_ok()).count())
    };
    fan(client.clone(), servers.clone()).await; // connect
    let (base_settle_t, _) = settle(Duration::from_secs(30)).await;
    let mut base = Vec::new();
    for _ in 0..reps {
        let (t, ok) = fan(client.clone(), servers.clone()).await;
        if ok == n {
            base.push(t);
        }
    }
    let (o, b) = (Summary::of(&ours), Summary::of(&base));
    let ratio = o.p99_ms / b.p99_ms.max(1e-9);
    Ok(SuiteResult {
        suite: "capacity",
        ours: json!({"warm": o, "answer_rtt": Summary::of(&rtts), "incomplete_rounds": incomplete, "cold_start_ms": cold_ms, "cold_answered": cold_answered,
            "settled_after_s": settle_t.as_secs_f64(), "settled": settled}),
        baseline: json!({"raw_fanout": b, "settled_after_s": base_settle_t.as_secs_f64()}),
        ratio,
        headline: "p99 until all providers answered (connections open): gpumesh capacity query / raw request-response fan-out".into(),
        goal: "p99 <= 50 ms on loopback with connections open".into(),
        goal_met: Some(o.p99_ms <= 50.0 && incomplete == 0),
        params: json!({"providers": n, "rounds": reps}),
        notes: vec![format!("cold start (dialing {n} providers, noise handshakes included): {cold_ms:.1} ms")],
    })
}
