//! Connections: RTTs from ping, addresses from identify, mDNS and Kademlia discovery,
//! bootstrap retries with backoff, penalties and bans for misbehaving peers, and trimming
//! the connections above `target_peers` that carry nothing for this node.

use super::EventLoop;
use crate::config::{Settings, peer_of};
use crate::net::Behaviour;
use crate::views::PeerView;
use libp2p::core::ConnectedPoint;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId, Swarm, identify, mdns, ping};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Invalid messages from one peer before it is disconnected and blocked.
const FAULTS_BEFORE_BAN: u32 = 20;
/// How long a blocked peer stays blocked.
const BAN_TIME: Duration = Duration::from_secs(600);
/// How long a peer's faults count after its last one.
const FAULT_MEMORY: Duration = Duration::from_secs(600);
/// A connection is not trimmed before it is this many gossip heartbeats old (at least
/// [`MIN_TRIM_GRACE`]): time for gossipsub to graft the peer into the mesh.
const TRIM_GRACE_HEARTBEATS: u32 = 10;
const MIN_TRIM_GRACE: Duration = Duration::from_secs(1);
/// A bootstrap peer whose connection lasted at least this long is redialled at once when it
/// drops.
const BOOTSTRAP_STABLE: Duration = Duration::from_secs(60);
/// A bootstrap peer that closes a younger connection (one this node did not close itself) is
/// most likely above its own `target_peers` and trimming us (every node bootstrapping through
/// one well-known node would otherwise redial it after every trim, forever). It is left alone
/// for this many times the longest retry backoff, unless this node has no gossip mesh peer.
const TRIMMED_COOLDOWN_FACTOR: u32 = 10;
/// A bootstrap peer's first retry backoff.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest bootstrap retry backoff honoured (longer settings are cut to this).
const MAX_BOOTSTRAP_BACKOFF: Duration = Duration::from_secs(86_400);
/// Below this many gossip mesh peers a node looks for peers even when it holds
/// `target_peers` connections (connections that keep themselves in use must not stop it).
const MIN_MESH: usize = 4;
/// How many peers in use (renters asking capacity, leasing or probed) are kept above
/// `target_peers`: half of `max_connections`, so that at least half the slots always turn
/// over, and never fewer than `target_peers`.
fn used_peers_kept(settings: &Settings) -> usize {
    (settings.max_connections as usize / 2).max(settings.target_peers)
}

/// How often a node that wants peers (see `wants_peers`) walks Kademlia again. (Kademlia's
/// own periodic walk is off: a node at its target would reconnect to a score of peers every
/// few minutes only to close them again, each asking it for a book sync.)
const KAD_REWALK: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Bootstrap {
    addr: Multiaddr,
    peer: PeerId,
    next_attempt: Instant,
    backoff: Duration,
    /// Not redialled before this while the node has other connections.
    cooldown_until: Option<Instant>,
}

impl Bootstrap {
    fn new(addr: Multiaddr, peer: PeerId, now: Instant) -> Bootstrap {
        Bootstrap { addr, peer, next_attempt: now, backoff: FIRST_BACKOFF, cooldown_until: None }
    }

    /// Its connection closed after being open for `held` (`None`: it never counted as
    /// open). One that held [`BOOTSTRAP_STABLE`] makes the peer due again at once with the
    /// first backoff; a shorter one the peer closed (we did not trim, ban or block it) puts the
    /// peer in a cooldown of `cooldown`, so that a bootstrap peer above its own target is not
    /// redialled only to close the connection again.
    fn closed(&mut self, held: Option<Duration>, closed_by_us: bool, now: Instant, cooldown: Duration) {
        match held {
            Some(d) if d >= BOOTSTRAP_STABLE => {
                self.backoff = FIRST_BACKOFF;
                self.next_attempt = now;
                self.cooldown_until = None;
            }
            Some(_) if !closed_by_us => self.cooldown_until = Some(now + cooldown),
            _ => {}
        }
    }

