//! Lease abuse (issue 7, part 3). Raw clients speak `/gpumesh/lease/1` to a provider with
//! replayed requests, requests signed by a key other than the claimed renter, absurd
//! durations, GPU counts and timestamps, garbage, and releases of someone else's lease; then
//! two thousand requests from ten connections, a thousand open at once, race a real renter's
//! hundred. Every answer
//! is a reject signed by the provider, naming the digest of the refused message and the reason
//! for it; afterwards no GPU is in two leases, none is reserved without a lease, and releasing
//! every lease gives every GPU back.

use anyhow::{Context, Result, bail};
use gpumesh_node::lease_task::{LeaseError, LeaseParams};
use gpumesh_protocol::envelope;
use gpumesh_protocol::lease::messages::{
    LeaseGrant, LeaseReject, LeaseRelease, LeaseRequest, RejectReason, UsageReceipt,
};
use gpumesh_protocol::wire::{self, LeaseRpc, LeaseRpcReply};
use gpumesh_protocol::*;
use gpumesh_tests::adversary::{self, Proto, RpcPeer, envelope_bytes};
use gpumesh_tests::{TestNode, poll, test_config, wait_for};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// A provider's answer, verified: signed by the provider and naming the digest of what it
/// answers.
#[derive(Debug)]
enum Answer {
    Grant(Verified<LeaseGrant>),
    Reject(RejectReason),
    Receipt(Verified<UsageReceipt>),
}

impl Answer {
    fn reason(&self) -> Option<RejectReason> {
        match self {
            Answer::Reject(r) => Some(*r),
            _ => None,
        }
    }
}

/// Sends one lease RPC and checks the answer's signature and digest.
async fn ask(peer: &RpcPeer, addr: &str, provider: &NodeId, rpc: Vec<u8>, answers: &[u8]) -> Result<Answer> {
    let reply =
        peer.request(Proto::Lease, addr, rpc).await?.map_err(|e| anyhow::anyhow!("no answer: {e}"))?;
    let digest = Digest32::of(answers);
    match wire::decode::<LeaseRpcReply>(&reply, wire::MAX_LEASE_RPC)? {
        LeaseRpcReply::Grant(g) => {
            let g = envelope::open::<LeaseGrant>(&g.0)?;
            if g.signer() != provider || g.request != digest {
                bail!("a grant not signed by the provider or for another request: {g:?}");
            }
            Ok(Answer::Grant(g))
        }
        LeaseRpcReply::Reject(r) => {
            let r = envelope::open::<LeaseReject>(&r.0)?;
            if r.signer() != provider || r.request != digest {
                bail!("a reject not signed by the provider or for another message: {r:?}");
            }
            Ok(Answer::Reject(r.reason))
        }
        LeaseRpcReply::Receipt(r) => {
            let r = envelope::open::<UsageReceipt>(&r.0)?;
            if r.signer() != provider {
                bail!("a receipt not signed by the provider: {r:?}");
            }
            Ok(Answer::Receipt(r))
        }
        other => bail!("unexpected answer {other:?}"),
    }
}

/// A lease request for `offer` signed by `key`, naming `key` as renter.
fn request(key: &SigningKey, offer: &Offer, gpus: u32, duration_s: u64, nonce: u64) -> LeaseRequest {
    let mut n = [0u8; 16];
    n[..8].copy_from_slice(&nonce.to_le_bytes());
    n[8..].copy_from_slice(&key.verifying_key().as_bytes()[..8]);
    LeaseRequest {
        v: PROTOCOL_VERSION,
        network: offer.network.clone(),
        renter: adversary::node_id(key),
        provider: offer.provider,
        offer_id: offer.offer_id,
        gpus,
        duration_s,
        price: offer.price,
        max_price: offer.price,
        nonce: Nonce(n),
        issued_at: gpumesh_node::clock::now(),
        ssh_key: None,
    }
}

fn rpc_request(envelope: &[u8]) -> Vec<u8> {
    wire::encode(&LeaseRpc::Request(Bytes(envelope.to_vec())))
}

fn rpc_release(envelope: &[u8]) -> Vec<u8> {
    wire::encode(&LeaseRpc::Release(Bytes(envelope.to_vec())))
}

