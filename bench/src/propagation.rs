//! Propagation: time from publishing an offer until it is in the offer book of every node
//! (after verification, validation and storage), against gossipsub alone with the node's
//! gossip configuration carrying payloads of the same size over the same topology (the
//! headline baseline), and
//! against gossipsub with all of the node's other libp2p protocols over the same topology,
//! doing no application work (which splits the gap into what libp2p's other protocols cost
//! and what the node's own path costs). Each phase also
//! reports the process's CPU time per offer, which a noisy shared machine moves less than
//! latency.

use crate::net::{
    Arrival, BenchNode, Flavor, Parts, RawGossip, cpu_ticks, idle_cpu, node_config, settle, wait_until,
};
use crate::offers;
use crate::stats::Summary;
use crate::{Args, SuiteResult};
use anyhow::{Context, Result};
use gpumesh_node::net::message_id;
use gpumesh_protocol::{Timestamp, envelope};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const NET: &str = "bench-propagation";
/// How long each phase's CPU use is measured with nothing published, before its offers.
const IDLE_WINDOW: Duration = Duration::from_secs(2);

/// A tiny deterministic generator for picking nodes and peers.
#[derive(Clone)]
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

pub async fn run(args: &Args) -> Result<SuiteResult> {
    let n = args.pick(args.nodes, 50, 20).max(2);
    let count = args.pick(args.offers, 200, 60);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    // --- ours: N nodes, each dialing up to 4 earlier ones.
    let mut nodes: Vec<BenchNode> = Vec::new();
    for i in 0..n {
        let mut boot = BTreeSet::new();
        for _ in 0..4.min(i) {
            boot.insert(rng.below(i));
        }
        let addrs = boot.iter().map(|&j| nodes[j].addr.clone()).collect();
        nodes.push(BenchNode::start(node_config(NET, None, addrs)).await?);
    }
    let index: HashMap<String, usize> =
        nodes.iter().enumerate().map(|(i, n)| (n.node.peer_id.clone(), i)).collect();
    // Wait for the mesh: a warm-up offer reaches everyone.
    let mut receivers: Vec<_> = nodes.iter().map(|n| n.node.handle.book_events()).collect();
    let mut seq = gpumesh_node::clock::now().0;
    let warm = measure_one(&nodes, &mut receivers, 0, &mut seq, 99, Duration::from_secs(30)).await?;
    if warm.1 < n {
        anyhow::bail!("warm-up offer reached {}/{} nodes; the network did not form", warm.1, n);
    }
    let (settle_t, settled) = settle(Duration::from_secs(60)).await;
    // Nodes above target_peers close idle connections a few seconds after they open: measure
    // once the number of connections holds still.
    let (edges_before, edges_settled) = stable_edges(&nodes, &index).await?;
    let (ours_idle, ours_idle_threads) = idle_cpu(IDLE_WINDOW).await;
    let mut ours = Vec::new();
    let mut delivered = 0usize;
    let cpu0 = cpu_ticks();
    for k in 0..count {
        let from = rng.below(n);
        let (t, got) =
            measure_one(&nodes, &mut receivers, from, &mut seq, k as u64, Duration::from_secs(5)).await?;
        delivered += got;
        if got == n {
            ours.push(t);
        }
    }
    let ours_cpu = cpu_ms_per_offer(cpu0, count);
    // The topology our nodes settled on, for the baselines to copy.
    let edges = edges_of(&nodes, &index).await?;
    let size = {
        let k = &nodes[0].key;
        envelope::seal(k, &offers::offer(k, NET, 0, 1, 1, gpumesh_node::clock::now())).len()
    };
    for node in nodes {
        node.node.stop().await;
    }

    // Both baselines publish from the same nodes in the same order. The second one is a
    // diagnostic, left out of --quick to keep it within its minute.
    let raw = baseline(Flavor::Raw, n, &edges, count, size, rng.clone()).await?;
    let protocols = if args.quick {
        None
    } else {
        Some(baseline(Flavor::Parts(Parts::ALL), n, &edges, count, size, rng).await?)
    };
    let ours_s = Summary::of(&ours);
    let ratio = ours_s.p99_ms / raw.latency.p99_ms.max(1e-9);
    let ours_delivery = delivered as f64 / (count * n) as f64;
    let vs_protocols = protocols.as_ref().map(|s| {
        json!({
            "p99": ours_s.p99_ms / s.latency.p99_ms.max(1e-9),
            "p50": ours_s.p50_ms / s.latency.p50_ms.max(1e-9),
        })
    });
    let protocols_connections = protocols.as_ref().map(|s| s.connections);
    let protocols = protocols.map(|s| {
        json!({"latency": s.latency, "delivery": s.delivery(n, count), "cpu_ms_per_offer": s.cpu_ms_per_offer,
            "idle_cpu_pct": s.idle_cpu_pct, "idle_cpu_by_thread": s.idle_threads, "settled_after_s": s.settled_after.as_secs_f64()})
    });
    Ok(SuiteResult {
        suite: "propagation",
        ours: json!({"latency": ours_s, "delivery": ours_delivery, "cpu_ms_per_offer": ours_cpu,
            "idle_cpu_pct": ours_idle, "idle_cpu_by_thread": ours_idle_threads,
            "settled_after_s": settle_t.as_secs_f64(), "settled": settled,
            "ratio_to_node_protocols": vs_protocols}),
        baseline: json!({"latency": raw.latency, "delivery": raw.delivery(n, count),
            "cpu_ms_per_offer": raw.cpu_ms_per_offer, "idle_cpu_pct": raw.idle_cpu_pct,
            "idle_cpu_by_thread": raw.idle_threads,
            "settled_after_s": raw.settled_after.as_secs_f64(),
            "node_protocols": protocols}),
        ratio,
        headline:
            "p99 time until every node has the offer: gpumesh (verified, validated, stored) / raw gossipsub"
                .into(),
        goal: "ratio <= 1.2 at p99, delivery 100 %".into(),
        goal_met: Some(ratio <= 1.2 && ours_delivery >= 1.0),
        params: json!({"nodes": n, "offers": count, "payload_bytes": size, "edges": edges.len(),
            "edges_before_measuring": edges_before, "edges_settled": edges_settled,
            "heartbeat_ms": crate::net::HEARTBEAT.as_millis(),
            "target_peers": node_config(NET, None, vec![]).target_peers,
            "baseline_connections": raw.connections, "node_protocols_connections": protocols_connections}),
        notes: vec![
            "baseline.node_protocols (full runs only): gossipsub with identify, ping, Kademlia and the three request-response protocols, each built as the node builds them, over the same edges, accepting each message at once, no application work; ours.ratio_to_node_protocols compares with it (the swarm-parts suite splits it by protocol)".into(),
            "cpu_ms_per_offer: CPU time of the whole process (all nodes) per offer while that phase measured".into(),
            format!("idle_cpu_pct: the process's CPU use, in per cent of one core, over {} s with nothing published, just before the phase's offers; idle_cpu_by_thread: the same by thread name (numbers dropped)", IDLE_WINDOW.as_secs()),
            "edges: the connections among our nodes after measuring, which the baselines dial; baseline_connections and node_protocols_connections: what each baseline had after measuring".into(),
        ],
    })
}

