//! Hostile gossip (issue 7, part 1). A rogue peer — a plain libp2p gossipsub swarm, a fresh
//! key and connection for each kind of bad message — publishes forged, tampered, impersonating,
//! stale, expired, future, wrong-network, wrong-version, oversized, truncated, random,
//! wrong-shape, wrong-kind, unknown-kind messages and a withdrawal of someone else's offer to
//! node A, which relays to node B. For each kind: A counts it under the exact reason label;
//! nothing reaches A's or B's book; B never sees it (A forwarded nothing); and the rogue's
//! gossipsub score at A falls below zero until A disconnects and blocks it. Late or repeated
//! messages (`expired`, `stale_sequence`) are *ignored* instead: not stored, not forwarded,
//! and not penalised — honest relays forward such messages too. So are messages whose fault
//! depends on A's clock or book (issued in the future, a withdrawal of A's offer) when the
//! rogue only relays them, signed by someone else: an honest relay may have judged them valid.
//! When the rogue signed those itself, A blames it, but itself (a ban at the 20th fault)
//! rather than through gossipsub, which would also hold copies against honest relays.

use anyhow::{Context, Result, bail};
use gpumesh_protocol::envelope::{self, RawEnvelope};
use gpumesh_protocol::lease::messages::LeaseRequest;
use gpumesh_protocol::*;
use gpumesh_tests::adversary::{self, GossipPeer, envelope_bytes, offer_by, offer_for, sign_raw};
use gpumesh_tests::measure::Rng;
use gpumesh_tests::{TestNode, poll, test_config, wait_for};
use std::time::Duration;

const NET: &str = "t-hostile";
const WAIT: Duration = Duration::from_secs(30);
/// Gossipsub's own size limit on the rogue side: far above the node's, so the rogue can send
/// what the node must refuse.
const ROGUE_MAX_TRANSMIT: usize = 64 * 1024;

/// What a bad-message generator needs.
struct Ctx {
    now: Timestamp,
    rogue: SigningKey,
    /// Node B's id: the honest node the rogue impersonates.
    victim: NodeId,
    /// Node A's own offer, which the rogue tries to withdraw.
    a_offer: OfferId,
    /// A third party whose messages the rogue relays.
    author: SigningKey,
}

/// One kind of bad message: the outcome A must report, and a generator of distinct instances
/// (gossipsub drops exact repeats by message id before validation, so each send differs).
struct Case {
    name: &'static str,
    result: &'static str,
    reason: &'static str,
    make: fn(&Ctx, u64) -> Vec<u8>,
}

fn forged_signature(c: &Ctx, i: u64) -> Vec<u8> {
    let body = envelope::encode_body(&offer_by(c.victim, NET, &format!("FORGED-SIG-{i}"), 1 + i, c.now));
    let mut sig = [0x5a; 64];
    sig[0] = i as u8;
    envelope_bytes(Kind::Offer as u64, c.victim.as_bytes(), &body, &sig)
}

fn tampered(c: &Ctx, i: u64) -> Vec<u8> {
    let mut e = envelope::seal(&c.rogue, &offer_for(&c.rogue, NET, &format!("TAMPERED-{i}"), 1 + i, c.now));
    let body_len = RawEnvelope::parse(&e).expect("our own envelope parses").body.len();
    // The body sits just before the 66-byte signature item; flip a byte in its middle.
    let at = e.len() - 66 - body_len / 2;
    e[at] ^= 0x01;
    e
}

fn impersonating(c: &Ctx, i: u64) -> Vec<u8> {
    envelope::seal(&c.rogue, &offer_by(c.victim, NET, &format!("IMPERSONATED-{i}"), 1 + i, c.now))
}

/// An offer signed by `signer`, issued an hour after `c.now`.
fn future_offer(c: &Ctx, signer: &SigningKey, i: u64) -> Vec<u8> {
    let o = offer_for(signer, NET, &format!("FUTURE-{i}"), 1 + i, c.now.plus_millis(3_600_000));
    envelope::seal(signer, &o)
}

fn issued_in_future(c: &Ctx, i: u64) -> Vec<u8> {
    future_offer(c, &c.rogue, i)
}