fn release(
    signer: &SigningKey,
    renter: NodeId,
    provider: NodeId,
    lease_id: LeaseId,
    network: &str,
) -> Vec<u8> {
    let r = LeaseRelease {
        v: PROTOCOL_VERSION,
        network: network.into(),
        lease_id,
        renter,
        provider,
        issued_at: gpumesh_node::clock::now(),
    };
    envelope::seal(signer, &r)
}

struct Market {
    provider: TestNode,
    renter: TestNode,
    addr: String,
    offer: Verified<Offer>,
}

async fn market(net: &str, gpus: &str) -> Result<Market> {
    let provider = TestNode::start(test_config(net, Some(gpus), &[])).await?;
    let addr = provider.addr().await?;
    let renter = TestNode::start(test_config(net, None, std::slice::from_ref(&addr))).await?;
    let pid = provider.peer_id();
    let offer_id = poll("the provider's offer at the renter", WAIT, || async {
        let o = renter.offers_of(&pid).await.ok()?;
        (o.len() == 1).then(|| o[0].offer_id.clone())
    })
    .await?;
    let offer = renter.handle().find_offer(offer_id).await??;
    Ok(Market { provider, renter, addr, offer })
}

/// Free GPUs in the provider's own current offer.
async fn own_free(provider: &TestNode) -> Option<u32> {
    let pid = provider.peer_id();
    let o = provider.offers_of(&pid).await.ok()?;
    o.first().map(|o| o.gpu_count)
}

/// Checks the provider's books: each GPU of the inventory is in at most one active lease,
/// `expect_leased` are, and the offer says the rest are free. Returns the active leases' GPUs.
async fn check_no_double_lease(
    provider: &TestNode,
    expect_leased: usize,
) -> Result<BTreeMap<String, String>> {
    let inventory: BTreeSet<String> = provider.handle().gpus().await?.into_iter().map(|g| g.uuid).collect();
    let mut holder: BTreeMap<String, String> = BTreeMap::new();
    for l in
        provider.handle().leases().await?.into_iter().filter(|l| l.role == "provider" && l.state == "active")
    {
        for g in &l.gpu_uuids {
            if !inventory.contains(g) {
                bail!("lease {} holds {g}, which is not in the inventory", l.lease_id);
            }
            if let Some(other) = holder.insert(g.clone(), l.lease_id.clone()) {
                bail!("GPU {g} is in two active leases: {other} and {}", l.lease_id);
            }
        }
    }
    if holder.len() != expect_leased {
        bail!("{} GPUs are in active leases, expected {expect_leased}", holder.len());
    }
    let free = (inventory.len() - holder.len()) as u32;
    wait_for(&format!("the provider's offer to say {free} free"), WAIT, || async {
        own_free(provider).await == Some(free)
    })
    .await?;
    Ok(holder)
}

