//! The one task that owns the swarm and the offer book. Everything else talks to it through
//! [`crate::handle::Command`]s; it answers each with a `oneshot`.
//!
//! - [`gossip`]: offers and withdrawals in and out (decode → verify → validate → store),
//!   penalties for peers that send bad ones.
//! - [`requests`]: the request-response protocols (capacity, lease routing, book sync) and
//!   live capacity fan-outs.
//! - [`peers`]: connections, RTTs, bootstrap retries, discovery.

mod gossip;
mod peers;
mod requests;

use crate::config::Settings;
use crate::handle::Command;
use crate::lease_task::LeaseCommand;
use crate::metrics::Metrics;
use crate::net::{Behaviour, BehaviourEvent};
use crate::store::Store;
use futures::StreamExt;
use gpumesh_protocol::{BookConfig, NodeId, OfferBook, ValidationContext};
use libp2p::gossipsub::IdentTopic;
use libp2p::metrics::Recorder;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The most bytes of book sync answers a node has handed to connections and not yet seen
/// written: 8 full pages. Beyond it, requests are closed unanswered until some are written.
const SYNC_SERVING_BUDGET: usize = 8 * gpumesh_protocol::wire::MAX_SYNC_ANSWER;

pub(crate) use peers::PeerState;
pub(crate) use requests::{Fanout, Probe};

/// The swarm owner.
pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    me: NodeId,
    peer_id: PeerId,
    settings: Arc<Settings>,
    book: OfferBook,
    store: Store,
    topic: IdentTopic,
    metrics: Arc<Metrics>,
    commands: mpsc::Receiver<Command>,
    lease_tx: mpsc::Sender<LeaseCommand>,
    api_addr: String,
    started: Instant,
    local_gpus: usize,
    peers: PeerState,
    /// Bound listen addresses.
    listen_addrs: Vec<Multiaddr>,
    /// Inbound lease requests waiting for the lease task's answer, and who asked.
    inbound_lease: HashMap<u64, (PeerId, libp2p::request_response::ResponseChannel<Vec<u8>>)>,
    next_token: u64,
    /// Outbound lease messages: request id → lease id and provider.
    outbound_lease: HashMap<libp2p::request_response::OutboundRequestId, (gpumesh_protocol::LeaseId, PeerId)>,
    fanouts: HashMap<u64, Fanout>,
    capacity_requests: HashMap<libp2p::request_response::OutboundRequestId, (u64, PeerId, Instant)>,
    probes: Vec<Probe>,
    next_fanout: u64,
    syncs_in_flight: HashMap<libp2p::request_response::OutboundRequestId, requests::SyncInFlight>,
    /// Sync answers being written to their peers.
    sync_serving: requests::ServingBudget<libp2p::request_response::InboundRequestId, PeerId>,
    /// Whether a book sync has completed since start (later syncs pass on what they teach).
    synced_once: bool,
    /// Our own offers and withdrawals that found no topic peer yet.
    unsent: Vec<Vec<u8>>,
    book_events: tokio::sync::broadcast::Sender<crate::handle::BookEvent>,
    /// Decompressed keys of the signers we hear from.
    keys: gpumesh_protocol::envelope::KeyCache,
    /// Offer writes, off the event loop.
    writer: crate::store::OfferWriter,
}

/// What the event loop needs to start.
pub(crate) struct EventLoopParts {
    pub swarm: Swarm<Behaviour>,
    pub me: NodeId,
    pub settings: Arc<Settings>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub commands: mpsc::Receiver<Command>,
    pub lease_tx: mpsc::Sender<LeaseCommand>,
    pub api_addr: String,
    pub local_gpus: usize,
    pub book_events: tokio::sync::broadcast::Sender<crate::handle::BookEvent>,
    pub writer: crate::store::OfferWriter,
}

