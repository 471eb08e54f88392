//! libp2p: the composed [`Behaviour`], how the swarm is built, and id conversions.
//!
//! - gossipsub carries offers and withdrawals on `/gpumesh/<network>/offers/1`, without
//!   gossipsub's own signing (`Anonymous`: the envelope is already signed by the provider), with
//!   content-hash message ids and application validation;
//! - identify, ping (RTT per peer), Kademlia (`/gpumesh/kad/1`, peer discovery only), mDNS;
//! - three request-response protocols: capacity, lease and book sync, all with [`BytesCodec`];
//! - connection limits and a block list for peers that misbehave.

pub mod codec;

use crate::config::Settings;
use codec::BytesCodec;
use gpumesh_protocol::NodeId;
use gpumesh_protocol::wire::{self, KAD_PROTOCOL};
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, MessageId, ValidationMode};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    PeerId, StreamProtocol, Swarm, allow_block_list, connection_limits, identify, identity, kad, mdns, noise,
    ping, tcp, yamux,
};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Errors building the swarm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("cannot set up networking: {0}")]
    Build(String),
    #[error("cannot listen on {addr}: {message}")]
    Listen { addr: String, message: String },
}

/// Every libp2p protocol the node speaks.
#[allow(missing_debug_implementations)]
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    // The two that may deny a connection come first: a behaviour consulted before a denial has
    // already made a handler for that connection, and request-response then hands its queued
    // requests to a handler that is dropped, losing them.
    pub limits: connection_limits::Behaviour,
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub gossipsub: gossipsub::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub capacity: request_response::Behaviour<BytesCodec>,
    pub lease: request_response::Behaviour<BytesCodec>,
    pub sync: request_response::Behaviour<BytesCodec>,
}

/// The largest gossip message on the offers topic: an envelope plus gossipsub's framing.
pub const MAX_GOSSIP_MESSAGE: usize = gpumesh_protocol::envelope::MAX_GOSSIP_ENVELOPE + 512;
/// The most gossipsub reads from one stream before decoding (several frames may be buffered).
const GOSSIP_READ_LIMIT: usize = 1 << 20;

/// The gossipsub topic of a network.
pub fn offers_topic(network: &str) -> IdentTopic {
    IdentTopic::new(wire::offers_topic(network))
}

/// Gossip message id: the first 20 bytes of SHA-256 of the message data.
pub fn message_id(data: &[u8]) -> MessageId {
    MessageId::from(Sha256::digest(data)[..20].to_vec())
}

/// The libp2p peer id of a node id (the same key).
pub fn peer_id_of(node: &NodeId) -> PeerId {
    // An identity multihash of an ed25519 key is always a valid peer id.
    PeerId::from_bytes(&node.peer_id_bytes()).expect("ed25519 identity multihash is a valid peer id")
}

/// The node id of a peer, if its key is ed25519.
pub fn node_id_of(peer: &PeerId) -> Option<NodeId> {
    NodeId::from_peer_id_bytes(&peer.to_bytes())
}

/// The node's gossipsub: its configuration (heartbeat, message ids, size limits, validation by
/// the application) and peer scoring. Public so that benchmarks can run the same gossip alone.
pub fn gossipsub_behaviour(settings: &Settings) -> Result<gossipsub::Behaviour, NetError> {
    let config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(settings.gossip_heartbeat)
        .validation_mode(ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(|m| message_id(&m.data))
        // gossipsub 0.50 compares its global limit with the whole read buffer, which can hold
        // several frames, so a limit near one message's size drops honest bursts (a provider
        // re-pricing many groups). Keep the buffer limit wide and the per-message limit tight:
        // an over-size message on the offers topic is refused by gossipsub as invalid.
        .max_transmit_size(GOSSIP_READ_LIMIT)
        .max_transmit_size_for_topic(MAX_GOSSIP_MESSAGE, offers_topic(&settings.network).hash())
        .duplicate_cache_time(Duration::from_secs(120))
        .build()
        .map_err(|e| NetError::Build(format!("gossipsub config: {e}")))?;
    let mut gs = gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, config)
        .map_err(|e| NetError::Build(format!("gossipsub: {e}")))?;
    let (params, thresholds) = score_params(&settings.network);
    gs.with_peer_score(params, thresholds).map_err(|e| NetError::Build(format!("gossipsub scoring: {e}")))?;
    Ok(gs)
}

/// Peer scoring tuned for sparse offer traffic: no penalty for quiet mesh peers, a steep one
/// for invalid messages (P4), and loopback exempt from the IP-colocation penalty so local
/// testnets of many nodes work.
pub fn score_params(network: &str) -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let mut topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 50.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -20.0,
        invalid_message_deliveries_decay: 0.95,
        ..Default::default()
    };
    topic.mesh_message_deliveries_threshold = 1.0;
    let mut params = gossipsub::PeerScoreParams { app_specific_weight: 1.0, ..Default::default() };
    params.topics.insert(offers_topic(network).hash(), topic);
    params.ip_colocation_factor_whitelist =
        HashSet::from([IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]);
    let thresholds = gossipsub::PeerScoreThresholds {
        gossip_threshold: -20.0,
        publish_threshold: -50.0,
        graylist_threshold: -80.0,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 2.0,
    };
    (params, thresholds)
}

