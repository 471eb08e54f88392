//! Leasing across nodes: search → live query → lease → access → release → receipt; many
//! renters racing for the last GPUs; every provider-side reject; expiry on both sides.

use anyhow::{Result, bail};
use futures::StreamExt;
use gpumesh_node::handle::Search;
use gpumesh_node::lease_task::{LeaseError, LeaseParams};
use gpumesh_node::net::codec::BytesCodec;
use gpumesh_protocol::lease::messages::{LeaseReject, LeaseRequest, RejectReason};
use gpumesh_protocol::query::Query;
use gpumesh_protocol::wire::{self, LeaseRpc, LeaseRpcReply};
use gpumesh_protocol::*;
use gpumesh_tests::{TestNode, poll, test_config, wait_for};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::{Multiaddr, StreamProtocol, identity, noise, tcp, yamux};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn search(q: &str) -> Result<Search> {
    Ok(Search { query: Query::parse(q)?, sort: Default::default(), limit: usize::MAX, latency_weight: 0.5 })
}

/// Waits until `renter` holds exactly one offer of `provider` and returns its id.
async fn offer_of(renter: &TestNode, provider: &TestNode) -> Result<String> {
    let p = provider.peer_id();
    poll("the provider's offer at the renter", Duration::from_secs(20), || async {
        let o = renter.offers_of(&p).await.ok()?;
        (o.len() == 1).then(|| o[0].offer_id.clone())
    })
    .await
}

fn params(offer: Verified<Offer>, gpus: u32, duration_s: u64) -> LeaseParams {
    LeaseParams { offer, gpus, duration_s, max_price: None, ssh_key: None }
}

async fn lease(
    renter: &TestNode,
    offer_id: &str,
    gpus: u32,
    duration_s: u64,
) -> Result<Result<gpumesh_node::views::LeaseView, LeaseError>> {
    let offer = renter.handle().find_offer(offer_id.into()).await??;
    Ok(renter.handle().lease(params(offer, gpus, duration_s)).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_query_lease_access_release_receipt_across_three_nodes() -> Result<()> {
    let net = "t-lease-flow";
    let tmp = tempfile::tempdir()?;
    // A start hook that hands out an "ssh endpoint" naming the leased GPU.
    let hook = tmp.path().join("start.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\nin=$(cat)\nuuid=$(echo \"$in\" | sed 's/.*\"gpu_uuids\":\\[\"\\([^\"]*\\)\".*/\\1/')\necho \"{\\\"host\\\":\\\"10.1.2.3\\\",\\\"port\\\":2222,\\\"gpu\\\":\\\"$uuid\\\"}\"\n",
    )?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    let mut pc = test_config(net, Some("H100-SXM-80GB:2,RTX-4090:1"), &[]);
    pc.hooks.on_lease_start = Some(hook);
    let provider = TestNode::start(pc).await?;
    let boot = provider.addr().await?;
    let relay =
        TestNode::start(test_config(net, Some("A100-SXM-80GB:1"), std::slice::from_ref(&boot))).await?;
    let relay_addr = relay.addr().await?;
    // The renter only knows the relay.
    let renter = TestNode::start(test_config(net, None, &[relay_addr])).await?;
    wait_for("the renter's book", Duration::from_secs(20), || async {
        matches!(renter.status().await, Ok(s) if s.offers_known == 3)
    })
    .await?;

    // Search, then live query.
    let found = renter.handle().offers(search("gpu=h100 price<=3")?).await?;
    assert_eq!(found.len(), 1);
    let report = renter.handle().capacity(search("gpu=h100")?, Duration::from_secs(5)).await?;
    assert!(report.answered.iter().any(|a| a.peer_id == provider.peer_id() && a.offers == 1), "{report:?}");
    assert!(report.unreachable.is_empty(), "{report:?}");
    assert_eq!(report.offers.len(), 1);
    assert_eq!(report.offers[0].gpu_count, 2);

    // Lease, with the access details from the hook.
    let l = lease(&renter, &report.offers[0].offer_id, 1, 600).await??;
    assert_eq!(l.state, "active");
    assert_eq!(l.gpu_uuids.len(), 1);
    assert_eq!(l.access["host"], "10.1.2.3");
    assert_eq!(l.access["gpu"], l.gpu_uuids[0].as_str());
    // The provider re-advertises one free GPU.
    let pid = provider.peer_id();
    wait_for("the new free count at the renter", Duration::from_secs(20), || async {
        matches!(renter.handle().offers(search(&format!("gpu=h100 provider={pid}")).unwrap()).await,
            Ok(o) if o.len() == 1 && o[0].gpu_count == 1)
    })
    .await?;
    let provider_side = provider.handle().lease_show(l.lease_id.clone()).await??;
    assert_eq!((provider_side.role.as_str(), provider_side.state.as_str()), ("provider", "active"));

    // Release: the receipt is verified and stored on the renter's side.
    let released = renter.handle().release(l.lease_id[..6].to_string()).await??;
    assert_eq!(released.state, "released");
    let receipts = renter.handle().receipts().await?;
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].lease_id, l.lease_id);
    assert_eq!(receipts[0].ended_by, "released");
    assert_eq!(receipts[0].gpu_uuids, l.gpu_uuids);
    assert_eq!(provider.handle().lease_show(l.lease_id.clone()).await??.state, "released");
    Ok(())
}