/// Diagnostic (`swarm-parts`, not part of `all`): what each of the node's other libp2p
/// protocols adds to gossipsub alone. The same swarms as the baselines, over one random
/// topology about as dense as the one the nodes settle on, each variant measured `rounds`
/// times in turn so that noise falls on all of them alike.
pub async fn parts(args: &Args) -> Result<SuiteResult> {
    const ALL_FOUR: &str = "+all four";
    let n = args.pick(args.nodes, 50, 20).max(2);
    let count = args.pick(args.offers, 100, 40);
    let rounds = if args.quick { 1 } else { 2 };
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    // Each node dials up to 12 earlier ones: about 22 connections a node, as at target_peers 24.
    let mut edges = BTreeSet::new();
    for i in 1..n {
        for _ in 0..12.min(i) {
            edges.insert((i, rng.below(i)));
        }
    }
    let size = {
        let k = offers::key(0);
        envelope::seal(&k, &offers::offer(&k, NET, 0, 1, 1, gpumesh_node::clock::now())).len()
    };
    let only = |p: Parts| Flavor::Parts(p);
    let none = Parts::default();
    let variants = [
        ("gossipsub", Flavor::Raw),
        ("+identify", only(Parts { identify: true, ..none })),
        ("+ping", only(Parts { ping: true, ..none })),
        ("+kademlia", only(Parts { kad: true, ..none })),
        ("+request-response x3", only(Parts { request_response: true, ..none })),
        ("+identify +kademlia", only(Parts { identify: true, kad: true, ..none })),
        (ALL_FOUR, only(Parts::ALL)),
        ("node swarm", Flavor::NodeSwarm),
    ];
    let mut runs: Vec<Vec<Baseline>> = variants.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, (_, flavor)) in variants.iter().enumerate() {
            runs[i].push(baseline(*flavor, n, &edges, count, size, rng.clone()).await?);
        }
    }
    let mean = |v: &[Baseline], f: fn(&Baseline) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    let cpu = |b: &Baseline| b.cpu_ms_per_offer.unwrap_or(f64::NAN);
    let base_cpu = mean(&runs[0], cpu);
    let base_p99 = mean(&runs[0], |b| b.latency.p99_ms);
    let mut table = Vec::new();
    for ((name, _), v) in variants.iter().zip(&runs) {
        let p99 = mean(v, |b| b.latency.p99_ms);
        let row = json!({
            "swarm": name,
            "p50_ms": mean(v, |b| b.latency.p50_ms),
            "p99_ms": p99,
            "cpu_ms_per_offer": mean(v, cpu),
            "cpu_vs_gossipsub": mean(v, cpu) / base_cpu,
            "idle_cpu_pct": mean(v, |b| b.idle_cpu_pct.unwrap_or(f64::NAN)),
            "p99_vs_gossipsub": p99 / base_p99,
            "delivery": v.iter().map(|b| b.delivery(n, count)).sum::<f64>() / v.len() as f64,
            "connections": v.iter().map(|b| b.connections).max(),
        });
        eprintln!("  {row}");
        table.push(row);
    }
    let all = variants.iter().position(|(name, _)| *name == ALL_FOUR).map_or(&Value::Null, |i| &table[i]);
    Ok(SuiteResult {
        suite: "swarm-parts",
        ours: json!(table),
        baseline: table[0].clone(),
        ratio: all["cpu_vs_gossipsub"].as_f64().unwrap_or(f64::NAN),
        headline: "CPU per offer of gossipsub with all four of the node's other protocols / gossipsub alone".into(),
        goal: "none: a diagnostic".into(),
        goal_met: None,
        params: json!({"nodes": n, "offers": count, "rounds": rounds, "edges": edges.len(), "payload_bytes": size}),
        notes: vec![
            "each row: gossipsub with the node's configuration plus the named protocols, built as the node builds them; \
             figures are means over the rounds"
                .into(),
        ],
    })
}