/// The node's identify: its protocol version and agent.
pub fn identify_behaviour(key: identity::PublicKey) -> identify::Behaviour {
    identify::Behaviour::new(
        identify::Config::new(wire::IDENTIFY_PROTOCOL_VERSION.into(), key)
            .with_agent_version(format!("gpumesh/{}", env!("CARGO_PKG_VERSION"))),
    )
}

/// The node's ping, at the configured interval.
pub fn ping_behaviour(settings: &Settings) -> ping::Behaviour {
    ping::Behaviour::new(ping::Config::new().with_interval(settings.ping_interval))
}

/// The node's Kademlia with `config` (normally [`kad_config`]), in server mode.
pub fn kad_behaviour(peer_id: PeerId, config: kad::Config) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut kad = kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), config);
    kad.set_mode(Some(kad::Mode::Server));
    kad
}

/// The node's three request-response behaviours: capacity, lease and sync, each with its
/// size limits. Lease messages wait for the provider's start hook, so they wait longer
/// (at least the protocol's answer window).
pub fn request_responses(settings: &Settings) -> [request_response::Behaviour<BytesCodec>; 3] {
    let t = settings.request_timeout;
    let lease_t = t.max(Duration::from_millis(wire::LEASE_ANSWER_WITHIN_MS));
    [
        rr(wire::CAPACITY_PROTOCOL, wire::MAX_CAPACITY_QUERY, wire::MAX_CAPACITY_ANSWER, t, 256),
        rr(wire::LEASE_PROTOCOL, wire::MAX_LEASE_RPC, wire::MAX_LEASE_RPC, lease_t, 256),
        // A node asks a peer for one page at a time: a few streams per connection are plenty,
        // and each may carry an answer of up to 4 MiB.
        rr(wire::SYNC_PROTOCOL, wire::MAX_SYNC_REQUEST, wire::MAX_SYNC_ANSWER, t, SYNC_STREAMS),
    ]
}

/// Concurrent book sync streams per connection.
pub const SYNC_STREAMS: usize = 2;

/// A request-response behaviour for one of the node's protocols: the raw-bytes codec with
/// these size limits, this timeout, and up to `streams` concurrent streams per connection.
fn rr(
    protocol: &'static str,
    max_request: usize,
    max_response: usize,
    timeout: Duration,
    streams: usize,
) -> request_response::Behaviour<BytesCodec> {
    request_response::Behaviour::with_codec(
        BytesCodec { max_request, max_response },
        [(StreamProtocol::new(protocol), ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(streams),
    )
}

/// Kademlia for peer discovery only. Records and provider entries that peers send are not
/// stored (left alone, libp2p keeps up to 1024 records of up to 16 KiB each from anyone: memory
/// a hostile peer could fill), and the record jobs a node without records never needs are off
/// (each is a timer polled on every turn of the swarm). The periodic bootstrap walk is off
/// too: the event loop walks again only while the node wants peers (fewer than
/// `target_peers` connections or a thin gossip mesh).
pub fn kad_config() -> kad::Config {
    let mut c = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    c.set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_replication_interval(None)
        .set_publication_interval(None)
        .set_provider_publication_interval(None)
        .set_periodic_bootstrap_interval(None);
    c
}

/// Builds the swarm: TCP (noise, yamux) and QUIC, DNS, and every behaviour.
pub fn build_swarm(
    key: &gpumesh_protocol::SigningKey,
    settings: &Settings,
) -> Result<Swarm<Behaviour>, NetError> {
    let keypair = identity::Keypair::ed25519_from_bytes(key.to_bytes())
        .map_err(|e| NetError::Build(format!("node key: {e}")))?;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::Build(format!("tcp: {e}")))?
        .with_quic()
        .with_dns()
        .map_err(|e| NetError::Build(format!("dns: {e}")))?
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            let mdns = if settings.mdns {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)?)
            } else {
                None
            };
            let kad = kad_behaviour(peer_id, kad_config());
            let [capacity, lease, sync] = request_responses(settings);
            let limits = connection_limits::ConnectionLimits::default()
                .with_max_established(Some(settings.max_connections))
                .with_max_pending_incoming(Some(128))
                .with_max_established_per_peer(Some(4));
            Ok(Behaviour {
                gossipsub: gossipsub_behaviour(settings).map_err(|e| e.to_string())?,
                identify: identify_behaviour(key.public()),
                ping: ping_behaviour(settings),
                kad,
                mdns: Toggle::from(mdns),
                capacity,
                lease,
                sync,
                limits: connection_limits::Behaviour::new(limits),
                blocked: allow_block_list::Behaviour::default(),
            })
        })
        .map_err(|e| NetError::Build(format!("behaviour: {e}")))?
        .with_swarm_config(|c| swarm_config(c, settings.idle_connection_timeout))
        .build();
    Ok(swarm)
}

/// The node's swarm settings: connections without streams close after `idle`, and a stream
/// we open for a single protocol (every request-response message, Kademlia, identify, ping)
/// carries its first bytes together with the protocol's name instead of waiting for the
/// listener to confirm the name first (multistream-select `V1Lazy`). The bytes on the wire
/// are those of plain multistream-select 1.0; only their timing changes, which saves a round
/// trip on every request a node sends. A listener that does not speak the protocol answers
/// `na` and discards what followed, so the request fails as it would have anyway.
pub fn swarm_config(c: libp2p::swarm::Config, idle: Duration) -> libp2p::swarm::Config {
    c.with_idle_connection_timeout(idle)
        .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
}