/// A start hook may take longer than a node's request timeout (a container starting): lease
/// messages wait for the protocol's answer window instead, so the grant still reaches the renter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_hook_slower_than_the_request_timeout_still_grants() -> Result<()> {
    let net = "t-lease-slow-hook";
    let tmp = tempfile::tempdir()?;
    let hook = tmp.path().join("start.sh");
    std::fs::write(&hook, "#!/bin/sh\ncat >/dev/null\nsleep 2\necho '{\"slow\":true}'\n")?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    let quick = |mut c: gpumesh_node::config::NodeConfig| {
        c.tuning.request_timeout = "1s".into();
        c
    };
    let mut pc = quick(test_config(net, Some("H100-SXM-80GB:1"), &[]));
    pc.hooks.on_lease_start = Some(hook);
    let provider = TestNode::start(pc).await?;
    let boot = provider.addr().await?;
    let renter = TestNode::start(quick(test_config(net, None, &[boot]))).await?;
    let offer_id = offer_of(&renter, &provider).await?;
    let t0 = std::time::Instant::now();
    let l = lease(&renter, &offer_id, 1, 600).await?;
    let took = t0.elapsed();
    let l = l.map_err(|e| anyhow::anyhow!("lease after {took:?}: {e}"))?;
    assert!(took > Duration::from_secs(1), "the hook ran for 2 s, yet the lease took {took:?}");
    assert_eq!((l.state.as_str(), &l.access["slow"]), ("active", &serde_json::Value::Bool(true)));
    Ok(())
}

