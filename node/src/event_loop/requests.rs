//! Request-response: live capacity queries (answering them, and fanning them out with bounded
//! concurrency), routing lease messages to and from the lease task, book sync, and probes.

use super::EventLoop;
use crate::handle::Search;
use crate::lease_task::LeaseCommand;
use crate::views::{CapacityAnswerView, CapacityReport, UnreachableView};
use gpumesh_protocol::envelope::{RawEnvelope, open_cached};
use gpumesh_protocol::query::Query;
use gpumesh_protocol::wire::{self, CapacityAnswer, CapacityQuery, SyncAnswer, SyncAnswerRef, SyncRequest};
use gpumesh_protocol::{
    Bytes, BytesRef, Invalid, LeaseId, NodeId, Offer, OfferId, PROTOCOL_VERSION, SyncDigest, Verified,
};
use libp2p::PeerId;
use libp2p::request_response::{self, Event, Message};
use libp2p::swarm::dial_opts::DialOpts;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most capacity requests in flight per fan-out.
const FANOUT_CONCURRENCY: usize = 32;
/// Most offers learnt from one sync that are passed on by gossip.
const MAX_REGOSSIP: usize = 256;
/// Most book syncs in flight (a sync's next page does not count against it).
const MAX_SYNCS: usize = 4;
/// Most pages one book sync asks for (64 × 4096 offers).
const MAX_SYNC_PAGES: u32 = 64;
/// Bytes of CBOR framing counted per offer when a sync answer is cut to size.
const SYNC_FRAMING: usize = 8;

/// Most providers one probe dials.
const MAX_PROBE: usize = 16;

/// A book sync page asked of a peer.
#[derive(Debug)]
pub(crate) struct SyncInFlight {
    peer: PeerId,
    /// The `after` of this page's request (`None` on the first page).
    after: Option<OfferId>,
    /// Pages asked for so far in this sync, this one included.
    pages: u32,
}

/// A live capacity query in progress.
#[derive(Debug)]
pub(crate) struct Fanout {
    search: Search,
    request: Vec<u8>,
    started: Instant,
    deadline: Instant,
    queue: VecDeque<PeerId>,
    in_flight: HashSet<PeerId>,
    asked: usize,
    answered: Vec<CapacityAnswerView>,
    unreachable: Vec<UnreachableView>,
    fresh: HashMap<OfferId, Verified<Offer>>,
    reply: oneshot::Sender<CapacityReport>,
}

/// Dials in progress for a latency probe.
#[derive(Debug)]
pub(crate) struct Probe {
    waiting: HashSet<PeerId>,
    measured: usize,
    deadline: Instant,
    reply: oneshot::Sender<usize>,
}

impl EventLoop {
    // ----- capacity: answering ---------------------------------------------------------

    /// Answers a capacity query; a well-formed one marks `peer` as a renter in use.
    fn answer_capacity(&mut self, peer: PeerId, request: &[u8]) -> Vec<u8> {
        let offers = match wire::decode::<CapacityQuery>(request, wire::MAX_CAPACITY_QUERY) {
            Ok(q) if q.network == self.settings.network && q.v == PROTOCOL_VERSION => {
                self.peers.touch(peer);
                match Query::parse(&q.query) {
                    Ok(query) => {
                        let now = crate::clock::now();
                        self.book
                            .by_provider(self.me, now)
                            .filter(|o| query.matches(o.body(), None))
                            .take(wire::MAX_CAPACITY_OFFERS)
                            .map(|o| Bytes(o.bytes().to_vec()))
                            .collect()
                    }
                    Err(_) => Vec::new(),
                }
            }
            _ => Vec::new(),
        };
        self.metrics.capacity_queries.inc();
        wire::encode(&CapacityAnswer { v: PROTOCOL_VERSION, offers })
    }