    /// Whether to dial it now: not connected, its backoff has passed, and not in a cooldown
    /// unless the node has no gossip mesh peer (an isolated node dials whatever it can).
    fn due(&self, now: Instant, connected: bool, in_mesh: bool) -> bool {
        let cooling = in_mesh && self.cooldown_until.is_some_and(|t| t > now);
        !connected && self.next_attempt <= now && !cooling
    }

    /// A dial started: the next one waits for the backoff, which doubles up to `max`.
    fn dialled(&mut self, now: Instant, max: Duration) {
        self.next_attempt = now + self.backoff;
        self.backoff = (self.backoff * 2).min(max);
    }
}

/// What the event loop knows about peers.
#[derive(Debug)]
pub(crate) struct PeerState {
    rtt: HashMap<PeerId, Duration>,
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
    agents: HashMap<PeerId, String>,
    /// Faults per peer, and when the last was: forgotten [`FAULT_MEMORY`] after the last one
    /// and when a ban ends, so that the map holds only recent offenders.
    faults: HashMap<PeerId, (u32, Instant)>,
    banned: HashMap<PeerId, Instant>,
    bootstrap: Vec<Bootstrap>,
    bootstrap_max: Duration,
    /// When this node last started a Kademlia bootstrap walk.
    kad_walked: Option<Instant>,
    /// When each connected peer's first open connection was established.
    connected_at: HashMap<PeerId, Instant>,
    /// When each peer last carried capacity, lease or probe traffic (pruned once stale).
    last_used: HashMap<PeerId, Instant>,
    /// Peers whose connections this node is closing (trimmed, banned or blocked).
    closing: HashSet<PeerId>,
}

impl PeerState {
    pub(crate) fn new(settings: &Settings) -> PeerState {
        let now = Instant::now();
        PeerState {
            rtt: HashMap::new(),
            addrs: HashMap::new(),
            agents: HashMap::new(),
            faults: HashMap::new(),
            banned: HashMap::new(),
            bootstrap: settings
                .bootstrap
                .iter()
                .filter_map(|a| peer_of(a).map(|peer| Bootstrap::new(a.clone(), peer, now)))
                .collect(),
            bootstrap_max: settings
                .bootstrap_retry_max
                .clamp(Duration::from_millis(250), MAX_BOOTSTRAP_BACKOFF),
            kad_walked: None,
            connected_at: HashMap::new(),
            last_used: HashMap::new(),
            closing: HashSet::new(),
        }
    }

    /// Notes that `peer` just carried capacity, lease or probe traffic: its connection is not
    /// trimmed for the idle timeout.
    pub(crate) fn touch(&mut self, peer: PeerId) {
        self.last_used.insert(peer, Instant::now());
    }

    pub(crate) fn rtt(&self, peer: &PeerId) -> Option<Duration> {
        self.rtt.get(peer).copied()
    }

