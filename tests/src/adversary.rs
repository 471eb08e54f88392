//! Adversaries for the hostile tests, each a plain libp2p swarm on its own thread and
//! single-threaded runtime (so a flooding peer cannot starve the nodes' runtime, only compete
//! for CPU like another process would):
//!
//! - [`GossipPeer`]: joins a node's offer topic and publishes whatever bytes it is given, one
//!   at a time or as a flood;
//! - [`RpcPeer`]: sends whatever bytes it is given on `/gpumesh/capacity/1` and
//!   `/gpumesh/lease/1` and returns the raw answers;
//! - builders of signed, mis-signed and malformed messages ([`sign_raw`], [`envelope_bytes`],
//!   [`offer_for`]).

use anyhow::{Context, Result, anyhow, bail};
use futures::{FutureExt, StreamExt};
use gpumesh_node::net::codec::BytesCodec;
use gpumesh_node::net::{message_id, offers_topic};
use gpumesh_protocol::wire;
use gpumesh_protocol::*;
use libp2p::gossipsub::{self, MessageAuthenticity, PublishError, ValidationMode};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identity, noise, tcp, yamux};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// A signing key from a small number (distinct numbers, distinct keys).
pub fn key(n: u64) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    seed[8] = 0xad;
    SigningKey::from_bytes(&seed)
}

/// The node id of a key.
pub fn node_id(key: &SigningKey) -> NodeId {
    NodeId::from_bytes(key.verifying_key().to_bytes())
}

/// The libp2p peer id of a key.
pub fn peer_id(key: &SigningKey) -> PeerId {
    gpumesh_node::net::peer_id_of(&node_id(key))
}

/// Envelope bytes with any kind number (also ones the protocol does not know), signer, body
/// and signature, laid out as the protocol's four-item CBOR array.
pub fn envelope_bytes(kind: u64, signer: &[u8; 32], body: &[u8], signature: &[u8; 64]) -> Vec<u8> {
    envelope::assemble_raw(kind, signer, body, signature)
}

/// A correctly signed envelope of `kind` around arbitrary body bytes (which need not decode as
/// that kind's body): the signature is ed25519 over `domain_tag(kind) || body`.
pub fn sign_raw(key: &SigningKey, kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut msg = kind.domain_tag().to_vec();
    msg.extend_from_slice(body);
    // libp2p's ed25519 signing is plain RFC 8032 ed25519 over the message.
    let kp = identity::Keypair::ed25519_from_bytes(key.to_bytes()).expect("a 32-byte seed is a valid key");
    let sig: [u8; 64] = kp.sign(&msg).expect("ed25519 signing cannot fail").try_into().expect("64 bytes");
    envelope_bytes(kind as u64, key.verifying_key().as_bytes(), body, &sig)
}

/// A valid offer by `key` on `network` for a one-off GPU model (distinct models give distinct
/// offer ids), issued at `issued_at`, valid for a minute.
pub fn offer_for(key: &SigningKey, network: &str, model: &str, seq: u64, issued_at: Timestamp) -> Offer {
    offer_by(node_id(key), network, model, seq, issued_at)
}

/// Like [`offer_for`], naming `provider` (whoever signs it).
pub fn offer_by(provider: NodeId, network: &str, model: &str, seq: u64, issued_at: Timestamp) -> Offer {
    let gpu = GpuSpec {
        vendor: "nvidia".into(),
        model: model.into(),
        vram_mib: 24564,
        compute_capability: Some(ComputeCapability(8, 9)),
        interconnect: Interconnect::Pcie,
        cuda_version: None,
        driver_version: None,
    };
    Offer {
        v: PROTOCOL_VERSION,
        network: network.into(),
        offer_id: OfferId::derive(&provider, &gpu.group_key()),
        provider,
        seq,
        issued_at,
        expires_at: issued_at.plus_millis(60_000),
        gpu,
        gpu_total: 2,
        gpu_free: 2,
        host: HostSpec { cpu_cores: 8, ram_mib: 65536, disk_gib: 100, region: "DE".into() },
        price: Price(1_000_000),
        min_duration_s: 60,
        max_duration_s: 3600,
        addrs: vec![],
    }
}