impl EventLoop {
    pub(crate) fn new(p: EventLoopParts) -> EventLoop {
        let peer_id = *p.swarm.local_peer_id();
        let mut book = OfferBook::new(BookConfig {
            max_offers_per_provider: p.settings.max_offers_per_provider,
            tombstone_ttl_ms: p.settings.max_offer_ttl.as_millis() as u64,
        });
        // Searches rank by the latencies the book holds; our own offers are 0 ms away.
        book.set_latency(p.me, Some(0));
        let topic = crate::net::offers_topic(&p.settings.network);
        let peers = PeerState::new(&p.settings);
        EventLoop {
            swarm: p.swarm,
            me: p.me,
            peer_id,
            book,
            store: p.store,
            topic,
            metrics: p.metrics,
            commands: p.commands,
            lease_tx: p.lease_tx,
            api_addr: p.api_addr,
            started: Instant::now(),
            local_gpus: p.local_gpus,
            peers,
            listen_addrs: Vec::new(),
            inbound_lease: HashMap::new(),
            next_token: 0,
            outbound_lease: HashMap::new(),
            fanouts: HashMap::new(),
            capacity_requests: HashMap::new(),
            probes: Vec::new(),
            next_fanout: 0,
            syncs_in_flight: HashMap::new(),
            sync_serving: requests::ServingBudget::new(SYNC_SERVING_BUDGET),
            synced_once: false,
            unsent: Vec::new(),
            book_events: p.book_events,
            keys: gpumesh_protocol::envelope::KeyCache::new(8192),
            writer: p.writer,
            settings: p.settings,
        }
    }