fn wrong_network(c: &Ctx, i: u64) -> Vec<u8> {
    let mut o = offer_for(&c.rogue, NET, &format!("WRONG-NET-{i}"), 1 + i, c.now);
    o.network = "elsewhere".into();
    envelope::seal(&c.rogue, &o)
}

fn unknown_version(c: &Ctx, i: u64) -> Vec<u8> {
    let mut o = offer_for(&c.rogue, NET, &format!("V2-{i}"), 1 + i, c.now);
    o.v = 2;
    envelope::seal(&c.rogue, &o)
}

/// A correctly signed offer whose envelope is a little over the 4096-byte gossip limit (it
/// still fits the topic's 4608-byte gossipsub limit, so the node's own check must catch it).
fn oversized_4100(c: &Ctx, i: u64) -> Vec<u8> {
    let mut o = offer_for(&c.rogue, NET, &format!("OVERSIZED-{i}"), 1 + i, c.now);
    loop {
        let len = envelope::seal(&c.rogue, &o).len();
        if len > 4096 {
            break;
        }
        let pad = (4100 - len).clamp(1, 200);
        o.addrs.push(format!("/dns4/{}.example/tcp/1", "x".repeat(pad)));
    }
    let e = envelope::seal(&c.rogue, &o);
    assert!((4097..=4300).contains(&e.len()), "oversized envelope is {} bytes", e.len());
    e
}

fn truncated(c: &Ctx, i: u64) -> Vec<u8> {
    let e = envelope::seal(&c.rogue, &offer_for(&c.rogue, NET, &format!("TRUNCATED-{i}"), 1 + i, c.now));
    e[..e.len() / 2 + i as usize].to_vec()
}

fn random_bytes(_: &Ctx, i: u64) -> Vec<u8> {
    let mut b = Rng::new(0x5eed + i).bytes(300);
    if b[0] == 0x84 {
        b[0] = 0x85;
    }
    b
}

/// Valid CBOR, correctly signed, in an offer envelope — but the body is a withdrawal's.
fn wrong_shape(c: &Ctx, i: u64) -> Vec<u8> {
    let w = Withdrawal {
        v: PROTOCOL_VERSION,
        network: NET.into(),
        offer_id: c.a_offer,
        provider: adversary::node_id(&c.rogue),
        seq: 1 + i,
        issued_at: c.now,
    };
    sign_raw(&c.rogue, Kind::Offer, &envelope::encode_body(&w))
}

/// A withdrawal of A's offer, signed by `signer` (who is not A).
fn withdrawal_of_a_offer(c: &Ctx, signer: &SigningKey, i: u64) -> Vec<u8> {
    let w = Withdrawal {
        v: PROTOCOL_VERSION,
        network: NET.into(),
        offer_id: c.a_offer,
        provider: adversary::node_id(signer),
        seq: 1_000 + i,
        issued_at: c.now,
    };
    envelope::seal(signer, &w)
}

fn withdraws_someone_elses_offer(c: &Ctx, i: u64) -> Vec<u8> {
    withdrawal_of_a_offer(c, &c.rogue, i)
}

fn lease_message_on_the_offer_topic(c: &Ctx, i: u64) -> Vec<u8> {
    let me = adversary::node_id(&c.rogue);
    let r = LeaseRequest {
        v: PROTOCOL_VERSION,
        network: NET.into(),
        renter: me,
        provider: c.victim,
        offer_id: c.a_offer,
        gpus: 1,
        duration_s: 600,
        price: Price(1),
        max_price: Price(1),
        nonce: Nonce([i as u8; 16]),
        issued_at: c.now,
        ssh_key: None,
    };
    envelope::seal(&c.rogue, &r)
}

fn unknown_kind(c: &Ctx, i: u64) -> Vec<u8> {
    let body = envelope::encode_body(&offer_for(&c.rogue, NET, &format!("KIND-9-{i}"), 1 + i, c.now));
    envelope_bytes(9, c.rogue.verifying_key().as_bytes(), &body, &[i as u8; 64])
}

