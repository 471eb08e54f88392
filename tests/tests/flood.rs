//! Flood (issue 7, part 2). One key publishes thousands of validly signed, distinct offers to
//! node A, while a second raw peer spams A with capacity queries and lease requests.
//! Throughout, A's local API answers `GET /v1/status` with a p99 under 100 ms (250 ms for the
//! open-loop flood in a debug build); A keeps at most
//! the per-provider cap (64) of the flooder's offers, and so does the third node C behind it;
//! every spam request gets an answer (lease requests a signed grant or reject); and an honest
//! provider P's price changes still reach C during and after the flood. Printed: flood
//! throughput, how many flood messages reached A's validation, API latency percentiles, and the
//! process's RSS (printed only: every node of the test lives in this one process).
//!
//! Two ways to flood:
//! - *open loop*: every offer handed to gossipsub as fast as it takes them
//!   (`an_open_loop_flood_reaches_validation` checks that they reach A's validation rather
//!   than being dropped whole by gossipsub's read limit);
//! - *paced*: bursts of 8 offers, the next as soon as A has counted the last, which keeps A
//!   validating without a pause.
//!
//! The fast runs flood 3,000 offers; the full 20,000 run with
//! `cargo test -p gpumesh-tests --test flood -- --ignored`.

use anyhow::{Context, Result, bail};
use gpumesh_protocol::envelope;
use gpumesh_protocol::lease::messages::{LeaseGrant, LeaseReject, LeaseRequest};
use gpumesh_protocol::wire::{self, CapacityAnswer, CapacityQuery, LeaseRpc, LeaseRpcReply};
use gpumesh_protocol::*;
use gpumesh_tests::adversary::{self, FloodReport, GossipPeer, Proto, RpcPeer, offer_for};
use gpumesh_tests::measure::{Percentiles, vm_rss_kib};
use gpumesh_tests::{TestNode, poll, test_config, wait_for};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// What the spamming peer got back.
#[derive(Debug, Default)]
struct SpamReport {
    capacity_answers: usize,
    capacity_failures: usize,
    lease_replies: BTreeMap<String, usize>,
    lease_failures: usize,
    unsigned_or_bad: usize,
    errors: BTreeMap<String, usize>,
}