/// The peer id at the end of a `/p2p/…` multiaddr.
pub fn peer_of_addr(addr: &str) -> Result<PeerId> {
    let ma: Multiaddr = addr.parse()?;
    ma.iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .ok_or_else(|| anyhow!("{addr} has no /p2p/ part"))
}

/// Runs `f` on a new thread with its own single-threaded tokio runtime.
fn spawn_thread<F, Fut>(name: &str, f: F) -> Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::Builder::new().name(name.into()).spawn(move || {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(f()),
            Err(e) => eprintln!("cannot build a runtime for an adversary: {e}"),
        }
    })?;
    Ok(())
}

// ----- gossip ----------------------------------------------------------------------------

/// What a flood achieved.
#[derive(Debug, Clone, Default)]
pub struct FloodReport {
    /// Messages handed to gossipsub.
    pub published: usize,
    /// Times gossipsub's queue to the target was full and the flooder had to wait.
    pub queue_full: usize,
    /// Messages gossipsub refused (skipped; with a full queue it also remembers the message,
    /// so a retry would be a duplicate).
    pub failed: usize,
    pub elapsed: Duration,
}

enum GossipCmd {
    Publish(Vec<u8>, oneshot::Sender<Result<(), String>>),
    Flood(Vec<Vec<u8>>, oneshot::Sender<FloodReport>),
}

/// A raw gossipsub peer on a network's offer topic (anonymous messages, content-hash ids, as
/// gpumesh nodes use), connected to one target node.
#[derive(Debug)]
pub struct GossipPeer {
    pub key: SigningKey,
    pub peer_id: PeerId,
    pub target: PeerId,
    tx: mpsc::UnboundedSender<GossipCmd>,
    connected: Arc<Mutex<HashSet<PeerId>>>,
}

fn gossip_swarm(key: &SigningKey, max_transmit: usize) -> Result<Swarm<gossipsub::Behaviour>> {
    let kp = identity::Keypair::ed25519_from_bytes(key.to_bytes())?;
    Ok(libp2p::SwarmBuilder::with_existing_identity(kp)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|_| {
            let cfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(100))
                .validation_mode(ValidationMode::Anonymous)
                .message_id_fn(|m| message_id(&m.data))
                .max_transmit_size(max_transmit)
                // A flood is queued whole rather than refused: the point is what the node does
                // with it, not what the flooder's own queue does.
                .connection_handler_queue_len(100_000)
                .publish_queue_duration(Duration::from_secs(600))
                .build()
                .map_err(|e| e.to_string())?;
            gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, cfg).map_err(|e| e.into())
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build())
}

fn track<E>(connected: &Mutex<HashSet<PeerId>>, ev: &SwarmEvent<E>) {
    let mut c = connected.lock().expect("not poisoned");
    match ev {
        SwarmEvent::ConnectionEstablished { peer_id, .. } => {
            c.insert(*peer_id);
        }
        SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
            c.remove(peer_id);
        }
        _ => {}
    }
}

