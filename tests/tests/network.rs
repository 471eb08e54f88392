//! Six providers joined through one bootstrap node: offers converge everywhere, a price change
//! reaches all, a withdrawal at shutdown removes offers everywhere, a silent provider's offers
//! expire everywhere, a restarted node has its book back before it reconnects and drops from
//! its store what expired while it was down, and a late joiner gets a book of several sync pages.
//! A node above `target_peers` closes the connections that carry nothing for it, and not
//! before their grace period. A request on an open connection takes one round trip.

use anyhow::Result;
use gpumesh_protocol::PROTOCOL_VERSION;
use gpumesh_protocol::wire::{self, CapacityQuery};
use gpumesh_tests::adversary::{self, Proto, RpcPeer};
use gpumesh_tests::{TestNode, delay_proxy, test_config, wait_for};
use std::collections::BTreeSet;
use std::time::Duration;

const INVENTORIES: [&str; 6] =
    ["H100-SXM-80GB:2", "A100-SXM-80GB:4", "RTX-4090:1,RTX-3090:2", "L40S:2", "H200-SXM-141GB:8", "T4:4"];

/// Offers each node's book holds, per provider.
async fn books_hold(nodes: &[TestNode], expected: &[(String, usize)]) -> bool {
    for n in nodes.iter().filter(|n| n.node.is_some()) {
        let Ok(offers) = n.offers().await else { return false };
        for (provider, count) in expected {
            if offers.iter().filter(|o| &o.provider == provider).count() != *count {
                return false;
            }
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_providers_converge_reprice_withdraw_and_expire() -> Result<()> {
    let net = "t-six";
    let first = TestNode::start(test_config(net, Some(INVENTORIES[0]), &[])).await?;
    let boot = first.addr().await?;
    let mut nodes = vec![first];
    for (i, inv) in INVENTORIES.iter().enumerate().skip(1) {
        let mut c = test_config(net, Some(inv), std::slice::from_ref(&boot));
        if i == 5 {
            // The provider that goes silent later: short offer TTL.
            c.offer_ttl = "3s".into();
        }
        nodes.push(TestNode::start(c).await?);
    }
    let groups = [1usize, 1, 2, 1, 1, 1];
    let expected: Vec<(String, usize)> = nodes.iter().map(|n| n.peer_id()).zip(groups).collect();
    wait_for("every book to hold every provider's offers", Duration::from_secs(30), || {
        books_hold(&nodes, &expected)
    })
    .await?;

    // A price change on provider 1 reaches every node.
    let changed = nodes[1].handle().set_price(None, "0.99".parse()?).await??;
    assert_eq!(changed, 1);
    let p1 = nodes[1].peer_id();
    wait_for("the new price everywhere", Duration::from_secs(20), || async {
        for n in &nodes {
            match n.offers_of(&p1).await {
                Ok(o) if o.len() == 1 && o[0].price_micros == 990_000 => {}
                _ => return false,
            }
        }
        true
    })
    .await?;

    // Provider 3 stops cleanly: its withdrawal removes its offers everywhere, long before
    // they would expire (TTL 60 s).
    let p3 = nodes[3].peer_id();
    nodes[3].stop().await;
    wait_for("the withdrawal everywhere", Duration::from_secs(15), || async {
        for n in nodes.iter().filter(|n| n.node.is_some()) {
            if !matches!(n.offers_of(&p3).await, Ok(o) if o.is_empty()) {
                return false;
            }
        }
        true
    })
    .await?;

    // Provider 5 goes silent (crash: no withdrawal); its 3 s offers expire everywhere.
    let p5 = nodes[5].peer_id();
    nodes[5].crash().await;
    wait_for("the silent provider's offers to expire", Duration::from_secs(15), || async {
        for n in nodes.iter().filter(|n| n.node.is_some()) {
            if !matches!(n.offers_of(&p5).await, Ok(o) if o.is_empty()) {
                return false;
            }
        }
        true
    })
    .await?;
    // The others are still there.
    let remaining: Vec<(String, usize)> =
        expected.iter().filter(|(p, _)| p != &p3 && p != &p5).cloned().collect();
    assert!(books_hold(&nodes, &remaining).await);
    for n in &mut nodes {
        n.stop().await;
    }
    Ok(())
}

/// A provider inventory of two GPU groups, so two offers.
const TWO_GROUPS: &str = "H100-SXM-80GB:2,RTX-4090:1";

/// Starts provider `a` from `a_config`, and node `b` in `b_dir` bootstrapped from it; returns
/// both once `b` holds `a`'s two offers.
async fn provider_and_learner(
    a_config: gpumesh_node::config::NodeConfig,
    b_dir: &std::path::Path,
) -> Result<(TestNode, TestNode)> {
    let net = a_config.network.clone();
    let a = TestNode::start(a_config).await?;
    let boot = a.addr().await?;
    let b = TestNode::start_in(b_dir, test_config(&net, None, &[boot])).await?;
    let pa = a.peer_id();
    wait_for("b to learn a's offers", Duration::from_secs(20), || async {
        matches!(b.offers_of(&pa).await, Ok(o) if o.len() == 2)
    })
    .await?;
    Ok((a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_has_its_book_back_before_it_reconnects() -> Result<()> {
    let net = "t-restart";
    let tmp = tempfile::tempdir()?;
    let b_dir = tmp.path().join("b");
    let (a, mut b) = provider_and_learner(test_config(net, Some(TWO_GROUPS), &[]), &b_dir).await?;
    let pa = a.peer_id();
    b.crash().await;
    // Restart with no bootstrap peer at all: whatever it knows comes from its store.
    let b2 = TestNode::start_in(&b_dir, test_config(net, None, &[])).await?;
    let status = b2.status().await?;
    assert_eq!(status.peers, 0, "the restarted node has no connections");
    assert_eq!(b2.offers_of(&pa).await?.len(), 2, "the book came back from the store");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_that_expired_while_a_node_was_down_leave_its_store_at_restart() -> Result<()> {
    use gpumesh_node::store::Store;
    let net = "t-expired-store";
    let tmp = tempfile::tempdir()?;
    let mut ca = test_config(net, Some(TWO_GROUPS), &[]);
    ca.offer_ttl = "2s".into();
    let b_dir = tmp.path().join("b");
    let (a, mut b) = provider_and_learner(ca, &b_dir).await?;
    let pa = a.peer_id();
    b.stop().await;
    let db = gpumesh_node::DataDir::new(&b_dir).db_path();
    let latest = {
        let (stored, _) = Store::open(&db)?.offers();
        assert_eq!(stored.len(), 2, "b stored a's two offers");
        stored
            .iter()
            .map(|(_, v)| {
                gpumesh_protocol::envelope::open::<gpumesh_protocol::Offer>(v).map(|o| o.expires_at)
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .max()
            .expect("two offers")
    };
    // Waiting on the clock itself: the offers' own expiry, at most a TTL (2 s) away.
    wait_for("b's stored offers to expire", Duration::from_secs(10), || async {
        gpumesh_node::clock::now() > latest
    })
    .await?;
    // Restarted alone: nothing to load, and the expired offers are gone from the store too.
    let mut b2 = TestNode::start_in(&b_dir, test_config(net, None, &[])).await?;
    assert!(b2.offers_of(&pa).await?.is_empty());
    b2.stop().await;
    assert!(Store::open(&db)?.offers().0.is_empty(), "expired offers stay out of the store");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_dialing_its_bootstrap_peer_until_it_comes_up() -> Result<()> {
    let net = "t-retry";
    let tmp = tempfile::tempdir()?;
    // Know A's identity and a free port before A runs.
    let a_dir = tmp.path().join("a");
    let a_id = gpumesh_node::DataDir::new(&a_dir).init(net, false)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let a_addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{a_id}");
    let b = TestNode::start(test_config(net, None, &[a_addr])).await?;
    // B has been failing to dial for a while (at least two attempts) when A starts.
    wait_for("two failed dials", Duration::from_secs(10), || async {
        b.metric_sum("gpumesh_libp2p_swarm_outgoing_connection_error_total").await.unwrap_or(0.0) >= 2.0
    })
    .await?;
    let mut c = test_config(net, Some("RTX-4090:1"), &[]);
    c.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}")];
    let a = TestNode::start_in(&a_dir, c).await?;
    let pa = a.peer_id();
    wait_for("b to connect and learn a's offer", Duration::from_secs(20), || async {
        matches!(b.offers_of(&pa).await, Ok(o) if o.len() == 1)
    })
    .await?;
    Ok(())
}

/// Gives `a` (listening at `a_addr`) 30 offers of a provider made from key `seed`, which
/// then leaves: from then on only books hold them. Returns the provider's id.
async fn offers_of_a_provider_gone(a: &TestNode, a_addr: &str, net: &str, seed: u64) -> Result<String> {
    use gpumesh_protocol::envelope;
    use gpumesh_tests::adversary::{GossipPeer, offer_for};
    let key = adversary::key(seed);
    let provider = adversary::node_id(&key).to_string();
    let now = gpumesh_node::clock::now();
    let p = GossipPeer::join(key.clone(), net, a_addr, 64 * 1024).await?;
    for i in 0..30 {
        p.publish(envelope::seal(&key, &offer_for(&key, net, &format!("GONE-{i}"), 1, now))).await?;
    }
    wait_for("A to hold the 30 offers", Duration::from_secs(20), || async {
        matches!(a.offers_of(&provider).await, Ok(o) if o.len() == 30)
    })
    .await?;
    Ok(provider)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_gets_a_book_larger_than_one_sync_page() -> Result<()> {
    let net = "t-sync-pages";
    // A answers syncs in pages of 7 offers; it will hold 30 offers of a provider that then leaves.
    let mut ca = test_config(net, None, &[]);
    ca.tuning.sync_page_offers = 7;
    let a = TestNode::start(ca).await?;
    let a_addr = a.addr().await?;
    let provider = offers_of_a_provider_gone(&a, &a_addr, net, 31).await?;
    // The provider is gone and re-announces nothing: B, joining through A, can learn the
    // offers only from A's book, page after page.
    let b = TestNode::start(test_config(net, None, &[a_addr])).await?;
    wait_for("B to hold all 30 offers", Duration::from_secs(20), || async {
        matches!(b.offers_of(&provider).await, Ok(o) if o.len() == 30)
    })
    .await?;
    let gossiped = b.metric_sum("gpumesh_gossip_messages_total{result=\"accepted\"").await?;
    assert_eq!(gossiped, 0.0, "B learnt the offers by sync, not by gossip");
    Ok(())
}

/// A node that comes back holding the book it had is sent none of it again: its sync request
/// carries a digest of its book, and the peer leaves out every range of ids where the two
/// books agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_rejoins_holding_the_same_book_is_sent_none_of_it() -> Result<()> {
    let net = "t-sync-digest";
    let a = TestNode::start(test_config(net, None, &[])).await?;
    let a_addr = a.addr().await?;
    let provider = offers_of_a_provider_gone(&a, &a_addr, net, 32).await?;
    let served = "gpumesh_sync_offers_served_total";
    let pages = "gpumesh_sync_pages_served_total";
    let tmp = tempfile::tempdir()?;
    let b_dir = tmp.path().join("b");
    let mut b = TestNode::start_in(&b_dir, test_config(net, None, std::slice::from_ref(&a_addr))).await?;
    wait_for("B to hold the 30 offers", Duration::from_secs(20), || async {
        matches!(b.offers_of(&provider).await, Ok(o) if o.len() == 30)
    })
    .await?;
    let first = a.metric_sum(served).await?;
    assert!(first >= 30.0, "B joined with an empty book and was sent all 30 offers ({first})");
    b.stop().await;

    // B comes back on the same data dir: its book, loaded from its store, is A's.
    let pages_before = a.metric_sum(pages).await?;
    let b = TestNode::start_in(&b_dir, test_config(net, None, &[a_addr])).await?;
    wait_for("A to answer B's sync again", Duration::from_secs(20), || async {
        a.metric_sum(pages).await.is_ok_and(|p| p > pages_before)
    })
    .await?;
    assert_eq!(a.metric_sum(served).await?, first, "no offer was sent again");
    assert_eq!(b.offers_of(&provider).await?.len(), 30, "B still holds the 30 offers");
    Ok(())
}

/// Sync requests a node cannot use get an empty page and leave the node serving: junk, a
/// digest of the wrong length, another network, and one over the protocol's size limit (whose
/// stream the node closes). A well-formed request gets the book, less the ranges whose sums
/// match the digest it carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sync_requests_get_an_empty_page_and_the_node_keeps_serving() -> Result<()> {
    use gpumesh_protocol::bytes::Bytes;
    use gpumesh_protocol::envelope;
    use gpumesh_protocol::wire::{SyncAnswer, SyncRequest};
    use gpumesh_protocol::{Offer, OfferId, SyncDigest};
    let net = "t-sync-bad";
    let a = TestNode::start(test_config(net, None, &[])).await?;
    let a_addr = a.addr().await?;
    offers_of_a_provider_gone(&a, &a_addr, net, 33).await?;
    let peer = RpcPeer::start(adversary::key(34), 4).await?;
    let ask = |bytes: Vec<u8>| {
        let (peer, a_addr) = (&peer, &a_addr);
        async move { peer.request(Proto::Sync, a_addr, bytes).await }
    };
    let page = |answer: Vec<u8>| wire::decode::<SyncAnswer>(&answer, wire::MAX_SYNC_ANSWER);
    let request = |network: &str, have: Option<Vec<u8>>| {
        wire::encode(&SyncRequest {
            v: PROTOCOL_VERSION,
            network: network.into(),
            after: None,
            have: have.map(Bytes),
        })
    };

    let bad = [
        ("junk", b"junk".to_vec()),
        ("a digest one byte short", request(net, Some(vec![0; 2047]))),
        ("a digest one byte long", request(net, Some(vec![0; 2049]))),
        ("another network", request("t-other", None)),
    ];
    for (what, bytes) in bad {
        let answer = ask(bytes).await?.map_err(anyhow::Error::msg)?;
        let p = page(answer)?;
        assert!(p.offers.is_empty() && p.next.is_none(), "{what}: {} offers", p.offers.len());
    }
    let over = request(net, Some(vec![0; wire::MAX_SYNC_REQUEST]));
    // The node stops reading at the limit and drops the stream: the client sees it end with
    // no answer (or fail), never a page.
    match ask(over).await? {
        Err(_) => {}
        Ok(answer) => assert!(answer.is_empty(), "a request over the limit was answered: {answer:?}"),
    }

    // Still serving: an empty book's digest (all zero) differs in every range the node holds.
    let all = page(ask(request(net, Some(vec![0; 2048]))).await?.map_err(anyhow::Error::msg)?)?;
    assert_eq!(all.offers.len(), 30);
    let ids: Vec<OfferId> = all
        .offers
        .iter()
        .map(|b| envelope::open::<Offer>(&b.0).map(|o| o.offer_id))
        .collect::<Result<_, _>>()?;
    // A digest of the same 30 offers: nothing to send.
    let same = SyncDigest::of(ids.iter().zip(all.offers.iter().map(|b| &b.0[..])));
    let none = page(ask(request(net, Some(same.to_bytes()))).await?.map_err(anyhow::Error::msg)?)?;
    assert!(none.offers.is_empty(), "{} offers sent to a peer holding them all", none.offers.len());
    Ok(())
}

/// A client connected to the node at `addr` that only ever sent it one junk capacity query
/// (which does not count as use).
async fn idle_client(key: u64, addr: &str) -> Result<RpcPeer> {
    let peer = RpcPeer::start(adversary::key(key), 4).await?;
    peer.request(Proto::Capacity, addr, b"junk".to_vec()).await?.map_err(anyhow::Error::msg)?;
    Ok(peer)
}

/// A hub with `target_peers = 1` and seven connections: a gossip-mesh member and a renter
/// that asked a capacity query (both older than the others), and five clients that only sent
/// junk. The hub closes exactly the five; the member and the renter stay although the hub is
/// still above its target, and would have gone first if they were not protected (the oldest
/// connections past the grace period are candidates in every sweep that closes the five).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_target_peers_a_node_closes_idle_connections_but_keeps_its_mesh_and_renters() -> Result<()> {
    let net = "t-trim";
    let mut c = test_config(net, Some("RTX-4090:1"), &[]);
    c.target_peers = 1;
    let hub = TestNode::start(c).await?;
    let hub_addr = hub.addr().await?;
    let member = TestNode::start(test_config(net, None, std::slice::from_ref(&hub_addr))).await?;
    let member_id = member.peer_id();
    wait_for("the member to connect", Duration::from_secs(20), || async {
        hub.handle().peers().await.is_ok_and(|p| p.iter().any(|p| p.peer_id == member_id))
    })
    .await?;
    let renter = RpcPeer::start(adversary::key(41), 4).await?;
    let query = CapacityQuery { v: PROTOCOL_VERSION, network: net.into(), query: String::new() };
    renter.request(Proto::Capacity, &hub_addr, wire::encode(&query)).await?.map_err(anyhow::Error::msg)?;
    let mut idle = Vec::new();
    for i in 0..5 {
        idle.push(idle_client(50 + i, &hub_addr).await?);
    }
    wait_for("the hub to close five connections", Duration::from_secs(30), || async {
        hub.metric_sum("gpumesh_peers_trimmed_total").await.unwrap_or(0.0) >= 5.0
            && hub.handle().peers().await.is_ok_and(|p| p.len() == 2)
    })
    .await?;
    let kept: BTreeSet<String> = hub.handle().peers().await?.into_iter().map(|p| p.peer_id).collect();
    assert_eq!(kept, BTreeSet::from([member_id, renter.peer_id.to_string()]));
    assert_eq!(hub.metric_sum("gpumesh_peers_trimmed_total").await?, 5.0);
    Ok(())
}

/// Peers that keep themselves in use (here: a valid capacity query each) are kept, but only
/// as many as half of `max_connections`; past that the least recently used go, so that made-up
/// identities asking queries cannot hold every connection slot. Six renters ask in turn a
/// hub with `max_connections = 8` (it keeps 4); the two that asked first are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renters_in_use_are_kept_only_up_to_half_of_max_connections() -> Result<()> {
    let net = "t-trim-used";
    let mut c = test_config(net, None, &[]);
    c.target_peers = 1;
    c.max_connections = 8;
    let hub = TestNode::start(c).await?;
    let hub_addr = hub.addr().await?;
    let query =
        wire::encode(&CapacityQuery { v: PROTOCOL_VERSION, network: net.into(), query: String::new() });
    let mut renters = Vec::new();
    for i in 0..6 {
        let renter = RpcPeer::start(adversary::key(70 + i), 4).await?;
        // One after the other: each renter's use is later than the one before.
        renter.request(Proto::Capacity, &hub_addr, query.clone()).await?.map_err(anyhow::Error::msg)?;
        renters.push(renter);
    }
    wait_for("the hub to close two renters", Duration::from_secs(30), || async {
        hub.handle().peers().await.is_ok_and(|p| p.len() == 4)
    })
    .await?;
    let kept: BTreeSet<String> = hub.handle().peers().await?.into_iter().map(|p| p.peer_id).collect();
    let latest: BTreeSet<String> = renters[2..].iter().map(|r| r.peer_id.to_string()).collect();
    assert_eq!(kept, latest, "the four that asked last are kept");
    assert_eq!(hub.metric_sum("gpumesh_peers_trimmed_total").await?, 2.0);
    Ok(())
}

/// A connection is not closed for being above `target_peers` before its grace period (ten
/// gossip heartbeats, at least 1 s) has passed: a new peer gets time to join the mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_is_not_trimmed_before_its_grace_period() -> Result<()> {
    let net = "t-trim-grace";
    let mut c = test_config(net, None, &[]);
    c.target_peers = 1;
    let grace = Duration::from_secs(1); // test_config's heartbeat is 100 ms: 10 × 100 ms = 1 s
    let hub = TestNode::start(c).await?;
    let hub_addr = hub.addr().await?;
    let _first = idle_client(60, &hub_addr).await?;
    let dialled = std::time::Instant::now(); // the second connection opens after this
    let second = idle_client(61, &hub_addr).await?;
    // The newer connection goes first; both are idle, the hub is one over its target.
    let gone = second.peer_id.to_string();
    wait_for("the hub to close the newer connection", Duration::from_secs(20), || async {
        hub.handle().peers().await.is_ok_and(|p| p.len() == 1 && p.iter().all(|p| p.peer_id != gone))
    })
    .await?;
    let closed_after = dialled.elapsed();
    assert!(closed_after >= grace, "closed {closed_after:?} after it opened, within the {grace:?} grace");
    Ok(())
}

/// A provider whose every byte takes `one_way` to the renter and back (through
/// [`delay_proxy`]), and a renter that knows it only through that proxy and holds its offer.
async fn provider_behind_a_slow_link(net: &str, one_way: Duration) -> Result<(TestNode, TestNode)> {
    let provider = TestNode::start(test_config(net, Some("H100-SXM-80GB:2"), &[])).await?;
    let addr = provider.addr().await?;
    let port = addr
        .parse::<libp2p::Multiaddr>()?
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("no TCP port in {addr}"))?;
    let proxy = delay_proxy(([127, 0, 0, 1], port).into(), one_way).await?;
    let via_proxy = format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", proxy.port(), provider.peer_id());
    let renter = TestNode::start(test_config(net, None, &[via_proxy])).await?;
    wait_for("the provider's offer at the renter", Duration::from_secs(30), || async {
        renter.offers_of(&provider.peer_id()).await.is_ok_and(|o| o.len() == 1)
    })
    .await?;
    Ok((provider, renter))
}

fn h100s() -> Result<gpumesh_node::handle::Search> {
    Ok(gpumesh_node::handle::Search {
        query: gpumesh_protocol::query::Query::parse("gpu=h100")?,
        sort: Default::default(),
        limit: usize::MAX,
        latency_weight: 0.5,
    })
}

/// A request on an open connection costs one round trip: the request goes out together with
/// its stream's protocol name instead of after the provider confirmed the name (which would
/// make it two). Measured over a proxy that delays each direction by 250 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_an_open_connection_takes_one_round_trip() -> Result<()> {
    const ONE_WAY: Duration = Duration::from_millis(250);
    let (provider, renter) = provider_behind_a_slow_link("t-one-rtt", ONE_WAY).await?;
    // The first capacity request on the connection, then one more: both must take one
    // round trip (500 ms here); two would take 1 s.
    for round in 0..2 {
        let report = renter.handle().capacity(h100s()?, Duration::from_secs(5)).await?;
        let answer = report
            .answered
            .iter()
            .find(|a| a.peer_id == provider.peer_id())
            .ok_or_else(|| anyhow::anyhow!("round {round}: the provider did not answer: {report:?}"))?;
        let rtt = Duration::from_secs_f64(answer.rtt_ms / 1000.0);
        assert!(
            rtt >= 2 * ONE_WAY,
            "round {round}: {rtt:?} is less than the link's round trip: not via the proxy?"
        );
        assert!(rtt < 3 * ONE_WAY, "round {round}: {rtt:?} is more than one round trip of {:?}", 2 * ONE_WAY);
    }
    Ok(())
}

/// A capacity query ends at its timeout with the providers that had not answered by then
/// listed as unreachable, although the node otherwise keeps no timer running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capacity_query_ends_at_its_timeout_when_a_provider_is_slower() -> Result<()> {
    const ONE_WAY: Duration = Duration::from_millis(300);
    let (provider, renter) = provider_behind_a_slow_link("t-slow-answer", ONE_WAY).await?;
    let timeout = Duration::from_millis(250);
    let report = gpumesh_tests::within(
        "a capacity query with a 250 ms timeout",
        Duration::from_secs(10),
        renter.handle().capacity(h100s()?, timeout),
    )
    .await??;
    assert!(report.answered.is_empty(), "{report:?}");
    let slow = report.unreachable.iter().find(|u| u.peer_id == provider.peer_id());
    assert!(slow.is_some_and(|u| u.error.contains("no answer before the timeout")), "{report:?}");
    let elapsed = Duration::from_secs_f64(report.elapsed_ms / 1000.0);
    assert!(elapsed >= timeout, "ended after {elapsed:?}, before its timeout");
    assert!(elapsed < 2 * ONE_WAY, "ended after {elapsed:?}, long after its {timeout:?} timeout");
    Ok(())
}
