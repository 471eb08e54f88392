//! Offers and withdrawals: gossip in (held until validated, then accepted, rejected or
//! ignored), our own out, the book loaded from the store, and searches of the book.

use super::EventLoop;
use crate::handle::{LookupError, Search};
use crate::views::OfferView;
use gpumesh_protocol::envelope::{Kind, RawEnvelope, open_cached, open_shared};
use gpumesh_protocol::rank::{Candidate, top};
use gpumesh_protocol::{BookChange, Invalid, Offer, Timestamp, Verified, Withdrawal};
use libp2p::PeerId;
use libp2p::gossipsub::{self, MessageAcceptance};

impl EventLoop {
    pub(super) fn handle_gossip_event(&mut self, event: gossipsub::Event) {
        let (propagation_source, message_id, message) = match event {
            gossipsub::Event::Message { propagation_source, message_id, message } => {
                (propagation_source, message_id, message)
            }
            gossipsub::Event::Subscribed { topic, .. } if topic == self.topic.hash() => {
                self.retry_unsent();
                return;
            }
            _ => return,
        };
        let now = crate::clock::now();
        let outcome = if message.topic != self.topic.hash() {
            Err(Invalid::MalformedEnvelope("message on a topic this node does not serve"))
        } else {
            self.ingest(&message.data, now)
        };
        let blamed = matches!(&outcome, Err(e) if blame(e, &message.data, &propagation_source));
        let acceptance = match &outcome {
            Ok(change) => {
                tracing::debug!(peer = %propagation_source, ?change, "gossip accepted");
                self.metrics.gossip("accepted", "ok");
                MessageAcceptance::Accept
            }
            // A fault of the message itself: gossipsub rejects it, and every peer that sends
            // it loses score.
            Err(e) if e.is_peer_fault() && !e.depends_on_receiver() => {
                tracing::info!(peer = %propagation_source, reason = e.code(), error = %e, "gossip rejected");
                self.metrics.gossip("rejected", e.code());
                MessageAcceptance::Reject
            }
            // A fault only by this node's clock, settings or book: honest relays may forward
            // copies, and a Reject would cost each of them score. Gossipsub ignores it; its
            // signer, when it sent it to us itself, is penalised by the node alone.
            Err(e) if blamed => {
                tracing::info!(peer = %propagation_source, reason = e.code(), error = %e, "gossip rejected (signer)");
                self.metrics.gossip("rejected", e.code());
                MessageAcceptance::Ignore
            }
            Err(e) => {
                tracing::debug!(peer = %propagation_source, reason = e.code(), "gossip ignored");
                self.metrics.gossip("ignored", e.code());
                MessageAcceptance::Ignore
            }
        };
        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
            &message_id,
            &propagation_source,
            acceptance,
        );
        if blamed {
            self.penalise(propagation_source);
        }
    }

    /// decode → verify → validate → store, for one offer or withdrawal envelope.
    pub(super) fn ingest(&mut self, bytes: &[u8], now: Timestamp) -> Result<BookChange, Invalid> {
        let raw = RawEnvelope::parse(bytes)?;
        match raw.kind {
            Kind::Offer => self.ingest_offer(bytes, now),
            Kind::Withdrawal => {
                let w: Verified<Withdrawal> = open_cached(bytes, raw, &mut self.keys)?;
                w.validate(&self.ctx(now))?;
                let change = self.book.withdraw(&w, now)?;
                if let BookChange::Removed(id) = &change {
                    self.offer_left(*id, Some(w.provider), w.seq);
                }
                Ok(change)
            }
            other => Err(Invalid::WrongKind { expected: Kind::Offer, got: other }),
        }
    }

    /// verify → validate → book → store for an offer envelope from a peer, kept in one buffer
    /// that the book and the store share.
    pub(super) fn ingest_offer(&mut self, bytes: &[u8], now: Timestamp) -> Result<BookChange, Invalid> {
        // A copy of what the book holds (a sync with a peer whose offers we have): the same
        // outcome verification would reach, without it.
        if self.book.holds_copy(bytes, now) {
            return Err(Invalid::Duplicate);
        }
        let (stored, shared) = crate::store::shared_buffer(bytes);
        let offer = open_shared::<Offer>(shared, &mut self.keys)?;
        self.admit_offer(offer, Some(stored), now)
    }

    /// validate → book → store for an already verified offer. `stored` is the store's buffer
    /// behind the offer's bytes, if it has one (else the store gets a copy).
    pub(super) fn admit_offer(
        &mut self,
        offer: Verified<Offer>,
        stored: Option<sled::IVec>,
        now: Timestamp,
    ) -> Result<BookChange, Invalid> {
        let id = offer.offer_id;
        let stored = stored.unwrap_or_else(|| sled::IVec::from(offer.bytes()));
        let change = self.admit_to_book(offer, now)?;
        self.writer.put(id, stored);
        Ok(change)
    }

    /// validate → book for an already verified offer, without writing it to the store.
    fn admit_to_book(&mut self, offer: Verified<Offer>, now: Timestamp) -> Result<BookChange, Invalid> {
        offer.validate(&self.ctx(now))?;
        let (id, provider, seq) = (offer.offer_id, offer.provider, offer.seq);
        let change = self.book.insert(offer, now)?;
        self.book_event(id, Some(provider), seq, true);
        Ok(change)
    }

    /// Graded penalty for a peer that sent an invalid message: gossipsub's own score drops
    /// through the Reject report (P4); repeat offenders are disconnected and blocked.
    pub(super) fn penalise(&mut self, peer: PeerId) {
        let score = self.swarm.behaviour().gossipsub.peer_score(&peer);
        if self.peers.record_fault(peer, score) {
            tracing::warn!(peer = %peer, score = ?score, "blocking peer after repeated invalid messages");
            self.peers.ban(&mut self.swarm, peer);
            self.metrics.peer_bans.inc();
        }
    }

    /// Publishes our own offer or withdrawal, after putting it in our own book.
    pub(super) fn publish_own(&mut self, bytes: Vec<u8>) {
        let now = crate::clock::now();
        match self.ingest(&bytes, now) {
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "our own offer failed validation; not publishing it");
                return;
            }
        }
        self.publish_or_keep(bytes);
    }

    /// Publishes an offer we signed ourselves: validated and stored like any offer, but not
    /// verified again.
    pub(super) fn publish_own_offer(&mut self, offer: Verified<Offer>) {
        let bytes = offer.bytes().to_vec();
        if let Err(e) = self.admit_offer(offer, None, crate::clock::now()) {
            tracing::error!(error = %e, "our own offer failed validation; not publishing it");
            return;
        }
        self.publish_or_keep(bytes);
    }

    /// Publishes one of our own messages; if no peer subscribes to the topic yet, keeps it
    /// (the latest per offer) to publish when one does.
    fn publish_or_keep(&mut self, bytes: Vec<u8>) {
        match self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), bytes.clone()) {
            Ok(_) => {}
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                let id = offer_id_of(&bytes);
                self.unsent.retain(|b| offer_id_of(b) != id);
                self.unsent.push(bytes);
            }
            Err(e) => tracing::debug!(error = %e, "publishing our own message failed"),
        }
    }

    /// A peer joined the topic: publish what found no peer before.
    fn retry_unsent(&mut self) {
        for bytes in std::mem::take(&mut self.unsent) {
            self.publish_or_keep(bytes);
        }
    }

    /// Loads unexpired offers from the store into the book (verifying each again), and removes
    /// from the store what no longer loads (expired while the node was down, over a lowered
    /// cap, or damaged), so it is not read again at every start.
    pub(super) fn load_book(&mut self) {
        let now = crate::clock::now();
        let (stored, unreadable) = self.store.offers();
        let mut loaded = 0;
        let mut dropped = unreadable;
        for (key, buf) in stored {
            // The book shares sled's buffer, which stays where it is: resident once, not rewritten.
            let ok = open_shared::<Offer>(gpumesh_protocol::SharedBytes::from_owner(buf), &mut self.keys)
                .and_then(|offer| self.admit_to_book(offer, now));
            match ok {
                Ok(_) => loaded += 1,
                Err(_) => {
                    dropped += 1;
                    if let Err(e) = self.store.remove_offer_key(&key) {
                        tracing::warn!(error = %e, "could not remove an offer that no longer loads");
                    }
                }
            }
        }
        tracing::info!(loaded, dropped, "offer book loaded from the store");
    }

    fn latency_ms(&self, provider: &gpumesh_protocol::NodeId) -> Option<f64> {
        if provider == &self.me {
            return Some(0.0);
        }
        self.peers.rtt(&crate::net::peer_id_of(provider)).map(|d| d.as_secs_f64() * 1000.0)
    }

    /// Runs a search over the in-memory book's index.
    pub(super) fn search(&self, s: &Search) -> Vec<OfferView> {
        let now = crate::clock::now();
        let hits = self.book.search(&s.query, s.sort, s.latency_weight, s.limit, now);
        hits.iter().map(|h| self.view(&h.offer, h.score, s)).collect()
    }

    fn view(&self, offer: &Offer, score: f64, s: &Search) -> OfferView {
        let mut v = OfferView::new(offer, self.latency_ms(&offer.provider));
        if s.sort == gpumesh_protocol::rank::SortKey::Score {
            v.score = Some(score);
        }
        v
    }

    /// Ranks a few offers (a capacity answer) like a search.
    pub(super) fn rank_offers<'a>(
        &self,
        offers: impl Iterator<Item = &'a Offer>,
        s: &Search,
    ) -> Vec<OfferView> {
        let cands: Vec<Candidate<'a>> = offers
            .map(|offer| {
                let latency_ms = self.latency_ms(&offer.provider).map(|ms| ms.round() as u32);
                Candidate { offer, latency_ms }
            })
            .filter(|c| s.query.matches(c.offer, c.latency_ms))
            .collect();
        top(&cands, s.sort, s.latency_weight, s.limit)
            .iter()
            .map(|r| self.view(r.candidate.offer, r.score, s))
            .collect()
    }

    /// Resolves an offer id or a unique prefix of one.
    pub(super) fn find_offer(&self, prefix: &str) -> Result<Verified<Offer>, LookupError> {
        let now = crate::clock::now();
        let p = prefix.trim().to_ascii_lowercase();
        if p.is_empty() {
            return Err(LookupError::NotFound(prefix.into()));
        }
        // A whole id is looked up, not matched against every id in the book.
        if let Ok(id) = p.parse::<gpumesh_protocol::OfferId>() {
            return self.book.get(&id, now).ok_or_else(|| LookupError::NotFound(prefix.into()));
        }
        let matches: Vec<&gpumesh_protocol::OfferId> =
            self.book.live_ids(now).filter(|id| id.to_string().starts_with(&p)).collect();
        match matches[..] {
            [] => Err(LookupError::NotFound(prefix.into())),
            [id] => self.book.get(id, now).ok_or_else(|| LookupError::NotFound(prefix.into())),
            _ => {
                let mut ids: Vec<String> = matches.iter().map(|id| id.to_string()).collect();
                ids.sort();
                Err(LookupError::Ambiguous { prefix: prefix.into(), matches: ids })
            }
        }
    }
}

/// The offer id an offer or withdrawal envelope is about (without verifying: our own bytes).
fn offer_id_of(bytes: &[u8]) -> Option<gpumesh_protocol::OfferId> {
    let raw = RawEnvelope::parse(bytes).ok()?;
    match raw.kind {
        Kind::Offer => <Offer as gpumesh_protocol::envelope::Body>::decode(raw.body).ok().map(|o| o.offer_id),
        Kind::Withdrawal => {
            gpumesh_protocol::envelope::decode_body::<Withdrawal>(raw.body).ok().map(|w| w.offer_id)
        }
        _ => None,
    }
}

/// Whether the peer that sent `bytes` is to blame for `e`: for a fault that does not depend on
/// this node (a bad signature, a malformed body), whoever sent it; for one that does (issued
/// in the future by this node's clock, a longer TTL than this node accepts, a withdrawal of an
/// offer this node holds from someone else), only the message's signer, since an honest
/// relay may have judged it valid.
pub(super) fn blame(e: &Invalid, bytes: &[u8], from: &PeerId) -> bool {
    e.is_peer_fault()
        && (!e.depends_on_receiver()
            || RawEnvelope::parse(bytes).is_ok_and(|raw| crate::net::peer_id_of(&raw.signer) == *from))
}