fn reason_of(r: &Result<gpumesh_node::views::LeaseView, LeaseError>) -> Option<RejectReason> {
    match r {
        Err(LeaseError::Rejected { reason, .. }) => Some(*reason),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_forgeries_absurd_values_and_foreign_releases_get_signed_rejects_with_their_reason()
-> Result<()> {
    let net = "t-abuse";
    let m = market(net, "H100-SXM-80GB:8").await?;
    let (provider_id, offer) = (m.provider.running().node_id, m.offer.body().clone());
    let mallory = RpcPeer::start(adversary::key(31), 16).await?;
    let mk = mallory.key.clone();
    let other_conn = RpcPeer::start(adversary::key(32), 16).await?;
    let renter_id = m.renter.running().node_id;
    let mut failures: Vec<String> = Vec::new();
    let expect = |what: &str, got: Result<Answer>, want: Option<RejectReason>| match got {
        Ok(a) if a.reason() == want => {
            println!("{what}: {}", want.map_or("granted".into(), |r| r.to_string()));
            None
        }
        Ok(a) => Some(format!("{what}: expected {want:?}, got {a:?}")),
        Err(e) => Some(format!("{what}: {e:#}")),
    };

    // A valid request is granted; the same signed bytes again are a replay, on the same
    // connection or another peer's.
    let valid = envelope::seal(&mk, &request(&mk, &offer, 1, 600, 1));
    let granted = ask(&mallory, &m.addr, &provider_id, rpc_request(&valid), &valid).await?;
    let Answer::Grant(grant) = granted else { bail!("the valid request was not granted: {granted:?}") };
    for (what, peer) in [("replayed request", &mallory), ("replayed request from another peer", &other_conn)]
    {
        failures.extend(expect(
            what,
            ask(peer, &m.addr, &provider_id, rpc_request(&valid), &valid).await,
            Some(RejectReason::Replayed),
        ));
    }
    // Signed by mallory, naming the renter.
    let mut r = request(&mk, &offer, 1, 600, 2);
    r.renter = renter_id;
    let e = envelope::seal(&mk, &r);
    failures.extend(expect(
        "signed by a key other than the claimed renter",
        ask(&mallory, &m.addr, &provider_id, rpc_request(&e), &e).await,
        Some(RejectReason::BadSignature),
    ));
    // The renter's key in the envelope, a made-up signature.
    let e =
        envelope_bytes(Kind::LeaseRequest as u64, renter_id.as_bytes(), &envelope::encode_body(&r), &[7; 64]);
    failures.extend(expect(
        "forged signature in the renter's name",
        ask(&mallory, &m.addr, &provider_id, rpc_request(&e), &e).await,
        Some(RejectReason::BadSignature),
    ));
    let cases: Vec<(&str, LeaseRequest, RejectReason)> = {
        let mut v = Vec::new();
        let mut n = 100;
        let mut mk_req = |f: &dyn Fn(&mut LeaseRequest)| {
            n += 1;
            let mut r = request(&mk, &offer, 1, 600, n);
            f(&mut r);
            r
        };
        v.push(("duration 0 s", mk_req(&|r| r.duration_s = 0), RejectReason::DurationOutOfRange));
        v.push((
            "duration u64::MAX s",
            mk_req(&|r| r.duration_s = u64::MAX),
            RejectReason::DurationOutOfRange,
        ));
        v.push(("0 GPUs", mk_req(&|r| r.gpus = 0), RejectReason::InvalidRequest));
        v.push(("10^6 GPUs", mk_req(&|r| r.gpus = 1_000_000), RejectReason::InvalidRequest));
        v.push(("u32::MAX GPUs", mk_req(&|r| r.gpus = u32::MAX), RejectReason::InvalidRequest));
        v.push(("9 GPUs of 7 free", mk_req(&|r| r.gpus = 9), RejectReason::NoCapacity));
        v.push((
            "issued an hour in the future",
            mk_req(&|r| r.issued_at = r.issued_at.plus_millis(3_600_000)),
            RejectReason::InvalidRequest,
        ));
        v.push((
            "issued ten minutes ago",
            mk_req(&|r| r.issued_at = Timestamp(r.issued_at.0 - 600_000)),
            RejectReason::Replayed,
        ));
        v.push((
            "another network",
            mk_req(&|r| r.network = "elsewhere".into()),
            RejectReason::NetworkMismatch,
        ));
        v.push((
            "addressed to another provider",
            mk_req(&|r| r.provider = adversary::node_id(&adversary::key(99))),
            RejectReason::InvalidRequest,
        ));
        v.push((
            "unknown offer",
            mk_req(&|r| r.offer_id = OfferId::from_bytes([9; 8])),
            RejectReason::OfferUnknownOrExpired,
        ));
        v.push((
            "an SSH key of 5000 bytes",
            mk_req(&|r| r.ssh_key = Some("k".repeat(5000))),
            RejectReason::InvalidRequest,
        ));
        v.push((
            "price above max",
            mk_req(&|r| r.max_price = Price(r.price.0 - 1)),
            RejectReason::PriceAboveMax,
        ));
        v.push(("stale price", mk_req(&|r| r.price = Price(r.price.0 + 1)), RejectReason::PriceChanged));
        v
    };
    for (what, req, want) in cases {
        let e = envelope::seal(&mk, &req);
        failures.extend(expect(
            what,
            ask(&mallory, &m.addr, &provider_id, rpc_request(&e), &e).await,
            Some(want),
        ));
    }
    // Not even a lease message.
    let garbage = b"\xa1\x67request\x43abc and then some".to_vec();
    failures.extend(expect(
        "garbage on the lease protocol",
        ask(&mallory, &m.addr, &provider_id, garbage.clone(), &garbage).await,
        Some(RejectReason::InvalidRequest),
    ));

    // The renter's lease, which mallory tries to end.
    let theirs = m.renter.handle().lease(LeaseParams {
        offer: m.offer.clone(),
        gpus: 1,
        duration_s: 600,
        max_price: None,
        ssh_key: None,
    });
    let theirs = theirs.await??;
    let their_id: LeaseId = theirs.lease_id.parse()?;
    let e = release(&mk, adversary::node_id(&mk), provider_id, their_id, net);
    failures.extend(expect(
        "release of someone else's lease",
        ask(&mallory, &m.addr, &provider_id, rpc_release(&e), &e).await,
        Some(RejectReason::NotLeaseOwner),
    ));
    let e = release(&mk, renter_id, provider_id, their_id, net);
    failures.extend(expect(
        "release in the renter's name, signed by another key",
        ask(&mallory, &m.addr, &provider_id, rpc_release(&e), &e).await,
        Some(RejectReason::BadSignature),
    ));
    let e = release(&mk, adversary::node_id(&mk), provider_id, LeaseId::from_bytes([3; 8]), net);
    failures.extend(expect(
        "release of an unknown lease",
        ask(&mallory, &m.addr, &provider_id, rpc_release(&e), &e).await,
        Some(RejectReason::UnknownLease),
    ));
    assert_eq!(m.provider.handle().lease_show(theirs.lease_id.clone()).await??.state, "active");
    assert_eq!(m.renter.handle().lease_show(theirs.lease_id.clone()).await??.state, "active");

    // Mallory's own lease: two GPUs are leased, in two leases, and mallory can release its own.
    check_no_double_lease(&m.provider, 2).await?;
    let e = release(&mk, adversary::node_id(&mk), provider_id, grant.lease_id, net);
    match ask(&mallory, &m.addr, &provider_id, rpc_release(&e), &e).await? {
        Answer::Receipt(r) if r.lease_id == grant.lease_id => {}
        other => failures.push(format!("release of one's own lease: {other:?}")),
    }
    m.renter.handle().release(theirs.lease_id.clone()).await??;
    check_no_double_lease(&m.provider, 0).await?;
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}

/// What each raw request in the crowd is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Sort {
    Valid,
    ZeroDuration,
    ZeroGpus,
    ForgedRenter,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_raw_requests_a_thousand_at_once_and_a_hundred_real_ones_lease_each_gpu_once_and_none_stays_stuck()
-> Result<()> {
    let net = "t-abuse-crowd";
    let m = market(net, "RTX-4090:8").await?;
    let provider_id = m.provider.running().node_id;
    let offer = m.offer.body().clone();
    let victim = m.renter.running().node_id;
    const CLIENTS: u64 = 10;
    const PER_CLIENT: u64 = 200;
    /// Per connection: ten connections keep a thousand requests open at the provider at once.
    const IN_FLIGHT: usize = 100;
    const REAL: usize = 100;

    // The real renter's requests first: its lease task makes each durable before sending.
    let mut real = Vec::new();
    for _ in 0..REAL {
        let h = m.renter.handle().clone();
        let p =
            LeaseParams { offer: m.offer.clone(), gpus: 1, duration_s: 600, max_price: None, ssh_key: None };
        real.push(tokio::spawn(async move { h.lease(p).await }));
    }

    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let peer = RpcPeer::start(adversary::key(500 + c), IN_FLIGHT).await?;
        for i in 0..PER_CLIENT {
            let sort =
                [Sort::Valid, Sort::ZeroDuration, Sort::ZeroGpus, Sort::ForgedRenter][(i % 4) as usize];
            let k = peer.key.clone();
            let mut req = request(&k, &offer, 1, 600, i);
            match sort {
                Sort::Valid => {}
                Sort::ZeroDuration => req.duration_s = 0,
                Sort::ZeroGpus => req.gpus = 0,
                Sort::ForgedRenter => req.renter = victim,
            }
            let e = envelope::seal(&k, &req);
            let (peer, addr) = (peer.clone(), m.addr.clone());
            tasks.push(tokio::spawn(async move {
                let a = ask(&peer, &addr, &provider_id, rpc_request(&e), &e).await;
                (sort, k, a)
            }));
        }
    }
    let mut outcomes: BTreeMap<(Sort, String), usize> = BTreeMap::new();
    let mut raw_grants: Vec<(SigningKey, Verified<LeaseGrant>)> = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        let (sort, key, a) = t.await?;
        let want = match sort {
            Sort::Valid => None,
            Sort::ZeroDuration => Some(RejectReason::DurationOutOfRange),
            Sort::ZeroGpus => Some(RejectReason::InvalidRequest),
            Sort::ForgedRenter => Some(RejectReason::BadSignature),
        };
        match a {
            Ok(Answer::Grant(g)) if sort == Sort::Valid => {
                *outcomes.entry((sort, "granted".into())).or_default() += 1;
                raw_grants.push((key, g));
            }
            Ok(Answer::Reject(RejectReason::NoCapacity)) if sort == Sort::Valid => {
                *outcomes.entry((sort, "no-capacity".into())).or_default() += 1
            }
            Ok(a) if want.is_some() && a.reason() == want => {
                *outcomes.entry((sort, a.reason().map(|r| r.to_string()).unwrap_or_default())).or_default() +=
                    1
            }
            Ok(a) => failures.push(format!("{sort:?}: unexpected {a:?}")),
            Err(e) => failures.push(format!("{sort:?}: {e:#}")),
        }
    }
    let mut real_grants = Vec::new();
    for t in real {
        let r = t.await?.context("the renter stopped")?;
        match (&r, reason_of(&r)) {
            (Ok(v), _) => real_grants.push(v.clone()),
            (_, Some(RejectReason::NoCapacity)) => {
                *outcomes.entry((Sort::Valid, "real: no-capacity".into())).or_default() += 1
            }
            _ => failures.push(format!("real renter: unexpected {r:?}")),
        }
    }
    println!(
        "outcomes: {outcomes:?}; grants: {} raw, {} to the real renter",
        raw_grants.len(),
        real_grants.len()
    );
    assert!(failures.is_empty(), "{} requests went wrong:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(raw_grants.len() + real_grants.len(), 8, "8 GPUs, 1 per lease");

    // No GPU in two leases, every granted lease held by the provider with the GPU it named.
    let held = check_no_double_lease(&m.provider, 8).await?;
    for (_, g) in &raw_grants {
        assert_eq!(held.get(&g.gpu_uuids[0]), Some(&g.lease_id.to_string()), "grant {g:?}");
    }
    for l in &real_grants {
        assert_eq!(held.get(&l.gpu_uuids[0]), Some(&l.lease_id), "lease {l:?}");
    }

    // Release everything: every GPU is free again.
    for (key, g) in &raw_grants {
        let peer = RpcPeer::start(key.clone(), 4).await?;
        let e = release(key, adversary::node_id(key), provider_id, g.lease_id, net);
        match ask(&peer, &m.addr, &provider_id, rpc_release(&e), &e).await? {
            Answer::Receipt(_) => {}
            other => bail!("releasing {}: {other:?}", g.lease_id),
        }
    }
    for l in &real_grants {
        m.renter.handle().release(l.lease_id.clone()).await??;
    }
    check_no_double_lease(&m.provider, 0).await?;
    let pid = m.provider.peer_id();
    wait_for("the renter to see all 8 GPUs free again", WAIT, || async {
        matches!(m.renter.offers_of(&pid).await, Ok(o) if o.len() == 1 && o[0].gpu_count == 8)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn two_concurrent_releases_of_one_lease_both_get_an_answer() -> Result<()> {
    let m = market("t-abuse-release", "RTX-4090:1").await?;
    let lease = m
        .renter
        .handle()
        .lease(LeaseParams {
            offer: m.offer.clone(),
            gpus: 1,
            duration_s: 600,
            max_price: None,
            ssh_key: None,
        })
        .await??;
    let (h1, h2) = (m.renter.handle().clone(), m.renter.handle().clone());
    let (id1, id2) = (lease.lease_id.clone(), lease.lease_id.clone());
    let (a, b) = tokio::join!(h1.release(id1), h2.release(id2));
    println!("first release: {a:?}\nsecond release: {b:?}");
    // Each caller gets the receipt (or a lease error saying why not), never "the node has stopped".
    assert!(a.is_ok() && b.is_ok(), "a release caller was told the node stopped: {a:?} / {b:?}");
    assert!(matches!(a, Ok(Ok(_))) || matches!(b, Ok(Ok(_))), "neither release got the receipt");
    Ok(())
}