    pub(crate) fn addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.addrs.get(peer).cloned().unwrap_or_default()
    }

    /// Counts an invalid message; true when the peer should now be blocked (too many faults,
    /// or its gossipsub score fell below the graylist threshold).
    pub(crate) fn record_fault(&mut self, peer: PeerId, score: Option<f64>) -> bool {
        self.record_fault_at(peer, score, Instant::now())
    }

    fn record_fault_at(&mut self, peer: PeerId, score: Option<f64>, now: Instant) -> bool {
        let (n, last) = self.faults.entry(peer).or_insert((0, now));
        if now.duration_since(*last) >= FAULT_MEMORY {
            *n = 0;
        }
        *n += 1;
        *last = now;
        *n >= FAULTS_BEFORE_BAN || score.is_some_and(|s| s < -80.0)
    }

    /// What is kept about a peer once its last connection closed: its faults for a while, and
    /// its addresses only if it is a provider whose offers we hold (`provider`), since they
    /// help to dial it again. Its agent string goes.
    pub(crate) fn forget(&mut self, peer: &PeerId, provider: bool) {
        self.agents.remove(peer);
        if !provider {
            self.addrs.remove(peer);
        }
    }

    pub(crate) fn ban(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId) {
        // An operator's block (or a longer ban) already in place stays as long as it was.
        let until = Instant::now() + BAN_TIME;
        self.banned.entry(peer).and_modify(|u| *u = (*u).max(until)).or_insert(until);
        swarm.behaviour_mut().blocked.block_peer(peer);
        if swarm.disconnect_peer_id(peer).is_ok() {
            self.closing.insert(peer);
        }
    }

    /// Blocks a peer until unblocked (an operator's decision, no expiry).
    pub(crate) fn block(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId) -> bool {
        let new =
            self.banned.insert(peer, Instant::now() + Duration::from_secs(100 * 365 * 86_400)).is_none();
        swarm.behaviour_mut().blocked.block_peer(peer);
        if swarm.disconnect_peer_id(peer).is_ok() {
            self.closing.insert(peer);
        }
        new
    }

    /// Lifts a block or ban.
    pub(crate) fn unblock(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId) -> bool {
        swarm.behaviour_mut().blocked.unblock_peer(peer);
        self.faults.remove(&peer);
        self.banned.remove(&peer).is_some()
    }

    pub(crate) fn expire_bans(&mut self, swarm: &mut Swarm<Behaviour>) {
        let now = Instant::now();
        let faults = &mut self.faults;
        self.banned.retain(|peer, until| {
            let keep = *until > now;
            if !keep {
                swarm.behaviour_mut().blocked.unblock_peer(*peer);
                // A ban that ends starts the count again.
                faults.remove(peer);
            }
            keep
        });
        self.faults.retain(|_, (_, last)| now.duration_since(*last) < FAULT_MEMORY);
    }

    pub(crate) fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned.contains_key(peer)
    }
}

impl EventLoop {
    pub(super) fn on_connected(&mut self, peer: PeerId, endpoint: ConnectedPoint, count: u32) {
        tracing::debug!(peer = %peer, "connected");
        if let ConnectedPoint::Dialer { address, .. } = &endpoint {
            let known = self.peers.addrs.entry(peer).or_default();
            if !known.contains(address) {
                known.push(address.clone());
            }
            self.swarm.behaviour_mut().kad.add_address(&peer, address.clone());
        }
        // A connection that opened while an earlier one was being closed is not being closed.
        self.peers.closing.remove(&peer);
        let now = Instant::now();
        if self.peers.kad_walked.is_none() {
            self.walk_kademlia(now);
        }
        if count == 1 {
            self.peers.connected_at.insert(peer, now);
            self.request_sync(peer);
        }
    }

    pub(super) fn on_disconnected(&mut self, peer: PeerId, remaining: u32) {
        if remaining == 0 {
            tracing::debug!(peer = %peer, "disconnected");
            self.peers.rtt.remove(&peer);
            let held = self.peers.connected_at.remove(&peer).map(|t| t.elapsed());
            self.peers.last_used.remove(&peer);
            let closed_by_us = self.peers.closing.remove(&peer);
            let now = Instant::now();
            let cooldown = self.peers.bootstrap_max * TRIMMED_COOLDOWN_FACTOR;
            for b in self.peers.bootstrap.iter_mut().filter(|b| b.peer == peer) {
                b.closed(held, closed_by_us, now, cooldown);
            }
            let node = crate::net::node_id_of(&peer);
            if let Some(node) = node {
                self.book.set_latency(node, None);
            }
            let now = crate::clock::now();
            let provider = node.is_some_and(|n| self.book.by_provider(n, now).next().is_some());
            self.peers.forget(&peer, provider);
        }
    }

    pub(super) fn on_dial_failed(&mut self, peer: PeerId) {
        // Capacity and lease requests learn of the failure from request-response itself.
        self.fail_probe(peer);
    }

    /// Starts a Kademlia bootstrap walk (it fails, harmlessly, while the routing table is
    /// empty).
    fn walk_kademlia(&mut self, now: Instant) {
        if self.swarm.behaviour_mut().kad.bootstrap().is_ok() {
            self.peers.kad_walked = Some(now);
        }
    }

    /// Gossip mesh peers on the offers topic.
    fn mesh_size(&self) -> usize {
        self.swarm.behaviour().gossipsub.mesh_peers(&self.topic.hash()).count()
    }