/// Fires `n` lease requests for one GPU each from each renter, all at once.
async fn race(renters: &[TestNode], offer_id: &str, per_renter: usize) -> Result<(usize, usize)> {
    let mut tasks = Vec::new();
    for r in renters {
        let offer = r.handle().find_offer(offer_id.into()).await??;
        for _ in 0..per_renter {
            let h = r.handle().clone();
            let p = params(offer.clone(), 1, 600);
            tasks.push(tokio::spawn(async move { h.lease(p).await }));
        }
    }
    let (mut granted, mut no_capacity) = (0, 0);
    for t in tasks {
        match t.await?? {
            Ok(_) => granted += 1,
            Err(LeaseError::Rejected { reason: RejectReason::NoCapacity, .. }) => no_capacity += 1,
            Err(e) => bail!("unexpected outcome: {e}"),
        }
    }
    Ok((granted, no_capacity))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_renters_get_exactly_the_free_gpus() -> Result<()> {
    let net = "t-lease-race";
    let one = TestNode::start(test_config(net, Some("RTX-4090:1"), &[])).await?;
    let boot = one.addr().await?;
    let two = TestNode::start(test_config(net, Some("L40S:2"), std::slice::from_ref(&boot))).await?;
    let mut renters = Vec::new();
    for _ in 0..4 {
        renters.push(TestNode::start(test_config(net, None, std::slice::from_ref(&boot))).await?);
    }
    let last = offer_of(&renters[0], &one).await?;
    let two_left = offer_of(&renters[0], &two).await?;
    for r in &renters {
        offer_of(r, &one).await?;
        offer_of(r, &two).await?;
    }
    assert_eq!(race(&renters, &last, 5).await?, (1, 19), "20 requests for the last GPU");
    assert_eq!(race(&renters, &two_left, 5).await?, (2, 18), "20 requests for two GPUs");
    // Every GPU is in exactly one active lease on the providers' side.
    for p in [&one, &two] {
        let active: Vec<_> = p.handle().leases().await?.into_iter().filter(|l| l.state == "active").collect();
        let mut gpus: Vec<String> = active.iter().flat_map(|l| l.gpu_uuids.clone()).collect();
        let n = gpus.len();
        gpus.sort();
        gpus.dedup();
        assert_eq!(gpus.len(), n, "a GPU is in two leases");
    }
    Ok(())
}

/// The reject reason, or what came instead (so a failed assertion says what happened).
fn reason_of(r: Result<gpumesh_node::views::LeaseView, LeaseError>) -> Result<RejectReason, String> {
    match r {
        Err(LeaseError::Rejected { reason, .. }) => Ok(reason),
        Err(e) => Err(format!("error: {e}")),
        Ok(v) => Err(format!("granted: {v:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_reject_with_the_right_reason() -> Result<()> {
    let net = "t-lease-reject";
    let tmp = tempfile::tempdir()?;
    let renter = TestNode::start(test_config(net, None, &[])).await?;
    let boot = renter.addr().await?;
    let p_dir = tmp.path().join("provider");
    let provider =
        TestNode::start_in(&p_dir, test_config(net, Some("H100-SXM-80GB:2"), std::slice::from_ref(&boot)))
            .await?;
    let offer_id = offer_of(&renter, &provider).await?;

    // Price above max.
    let offer = renter.handle().find_offer(offer_id.clone()).await??;
    let mut p = params(offer.clone(), 1, 600);
    p.max_price = Some(Price(offer.price.0 - 1));
    assert_eq!(reason_of(renter.handle().lease(p).await?), Ok(RejectReason::PriceAboveMax));
    // Duration out of range (the test config allows 1 s to 1 day).
    assert_eq!(
        reason_of(lease(&renter, &offer_id, 1, 3 * 86_400).await?),
        Ok(RejectReason::DurationOutOfRange)
    );
    // No capacity.
    assert_eq!(reason_of(lease(&renter, &offer_id, 3, 600).await?), Ok(RejectReason::NoCapacity));

    // Forged request signature, sent straight over /gpumesh/lease/1.
    let forged = forged_request(&provider, &offer).await?;
    assert_eq!(forged, RejectReason::BadSignature);

    // Denied renter: the provider restarts with the renter on its deny list.
    let mut c = test_config(net, Some("H100-SXM-80GB:2"), std::slice::from_ref(&boot));
    c.policy.deny = vec![renter.peer_id()];
    let provider = crash_and_restart(&renter, provider, &p_dir, c).await?;
    assert_eq!(reason_of(lease(&renter, &offer_id, 1, 600).await?), Ok(RejectReason::DeniedByPolicy));

    // Unknown offer: the provider comes back with other GPUs (a crash leaves no withdrawal, so
    // the renter still holds the old offer).
    let c = test_config(net, Some("T4:1"), std::slice::from_ref(&boot));
    let _provider = crash_and_restart(&renter, provider, &p_dir, c).await?;
    assert_eq!(reason_of(lease(&renter, &offer_id, 1, 600).await?), Ok(RejectReason::OfferUnknownOrExpired));
    Ok(())
}

/// Crashes the renter's only peer and starts it again from its data dir with `config`, and
/// returns once each side holds a connection to the other. The renter must first see the old
/// connection close: a request it sent over that one would be lost, and a dial to the old
/// listen address (the restart binds a new port) would fail.
async fn crash_and_restart(
    renter: &TestNode,
    mut provider: TestNode,
    dir: &std::path::Path,
    config: gpumesh_node::config::NodeConfig,
) -> Result<TestNode> {
    provider.crash().await;
    wait_for("the renter to see the provider gone", Duration::from_secs(20), || async {
        matches!(renter.status().await, Ok(s) if s.peers == 0)
    })
    .await?;
    let provider = TestNode::start_in(dir, config).await?;
    wait_for("the provider and the renter to reconnect", Duration::from_secs(20), || async {
        matches!(provider.status().await, Ok(s) if s.peers >= 1)
            && matches!(renter.status().await, Ok(s) if s.peers >= 1)
    })
    .await?;
    Ok(provider)
}

/// Sends a lease request signed by one key but naming another renter; returns the reason.
async fn forged_request(provider: &TestNode, offer: &Verified<Offer>) -> Result<RejectReason> {
    let mallory = SigningKey::from_bytes(&[13; 32]);
    let kp = identity::Keypair::ed25519_from_bytes(mallory.to_bytes())?;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(kp)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                BytesCodec { max_request: wire::MAX_LEASE_RPC, max_response: wire::MAX_LEASE_RPC },
                [(StreamProtocol::new(wire::LEASE_PROTOCOL), ProtocolSupport::Outbound)],
                request_response::Config::default(),
            )
        })?
        .build();
    let victim = NodeId::from_bytes([42; 32]);
    let req = LeaseRequest {
        v: PROTOCOL_VERSION,
        network: offer.network.clone(),
        renter: victim,
        provider: offer.provider,
        offer_id: offer.offer_id,
        gpus: 1,
        duration_s: 600,
        price: offer.price,
        max_price: offer.price,
        nonce: Nonce([1; 16]),
        issued_at: gpumesh_node::clock::now(),
        ssh_key: None,
    };
    let bytes = wire::encode(&LeaseRpc::Request(Bytes(envelope::seal(&mallory, &req))));
    let addr: Multiaddr = provider.addr().await?.parse()?;
    let peer = provider.peer_id().parse()?;
    swarm.behaviour_mut().send_request_with_addresses(&peer, bytes, vec![addr]);
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                libp2p::swarm::SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. }, ..
                }) => {
                    let LeaseRpcReply::Reject(r) = wire::decode::<LeaseRpcReply>(&response, wire::MAX_LEASE_RPC)? else {
                        bail!("expected a reject");
                    };
                    let reject = envelope::open::<LeaseReject>(&r.0)?;
                    assert_eq!(reject.signer(), &offer.provider, "the reject is signed by the provider");
                    return Ok(reject.reason);
                }
                libp2p::swarm::SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                    bail!("request failed: {error}")
                }
                _ => {}
            },
            _ = &mut deadline => bail!("no answer to the forged request"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lease_expires_on_both_sides_and_the_gpu_comes_back() -> Result<()> {
    let net = "t-lease-expiry";
    let provider = TestNode::start(test_config(net, Some("RTX-3090:1"), &[])).await?;
    let boot = provider.addr().await?;
    let renter = TestNode::start(test_config(net, None, &[boot])).await?;
    let offer_id = offer_of(&renter, &provider).await?;
    let l = lease(&renter, &offer_id, 1, 3).await??;
    assert_eq!(l.state, "active");
    let id = l.lease_id.clone();
    wait_for("the lease to expire at the renter, with a receipt", Duration::from_secs(20), || async {
        let state = renter.handle().lease_show(id.clone()).await.ok().and_then(Result::ok).map(|l| l.state);
        state.as_deref() == Some("expired")
            && renter.handle().receipts().await.is_ok_and(|r| r.iter().any(|r| r.lease_id == id))
    })
    .await?;
    assert_eq!(provider.handle().lease_show(id.clone()).await??.state, "expired");
    let receipt = renter.handle().receipts().await?.into_iter().find(|r| r.lease_id == id).expect("receipt");
    assert_eq!(receipt.ended_by, "expired");
    assert!(receipt.amount_micros > 0);
    let pid = provider.peer_id();
    wait_for("the GPU offered again", Duration::from_secs(20), || async {
        matches!(renter.offers_of(&pid).await, Ok(o) if o.len() == 1 && o[0].gpu_count == 1)
    })
    .await?;
    Ok(())
}

/// A renter makes its request durable before it reports a grant, but not the grant itself: a
/// crash just after the answer may leave only the request on disk. Restarted like that, the
/// renter asks the provider and gets the very same lease back (same GPUs, same end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renter_that_lost_its_grant_record_in_a_crash_gets_the_same_lease_back() -> Result<()> {
    use gpumesh_node::datadir::DataDir;
    use gpumesh_node::store::Store;
    use gpumesh_protocol::lease::LeaseState;
    let net = "t-lease-regrant";
    let provider = TestNode::start(test_config(net, Some("H100-SXM-80GB:2"), &[])).await?;
    let boot = provider.addr().await?;
    let tmp = tempfile::tempdir()?;
    let r_dir = tmp.path().join("renter");
    let mut renter = TestNode::start_in(&r_dir, test_config(net, None, std::slice::from_ref(&boot))).await?;
    let offer_id = offer_of(&renter, &provider).await?;
    let granted = match lease(&renter, &offer_id, 1, 600).await? {
        Ok(v) => v,
        Err(e) => bail!("lease failed: {e}"),
    };
    assert_eq!(granted.state, "active");
    renter.crash().await;

    // Put the store back to what such a crash leaves: the request, no grant.
    {
        let store = Store::open(&DataDir::new(&r_dir).db_path())?;
        let (leases, _) = store.renter_leases();
        let Some(mut l) = leases.into_iter().find(|l| l.lease_id.to_string() == granted.lease_id) else {
            bail!("the renter's store has no record of lease {}", granted.lease_id)
        };
        l.state = LeaseState::Requested;
        l.grant = None;
        l.gpu_uuids.clear();
        l.start = None;
        l.end = None;
        l.access.clear();
        store.persist_renter_lease(&l).await?;
        store.flush().await?;
    }

    let renter = TestNode::start_in(&r_dir, test_config(net, None, &[boot])).await?;
    let back = poll("the restored lease active again", Duration::from_secs(30), || async {
        let v = renter.handle().lease_show(granted.lease_id.clone()).await.ok()?.ok()?;
        (v.state == "active").then_some(v)
    })
    .await?;
    assert_eq!((&back.gpu_uuids, &back.start, &back.end), (&granted.gpu_uuids, &granted.start, &granted.end));
    // The provider holds that one lease, on the same GPU.
    let at_provider = provider.handle().leases().await?;
    assert_eq!(at_provider.len(), 1, "{at_provider:?}");
    assert_eq!(
        (&at_provider[0].lease_id, &at_provider[0].gpu_uuids),
        (&granted.lease_id, &granted.gpu_uuids)
    );
    Ok(())
}