    fn ctx(&self, now: gpumesh_protocol::Timestamp) -> ValidationContext<'_> {
        ValidationContext {
            network: &self.settings.network,
            now,
            max_clock_skew_ms: self.settings.max_clock_skew.as_millis() as u64,
            max_ttl_ms: self.settings.max_offer_ttl.as_millis() as u64,
        }
    }

    /// Starts listening, subscribes, loads the stored book and dials bootstrap peers.
    pub(crate) fn start(&mut self) -> Result<(), crate::net::NetError> {
        for addr in self.settings.listen.clone() {
            self.swarm.listen_on(addr.clone()).map_err(|e| crate::net::NetError::Listen {
                addr: addr.to_string(),
                message: e.to_string(),
            })?;
        }
        self.swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&self.topic)
            .map_err(|e| crate::net::NetError::Build(format!("subscribe: {e}")))?;
        self.load_book();
        self.seek_peers();
        Ok(())
    }

    /// Runs until a `Shutdown` command arrives or every handle is gone.
    pub(crate) async fn run(mut self) {
        let mut sweep = tokio::time::interval(self.settings.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(Duration::from_millis(50));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown(done)) => {
                        self.drain().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(c) => self.handle_command(c),
                    None => {
                        self.drain().await;
                        return;
                    }
                },
                _ = sweep.tick() => self.sweep(),
                // Only while a capacity query or a probe waits for its deadline: every turn
                // of this loop also polls the swarm, which an idle node need not pay for
                // twenty times a second.
                _ = housekeeping.tick(), if !self.fanouts.is_empty() || !self.probes.is_empty() => {
                    self.housekeeping()
                }
            }
        }
    }

    /// Keeps the swarm running briefly so queued gossip (withdrawals) goes out, then flushes.
    async fn drain(&mut self) {
        let deadline = tokio::time::sleep(Duration::from_millis(300));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
                _ = &mut deadline => break,
            }
        }
        if let Err(e) = self.writer.flush().await {
            tracing::error!(error = %e, "flushing the offer book at shutdown failed");
        }
    }

    fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.libp2p.record(&event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.handle_gossip_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Capacity(e)) => self.handle_capacity_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Lease(e)) => self.handle_lease_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(e)) => self.handle_sync_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => self.handle_ping_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.handle_identify_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(e)) => self.handle_mdns_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(_)) => {}
            SwarmEvent::Behaviour(BehaviourEvent::Limits(_) | BehaviourEvent::Blocked(_)) => {}
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(addr = %address, "listening");
                self.listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => self.listen_addrs.retain(|a| a != &address),
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, .. } => {
                self.on_connected(peer_id, endpoint, num_established.get())
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, .. } => {
                self.on_disconnected(peer_id, num_established)
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, error = %error, "dial failed");
                if let Some(p) = peer_id {
                    self.on_dial_failed(p);
                }
            }
            _ => {}
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.peer_views());
            }
            Command::Offers(search, reply) => {
                let _ = reply.send(self.search(&search));
            }
            Command::FindOffer(prefix, reply) => {
                let _ = reply.send(self.find_offer(&prefix));
            }
            Command::Capacity { search, timeout, reply } => self.start_fanout(search, timeout, reply),
            Command::Probe { providers, timeout, reply } => self.start_probe(providers, timeout, reply),
            Command::Publish(bytes) => self.publish_own(bytes),
            Command::PublishOffer(offer) => self.publish_own_offer(*offer),
            Command::SendLease { provider, lease_id, bytes } => self.send_lease(provider, lease_id, bytes),
            Command::RespondLease { token, bytes } => {
                if let Some((_, ch)) = self.inbound_lease.remove(&token)
                    && self.swarm.behaviour_mut().lease.send_response(ch, bytes).is_err()
                {
                    tracing::debug!(token, "lease reply not delivered: the requester went away");
                }
            }
            Command::Block { peer, block, reply } => {
                let changed = if block {
                    self.peers.block(&mut self.swarm, peer)
                } else {
                    self.peers.unblock(&mut self.swarm, peer)
                };
                let _ = reply.send(changed);
            }
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    fn status(&self) -> crate::views::StatusView {
        let p2p = libp2p::multiaddr::Protocol::P2p(self.peer_id);
        crate::views::StatusView {
            peer_id: self.peer_id.to_string(),
            network: self.settings.network.clone(),
            listen_addrs: self.listen_addrs.iter().map(|a| a.clone().with(p2p.clone()).to_string()).collect(),
            api: self.api_addr.clone(),
            peers: self.swarm.connected_peers().count(),
            offers_known: self.book.live_ids(crate::clock::now()).count(),
            providers_known: self.book.providers(),
            local_gpus: self.local_gpus,
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: self.started.elapsed().as_secs(),
        }
    }

    /// Removes expired offers from the book and the store; updates gauges.
    fn sweep(&mut self) {
        let now = crate::clock::now();
        for id in self.book.sweep(now) {
            tracing::debug!(offer = %id, "offer expired");
            self.offer_left(id, None, 0);
        }
        self.metrics.offers_known.set(self.book.len() as i64);
        self.metrics.peers.set(self.swarm.connected_peers().count() as i64);
        self.peers.expire_bans(&mut self.swarm);
        self.trim_connections();
        self.seek_peers();
    }

    /// An offer left the book (withdrawn or expired): tell subscribers, drop it from the store.
    pub(super) fn offer_left(&self, id: gpumesh_protocol::OfferId, provider: Option<NodeId>, seq: u64) {
        self.book_event(id, provider, seq, false);
        self.writer.remove(id);
    }

    /// Tells subscribers about a book change (cheap when nobody listens).
    pub(super) fn book_event(
        &self,
        offer_id: gpumesh_protocol::OfferId,
        provider: Option<NodeId>,
        seq: u64,
        present: bool,
    ) {
        if self.book_events.receiver_count() > 0 {
            let provider = provider.unwrap_or(NodeId::from_bytes([0; 32]));
            let at = Instant::now();
            let _ = self.book_events.send(crate::handle::BookEvent { offer_id, provider, seq, present, at });
        }
    }

    fn housekeeping(&mut self) {
        self.finish_due_fanouts();
        self.finish_due_probes();
    }
}