const REJECTED: &[Case] = &[
    Case { name: "forged signature", result: "rejected", reason: "bad_signature", make: forged_signature },
    Case {
        name: "valid signature over altered bytes",
        result: "rejected",
        reason: "bad_signature",
        make: tampered,
    },
    Case {
        name: "another node's id as provider",
        result: "rejected",
        reason: "signer_mismatch",
        make: impersonating,
    },
    Case { name: "wrong network", result: "rejected", reason: "wrong_network", make: wrong_network },
    Case {
        name: "unknown version (v=2)",
        result: "rejected",
        reason: "unsupported_version",
        make: unknown_version,
    },
    Case { name: "4100-byte envelope", result: "rejected", reason: "oversized", make: oversized_4100 },
    Case { name: "truncated envelope", result: "rejected", reason: "malformed_envelope", make: truncated },
    Case { name: "random bytes", result: "rejected", reason: "malformed_envelope", make: random_bytes },
    Case {
        name: "valid CBOR of the wrong shape",
        result: "rejected",
        reason: "malformed_body",
        make: wrong_shape,
    },
    Case {
        name: "lease message on the offer topic",
        result: "rejected",
        reason: "wrong_kind",
        make: lease_message_on_the_offer_topic,
    },
    Case { name: "unknown envelope kind", result: "rejected", reason: "unknown_kind", make: unknown_kind },
];

fn relayed_issued_in_future(c: &Ctx, i: u64) -> Vec<u8> {
    future_offer(c, &c.author, i)
}

fn relayed_withdrawal_of_someone_elses_offer(c: &Ctx, i: u64) -> Vec<u8> {
    withdrawal_of_a_offer(c, &c.author, i)
}

/// Faults only by A's clock or book, sent by their signer: A rejects and blames the rogue
/// itself, but tells gossipsub to ignore them, since honest relays may forward copies that
/// gossipsub would otherwise hold against them.
const BLAMED: &[Case] = &[
    Case {
        name: "issued an hour in the future",
        result: "rejected",
        reason: "issued_in_future",
        make: issued_in_future,
    },
    Case {
        name: "withdrawal of someone else's offer",
        result: "rejected",
        reason: "not_owner",
        make: withdraws_someone_elses_offer,
    },
];

fn stale_sequence(c: &Ctx, i: u64) -> Vec<u8> {
    envelope::seal(&c.rogue, &offer_for(&c.rogue, NET, "STALE", 1 + i, c.now))
}

fn expired(c: &Ctx, i: u64) -> Vec<u8> {
    let mut o = offer_for(&c.rogue, NET, &format!("EXPIRED-{i}"), 1 + i, Timestamp(c.now.0 - 120_000));
    o.expires_at = Timestamp(c.now.0 - 60_000);
    envelope::seal(&c.rogue, &o)
}

const IGNORED: &[Case] = &[
    Case {
        name: "replayed older sequence",
        result: "ignored",
        reason: "stale_sequence",
        make: stale_sequence,
    },
    Case { name: "expired", result: "ignored", reason: "expired", make: expired },
    Case {
        name: "relayed: issued an hour in the future, signed by another",
        result: "ignored",
        reason: "issued_in_future",
        make: relayed_issued_in_future,
    },
    Case {
        name: "relayed: another's withdrawal of A's offer",
        result: "ignored",
        reason: "not_owner",
        make: relayed_withdrawal_of_someone_elses_offer,
    },
];

/// The newest seq of the offer the stale-sequence rogue publishes validly first.
const STALE_HELD_SEQ: u64 = 1_000;

async fn counter(n: &TestNode, result: &str, reason: &str) -> f64 {
    n.metric_sum(&format!("gpumesh_gossip_messages_total{{result=\"{result}\",reason=\"{reason}\"}}"))
        .await
        .unwrap_or(f64::NAN)
}

async fn total(n: &TestNode, result: &str) -> f64 {
    n.metric_sum(&format!("gpumesh_gossip_messages_total{{result=\"{result}\"")).await.unwrap_or(f64::NAN)
}

async fn bans(n: &TestNode) -> f64 {
    n.metric_sum("gpumesh_peer_bans_total").await.unwrap_or(f64::NAN)
}

