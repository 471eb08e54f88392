//! A rogue peer (a plain libp2p swarm) publishes forged, tampered, expired, replayed,
//! wrong-network and malformed offers to node A, which is connected to node B. None is stored
//! by A, none reaches B, A counts the rejects, and A penalises the rogue until it disconnects
//! and blocks it.

use anyhow::Result;
use futures::StreamExt;
use gpumesh_node::net::{message_id, offers_topic};
use gpumesh_protocol::envelope::{self, RawEnvelope, assemble};
use gpumesh_protocol::*;
use gpumesh_tests::{TestNode, test_config, wait_for};
use libp2p::gossipsub::{self, MessageAuthenticity, ValidationMode};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm, identity, noise, tcp, yamux};
use std::time::Duration;

const NET: &str = "t-rogue";

fn rogue_swarm(key: &SigningKey) -> Result<Swarm<gossipsub::Behaviour>> {
    let kp = identity::Keypair::ed25519_from_bytes(key.to_bytes())?;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(kp)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|_| {
            let cfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(100))
                .validation_mode(ValidationMode::Anonymous)
                .message_id_fn(|m| message_id(&m.data))
                .build()
                .map_err(|e| e.to_string())?;
            gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, cfg).map_err(|e| e.into())
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

fn offer(key: &SigningKey, model: &str, seq: u64, issued_at: Timestamp) -> Offer {
    gpumesh_tests::adversary::offer_for(key, NET, model, seq, issued_at)
}