    pub(super) fn handle_capacity_event(&mut self, e: Event<Vec<u8>, Vec<u8>>) {
        match e {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                let answer = self.answer_capacity(peer, &request);
                let _ = self.swarm.behaviour_mut().capacity.send_response(channel, answer);
            }
            Event::Message { peer, message: Message::Response { request_id, response }, .. } => {
                if let Some((fid, p, sent)) = self.capacity_requests.remove(&request_id) {
                    self.on_capacity_answer(fid, peer, p, sent, &response);
                }
            }
            Event::OutboundFailure { request_id, error, .. } => {
                if let Some((fid, peer, _)) = self.capacity_requests.remove(&request_id) {
                    self.on_capacity_failure(fid, peer, error.to_string());
                }
            }
            _ => {}
        }
    }

    // ----- capacity: fanning out -------------------------------------------------------

    pub(super) fn start_fanout(
        &mut self,
        search: Search,
        timeout: Duration,
        reply: oneshot::Sender<CapacityReport>,
    ) {
        let now = crate::clock::now();
        let mut targets: Vec<PeerId> = Vec::new();
        let mut seen = HashSet::new();
        let providers = self.book.live_providers(now).filter(|p| *p != &self.me);
        for p in providers.map(crate::net::peer_id_of).chain(self.swarm.connected_peers().copied()) {
            if seen.insert(p) && !self.peers.is_banned(&p) {
                targets.push(p);
            }
        }
        // Our own offers answer at once.
        let fresh = self
            .book
            .by_provider(self.me, now)
            .filter(|o| search.query.matches(o.body(), Some(0)))
            .map(|o| (o.offer_id, o.clone()))
            .collect();
        let request = wire::encode(&CapacityQuery {
            v: PROTOCOL_VERSION,
            network: self.settings.network.clone(),
            query: search.query.to_string(),
        });
        let id = self.next_fanout;
        self.next_fanout += 1;
        let started = Instant::now();
        self.fanouts.insert(
            id,
            Fanout {
                search,
                request,
                started,
                deadline: started + timeout,
                asked: targets.len(),
                queue: targets.into(),
                in_flight: HashSet::new(),
                answered: Vec::new(),
                unreachable: Vec::new(),
                fresh,
                reply,
            },
        );
        self.pump_fanout(id);
    }

    /// Starts queued requests up to the concurrency bound; finishes the fan-out when done.
    fn pump_fanout(&mut self, id: u64) {
        let Some(f) = self.fanouts.get_mut(&id) else { return };
        let mut to_send = Vec::new();
        while f.in_flight.len() + to_send.len() < FANOUT_CONCURRENCY {
            match f.queue.pop_front() {
                Some(p) => to_send.push(p),
                None => break,
            }
        }
        let request = f.request.clone();
        for peer in to_send {
            let addrs = self.provider_addrs(&peer);
            let rid = self.swarm.behaviour_mut().capacity.send_request_with_addresses(
                &peer,
                request.clone(),
                addrs,
            );
            self.capacity_requests.insert(rid, (id, peer, Instant::now()));
            self.peers.touch(peer);
            if let Some(f) = self.fanouts.get_mut(&id) {
                f.in_flight.insert(peer);
            }
        }
        if self.fanouts.get(&id).is_some_and(|f| f.queue.is_empty() && f.in_flight.is_empty()) {
            self.finish_fanout(id);
        }
    }

    fn on_capacity_answer(&mut self, fid: u64, from: PeerId, peer: PeerId, sent: Instant, response: &[u8]) {
        let now = crate::clock::now();
        let rtt_ms = sent.elapsed().as_secs_f64() * 1000.0;
        let provider = crate::net::node_id_of(&from);
        let mut offers = Vec::new();
        let mut bad = false;
        match wire::decode::<CapacityAnswer>(response, wire::MAX_CAPACITY_ANSWER) {
            Ok(a) => {
                for b in a.offers.into_iter().take(wire::MAX_CAPACITY_OFFERS) {
                    let opened = RawEnvelope::parse(&b.0)
                        .and_then(|raw| open_cached::<Offer>(&b.0, raw, &mut self.keys));
                    match opened {
                        // A provider answers for itself only.
                        Ok(o) if Some(o.provider) == provider => offers.push(o),
                        Ok(_) => bad = true,
                        Err(_) => bad = true,
                    }
                }
            }
            Err(_) => bad = true,
        }
        if bad {
            self.penalise(from);
        }
        let mut matched = Vec::new();
        for o in offers {
            // Merge into the book; an answer that is not newer than what we hold is fine.
            match self.admit_offer(o.clone(), None, now) {
                Ok(_) | Err(Invalid::Duplicate | Invalid::StaleSequence { .. }) => matched.push(o),
                Err(e) => {
                    tracing::debug!(peer = %from, error = %e, "capacity answer carried an invalid offer")
                }
            }
        }
        let Some(f) = self.fanouts.get_mut(&fid) else { return };
        f.in_flight.remove(&peer);
        let mut n = 0;
        for o in matched {
            // Keep the freshest copy, as the book does (decoding the book's only if newer).
            let newer = self.book.seq(&o.offer_id, now).is_some_and(|seq| seq > o.seq);
            let current = if newer { self.book.get(&o.offer_id, now).unwrap_or(o) } else { o };
            if f.search.query.matches(current.body(), Some(rtt_ms.round() as u32)) {
                n += 1;
                f.fresh.insert(current.offer_id, current);
            }
        }
        f.answered.push(CapacityAnswerView { peer_id: peer.to_string(), rtt_ms, offers: n });
        self.pump_fanout(fid);
    }

    fn on_capacity_failure(&mut self, fid: u64, peer: PeerId, error: String) {
        let Some(f) = self.fanouts.get_mut(&fid) else { return };
        f.in_flight.remove(&peer);
        f.unreachable.push(UnreachableView { peer_id: peer.to_string(), error });
        self.pump_fanout(fid);
    }

    fn finish_fanout(&mut self, id: u64) {
        let Some(mut f) = self.fanouts.remove(&id) else { return };
        // Whatever is still queued or in flight at the deadline did not answer in time.
        for p in f.queue.drain(..).chain(f.in_flight.drain()) {
            f.unreachable.push(UnreachableView {
                peer_id: p.to_string(),
                error: "no answer before the timeout".into(),
            });
        }
        self.capacity_requests.retain(|_, (fid, _, _)| *fid != id);
        let offers = self.rank_offers(f.fresh.values().map(|o| o.body()), &f.search);
        f.answered.sort_by(|a, b| a.rtt_ms.total_cmp(&b.rtt_ms));
        let _ = f.reply.send(CapacityReport {
            query: f.search.query.to_string(),
            asked: f.asked,
            answered: f.answered,
            unreachable: f.unreachable,
            offers,
            elapsed_ms: f.started.elapsed().as_secs_f64() * 1000.0,
        });
    }

    pub(super) fn finish_due_fanouts(&mut self) {
        let now = Instant::now();
        let due: Vec<u64> =
            self.fanouts.iter().filter(|(_, f)| f.deadline <= now).map(|(id, _)| *id).collect();
        for id in due {
            self.finish_fanout(id);
        }
    }

    // ----- probes ------------------------------------------------------------------------

    pub(super) fn start_probe(
        &mut self,
        providers: Vec<NodeId>,
        timeout: Duration,
        reply: oneshot::Sender<usize>,
    ) {
        let mut waiting = HashSet::new();
        for node in providers.into_iter().filter(|n| n != &self.me).take(MAX_PROBE) {
            let peer = crate::net::peer_id_of(&node);
            if self.peers.rtt(&peer).is_some() || self.peers.is_banned(&peer) {
                continue;
            }
            let addrs = self.provider_addrs(&peer);
            if self.swarm.is_connected(&peer)
                || self.swarm.dial(DialOpts::peer_id(peer).addresses(addrs).build()).is_ok()
            {
                self.peers.touch(peer);
                waiting.insert(peer);
            }
        }
        let probe = Probe { waiting, measured: 0, deadline: Instant::now() + timeout, reply };
        self.probes.push(probe);
        self.finish_due_probes();
    }

    pub(super) fn complete_probe(&mut self, peer: PeerId) {
        for p in &mut self.probes {
            if p.waiting.remove(&peer) {
                p.measured += 1;
            }
        }
        self.finish_due_probes();
    }

    pub(super) fn fail_probe(&mut self, peer: PeerId) {
        for p in &mut self.probes {
            p.waiting.remove(&peer);
        }
        self.finish_due_probes();
    }

    pub(super) fn finish_due_probes(&mut self) {
        let now = Instant::now();
        let (done, pending): (Vec<Probe>, Vec<Probe>) = std::mem::take(&mut self.probes)
            .into_iter()
            .partition(|p| p.waiting.is_empty() || p.deadline <= now);
        self.probes = pending;
        for p in done {
            let _ = p.reply.send(p.measured);
        }
    }

    // ----- lease routing -----------------------------------------------------------------

    pub(super) fn handle_lease_event(&mut self, e: Event<Vec<u8>, Vec<u8>>) {
        match e {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                let Some(from) = crate::net::node_id_of(&peer) else { return };
                self.peers.touch(peer);
                let token = self.next_token;
                self.next_token += 1;
                match self.lease_tx.try_send(LeaseCommand::Inbound { token, from, bytes: request }) {
                    Ok(()) => {
                        self.inbound_lease.insert(token, (peer, channel));
                    }
                    Err(_) => {
                        // Overloaded: dropping the channel tells the requester to retry later.
                        tracing::warn!(peer = %peer, "lease queue full; dropping a lease message");
                    }
                }
            }
            Event::Message { message: Message::Response { request_id, response }, .. } => {
                if let Some((lease_id, _)) = self.outbound_lease.remove(&request_id) {
                    self.forward_to_lease_task(lease_id, Ok(response));
                }
            }
            Event::OutboundFailure { request_id, error, .. } => {
                if let Some((lease_id, _)) = self.outbound_lease.remove(&request_id) {
                    self.forward_to_lease_task(lease_id, Err(error.to_string()));
                }
            }
            Event::InboundFailure { .. } | Event::ResponseSent { .. } => {}
        }
    }

    fn forward_to_lease_task(&mut self, lease_id: LeaseId, result: Result<Vec<u8>, String>) {
        match self.lease_tx.try_send(LeaseCommand::Reply { lease_id, result }) {
            Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(cmd)) => {
                // Replies to our own requests are few; wait for room rather than lose one.
                let tx = self.lease_tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(cmd).await;
                });
            }
        }
    }

    pub(super) fn send_lease(&mut self, provider: NodeId, lease_id: LeaseId, bytes: Vec<u8>) {
        let peer = crate::net::peer_id_of(&provider);
        if provider == self.me {
            self.forward_to_lease_task(lease_id, Err("cannot lease from this node itself".into()));
            return;
        }
        let addrs = self.provider_addrs(&peer);
        let rid = self.swarm.behaviour_mut().lease.send_request_with_addresses(&peer, bytes, addrs);
        self.outbound_lease.insert(rid, (lease_id, peer));
        self.peers.touch(peer);
    }

    /// Peers a book sync, capacity query, probe or lease message of ours is waiting on, or
    /// that wait on a lease answer from us.
    pub(super) fn peers_waited_on(&self) -> HashSet<PeerId> {
        let mut busy: HashSet<PeerId> = self.syncs_in_flight.values().map(|s| s.peer).collect();
        busy.extend(self.capacity_requests.values().map(|(_, peer, _)| *peer));
        // A lease message may wait up to the answer window for a start hook, longer than the
        // idle timeout that otherwise protects a peer just used.
        busy.extend(self.outbound_lease.values().map(|(_, peer)| *peer));
        busy.extend(self.inbound_lease.values().map(|(peer, _)| *peer));
        for p in &self.probes {
            busy.extend(p.waiting.iter().copied());
        }
        busy
    }

    // ----- book sync ---------------------------------------------------------------------

    /// Starts a book sync with a newly connected peer (unless one is running with it, or
    /// too many are running).
    pub(super) fn request_sync(&mut self, peer: PeerId) {
        if self.syncs_in_flight.len() >= MAX_SYNCS || self.syncs_in_flight.values().any(|s| s.peer == peer) {
            return;
        }
        self.request_sync_page(SyncInFlight { peer, after: None, pages: 1 });
    }

    fn request_sync_page(&mut self, sync: SyncInFlight) {
        // Our digest, so the peer leaves out the ranges of ids where we hold what it holds
        // (an empty book has nothing to compare: everything comes).
        let have = (!self.book.is_empty()).then(|| Bytes(self.book.sync_digest().to_bytes()));
        let req = wire::encode(&SyncRequest {
            v: PROTOCOL_VERSION,
            network: self.settings.network.clone(),
            after: sync.after,
            have,
        });
        let rid = self.swarm.behaviour_mut().sync.send_request(&sync.peer, req);
        self.syncs_in_flight.insert(rid, sync);
    }

    pub(super) fn handle_sync_event(&mut self, e: request_response::Event<Vec<u8>, Vec<u8>>) {
        match e {
            Event::Message { peer, message: Message::Request { request_id, request, channel }, .. } => {
                let request =
                    wire::decode::<SyncRequest>(&request, wire::MAX_SYNC_REQUEST).ok().and_then(|r| {
                        // A digest of the wrong length makes the request malformed.
                        let have = match &r.have {
                            None => None,
                            Some(b) => Some(SyncDigest::from_bytes(&b.0)?),
                        };
                        Some((r, have))
                    });
                // A peer gets one page at a time, and no page is built while the answers
                // still being written are over budget: a peer that asks for many and reads
                // none cannot pile them up. The stream closes without an answer (an empty
                // page would tell the asker it has the whole book); the asker tries later.
                if !self.sync_serving.admits(&peer) {
                    tracing::debug!(peer = %peer, bytes = self.sync_serving.bytes(), "busy serving syncs; closing a sync request unanswered");
                    self.metrics.sync_pages_refused.inc();
                    drop(channel);
                    return;
                }
                let answer = match request {
                    Some((r, have)) if r.network == self.settings.network => {
                        let page = self.book.sync_page(
                            r.after.as_ref(),
                            have.as_ref(),
                            crate::clock::now(),
                            self.settings.sync_page_offers,
                            wire::MAX_SYNC_ANSWER - 64,
                            SYNC_FRAMING,
                        );
                        self.metrics.sync_offers_served.inc_by(page.offers.len() as u64);
                        let offers = page.offers.into_iter().map(BytesRef).collect();
                        SyncAnswerRef { v: PROTOCOL_VERSION, offers, next: page.next }
                    }
                    _ => {
                        tracing::debug!(peer = %peer, "refusing a sync request that does not decode or names another network");
                        SyncAnswerRef { v: PROTOCOL_VERSION, offers: Vec::new(), next: None }
                    }
                };
                self.metrics.sync_pages_served.inc();
                let bytes = wire::encode(&answer);
                let len = bytes.len();
                if self.swarm.behaviour_mut().sync.send_response(channel, bytes).is_ok() {
                    self.sync_serving.started(request_id, peer, len);
                }
            }
            Event::ResponseSent { request_id, .. } | Event::InboundFailure { request_id, .. } => {
                self.sync_serving.finished(&request_id);
            }
            Event::Message { peer, message: Message::Response { request_id, response }, .. } => {
                if let Some(sync) = self.syncs_in_flight.remove(&request_id) {
                    self.ingest_sync(peer, sync, &response);
                }
            }
            Event::OutboundFailure { request_id, .. } => {
                self.syncs_in_flight.remove(&request_id);
            }
        }
    }

    fn ingest_sync(&mut self, peer: PeerId, sync: SyncInFlight, response: &[u8]) {
        let now = crate::clock::now();
        // No answer at all: the peer was busy serving syncs (protocol.md §8.3). Not a fault.
        if response.is_empty() {
            return;
        }
        let Ok(answer) = wire::decode::<SyncAnswer>(response, wire::MAX_SYNC_ANSWER) else {
            self.penalise(peer);
            return;
        };
        // A next page must move forward, and a sync has a bounded number of pages.
        let next = answer.next.filter(|n| sync.after.is_none_or(|a| *n > a) && sync.pages < MAX_SYNC_PAGES);
        let (mut added, mut faulty) = (0usize, false);
        // After our first sync, offers a sync teaches us are news to our side of the network
        // too (a healed partition): pass them on. A node catching up at start does not.
        let regossip = self.synced_once;
        let mut news = Vec::new();
        for b in answer.offers.iter().take(wire::MAX_SYNC_OFFERS) {
            match self.ingest_offer(&b.0, now) {
                Ok(_) => {
                    added += 1;
                    if regossip && news.len() < MAX_REGOSSIP {
                        news.push(&b.0);
                    }
                }
                Err(e) => faulty |= super::gossip::blame(&e, &b.0, &peer),
            }
        }
        if faulty {
            // No more pages from a peer that sent bad offers.
            self.penalise(peer);
        }
        match next.filter(|_| !faulty) {
            Some(after) => {
                self.request_sync_page(SyncInFlight { peer, after: Some(after), pages: sync.pages + 1 })
            }
            None => self.synced_once = true,
        }
        for bytes in &news {
            // The exact signed bytes: their message id is the one every node already knows
            // if the offer reached it by gossip, so it is not delivered twice.
            if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), bytes.to_vec()) {
                tracing::debug!(error = %e, "passing on a synced offer failed");
            }
        }
        tracing::debug!(
            peer = %peer,
            page = sync.pages,
            offers = answer.offers.len(),
            added,
            regossiped = news.len(),
            more = next.is_some(),
            "book sync"
        );
    }
}