    /// Whether the node should look for more peers: fewer than `target_peers` connections, or
    /// fewer than [`MIN_MESH`] gossip mesh peers however many connections it has.
    fn wants_peers(&self) -> bool {
        self.swarm.connected_peers().count() < self.settings.target_peers || self.mesh_size() < MIN_MESH
    }

    /// While the node wants peers: dials bootstrap peers that are not connected, each with its
    /// own backoff (and, while it has a mesh peer, not one that just trimmed us), and walks
    /// Kademlia if it never did or the last walk is [`KAD_REWALK`] old.
    pub(super) fn seek_peers(&mut self) {
        if !self.wants_peers() {
            return;
        }
        let now = Instant::now();
        if self.peers.kad_walked.is_none_or(|t| now.duration_since(t) >= KAD_REWALK) {
            self.walk_kademlia(now);
        }
        let in_mesh = self.mesh_size() > 0;
        let max = self.peers.bootstrap_max;
        for b in &mut self.peers.bootstrap {
            if !b.due(now, self.swarm.is_connected(&b.peer), in_mesh) {
                continue;
            }
            tracing::debug!(addr = %b.addr, "dialing bootstrap peer");
            let opts = DialOpts::peer_id(b.peer).addresses(vec![b.addr.clone()]).build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(addr = %b.addr, error = %e, "bootstrap dial not started");
            }
            self.swarm.behaviour_mut().kad.add_address(&b.peer, b.addr.clone());
            b.dialled(now, max);
        }
    }

    pub(super) fn handle_ping_event(&mut self, e: ping::Event) {
        if let Ok(rtt) = e.result {
            self.peers.rtt.insert(e.peer, rtt);
            if let Some(node) = crate::net::node_id_of(&e.peer) {
                // The book ranks and filters by whole milliseconds, as the API shows them.
                self.book.set_latency(node, Some((rtt.as_secs_f64() * 1000.0).round() as u32));
            }
            self.complete_probe(e.peer);
        }
    }

    pub(super) fn handle_identify_event(&mut self, e: identify::Event) {
        if let identify::Event::Received { peer_id, info, .. } = e {
            if info.protocol_version != gpumesh_protocol::wire::IDENTIFY_PROTOCOL_VERSION {
                tracing::debug!(peer = %peer_id, version = %info.protocol_version, "peer speaks another protocol version");
            }
            self.peers.agents.insert(peer_id, info.agent_version.clone());
            let known = self.peers.addrs.entry(peer_id).or_default();
            for a in info.listen_addrs.iter().take(16) {
                if !known.contains(a) {
                    known.push(a.clone());
                }
                self.swarm.behaviour_mut().kad.add_address(&peer_id, a.clone());
            }
            known.truncate(16);
        }
    }

    pub(super) fn handle_mdns_event(&mut self, e: mdns::Event) {
        if let mdns::Event::Discovered(found) = e {
            for (peer, addr) in found {
                if peer == self.peer_id || self.peers.is_banned(&peer) {
                    continue;
                }
                self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                if !self.swarm.is_connected(&peer) && self.wants_peers() {
                    let _ = self.swarm.dial(DialOpts::peer_id(peer).addresses(vec![addr]).build());
                }
            }
        }
    }

    /// Above `target_peers`, closes connections that carry nothing for this node: not in its
    /// gossip mesh, past the grace period, no capacity, lease or probe traffic within the idle
    /// timeout (or the request timeout, if longer), and no request of ours waiting on them.
    /// The lowest gossip scores go first, then the newest connections (long-standing peers are
    /// harder for an attacker to displace). Peers in use (renters) are kept, but only the
    /// [`used_peers_kept`] most recently used: beyond them the least recently used are closed
    /// too, after every idle one, so that peers which keep themselves in use (cheap to do for
    /// many made-up identities) cannot hold every connection slot. Nothing is closed while a
    /// Kademlia query runs: a bootstrap walk asks many peers in turn and would redial each one
    /// closed under it.
    pub(super) fn trim_connections(&mut self) {
        let now = Instant::now();
        let used_window = self.settings.idle_connection_timeout.max(self.settings.request_timeout);
        // Uses of peers that never connected (failed dials) or left long ago.
        self.peers.last_used.retain(|_, t| now.duration_since(*t) < used_window);
        let closing = &self.peers.closing;
        let connected = self.swarm.connected_peers().filter(|p| !closing.contains(p)).count();
        let Some(excess) = connected.checked_sub(self.settings.target_peers).filter(|e| *e > 0) else {
            return;
        };
        if self.swarm.behaviour().kad.iter_queries().next().is_some() {
            return;
        }
        let grace = self.settings.gossip_heartbeat.saturating_mul(TRIM_GRACE_HEARTBEATS).max(MIN_TRIM_GRACE);
        let busy = self.peers_waited_on();
        let gossipsub = &self.swarm.behaviour().gossipsub;
        let mesh: HashSet<&PeerId> = gossipsub.mesh_peers(&self.topic.hash()).collect();
        let candidates = || {
            self.swarm
                .connected_peers()
                .filter(|p| !mesh.contains(p) && !busy.contains(p) && !closing.contains(p))
                .filter(|p| {
                    self.peers.connected_at.get(p).is_some_and(|since| now.duration_since(*since) >= grace)
                })
        };
        let mut idle: Vec<(f64, Instant, PeerId)> = candidates()
            .filter(|p| !self.peers.last_used.contains_key(p))
            .map(|p| (gossipsub.peer_score(p).unwrap_or(0.0), self.peers.connected_at[p], *p))
            .collect();
        idle.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
        // Peers in use, most recently used first; those past the cap are closed oldest use first.
        let mut used: Vec<(Instant, PeerId)> =
            candidates().filter_map(|p| Some((*self.peers.last_used.get(p)?, *p))).collect();
        used.sort_by_key(|u| std::cmp::Reverse(u.0));
        let over_cap = used
            .into_iter()
            .skip(used_peers_kept(&self.settings))
            .rev()
            .map(|(_, p)| (p, "in use, past the cap"));
        let idle = idle.into_iter().map(|(_, _, p)| (p, "idle"));
        for (peer, why) in idle.chain(over_cap).take(excess) {
            tracing::debug!(peer = %peer, target = self.settings.target_peers, why, "closing a connection above target_peers");
            if self.swarm.disconnect_peer_id(peer).is_ok() {
                self.peers.closing.insert(peer);
                self.metrics.peers_trimmed.inc();
            }
        }
    }

    pub(super) fn peer_views(&self) -> Vec<PeerView> {
        let mut v: Vec<PeerView> = self
            .swarm
            .connected_peers()
            .map(|p| PeerView {
                peer_id: p.to_string(),
                addrs: self.peers.addrs(p).iter().map(|a| a.to_string()).collect(),
                rtt_ms: self.peers.rtt(p).map(|d| d.as_secs_f64() * 1000.0),
                agent: self.peers.agents.get(p).cloned(),
                score: self.swarm.behaviour().gossipsub.peer_score(p),
            })
            .collect();
        v.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        v
    }

    /// Addresses to reach a provider: those in its offers, then what identify told us.
    pub(super) fn provider_addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let mut out: Vec<Multiaddr> = Vec::new();
        if let Some(node) = crate::net::node_id_of(peer) {
            let now = crate::clock::now();
            for o in self.book.by_provider(node, now) {
                for a in &o.addrs {
                    if let Ok(ma) = a.parse::<Multiaddr>()
                        && !out.contains(&ma)
                    {
                        out.push(ma);
                    }
                }
            }
        }
        for a in self.peers.addrs(peer) {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(1);
    const COOLDOWN: Duration = Duration::from_secs(10);

    fn entry(now: Instant) -> Bootstrap {
        Bootstrap::new("/ip4/127.0.0.1/tcp/1".parse().unwrap(), PeerId::random(), now)
    }

    #[test]
    fn a_bootstrap_peer_that_closes_a_young_connection_cools_down_while_the_node_has_a_mesh() {
        let t0 = Instant::now();
        let mut b = entry(t0);
        assert!(b.due(t0, false, true));
        b.dialled(t0, MAX);
        let closed = t0 + Duration::from_secs(2);
        b.closed(Some(Duration::from_secs(2)), false, closed, COOLDOWN);
        // Backoff long past, but cooling down: not dialled while a mesh peer exists.
        assert!(!b.due(closed + Duration::from_secs(9), false, true));
        // An isolated node dials it anyway.
        assert!(b.due(closed + Duration::from_secs(1), false, false));
        assert!(b.due(closed + COOLDOWN, false, true));
    }

    #[test]
    fn a_connection_this_node_closed_starts_no_cooldown() {
        let t0 = Instant::now();
        let mut b = entry(t0);
        b.dialled(t0, MAX);
        b.closed(Some(Duration::from_secs(2)), true, t0 + Duration::from_secs(2), COOLDOWN);
        assert!(b.due(t0 + Duration::from_secs(3), false, true));
    }

    #[test]
    fn a_connection_that_held_resets_the_backoff_and_any_cooldown() {
        let t0 = Instant::now();
        let mut b = entry(t0);
        for i in 0..5 {
            b.dialled(t0 + MAX * i, MAX);
        }
        assert_eq!(b.backoff, MAX);
        b.closed(Some(Duration::from_secs(1)), false, t0, COOLDOWN);
        // Within that cooldown, a later connection that held ends it.
        let later = t0 + Duration::from_secs(1);
        b.closed(Some(BOOTSTRAP_STABLE), false, later, COOLDOWN);
        assert!(b.due(later, false, true));
        assert_eq!(b.backoff, FIRST_BACKOFF);
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap_and_a_connected_peer_is_never_due() {
        let t0 = Instant::now();
        let mut b = entry(t0);
        b.dialled(t0, MAX);
        assert!(!b.due(t0 + FIRST_BACKOFF / 2, false, false));
        assert!(b.due(t0 + FIRST_BACKOFF, false, false));
        assert!(!b.due(t0 + FIRST_BACKOFF, true, false));
        b.dialled(t0, MAX);
        b.dialled(t0, MAX);
        b.dialled(t0, MAX);
        assert_eq!(b.backoff, MAX);
    }

    fn state() -> PeerState {
        PeerState::new(&crate::config::NodeConfig::default().resolve().unwrap())
    }

    /// Twenty faults within the fault memory ban a peer; faults older than that are forgotten,
    /// so an honest peer's rare mistakes never add up to a ban.
    #[test]
    fn faults_ban_when_they_come_together_and_are_forgotten_after_a_while() {
        let mut p = state();
        let peer = PeerId::random();
        let t0 = Instant::now();
        for i in 0..FAULTS_BEFORE_BAN - 1 {
            assert!(!p.record_fault_at(peer, None, t0 + Duration::from_secs(i as u64)));
        }
        let later = t0 + FAULT_MEMORY + Duration::from_secs(60);
        assert!(!p.record_fault_at(peer, None, later), "the earlier 19 were forgotten");
        for i in 1..FAULTS_BEFORE_BAN - 1 {
            assert!(!p.record_fault_at(peer, None, later + Duration::from_secs(i as u64)));
        }
        assert!(
            p.record_fault_at(peer, None, later + Duration::from_secs(30)),
            "the twentieth in a row bans"
        );
        assert!(p.record_fault_at(PeerId::random(), Some(-81.0), t0), "a graylisted score bans at once");
    }

    /// A peer that disconnected leaves no agent string behind, and its addresses only if it
    /// is a provider whose offers are held (to dial it again): made-up identities that come
    /// and go cannot grow these maps.
    #[test]
    fn a_gone_peer_leaves_only_what_helps_to_dial_a_provider() {
        let mut p = state();
        let (relay, provider) = (PeerId::random(), PeerId::random());
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4747".parse().unwrap();
        for peer in [relay, provider] {
            p.agents.insert(peer, "gpumesh/test".into());
            p.addrs.insert(peer, vec![addr.clone()]);
        }
        p.forget(&relay, false);
        p.forget(&provider, true);
        assert!(p.agents.is_empty());
        assert_eq!(p.addrs(&relay), Vec::<Multiaddr>::new());
        assert_eq!(p.addrs(&provider), vec![addr]);
    }
}