impl GossipPeer {
    /// Connects to the node at `addr` (ending in `/p2p/<id>`) on `network`'s offer topic and
    /// returns once the node's subscription is known, so that publishing reaches it.
    /// `max_transmit` is this peer's own gossipsub size limit (raise it to send messages
    /// larger than the node accepts).
    pub async fn join(key: SigningKey, network: &str, addr: &str, max_transmit: usize) -> Result<GossipPeer> {
        let target = peer_of_addr(addr)?;
        let ma: Multiaddr = addr.parse()?;
        let topic = offers_topic(network);
        let (tx, mut rx) = mpsc::unbounded_channel::<GossipCmd>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
        let connected = Arc::new(Mutex::new(HashSet::new()));
        let conn = connected.clone();
        let k = key.clone();
        spawn_thread("gossip-adversary", move || async move {
            let mut swarm = match gossip_swarm(&k, max_transmit) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            if let Err(e) = swarm.behaviour_mut().subscribe(&topic) {
                let _ = ready_tx.send(Err(e.to_string()));
                return;
            }
            if let Err(e) = swarm.dial(ma) {
                let _ = ready_tx.send(Err(e.to_string()));
                return;
            }
            let deadline = tokio::time::sleep(Duration::from_secs(30));
            tokio::pin!(deadline);
            loop {
                let subscribed = swarm
                    .behaviour()
                    .all_peers()
                    .any(|(p, topics)| p == &target && topics.contains(&&topic.hash()));
                if subscribed {
                    break;
                }
                tokio::select! {
                    ev = swarm.select_next_some() => {
                        track(&conn, &ev);
                        if let SwarmEvent::OutgoingConnectionError { error, .. } = ev {
                            let _ = ready_tx.send(Err(format!("dial failed: {error}")));
                            return;
                        }
                    }
                    _ = &mut deadline => {
                        let _ = ready_tx.send(Err("the node's subscription never arrived".into()));
                        return;
                    }
                }
            }
            let _ = ready_tx.send(Ok(()));
            loop {
                tokio::select! {
                    ev = swarm.select_next_some() => track(&conn, &ev),
                    cmd = rx.recv() => match cmd {
                        None => return,
                        Some(GossipCmd::Publish(bytes, reply)) => {
                            let r = swarm.behaviour_mut().publish(topic.clone(), bytes);
                            let _ = reply.send(r.map(|_| ()).map_err(|e| e.to_string()));
                        }
                        Some(GossipCmd::Flood(msgs, reply)) => {
                            let report = flood(&mut swarm, &topic, msgs, &conn).await;
                            let _ = reply.send(report);
                        }
                    },
                }
            }
        })?;
        ready_rx.await.map_err(|_| anyhow!("the gossip adversary's thread died"))?.map_err(|e| anyhow!(e))?;
        Ok(GossipPeer { peer_id: peer_id(&key), key, target, tx, connected })
    }

    /// Publishes one message; the error is gossipsub's own refusal, as text.
    pub async fn publish(&self, bytes: Vec<u8>) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(GossipCmd::Publish(bytes, tx)).map_err(|_| anyhow!("adversary stopped"))?;
        rx.await?.map_err(|e| anyhow!("gossipsub refused to publish: {e}"))
    }

    /// Publishes every message as fast as gossipsub takes them.
    pub async fn flood(&self, msgs: Vec<Vec<u8>>) -> Result<FloodReport> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(GossipCmd::Flood(msgs, tx)).map_err(|_| anyhow!("adversary stopped"))?;
        Ok(rx.await?)
    }

    /// Whether this peer is still connected to its target node.
    pub fn connected_to_target(&self) -> bool {
        self.connected.lock().expect("not poisoned").contains(&self.target)
    }
}

async fn flood(
    swarm: &mut Swarm<gossipsub::Behaviour>,
    topic: &gossipsub::IdentTopic,
    msgs: Vec<Vec<u8>>,
    conn: &Mutex<HashSet<PeerId>>,
) -> FloodReport {
    let started = Instant::now();
    let mut r = FloodReport::default();
    let mut msgs = msgs.into_iter().peekable();
    while let Some(m) = msgs.peek() {
        match swarm.behaviour_mut().publish(topic.clone(), m.clone()) {
            Ok(_) => {
                r.published += 1;
                msgs.next();
            }
            Err(PublishError::AllQueuesFull(_)) => {
                r.queue_full += 1;
                r.failed += 1;
                msgs.next();
                // Let the connection task drain the queue.
                tokio::task::yield_now().await;
            }
            Err(_) => {
                r.failed += 1;
                msgs.next();
            }
        }
        // Keep the swarm moving (heartbeats, connection events) between publishes.
        while let Some(ev) = swarm.select_next_some().now_or_never() {
            track(conn, &ev);
        }
        if r.published.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    r.elapsed = started.elapsed();
    r
}

// ----- request-response -------------------------------------------------------------------

/// Which request-response protocol a raw request goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Capacity,
    Lease,
    Sync,
}