/// Drives the rogue swarm in the background; returns a sender of messages to publish.
fn spawn_rogue(mut swarm: Swarm<gossipsub::Behaviour>) -> tokio::sync::mpsc::UnboundedSender<Vec<u8>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let topic = offers_topic(NET);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = swarm.select_next_some() => {}
                msg = rx.recv() => match msg {
                    Some(m) => {
                        let _ = swarm.behaviour_mut().publish(topic.clone(), m);
                    }
                    None => return,
                },
            }
        }
    });
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_offers_are_rejected_not_stored_not_forwarded_and_the_rogue_is_penalised() -> Result<()> {
    let a = TestNode::start(test_config(NET, Some("RTX-4090:1"), &[])).await?;
    let a_addr = a.addr().await?;
    let b = TestNode::start(test_config(NET, None, std::slice::from_ref(&a_addr))).await?;
    wait_for("a and b to connect", Duration::from_secs(20), || async {
        matches!(b.status().await, Ok(s) if s.peers >= 1)
    })
    .await?;

    let rogue_key = SigningKey::from_bytes(&[66; 32]);
    let victim_key = SigningKey::from_bytes(&[77; 32]);
    let mut swarm = rogue_swarm(&rogue_key)?;
    let topic = offers_topic(NET);
    swarm.behaviour_mut().subscribe(&topic)?;
    swarm.dial(a_addr.parse::<Multiaddr>()?)?;
    // Wait until the rogue knows A subscribes to the topic.
    let a_peer: libp2p::PeerId = a.peer_id().parse()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready =
            swarm.behaviour().all_peers().any(|(p, topics)| p == &a_peer && topics.contains(&&topic.hash()));
        if ready {
            break;
        }
        tokio::select! {
            e = swarm.select_next_some() => if let SwarmEvent::OutgoingConnectionError { error, .. } = e {
                anyhow::bail!("rogue could not dial A: {error}");
            },
            _ = tokio::time::sleep_until(deadline) => anyhow::bail!("rogue never saw A's subscription"),
        }
    }
    let rogue = spawn_rogue(swarm);
    let now = gpumesh_node::clock::now();
    let rogue_id = NodeId::from_bytes(rogue_key.verifying_key().to_bytes()).to_string();

    // First a valid offer from the rogue (seq 10): it is accepted and reaches B.
    rogue.send(envelope::seal(&rogue_key, &offer(&rogue_key, "RTX-GOOD", 10, now)))?;
    wait_for("the rogue's valid offer at B", Duration::from_secs(20), || async {
        matches!(b.offers_of(&rogue_id).await, Ok(o) if o.len() == 1)
    })
    .await?;
    // Replayed older sequence of the same offer: ignored (late, not malicious).
    rogue.send(envelope::seal(&rogue_key, &offer(&rogue_key, "RTX-GOOD", 5, now)))?;
    wait_for("A to ignore the stale sequence", Duration::from_secs(10), || async {
        a.metric_sum("gpumesh_gossip_messages_total{result=\"ignored\",reason=\"stale_sequence\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await?;

    let mut bad: Vec<Vec<u8>> = Vec::new();
    // Expired (ignored, not penalised: honest relays forward offers that expire in flight).
    let mut expired = offer(&rogue_key, "EXPIRED", 1, Timestamp(now.0 - 120_000));
    expired.expires_at = Timestamp(now.0 - 60_000);
    bad.push(envelope::seal(&rogue_key, &expired));
    // Forged: the victim's id as provider, signed by the rogue.
    bad.push(envelope::seal(&rogue_key, &offer(&victim_key, "FORGED", 1, now)));
    // Forged signature: the victim as signer and provider, made-up signature.
    let body = envelope::encode_body(&offer(&victim_key, "FORGED-SIG", 1, now));
    let victim = NodeId::from_bytes(victim_key.verifying_key().to_bytes());
    bad.push(assemble(Kind::Offer, &victim, &body, &[0x5a; 64]));
    // Tampered: a valid envelope with one body byte changed.
    let mut tampered = envelope::seal(&rogue_key, &offer(&rogue_key, "TAMPERED", 1, now));
    let body_len = RawEnvelope::parse(&tampered)?.body.len();
    let i = tampered.len() - 66 - body_len / 2;
    tampered[i] ^= 0x01;
    bad.push(tampered);
    // Wrong network.
    let mut wrong = offer(&rogue_key, "WRONG-NET", 1, now);
    wrong.network = "elsewhere".into();
    bad.push(envelope::seal(&rogue_key, &wrong));
    // Malformed.
    bad.push(b"\x84\x01\x58\x20this is not an envelope at all.........".to_vec());
    for m in bad {
        rogue.send(m)?;
    }
    // The rogue is penalised until A disconnects and blocks it.
    wait_for("A to ban the rogue", Duration::from_secs(20), || async {
        a.metric_sum("gpumesh_peer_bans_total").await.unwrap_or(0.0) >= 1.0
    })
    .await?;
    let rejected = a.metric_sum("gpumesh_gossip_messages_total{result=\"rejected\"").await?;
    assert!(rejected >= 3.0, "A rejected {rejected} before banning");
    let peers = a.handle().peers().await?;
    assert!(!peers.iter().any(|p| p.peer_id == rogue_id), "the rogue is still connected to A");

    // A marker through A to B: A's own re-priced offer. Gossip from A to B is ordered on one
    // stream, so anything A had forwarded would have reached B before it.
    let a_id = a.peer_id();
    a.handle().set_price(None, "0.77".parse()?).await??;
    wait_for("A's new price at B", Duration::from_secs(20), || async {
        matches!(b.offers_of(&a_id).await, Ok(o) if o.len() == 1 && o[0].price_micros == 770_000)
    })
    .await?;

    // Nothing bad stored at A or B: only the rogue's valid offer at seq 10, and A's own.
    for n in [&a, &b] {
        let rogue_offers = n.offers_of(&rogue_id).await?;
        assert_eq!(rogue_offers.len(), 1, "{rogue_offers:?}");
        assert_eq!((rogue_offers[0].gpu_model.as_str(), rogue_offers[0].seq), ("RTX-GOOD", 10));
        assert_eq!(n.offers().await?.len(), 2);
    }
    assert!(
        a.metric_sum("gpumesh_gossip_messages_total{result=\"ignored\",reason=\"expired\"}").await? >= 1.0
    );
    // B never saw any bad message: A forwarded none.
    assert_eq!(b.metric_sum("gpumesh_gossip_messages_total{result=\"rejected\"").await?, 0.0);
    // (B may ignore a `duplicate`: an offer it got by book sync and then by gossip.)
    for reason in ["expired", "stale_sequence"] {
        let label = format!("gpumesh_gossip_messages_total{{result=\"ignored\",reason=\"{reason}\"}}");
        assert_eq!(b.metric_sum(&label).await?, 0.0, "{reason} at B");
    }
    drop(rogue);
    Ok(())
}