/// Answers handed to connections and not yet written (or failed), by request: their bytes in
/// all, and how many each peer has. A node builds no new page while the bytes are over the
/// limit, nor for a peer that already has one on its way, so peers that ask for many pages and
/// read none cannot make it hold them.
#[derive(Debug)]
pub(crate) struct ServingBudget<K, P> {
    in_flight: HashMap<K, (P, usize)>,
    per_peer: HashMap<P, usize>,
    bytes: usize,
    limit: usize,
}

impl<K: std::hash::Hash + Eq, P: std::hash::Hash + Eq + Copy> ServingBudget<K, P> {
    pub(crate) fn new(limit: usize) -> Self {
        ServingBudget { in_flight: HashMap::new(), per_peer: HashMap::new(), bytes: 0, limit }
    }

    /// Whether a page may be built for `peer` now.
    pub(crate) fn admits(&self, peer: &P) -> bool {
        self.bytes < self.limit && !self.per_peer.contains_key(peer)
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn started(&mut self, id: K, peer: P, bytes: usize) {
        self.finished(&id);
        self.in_flight.insert(id, (peer, bytes));
        *self.per_peer.entry(peer).or_default() += 1;
        self.bytes += bytes;
    }

    pub(crate) fn finished(&mut self, id: &K) {
        if let Some((peer, n)) = self.in_flight.remove(id) {
            self.bytes -= n;
            if let Some(c) = self.per_peer.get_mut(&peer) {
                *c -= 1;
                if *c == 0 {
                    self.per_peer.remove(&peer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ServingBudget;

    /// Answers count against the budget until they are written or fail: past the byte limit
    /// no page is built for anyone, and a peer with a page on its way gets no second one;
    /// room comes back as answers finish (each once).
    #[test]
    fn the_serving_budget_holds_answers_until_they_are_written() {
        let (a, b, c) = ('a', 'b', 'c');
        let mut budget = ServingBudget::new(10);
        assert!(budget.admits(&a));
        budget.started(1, a, 6);
        assert!(!budget.admits(&a), "a has a page on its way");
        assert!(budget.admits(&b));
        budget.started(2, b, 6);
        assert!(!budget.admits(&c), "12 of 10 bytes in flight");
        budget.finished(&1);
        budget.finished(&1);
        assert_eq!(budget.bytes(), 6, "finishing twice frees once");
        assert!(budget.admits(&a) && budget.admits(&c));
        budget.finished(&3);
        budget.finished(&2);
        assert_eq!(budget.bytes(), 0);
        assert!(budget.admits(&b));
    }
}