/// The rogue's score at `a`, if `a` is connected to it.
async fn score_at(a: &TestNode, rogue: &GossipPeer) -> Option<Option<f64>> {
    let id = rogue.peer_id.to_string();
    a.handle().peers().await.ok()?.into_iter().find(|p| p.peer_id == id).map(|p| p.score)
}

/// Publishes one message and waits until A has counted it under `result`/`reason`.
///
/// Messages are sent one at a time so that each outcome can be told apart in the counters.
async fn send_counted(
    a: &TestNode,
    rogue: &GossipPeer,
    msg: Vec<u8>,
    result: &str,
    reason: &str,
) -> Result<()> {
    let before = counter(a, result, reason).await;
    rogue.publish(msg).await?;
    wait_for(&format!("A to count {result}/{reason}"), WAIT, || async {
        counter(a, result, reason).await >= before + 1.0
    })
    .await
}

/// A rejected kind: counted under its reason, the rogue's score goes negative, and after a few
/// such messages the rogue is disconnected and blocked.
async fn rejected_case(a: &TestNode, a_addr: &str, ctx: &Ctx, case: &Case) -> Result<()> {
    let rogue = GossipPeer::join(ctx.rogue.clone(), NET, a_addr, ROGUE_MAX_TRANSMIT).await?;
    let (reason0, rejected0, bans0) =
        (counter(a, case.result, case.reason).await, total(a, "rejected").await, bans(a).await);
    send_counted(a, &rogue, (case.make)(ctx, 0), case.result, case.reason).await?;
    let score = poll("the rogue's score at A to fall below zero", WAIT, || async {
        match score_at(a, &rogue).await {
            Some(Some(s)) if s < 0.0 => Some(s),
            _ => None,
        }
    })
    .await?;
    println!("{}: rogue's score at A after one bad message: {score:.1}", case.name);
    if bans(a).await != bans0 {
        bail!("A banned the rogue after one bad message");
    }
    // Two more: gossipsub's P4 (weight −20 × count²) takes the score to −80, then below it,
    // where A bans the peer.
    for i in 1..3 {
        send_counted(a, &rogue, (case.make)(ctx, i), case.result, case.reason).await?;
    }
    wait_for("A to ban the rogue", WAIT, || async { bans(a).await >= bans0 + 1.0 }).await?;
    wait_for("the rogue to be gone from A's peers", WAIT, || async {
        score_at(a, &rogue).await.is_none() && !rogue.connected_to_target()
    })
    .await?;
    let counted = counter(a, case.result, case.reason).await - reason0;
    let all = total(a, "rejected").await - rejected0;
    if counted != 3.0 || all != counted {
        bail!("A rejected {all} messages, {counted} of them as `{}` (expected 3 and 3)", case.reason);
    }
    println!("{}: {counted} × {}/{} at A, then banned", case.name, case.result, case.reason);
    Ok(())
}

/// A blamed kind: counted as rejected under its reason; the rogue's gossipsub score does not
/// fall (gossipsub was told to ignore it), yet A bans the rogue at its 20th fault.
async fn blamed_case(a: &TestNode, a_addr: &str, ctx: &Ctx, case: &Case) -> Result<()> {
    let rogue = GossipPeer::join(ctx.rogue.clone(), NET, a_addr, ROGUE_MAX_TRANSMIT).await?;
    let (reason0, bans0) = (counter(a, case.result, case.reason).await, bans(a).await);
    const FAULTS_BEFORE_BAN: u64 = 20;
    for i in 0..FAULTS_BEFORE_BAN - 1 {
        send_counted(a, &rogue, (case.make)(ctx, i), case.result, case.reason).await?;
    }
    match score_at(a, &rogue).await {
        Some(s) if s.unwrap_or(0.0) >= 0.0 => {}
        Some(s) => bail!("gossipsub held the message against the rogue: score {s:?}"),
        None => bail!("A disconnected the rogue before its 20th fault"),
    }
    if bans(a).await != bans0 {
        bail!("A banned the rogue before its 20th fault");
    }
    send_counted(a, &rogue, (case.make)(ctx, FAULTS_BEFORE_BAN - 1), case.result, case.reason).await?;
    wait_for("A to ban the rogue", WAIT, || async { bans(a).await >= bans0 + 1.0 }).await?;
    let counted = counter(a, case.result, case.reason).await - reason0;
    if counted != FAULTS_BEFORE_BAN as f64 {
        bail!("A counted {counted} × {}/{} (expected {FAULTS_BEFORE_BAN})", case.result, case.reason);
    }
    println!("{}: {counted} × {}/{} at A, score untouched, then banned", case.name, case.result, case.reason);
    Ok(())
}