/// What one baseline phase measured.
struct Baseline {
    latency: Summary,
    delivered: usize,
    cpu_ms_per_offer: Option<f64>,
    /// The process's CPU use before the offers, per cent of one core, in all and by thread.
    idle_cpu_pct: Option<f64>,
    idle_threads: BTreeMap<String, f64>,
    settled_after: Duration,
    /// Connections among the swarms after measuring.
    connections: usize,
}

impl Baseline {
    fn delivery(&self, n: usize, count: usize) -> f64 {
        self.delivered as f64 / (count * n) as f64
    }
}

/// Brings up `n` gossip swarms of `flavor` over `edges`, lets them settle, then publishes one
/// warm-up and `count` measured payloads of `size` bytes from nodes picked by `rng`.
async fn baseline(
    flavor: Flavor,
    n: usize,
    edges: &BTreeSet<(usize, usize)>,
    count: usize,
    size: usize,
    mut rng: Rng,
) -> Result<Baseline> {
    let (tx, mut arrivals) = mpsc::unbounded_channel::<Arrival>();
    let mut raw = Vec::new();
    for i in 0..n {
        raw.push(RawGossip::start(i, flavor, NET, tx.clone()).await?);
    }
    for &(i, j) in edges {
        raw[i].dial(&raw[j].addr);
    }
    let raw_ref = &raw;
    wait_until("the baseline's mesh", Duration::from_secs(30), || async move {
        for r in raw_ref {
            if r.topic_peers().await == 0 {
                return false;
            }
        }
        true
    })
    .await?;
    let (settled_after, _) = settle(Duration::from_secs(60)).await;
    let (idle_cpu_pct, idle_threads) = idle_cpu(IDLE_WINDOW).await;
    let mut times = Vec::new();
    let mut delivered = 0usize;
    let mut cpu0 = None;
    for k in 0..=count {
        let from = rng.below(n);
        let mut payload = vec![0u8; size];
        payload[..8].copy_from_slice(&(k as u64).to_le_bytes());
        payload[8..16].copy_from_slice(&(0xfeed_u64).to_le_bytes());
        let id = message_id(&payload).0;
        let t0 = Instant::now();
        raw[from].publish(payload).await.then_some(()).context("baseline publish found no peers")?;
        let mut seen = BTreeSet::from([from]);
        let mut last = t0;
        let deadline = t0 + Duration::from_secs(5);
        while seen.len() < n {
            match tokio::time::timeout_at(deadline.into(), arrivals.recv()).await {
                Ok(Some(a)) if a.id == id => {
                    seen.insert(a.node);
                    last = last.max(a.at);
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        if k == 0 {
            cpu0 = cpu_ticks(); // the warm-up is not measured
            continue;
        }
        delivered += seen.len();
        if seen.len() == n {
            times.push(last - t0);
        }
    }
    let cpu_ms_per_offer = cpu_ms_per_offer(cpu0, count);
    let mut ends = 0;
    for r in &raw {
        ends += r.connected().await;
    }
    drop(raw); // each swarm's task ends when its command channel closes
    Ok(Baseline {
        latency: Summary::of(&times),
        delivered,
        cpu_ms_per_offer,
        idle_cpu_pct,
        idle_threads,
        settled_after,
        connections: ends / 2,
    })
}

/// The connections among `nodes`, as pairs of indexes.
async fn edges_of(nodes: &[BenchNode], index: &HashMap<String, usize>) -> Result<BTreeSet<(usize, usize)>> {
    let mut edges = BTreeSet::new();
    for (i, node) in nodes.iter().enumerate() {
        for p in node.node.handle.peers().await? {
            if let Some(&j) = index.get(&p.peer_id) {
                edges.insert((i.min(j), i.max(j)));
            }
        }
    }
    Ok(edges)
}

/// Waits (up to 30 s) until the number of connections among `nodes` is the same in three
/// polls one second apart; returns it, and whether it held still before the deadline.
async fn stable_edges(nodes: &[BenchNode], index: &HashMap<String, usize>) -> Result<(usize, bool)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, mut same) = (edges_of(nodes, index).await?.len(), 0);
    while same < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = edges_of(nodes, index).await?.len();
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    Ok((last, same >= 2))
}

/// CPU milliseconds per offer since `start` ticks (100 ticks a second on Linux).
fn cpu_ms_per_offer(start: Option<u64>, count: usize) -> Option<f64> {
    Some((cpu_ticks()? - start?) as f64 * 10.0 / count.max(1) as f64)
}

/// Publishes one offer from node `from` and waits until every node's book has it. Returns the
/// time until the last node had it, and how many nodes got it.
async fn measure_one(
    nodes: &[BenchNode],
    receivers: &mut [tokio::sync::broadcast::Receiver<gpumesh_node::handle::BookEvent>],
    from: usize,
    seq: &mut u64,
    k: u64,
    timeout: Duration,
) -> Result<(Duration, usize)> {
    *seq += 1;
    let key = &nodes[from].key;
    let offer = offers::offer(key, NET, k, 1 + k % 16, *seq, Timestamp(gpumesh_node::clock::now().0));
    let (id, want) = (offer.offer_id, *seq);
    let bytes = envelope::seal(key, &offer);
    for r in receivers.iter_mut() {
        while r.try_recv().is_ok() {}
    }
    let t0 = Instant::now();
    nodes[from].node.handle.publish(bytes).await?;
    let deadline = t0 + timeout;
    let mut last = t0;
    let mut got = 0;
    for r in receivers.iter_mut() {
        loop {
            match tokio::time::timeout_at(deadline.into(), r.recv()).await {
                Ok(Ok(e)) if e.offer_id == id && e.seq == want && e.present => {
                    got += 1;
                    last = last.max(e.at);
                    break;
                }
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                _ => break,
            }
        }
    }
    Ok((last - t0, got))
}