/// Spams A with capacity queries and lease requests (fresh nonces, all for A's offer) until
/// `stop`, `in_flight` at a time.
async fn spam(
    peer: RpcPeer,
    a_addr: String,
    offer: Verified<Offer>,
    stop: Arc<AtomicBool>,
    in_flight: usize,
) -> SpamReport {
    let report = Arc::new(tokio::sync::Mutex::new(SpamReport::default()));
    let mut workers = Vec::new();
    for w in 0..in_flight {
        let (peer, a_addr, offer, stop, report) =
            (peer.clone(), a_addr.clone(), offer.clone(), stop.clone(), report.clone());
        workers.push(tokio::spawn(async move {
            let mut i: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                if (w as u64 + i).is_multiple_of(2) {
                    let q = CapacityQuery {
                        v: PROTOCOL_VERSION,
                        network: offer.network.clone(),
                        query: String::new(),
                    };
                    let r = peer.request(Proto::Capacity, &a_addr, wire::encode(&q)).await;
                    let mut rep = report.lock().await;
                    match r {
                        Ok(Ok(b))
                            if wire::decode::<CapacityAnswer>(&b, wire::MAX_CAPACITY_ANSWER).is_ok() =>
                        {
                            rep.capacity_answers += 1
                        }
                        Ok(Ok(b)) => {
                            rep.unsigned_or_bad += 1;
                            *rep.errors
                                .entry(format!("capacity answer {:?}", &b[..b.len().min(16)]))
                                .or_default() += 1;
                        }
                        Ok(Err(e)) => {
                            rep.capacity_failures += 1;
                            *rep.errors.entry(e).or_default() += 1;
                        }
                        Err(e) => {
                            rep.capacity_failures += 1;
                            *rep.errors.entry(e.to_string()).or_default() += 1;
                        }
                    }
                } else {
                    let mut nonce = [0u8; 16];
                    nonce[..8].copy_from_slice(&i.to_le_bytes());
                    nonce[8..16].copy_from_slice(&(w as u64).to_le_bytes());
                    let req = LeaseRequest {
                        v: PROTOCOL_VERSION,
                        network: offer.network.clone(),
                        renter: adversary::node_id(&peer.key),
                        provider: offer.provider,
                        offer_id: offer.offer_id,
                        gpus: 1,
                        duration_s: 60,
                        price: offer.price,
                        max_price: offer.price,
                        nonce: Nonce(nonce),
                        issued_at: gpumesh_node::clock::now(),
                        ssh_key: None,
                    };
                    let bytes = wire::encode(&LeaseRpc::Request(Bytes(envelope::seal(&peer.key, &req))));
                    let r = peer.request(Proto::Lease, &a_addr, bytes).await;
                    let mut rep = report.lock().await;
                    let kind = match r {
                        Ok(Ok(b)) => match wire::decode::<LeaseRpcReply>(&b, wire::MAX_LEASE_RPC) {
                            Ok(LeaseRpcReply::Grant(g)) => {
                                envelope::open::<LeaseGrant>(&g.0).ok().map(|_| "grant".to_string())
                            }
                            Ok(LeaseRpcReply::Reject(r)) => envelope::open::<LeaseReject>(&r.0)
                                .ok()
                                .filter(|r| r.signer() == &offer.provider)
                                .map(|r| r.reason.as_str().to_string()),
                            _ => None,
                        },
                        Ok(Err(e)) => {
                            rep.lease_failures += 1;
                            *rep.errors.entry(e).or_default() += 1;
                            continue;
                        }
                        Err(e) => {
                            rep.lease_failures += 1;
                            *rep.errors.entry(e.to_string()).or_default() += 1;
                            continue;
                        }
                    };
                    match kind {
                        Some(k) => *rep.lease_replies.entry(k).or_default() += 1,
                        None => {
                            rep.unsigned_or_bad += 1;
                            *rep.errors.entry("lease reply not a signed grant/reject".into()).or_default() +=
                                1;
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    Arc::try_unwrap(report).map(|m| m.into_inner()).unwrap_or_default()
}

/// Samples `GET /v1/status` on A every 10 ms until `stop`; returns each round trip.
async fn sample_api(a_api: String, token: String, stop: Arc<AtomicBool>) -> (Vec<Duration>, usize) {
    let http = reqwest::Client::new();
    let url = format!("http://{a_api}/v1/status");
    let mut samples = Vec::new();
    let mut errors = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let t = Instant::now();
        let ok = match http.get(&url).bearer_auth(&token).send().await {
            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        if ok {
            samples.push(t.elapsed());
        } else {
            errors += 1;
        }
    }
    (samples, errors)
}

/// Changes P's price and returns how long until C holds the new price.
async fn reprice(p: &TestNode, c: &TestNode, usd: &str) -> Result<Duration> {
    let micros = (usd.parse::<f64>()? * 1e6).round() as u64;
    let pid = p.peer_id();
    let t = Instant::now();
    p.handle().set_price(None, usd.parse()?).await?.context("re-pricing P")?;
    wait_for(&format!("P's price {usd} at C"), WAIT, || async {
        matches!(c.offers_of(&pid).await, Ok(o) if o.len() == 1 && o[0].price_micros == micros)
    })
    .await?;
    Ok(t.elapsed())
}

async fn gossip_at(n: &TestNode, labels: &str) -> f64 {
    n.metric_sum(&format!("gpumesh_gossip_messages_total{{{labels}")).await.unwrap_or(f64::NAN)
}

/// How the flooder sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    OpenLoop,
    Paced,
}

/// Offers per paced burst: 8 × about 520 bytes stays under gossipsub's 4608-byte read limit.
const BURST: usize = 8;

/// What a flood run measured.
#[derive(Debug)]
struct Outcome {
    /// Flood messages A's validation saw (accepted or ignored).
    validated: f64,
}

async fn flood_test(n: usize, mode: Mode) -> Result<Outcome> {
    let net = "t-flood";
    let a = TestNode::start(test_config(net, Some("RTX-4090:2"), &[])).await?;
    let a_addr = a.addr().await?;
    let p = TestNode::start(test_config(net, Some("L40S:1"), std::slice::from_ref(&a_addr))).await?;
    let c = TestNode::start(test_config(net, None, std::slice::from_ref(&a_addr))).await?;
    let (a_id, p_id) = (a.peer_id(), p.peer_id());
    wait_for("A's and P's offers at C", WAIT, || async {
        matches!(c.offers_of(&a_id).await, Ok(o) if o.len() == 1)
            && matches!(c.offers_of(&p_id).await, Ok(o) if o.len() == 1)
    })
    .await?;
    let a_offer_id = a.offers_of(&a_id).await?[0].offer_id.clone();
    let a_offer = a.handle().find_offer(a_offer_id).await??;

    // The flood, signed before it starts so that signing does not slow the sending.
    let key = adversary::key(20_000);
    let flooder_id = adversary::node_id(&key).to_string();
    let t = Instant::now();
    let now = gpumesh_node::clock::now();
    let msgs: Vec<Vec<u8>> = (0..n)
        .map(|i| envelope::seal(&key, &offer_for(&key, net, &format!("FLOOD-{i}"), 1 + i as u64, now)))
        .collect();
    println!("{mode:?}: signed {n} offers in {:.2}s", t.elapsed().as_secs_f64());
    let flooder = Arc::new(GossipPeer::join(key, net, &a_addr, 64 * 1024).await?);
    let spammer = RpcPeer::start(adversary::key(20_001), 64).await?;

    let rss0 = vm_rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler =
        tokio::spawn(sample_api(a.running().api.to_string(), a.running().token.clone(), stop.clone()));
    let spam_task = tokio::spawn(spam(spammer, a_addr.clone(), a_offer, stop.clone(), 32));
    let counted0 = gossip_at(&a, "").await;

    let flood_started = Instant::now();
    let (fl, a_metrics) = (flooder.clone(), a.http.clone());
    let metrics_url = format!("http://{}/metrics", a.running().api);
    let token = a.running().token.clone();
    let flood = tokio::spawn(async move {
        match mode {
            Mode::OpenLoop => fl.flood(msgs).await,
            Mode::Paced => {
                let mut total = FloodReport::default();
                let mut sent = 0.0;
                for burst in msgs.chunks(BURST) {
                    let r = fl.flood(burst.to_vec()).await?;
                    total.published += r.published;
                    total.failed += r.failed;
                    sent += burst.len() as f64;
                    // The next burst as soon as A has counted this one (5 ms polls).
                    let deadline = Instant::now() + WAIT;
                    loop {
                        let text =
                            a_metrics.get(&metrics_url).bearer_auth(&token).send().await?.text().await?;
                        if gossip_count(&text) - counted0 >= sent {
                            break;
                        }
                        if Instant::now() > deadline {
                            bail!("A never counted burst ending at {sent}");
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                total.elapsed = flood_started.elapsed();
                Ok(total)
            }
        }
    });
    // An honest price change while the flood runs.
    let during = reprice(&p, &c, "0.91").await?;
    let during_flood = !flood.is_finished();
    let report = flood.await??;
    // Let A work through what it received: its counters stop moving once the backlog is done
    // (unchanged over five polls, 250 ms).
    let last = std::cell::Cell::new((-1.0, 0, flood_started.elapsed()));
    let (validated, settled) = poll("A to finish validating the flood", WAIT, || {
        let last = &last;
        let a = &a;
        async move {
            let now = gossip_at(a, "").await;
            let (prev, same, changed_at) = last.get();
            let (same, changed_at) =
                if now == prev { (same + 1, changed_at) } else { (0, flood_started.elapsed()) };
            last.set((now, same, changed_at));
            (same >= 5).then_some((now - counted0, changed_at))
        }
    })
    .await?;
    let after = reprice(&p, &c, "0.93").await?;
    stop.store(true, Ordering::Relaxed);
    let (samples, api_errors) = sampler.await?;
    let spam = spam_task.await?;
    let rss1 = vm_rss_kib();

    let accepted = gossip_at(&a, "result=\"accepted\"").await;
    let capped = gossip_at(&a, "result=\"ignored\",reason=\"provider_cap_reached\"}").await;
    let lat = Percentiles::of(&samples).context("no API samples")?;
    println!(
        "{mode:?}: {} of {n} published in {:.2}s ({:.0} msg/s; {} refused by the flooder's gossipsub)",
        report.published,
        report.elapsed.as_secs_f64(),
        report.published as f64 / report.elapsed.as_secs_f64(),
        report.failed
    );
    println!(
        "{mode:?}: {validated} gossip outcomes counted at A (the flood plus P's re-pricing) within {:.2}s of the \
         flood's start ({:.0}/s): {accepted} accepted in all, {capped} ignored as provider_cap_reached",
        settled.as_secs_f64(),
        validated / settled.as_secs_f64()
    );
    println!("{mode:?}: API GET /v1/status during the flood: {lat}, {api_errors} errors");
    println!(
        "{mode:?}: spam got {} capacity answers ({} failed), lease replies {:?} ({} failed), {} unsigned/bad; errors {:?}",
        spam.capacity_answers,
        spam.capacity_failures,
        spam.lease_replies,
        spam.lease_failures,
        spam.unsigned_or_bad,
        spam.errors
    );
    println!(
        "{mode:?}: honest price change to C took {:.0} ms during the flood (flood still running: {during_flood}), \
         {:.0} ms after",
        during.as_secs_f64() * 1e3,
        after.as_secs_f64() * 1e3
    );
    println!(
        "{mode:?}: RSS of the test process (A, P, C and both adversaries): {} KiB before, {} KiB after",
        rss0.map_or("?".into(), |v| v.to_string()),
        rss1.map_or("?".into(), |v| v.to_string())
    );

    let cap = 64;
    for (name, node) in [("A", &a), ("C", &c)] {
        let held = node.offers_of(&flooder_id).await?.len();
        println!("{mode:?}: {name} holds {held} of the flooder's offers");
        if held > cap {
            bail!("{name} holds {held} offers of one provider, above the cap of {cap}");
        }
        if mode == Mode::Paced && held != cap {
            bail!("{name} holds {held} of the flooder's offers, not the first {cap}");
        }
    }
    assert!(!flooder_banned(&a, &flooder).await, "valid offers over the cap got the flooder banned");
    assert_eq!(api_errors, 0, "API requests failed during the flood");
    assert!(spam.capacity_answers > 0 && spam.lease_replies.values().sum::<usize>() > 0, "{spam:?}");
    assert_eq!(
        (spam.capacity_failures, spam.lease_failures),
        (0, 0),
        "spam requests went unanswered: {spam:?}"
    );
    assert_eq!(spam.unsigned_or_bad, 0, "a reply was malformed or a lease reply not signed by A: {spam:?}");
    assert_eq!(spam.lease_replies.get("grant"), Some(&2), "A has 2 GPUs: {spam:?}");
    // The open-loop flood in an unoptimised build on 2 shared cores puts this p99 (the second
    // worst of about 150 samples) anywhere from 36 to 110 ms, with the code before 2026-11-27's
    // book changes as with the code after; a stalled event loop shows seconds.
    let bound = if mode == Mode::OpenLoop && cfg!(debug_assertions) { 250 } else { 100 };
    assert!(lat.p99 < Duration::from_millis(bound), "API p99 {lat} is not under {bound} ms");
    Ok(Outcome { validated })
}

/// The sum of every gossip outcome counter in a Prometheus text.
fn gossip_count(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("gpumesh_gossip_messages_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether A disconnected the flooder (it sent only valid offers: over-cap ones are ignored,
/// not penalised).
async fn flooder_banned(a: &TestNode, flooder: &GossipPeer) -> bool {
    a.metric_sum("gpumesh_peer_bans_total").await.unwrap_or(0.0) > 0.0 || !flooder.connected_to_target()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_flood_of_3000_offers_and_request_spam_leave_the_api_responsive_memory_bounded_and_honest_offers_flowing()
-> Result<()> {
    flood_test(3_000, Mode::Paced).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_flood_of_3000_offers_reaches_validation_and_leaves_the_api_responsive_and_memory_bounded()
-> Result<()> {
    let n = 3_000;
    let o = flood_test(n, Mode::OpenLoop).await?;
    // Nothing is dropped whole before validation (as gossipsub's read limit once did).
    assert!(
        o.validated >= 0.99 * n as f64,
        "only {} of {n} flood messages reached A's validation",
        o.validated
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: run with `cargo test -p gpumesh-tests --test flood -- --ignored`"]
async fn a_paced_flood_of_20000_offers_and_request_spam_leave_the_api_responsive_memory_bounded_and_honest_offers_flowing()
-> Result<()> {
    flood_test(20_000, Mode::Paced).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: run with `cargo test -p gpumesh-tests --test flood -- --ignored`"]
async fn an_open_loop_flood_of_20000_offers_and_request_spam_leave_the_api_responsive_and_memory_bounded()
-> Result<()> {
    flood_test(20_000, Mode::OpenLoop).await.map(|_| ())
}