#[derive(NetworkBehaviour)]
struct RpcBehaviour {
    capacity: request_response::Behaviour<BytesCodec>,
    lease: request_response::Behaviour<BytesCodec>,
    sync: request_response::Behaviour<BytesCodec>,
}

/// Where a raw request's answer (or transport failure) goes.
type Reply = oneshot::Sender<Result<Vec<u8>, String>>;

struct RpcCmd {
    proto: Proto,
    peer: PeerId,
    addr: Multiaddr,
    bytes: Vec<u8>,
    reply: Reply,
}

/// A raw request-response client that speaks the capacity, lease and sync protocols with
/// arbitrary bytes, keeping at most `in_flight` requests open at once (a node accepts 256 concurrent
/// streams per connection and drops the rest).
#[derive(Debug, Clone)]
pub struct RpcPeer {
    pub key: SigningKey,
    pub peer_id: PeerId,
    tx: mpsc::UnboundedSender<RpcCmd>,
    limit: Arc<Semaphore>,
}

fn rpc_swarm(key: &SigningKey, in_flight: usize) -> Result<Swarm<RpcBehaviour>> {
    let kp = identity::Keypair::ed25519_from_bytes(key.to_bytes())?;
    let cfg = || {
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(60))
            .with_max_concurrent_streams(in_flight + 16)
    };
    Ok(libp2p::SwarmBuilder::with_existing_identity(kp)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|_| RpcBehaviour {
            capacity: request_response::Behaviour::with_codec(
                BytesCodec { max_request: wire::MAX_CAPACITY_QUERY, max_response: wire::MAX_CAPACITY_ANSWER },
                [(StreamProtocol::new(wire::CAPACITY_PROTOCOL), ProtocolSupport::Outbound)],
                cfg(),
            ),
            lease: request_response::Behaviour::with_codec(
                BytesCodec { max_request: wire::MAX_LEASE_RPC, max_response: wire::MAX_LEASE_RPC },
                [(StreamProtocol::new(wire::LEASE_PROTOCOL), ProtocolSupport::Outbound)],
                cfg(),
            ),
            sync: request_response::Behaviour::with_codec(
                // Any request size: the node, not this client, must refuse what is too big.
                BytesCodec { max_request: usize::MAX, max_response: wire::MAX_SYNC_ANSWER },
                [(StreamProtocol::new(wire::SYNC_PROTOCOL), ProtocolSupport::Outbound)],
                cfg(),
            ),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build())
}

impl RpcPeer {
    /// Starts the client (it dials on the first request).
    pub async fn start(key: SigningKey, in_flight: usize) -> Result<RpcPeer> {
        let (tx, mut rx) = mpsc::unbounded_channel::<RpcCmd>();
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
        let k = key.clone();
        spawn_thread("rpc-adversary", move || async move {
            let mut swarm = match rpc_swarm(&k, in_flight) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            // Request ids are per behaviour: key them by protocol too.
            let mut waiting: HashMap<(Proto, OutboundRequestId), Reply> = HashMap::new();
            loop {
                tokio::select! {
                    ev = swarm.select_next_some() => {
                        let (proto, e) = match ev {
                            SwarmEvent::Behaviour(RpcBehaviourEvent::Capacity(e)) => (Proto::Capacity, e),
                            SwarmEvent::Behaviour(RpcBehaviourEvent::Lease(e)) => (Proto::Lease, e),
                            SwarmEvent::Behaviour(RpcBehaviourEvent::Sync(e)) => (Proto::Sync, e),
                            _ => continue,
                        };
                        let (id, result) = match e {
                                request_response::Event::Message {
                                    message: request_response::Message::Response { request_id, response }, ..
                                } => (request_id, Ok(response)),
                                request_response::Event::OutboundFailure { request_id, error, .. } => {
                                    (request_id, Err(error.to_string()))
                                }
                                _ => continue,
                        };
                        if let Some(w) = waiting.remove(&(proto, id)) {
                            let _ = w.send(result);
                        }
                    }
                    cmd = rx.recv() => match cmd {
                        None => return,
                        Some(c) => {
                            let b = swarm.behaviour_mut();
                            let rr = match c.proto {
                                Proto::Capacity => &mut b.capacity,
                                Proto::Lease => &mut b.lease,
                                Proto::Sync => &mut b.sync,
                            };
                            let id = rr.send_request_with_addresses(&c.peer, c.bytes, vec![c.addr]);
                            waiting.insert((c.proto, id), c.reply);
                        }
                    },
                }
            }
        })?;
        ready_rx.await.map_err(|_| anyhow!("the rpc adversary's thread died"))?.map_err(|e| anyhow!(e))?;
        Ok(RpcPeer { peer_id: peer_id(&key), key, tx, limit: Arc::new(Semaphore::new(in_flight)) })
    }