/// An ignored kind: counted under its reason, and more of them than the fault limit (20)
/// costs the sender nothing.
async fn ignored_case(a: &TestNode, a_addr: &str, ctx: &Ctx, case: &Case) -> Result<()> {
    let rogue = GossipPeer::join(ctx.rogue.clone(), NET, a_addr, ROGUE_MAX_TRANSMIT).await?;
    let rogue_id = adversary::node_id(&ctx.rogue).to_string();
    if case.reason == "stale_sequence" {
        let held = offer_for(&ctx.rogue, NET, "STALE", STALE_HELD_SEQ, ctx.now);
        rogue.publish(envelope::seal(&ctx.rogue, &held)).await?;
        wait_for("A to hold the rogue's valid offer", WAIT, || async {
            matches!(a.offers_of(&rogue_id).await, Ok(o) if o.len() == 1)
        })
        .await?;
    }
    let bans0 = bans(a).await;
    const N: u64 = 25;
    for i in 0..N {
        send_counted(a, &rogue, (case.make)(ctx, i), case.result, case.reason).await?;
    }
    if bans(a).await != bans0 {
        bail!("A banned a peer for {N} ignored messages");
    }
    match score_at(a, &rogue).await {
        Some(s) if s.unwrap_or(0.0) >= 0.0 => {}
        Some(s) => bail!("the sender of ignored messages was penalised: score {s:?}"),
        None => bail!("A disconnected the sender of ignored messages"),
    }
    println!("{}: {N} × {}/{} at A, sender not penalised", case.name, case.result, case.reason);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_gossip_is_refused_not_stored_not_forwarded_and_the_sender_penalised() -> Result<()>
{
    let a = TestNode::start(test_config(NET, Some("RTX-4090:1"), &[])).await?;
    let a_addr = a.addr().await?;
    let b = TestNode::start(test_config(NET, None, std::slice::from_ref(&a_addr))).await?;
    let a_id = a.peer_id();
    let a_offer: OfferId = poll("A's offer at B", WAIT, || async {
        let o = b.offers_of(&a_id).await.ok()?;
        o.first().and_then(|o| o.offer_id.parse().ok())
    })
    .await?;
    let victim = b.running().node_id;

    let mut failures = Vec::new();
    let mut rogues = Vec::new();
    for (i, case) in REJECTED.iter().chain(BLAMED).chain(IGNORED).enumerate() {
        let ctx = Ctx {
            now: gpumesh_node::clock::now(),
            rogue: adversary::key(1_000 + i as u64),
            victim,
            a_offer,
            author: adversary::key(2_000 + i as u64),
        };
        rogues.push((case, adversary::node_id(&ctx.rogue).to_string()));
        let r = if BLAMED.iter().any(|b| b.name == case.name) {
            blamed_case(&a, &a_addr, &ctx, case).await
        } else if case.result == "rejected" {
            rejected_case(&a, &a_addr, &ctx, case).await
        } else {
            ignored_case(&a, &a_addr, &ctx, case).await
        };
        if let Err(e) = r {
            failures.push(format!("{}: {e:#}", case.name));
        }
    }

    // A marker through A to B: A's own re-priced offer. Gossip from A to B is ordered on one
    // stream, so anything A had forwarded would have reached B before it.
    a.handle().set_price(None, "0.77".parse()?).await?.context("re-pricing A")?;
    wait_for("A's new price at B", WAIT, || async {
        matches!(b.offers_of(&a_id).await, Ok(o) if o.len() == 1 && o[0].price_micros == 770_000)
    })
    .await?;

    let victim_id = victim.to_string();
    for n in [&a, &b] {
        let name = if n.peer_id() == a_id { "A" } else { "B" };
        for (case, rogue_id) in &rogues {
            let held = n.offers_of(rogue_id).await?;
            let expected = if case.reason == "stale_sequence" { 1 } else { 0 };
            if held.len() != expected || held.iter().any(|o| o.seq != STALE_HELD_SEQ) {
                failures.push(format!("{}: {name} holds the rogue's offers {held:?}", case.name));
            }
            if n.peer_id() == b.peer_id() {
                for result in ["rejected", "ignored"] {
                    let seen = counter(&b, result, case.reason).await;
                    if seen != 0.0 {
                        failures.push(format!("{}: B counted {seen} {result}/{}", case.name, case.reason));
                    }
                }
            }
        }
        if !n.offers_of(&victim_id).await?.is_empty() {
            failures.push(format!("{name} holds an offer in B's name"));
        }
        if n.offers_of(&a_id).await?.len() != 1 {
            failures.push(format!("{name} lost A's offer (withdrawn by someone else?)"));
        }
    }
    assert_eq!(total(&b, "rejected").await, 0.0, "B rejected something: A forwarded a bad message");
    assert!(
        failures.is_empty(),
        "{} of {} kinds failed:\n{}",
        failures.len(),
        rogues.len(),
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_topics_size_limit_is_dropped_by_gossipsub_before_validation() -> Result<()> {
    let net = "t-hostile-frame";
    let a = TestNode::start(test_config(net, Some("RTX-4090:1"), &[])).await?;
    let a_addr = a.addr().await?;
    let b = TestNode::start(test_config(net, None, std::slice::from_ref(&a_addr))).await?;
    let a_id = a.peer_id();
    wait_for("A's offer at B", WAIT, || async { matches!(b.offers_of(&a_id).await, Ok(o) if o.len() == 1) })
        .await?;

    let key = adversary::key(77);
    let rogue = GossipPeer::join(key.clone(), net, &a_addr, ROGUE_MAX_TRANSMIT).await?;
    let counted0 = total(&a, "rejected").await + total(&a, "ignored").await + total(&a, "accepted").await;
    // Correctly signed offers of about 8 KiB: over both the node's 4096-byte envelope limit
    // and the topic's 4608-byte gossipsub limit.
    for i in 0..5u64 {
        let mut o = offer_for(&key, net, &format!("HUGE-{i}"), 1 + i, gpumesh_node::clock::now());
        o.addrs = (0..32).map(|k| format!("/dns4/{}.example/tcp/{k}", "y".repeat(240))).collect();
        let e = envelope::seal(&key, &o);
        assert!(e.len() > 8_000, "{}", e.len());
        rogue.publish(e).await?;
    }
    // Marker: A re-prices; once B has it, A has handled everything that arrived before.
    a.handle().set_price(None, "0.66".parse()?).await?.context("re-pricing A")?;
    wait_for("A's new price at B", WAIT, || async {
        matches!(b.offers_of(&a_id).await, Ok(o) if o.len() == 1 && o[0].price_micros == 660_000)
    })
    .await?;
    let rogue_id = adversary::node_id(&key).to_string();
    assert!(a.offers_of(&rogue_id).await?.is_empty());
    assert!(b.offers_of(&rogue_id).await?.is_empty());
    // The application never saw them: gossipsub's per-topic size limit marked them invalid
    // before validation, so no gossip outcome was counted for them.
    let counted = total(&a, "rejected").await + total(&a, "ignored").await + total(&a, "accepted").await;
    let own = counter(&a, "accepted", "ok").await;
    println!(
        "over-limit frames: A counted {} new gossip outcomes (its own re-priced offer: accepted/ok = {own}); \
         rogue still connected: {}",
        counted - counted0,
        rogue.connected_to_target()
    );
    assert_eq!(total(&a, "rejected").await, 0.0, "an over-limit frame reached validation");
    assert_eq!(total(&b, "rejected").await, 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_valid_offers_from_one_peer_all_arrive() -> Result<()> {
    let net = "t-hostile-burst";
    let a = TestNode::start(test_config(net, Some("RTX-4090:1"), &[])).await?;
    let a_addr = a.addr().await?;
    // An honest provider with 25 GPU groups re-announcing them together (as every provider
    // does at start and every third of its offer TTL). Each offer is valid and well under the
    // 4096-byte limit (eight 200-byte addresses: about 2.3 KB), but two frames in one read
    // exceed one message's limit: gossipsub 0.50 refused such a read buffer whole until the
    // node raised its read limit and kept the 4608-byte limit per message on the topic.
    let key = adversary::key(88);
    let peer = GossipPeer::join(key.clone(), net, &a_addr, ROGUE_MAX_TRANSMIT).await?;
    let now = gpumesh_node::clock::now();
    const N: u64 = 25;
    for i in 0..N {
        let mut o = offer_for(&key, net, &format!("BURST-{i}"), 1 + i, now);
        o.addrs = (0..8).map(|k| format!("/dns4/{}.example/tcp/{k}", "b".repeat(180))).collect();
        let e = envelope::seal(&key, &o);
        assert!(e.len() < 4096);
        peer.publish(e).await?;
    }
    let id = adversary::node_id(&key).to_string();
    let r = wait_for("every offer of the burst at A", Duration::from_secs(20), || async {
        matches!(a.offers_of(&id).await, Ok(o) if o.len() == N as usize)
    })
    .await;
    let held = a.offers_of(&id).await?.len();
    println!(
        "A holds {held} of the {N} offers of one burst; its peer still connected: {}",
        peer.connected_to_target()
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_repricing_sixteen_gpu_groups_reaches_its_neighbour() -> Result<()> {
    let net = "t-hostile-reprice";
    let gpus = "B200-SXM-180GB:1,H200-SXM-141GB:1,H200-NVL-141GB:1,H100-SXM-80GB:1,H100-NVL-94GB:1,\
                H100-PCIE-80GB:1,A100-SXM-80GB:1,A100-PCIE-80GB:1,A100-SXM-40GB:1,A100-PCIE-40GB:1,\
                L40S:1,L40:1,L4:1,RTX-6000-ADA:1,RTX-A6000:1,A10:1";
    let a = TestNode::start(test_config(net, Some(gpus), &[])).await?;
    let a_addr = a.addr().await?;
    let b = TestNode::start(test_config(net, None, &[a_addr])).await?;
    let a_id = a.peer_id();
    wait_for("A's 16 offers at B", WAIT, || async {
        matches!(b.offers_of(&a_id).await, Ok(o) if o.len() == 16)
    })
    .await?;
    // One command re-prices every group: A publishes 16 offers (about 8 KB) at once.
    assert_eq!(a.handle().set_price(None, "0.55".parse()?).await??, 16);
    let r = wait_for("the new price of all 16 offers at B", Duration::from_secs(20), || async {
        matches!(b.offers_of(&a_id).await, Ok(o) if o.iter().filter(|o| o.price_micros == 550_000).count() == 16)
    })
    .await;
    let repriced = b.offers_of(&a_id).await?.iter().filter(|o| o.price_micros == 550_000).count();
    println!("B has the new price on {repriced} of A's 16 offers");
    r
}

/// Kademlia is for finding peers only (protocol.md): a record a peer PUTs is acknowledged, as
/// the protocol asks, but not kept, so no peer can fill a node's memory with records (libp2p
/// keeps up to 1024 of them from anyone unless told otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_put_into_a_nodes_kademlia_is_acknowledged_but_not_kept() -> Result<()> {
    let a = TestNode::start(test_config(NET, None, &[])).await?;
    let addr = a.addr().await?;
    let o = adversary::kad_put_then_get(adversary::key(30_000), &addr, b"filler", vec![7; 8 * 1024], WAIT)
        .await?;
    assert!(o.put_acknowledged, "the node did not answer the PUT, so the GET below proves nothing");
    assert_eq!(o.returned, None, "the node kept a record a peer put into its Kademlia store");
    Ok(())
}