    /// Sends `bytes` on `proto` to the node at `addr` (ending in `/p2p/<id>`); returns the raw
    /// answer, or the transport failure as text.
    pub async fn request(&self, proto: Proto, addr: &str, bytes: Vec<u8>) -> Result<Result<Vec<u8>, String>> {
        let peer = peer_of_addr(addr)?;
        let addr: Multiaddr = addr.parse()?;
        let _permit = self.limit.acquire().await.context("semaphore closed")?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(RpcCmd { proto, peer, addr, bytes, reply })
            .map_err(|_| anyhow!("rpc adversary stopped"))?;
        match rx.await {
            Ok(r) => Ok(r),
            Err(_) => bail!("rpc adversary dropped the request"),
        }
    }
}

// ----- Kademlia --------------------------------------------------------------------------

/// What a Kademlia peer got from a node: whether the node acknowledged a PUT of a record, and
/// the value it returned when the peer then asked for that record (None: no record).
#[derive(Debug)]
pub struct KadOutcome {
    pub put_acknowledged: bool,
    pub returned: Option<Vec<u8>>,
}

/// A Kademlia client (the node's protocol name) PUTs the record `key` → `value` into the node
/// at `addr` (ending in `/p2p/<id>`), then asks that node for it. Gives up after `wait`.
pub async fn kad_put_then_get(
    key: SigningKey,
    addr: &str,
    record_key: &[u8],
    value: Vec<u8>,
    wait: Duration,
) -> Result<KadOutcome> {
    use libp2p::kad::{self, GetRecordOk, QueryResult, Quorum, Record, RecordKey};
    let target = peer_of_addr(addr)?;
    let ma: Multiaddr = addr.parse()?;
    let kp = identity::Keypair::ed25519_from_bytes(key.to_bytes())?;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(kp)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|k| {
            let id = k.public().to_peer_id();
            let config = kad::Config::new(StreamProtocol::new(wire::KAD_PROTOCOL));
            let mut kad = kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), config);
            kad.set_mode(Some(kad::Mode::Client));
            kad
        })?
        .build();
    swarm.behaviour_mut().add_address(&target, ma);
    let record_key = RecordKey::new(&record_key);
    let record = Record::new(record_key.clone(), value);
    let put = swarm.behaviour_mut().put_record_to(record, std::iter::once(target), Quorum::One);
    let deadline = tokio::time::Instant::now() + wait;
    let mut outcome = KadOutcome { put_acknowledged: false, returned: None };
    let mut get = None;
    loop {
        let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| anyhow!("no answer from the node's Kademlia within {wait:?}"))?;
        let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed { id, result, step, .. }) = ev else {
            continue;
        };
        match result {
            QueryResult::PutRecord(r) if id == put => {
                outcome.put_acknowledged = r.is_ok();
                get = Some(swarm.behaviour_mut().get_record(record_key.clone()));
            }
            QueryResult::GetRecord(r) if Some(id) == get => {
                if let Ok(GetRecordOk::FoundRecord(found)) = r {
                    outcome.returned = Some(found.record.value);
                }
                if step.last || outcome.returned.is_some() {
                    return Ok(outcome);
                }
            }
            _ => {}
        }
    }
}
